"""The public contract of the Python API (docs/reference/python.md), call by call."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import resumeflow as rf

# Every test taking `db` runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_stores


def simple_wf(name="simple"):
    wf = rf.Workflow(name)

    @wf.node
    def load(n: int):
        return list(range(n))

    @wf.node(retry=rf.RetryPolicy(max_attempts=3, initial_interval=0.01))
    def train(ctx: rf.NodeContext, load, epochs: int = 2):
        state = ctx.load_partial_state() or {"epoch": 0}
        for epoch in range(state["epoch"], epochs):
            ctx.save_partial_state({"epoch": epoch + 1})
        return sum(load)

    return wf


def test_readme_example(db):
    wf = simple_wf()
    engine = rf.Engine(db)
    state = engine.run(wf, inputs={"n": 10})
    assert state.status == "completed"
    assert state.values["train"] == 45
    assert engine.get_partial_state(state.run_id, "train") == {"epoch": 2}, "kept after completion"
    assert wf.nodes == ["load", "train"]
    engine.close()


def test_import_is_light():
    code = "import sys, resumeflow; print(sorted(m for m in ('torch', 'numpy', 'langgraph') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_wiring_explicit_inputs_context_and_defaults(db):
    wf = rf.Workflow("wiring")

    @wf.node
    def source():
        return 5

    @wf.node(inputs={"value": "source"})
    def renamed(value, scale: int = 3, offset: int = 0):
        return value * scale + offset

    @wf.node
    def uses_ctx(ctx, renamed):
        return (ctx.node_id, ctx.attempt, renamed)

    with rf.Engine(db) as engine:
        state = engine.run(wf, {"offset": 1})
    assert state.values["renamed"] == 16
    assert state.values["uses_ctx"] == ("uses_ctx", 1, 16)


@pytest.mark.parametrize("bad", ["", "a b", "x;drop table runs", "../etc", "a/b", "é", "x" * 10_000])
def test_bad_workflow_and_node_names(bad):
    with pytest.raises(rf.GraphError):
        rf.Workflow(bad)
    wf = rf.Workflow("ok")
    with pytest.raises(rf.GraphError):
        wf.node(lambda: 1, name=bad)


def test_invalid_graphs_raise_graph_error(db):
    dup = rf.Workflow("dup")

    @dup.node
    def a():
        return 1

    with pytest.raises(rf.GraphError, match="duplicate"):
        dup.node(a)

    cyc = rf.Workflow("cyc")

    @cyc.node
    def x(y):
        return y

    @cyc.node
    def y(x):
        return x

    with pytest.raises(rf.GraphError, match="cycle"):
        cyc.validate()

    unknown = rf.Workflow("unknown")

    @unknown.node(inputs={"v": "nope"})
    def z(v):
        return v

    with pytest.raises(rf.GraphError, match="nope"):
        unknown.validate()

    with pytest.raises(rf.GraphError, match="missing"):
        unknown.node(lambda q: q, name="w", inputs={"missing": "z"})

    unwired = rf.Workflow("unwired")

    @unwired.node
    def needs(required_param):
        return required_param

    with rf.Engine(db) as engine:
        with pytest.raises(rf.GraphError, match="required_param"):
            engine.start(unwired)
        wf = simple_wf()
        with pytest.raises(rf.GraphError):
            engine.execute_until(wf, "no_such_node", {"n": 1})
        engine.execute_until(wf, "load", {"n": 1}, run_id="p")
        with pytest.raises(rf.GraphError):
            engine.resume("p", wf, rerun=["ghost"])
        with pytest.raises(rf.GraphError):
            engine.resume("p", wf, updates={"ghost": 1})


def test_every_run_id_call_raises_run_not_found(db):
    wf = simple_wf()
    with rf.Engine(db) as engine:
        for call in (
            lambda: engine.get_current_state("nope"),
            lambda: engine.get_partial_results("nope"),
            lambda: engine.save_partial_state("nope", "train", 1),
            lambda: engine.get_partial_state("nope", "train"),
            lambda: engine.history("nope"),
            lambda: engine.cleanup("nope"),
            lambda: engine.resume("nope", wf),
        ):
            with pytest.raises(rf.RunNotFound):
                call()


@pytest.mark.parametrize("bad", ["", "a b", "x'; DROP TABLE runs; --", "../../x", "r/1", "x" * 10_000])
def test_bad_run_ids_are_typed_errors_and_leave_other_runs_intact(db, bad):
    wf = simple_wf()
    with rf.Engine(db) as engine:
        engine.run(wf, {"n": 3}, run_id="good")
        with pytest.raises(rf.InvalidArgument) as info:
            engine.start(wf, {"n": 3}, run_id=bad)
        assert isinstance(info.value, ValueError) and "run_id" in str(info.value)
        assert [r.run_id for r in engine.list_runs()] == ["good"]
        assert engine.get_current_state("good").values["train"] == 3


def test_duplicate_run_id_and_resuming_completed_runs(db):
    wf = simple_wf()
    with rf.Engine(db) as engine:
        engine.run(wf, {"n": 3}, run_id="r")
        with pytest.raises(rf.RunExists):
            engine.start(wf, {"n": 3}, run_id="r")
        with pytest.raises(rf.RunNotResumable):
            engine.resume("r", wf)
        with pytest.raises(rf.CheckpointNotFound):
            engine.resume("r", wf, checkpoint_id=999)
        first = engine.history("r")[-1].checkpoint_id
        state = engine.resume("r", wf, checkpoint_id=first).wait()
        assert state.status == "completed" and state.values["train"] == 3


def test_workflow_mismatch(db):
    with rf.Engine(db) as engine:
        engine.execute_until(simple_wf(), "load", {"n": 2}, run_id="m")
        other = rf.Workflow("simple")

        @other.node
        def load(n: int):
            return n

        @other.node
        def evaluate(load):
            return load

        with pytest.raises(rf.WorkflowMismatch, match="train"):
            engine.resume("m", other)
        # Changing a function body (the fix for a bug) is allowed.
        fixed = simple_wf()
        assert engine.resume("m", fixed).wait().status == "completed"


def test_store_errors_leave_files_untouched(tmp_path):
    with pytest.raises(rf.StoreError, match="directory"):
        rf.Engine(str(tmp_path))
    text = tmp_path / "notes.txt"
    text.write_bytes(b"not a database" * 100)
    with pytest.raises(rf.StoreError, match="notes.txt"):
        rf.Engine(str(text))
    assert text.read_bytes() == b"not a database" * 100
    with pytest.raises(rf.StoreError):
        rf.Engine(str(tmp_path / "missing_dir" / "x.db"))


def test_async_and_generator_nodes(db):
    import asyncio

    wf = rf.Workflow("kinds")

    @wf.node
    async def fetch(n: int):
        await asyncio.sleep(0.01)
        return n * 2

    @wf.node
    def stream(fetch):
        yield from range(fetch)

    @wf.node
    async def astream(stream):
        for item in stream[:2]:
            yield item + 100

    with rf.Engine(db) as engine:
        state = engine.run(wf, {"n": 3})
    assert state.values == {"fetch": 6, "stream": [0, 1, 2, 3, 4, 5], "astream": [100, 101]}


def test_independent_nodes_really_overlap(db):
    wf = rf.Workflow("parallel")
    barrier = threading.Barrier(2, timeout=10)

    @wf.node
    def left():
        barrier.wait()  # both must be running at once
        return "l"

    @wf.node
    def right():
        barrier.wait()
        return "r"

    with rf.Engine(db) as engine:
        assert engine.run(wf).values == {"left": "l", "right": "r"}


def test_max_concurrency_and_resources_limit_parallelism(db):
    wf = rf.Workflow("limited")
    running = []
    peak = []
    lock = threading.Lock()

    def body():
        with lock:
            running.append(1)
            peak.append(len(running))
        time.sleep(0.05)
        with lock:
            running.pop()
        return 1

    for i in range(4):
        wf.node(lambda: body(), name=f"gpu{i}", resources={"gpu": 1})
    with rf.Engine(db, resources={"gpu": 1}) as engine:
        engine.run(wf)
    assert max(peak) == 1
    peak.clear()
    wf2 = rf.Workflow("limited2")
    for i in range(4):
        wf2.node(lambda: body(), name=f"n{i}")
    with rf.Engine(db, max_concurrency=2) as engine:
        engine.run(wf2)
    assert max(peak) == 2


def test_interrupt_pauses_after_in_flight_nodes(db):
    wf = rf.Workflow("interruptible")
    started = threading.Event()

    @wf.node
    def first():
        started.set()
        time.sleep(0.3)
        return 1

    @wf.node
    def second(first):
        return first + 1

    with rf.Engine(db) as engine:
        run = engine.start(wf, run_id="i")
        started.wait(10)
        run.interrupt()
        state = run.wait(timeout=10)
        assert state.status == "paused"
        assert state.completed == ["first"], "the in-flight node finished"
        assert engine.resume("i", wf).wait().values["second"] == 2


def test_cancel_and_timeout(db):
    wf = rf.Workflow("slow")

    @wf.node(timeout=0.2, retry=rf.RetryPolicy(max_attempts=2, initial_interval=0.01))
    def sleeper(seconds: float = 5.0):
        time.sleep(seconds)
        return 1

    with rf.Engine(db) as engine:
        with pytest.raises(rf.RunFailed) as info:
            engine.run(wf, run_id="t")
        node = info.value.state.nodes["sleeper"]
        assert node.attempt == 2 and node.retryable is True and "TimeoutError" in node.error
        run = engine.start(wf, {"seconds": 10.0}, run_id="c")
        time.sleep(0.05)
        run.cancel()
        assert run.wait(timeout=10).status == "cancelled"
        with pytest.raises(TimeoutError):
            engine.start(wf, {"seconds": 0.5}, run_id="w").wait(timeout=0.01)


def test_base_exceptions_in_nodes_fail_the_node_not_the_engine(db):
    wf = rf.Workflow("exits")

    @wf.node(retry=False)
    def exits():
        sys.exit(3)

    @wf.node(retry=False)
    def interrupts():
        raise KeyboardInterrupt

    @wf.node
    def fine():
        return "ok"

    with rf.Engine(db) as engine:
        with pytest.raises(rf.RunFailed) as info:
            engine.run(wf)
    nodes = info.value.state.nodes
    assert nodes["exits"].status == "failed" and "SystemExit" in nodes["exits"].error
    assert nodes["interrupts"].status == "failed" and "KeyboardInterrupt" in nodes["interrupts"].error
    assert info.value.state.values == {"fine": "ok"}


def test_list_runs_cleanup_all_and_older_than(db):
    wf = simple_wf()
    with rf.Engine(db) as engine:
        engine.run(wf, {"n": 2}, run_id="a")
        engine.run(wf, {"n": 2}, run_id="b")
        assert {r.run_id for r in engine.list_runs()} == {"a", "b"}
        assert [r.run_id for r in engine.list_runs("failed")] == []
        assert engine.cleanup(keep_last=1, older_than=3600) == 0, "nothing that old"
        assert engine.cleanup(keep_last=1) == 2
        assert all(len(engine.history(r)) == 1 for r in ("a", "b"))


def test_rerun_starts_without_partial_state(db):
    wf = rf.Workflow("rerun")
    seen = []

    @wf.node
    def work(ctx: rf.NodeContext):
        seen.append(ctx.load_partial_state())
        ctx.save_partial_state({"done": True})
        return len(seen)

    with rf.Engine(db) as engine:
        engine.run(wf, run_id="r")
        assert engine.get_partial_state("r", "work") == {"done": True}
        state = engine.resume("r", wf, rerun=["work"]).wait()
    assert seen == [None, None]
    assert state.nodes["work"].attempt == 2


def test_engine_from_another_thread_and_run_status(db):
    wf = simple_wf()
    results = []
    with rf.Engine(db) as engine:
        run = engine.start(wf, {"n": 4}, run_id="s")
        t = threading.Thread(target=lambda: results.append(run.wait()))
        t.start()
        t.join(30)
        assert results[0].values["train"] == 6
        assert run.status == "completed" and run.id == "s"


@pytest.mark.sqlite_only
def test_store_file_is_private(db):
    rf.Engine(db).close()
    assert os.stat(db).st_mode & 0o777 == 0o600


def test_retries_honour_the_backoff(db):
    wf = rf.Workflow("backoff")
    starts = []

    @wf.node(retry=rf.RetryPolicy(max_attempts=3, initial_interval=0.2, backoff_factor=2.0, jitter=False))
    def flaky(ctx: rf.NodeContext):
        starts.append(time.monotonic())
        if ctx.attempt < 3:
            raise TimeoutError("slow upstream")
        return ctx.attempt

    with rf.Engine(db) as engine:
        state = engine.run(wf, run_id="b")
        events = engine.events("b")
    assert state.values["flaky"] == 3
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps
    assert [e[2] for e in events if e[3] == "flaky"].count("NodeRetryScheduled") == 2


def test_ctx_named_parameter_gets_the_context_whatever_its_annotation(db):
    wf = rf.Workflow("ctxnamed")

    @wf.node
    def node(ctx: object = None):
        return ctx.node_id

    with rf.Engine(db) as engine:
        assert engine.run(wf).values["node"] == "node"


def test_undecodable_values_do_not_hide_the_state(db):
    import fractions

    rf.register_codec(fractions.Fraction, "test.frac2", lambda f: str(f).encode(),
                      lambda b: fractions.Fraction(b.decode()))
    wf = rf.Workflow("frac")

    @wf.node
    def third():
        return fractions.Fraction(1, 3)

    with rf.Engine(db) as engine:
        engine.run(wf, run_id="f")
    from resumeflow import _codec

    del _codec._custom_by_name["test.frac2"]  # as in a process that never registered it
    with rf.Engine(db) as engine:
        state = engine.get_current_state("f")
        assert state.status == "completed"
        assert isinstance(state.values["third"], rf.Undecodable)
        assert "test.frac2" in state.values["third"].error
        assert [r.run_id for r in engine.list_runs()] == ["f"]


def test_forked_child_can_run_workflows(db):
    import multiprocessing

    wf = simple_wf()
    with rf.Engine(db) as engine:
        engine.run(wf, {"n": 2}, run_id="parent")

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child(q):
        with rf.Engine(db) as e:
            q.put(e.run(simple_wf(), {"n": 5}, run_id="child").values["train"])

    proc = ctx.Process(target=child, args=(queue,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert queue.get(timeout=5) == 10
