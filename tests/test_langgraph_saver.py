"""resumeflow.langgraph.ResumeflowSaver: LangGraph's own conformance suite, real graphs
(interrupt / Command(resume=...), a crashed node resumed from its checkpoint), concurrency
from threads and asyncio tasks, storage growth, pruning, and bad input."""

from __future__ import annotations

import asyncio
import operator
import os
import threading
from pathlib import Path
from typing import Annotated, TypedDict

# The `langgraph` extra: requirements-dev.txt installs it, so a missing install fails here
# rather than skipping.
import pytest
import resumeflow as rf
from conftest import python
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from resumeflow.langgraph import ResumeflowSaver


def _conformance(tmp_path: Path, make, store: str = "sqlite", request=None) -> dict:
    """Runs LangGraph's conformance suite; each saver it asks for gets a fresh store (a
    SQLite file, or a PostgreSQL schema of its own)."""
    count = [0]
    base = request.getfixturevalue("pg_url") if store == "postgres" else None

    @checkpointer_test(name="ResumeflowSaver")
    async def factory():
        count[0] += 1
        where = f"{base}_{count[0]}" if base else tmp_path / f"conformance-{count[0]}.db"
        saver, closer = make(where)
        yield saver
        closer()

    report = asyncio.run(validate(factory))
    return report.results


def _assert_all_pass(results: dict) -> None:
    assert set(results) == {c.value for c in ALL_CAPABILITIES}
    for capability, result in results.items():
        assert result.detected, f"{capability} not detected"
        assert result.passed, f"{capability}: {result.failures}"
        assert result.tests_failed == 0 and result.tests_passed > 0


STORES = pytest.mark.parametrize("store", ["sqlite", "postgres"])


@STORES
def test_langgraph_conformance_suite_passes_every_capability(tmp_path, store, request):
    def make(path):
        saver = ResumeflowSaver(path)
        return saver, saver.close

    _assert_all_pass(_conformance(tmp_path, make, store, request))


@STORES
def test_conformance_suite_on_a_store_shared_with_an_engine(tmp_path, store, request):
    def make(path):
        engine = rf.Engine(str(path))
        saver = ResumeflowSaver(engine)

        def close():
            saver.close()
            engine.close()

        return saver, close

    _assert_all_pass(_conformance(tmp_path, make, store, request))


# -- real graphs ---------------------------------------------------------------------------


class Approval(TypedDict):
    request: str
    answer: str


def _approval_graph(saver: ResumeflowSaver):
    def ask(state: Approval) -> dict:
        return {"answer": interrupt({"question": f"approve {state['request']}?"})}

    builder = StateGraph(Approval)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    return builder.compile(checkpointer=saver)


def test_interrupt_then_command_resume_from_a_reopened_store(tmp_path):
    path = tmp_path / "lg.db"
    config = {"configurable": {"thread_id": "approval-1"}}
    with ResumeflowSaver(path) as saver:
        out = _approval_graph(saver).invoke({"request": "deploy", "answer": ""}, config)
        assert out["__interrupt__"][0].value == {"question": "approve deploy?"}
    # A new saver on the same file (a new process, in effect) sees the interrupted thread.
    with ResumeflowSaver(path) as saver:
        graph = _approval_graph(saver)
        assert graph.get_state(config).next == ("ask",)
        out = graph.invoke(Command(resume="yes"), config)
        assert out == {"request": "deploy", "answer": "yes"}
        assert graph.get_state(config).next == ()


CRASHING_GRAPH = r"""
import os, sys
from typing import TypedDict
from langgraph.graph import StateGraph, START, END
from resumeflow.langgraph import ResumeflowSaver

LEDGER = os.environ["LEDGER"]

class S(TypedDict):
    trail: str

def node(name):
    def run(state):
        with open(LEDGER, "a") as f:
            f.write(name + "\n"); f.flush(); os.fsync(f.fileno())
        if name == "train" and os.environ.get("CRASH") == "1":
            os._exit(17)  # the process dies inside the node: nothing after this is saved
        return {"trail": state["trail"] + name + ";"}
    return run

def build(path):
    b = StateGraph(S)
    for n in ("prepare", "train", "export"):
        b.add_node(n, node(n))
    b.add_edge(START, "prepare"); b.add_edge("prepare", "train")
    b.add_edge("train", "export"); b.add_edge("export", END)
    saver = ResumeflowSaver(path)
    return b.compile(checkpointer=saver), saver
"""


def test_a_crashed_node_is_resumed_from_its_checkpoint_without_repeating_finished_ones(tmp_path):
    path = tmp_path / "lg.db"
    ledger = tmp_path / "ledger.txt"
    env = {"LEDGER": str(ledger), "CRASH": "1"}
    child = python(
        CRASHING_GRAPH
        + f"graph, _ = build({str(path)!r})\n"
        + "graph.invoke({'trail': ''}, {'configurable': {'thread_id': 'job'}}, durability='sync')\n",
        env_extra=env,
    )
    assert child.returncode == 17, child.stderr
    assert ledger.read_text().split() == ["prepare", "train"]
    env["CRASH"] = "0"
    resumed = python(
        CRASHING_GRAPH
        + f"graph, saver = build({str(path)!r})\n"
        + "print(graph.invoke(None, {'configurable': {'thread_id': 'job'}})['trail'])\n"
        + "saver.close()\n",
        env_extra=env,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "prepare;train;export;"
    # prepare finished before the crash and was not run again; train was re-run.
    assert ledger.read_text().split() == ["prepare", "train", "train", "export"]


class Counter(TypedDict):
    n: int
    log: Annotated[list[str], operator.add]


def _counter_graph(saver: ResumeflowSaver, steps: int):
    builder = StateGraph(Counter)
    for i in range(steps):
        builder.add_node(f"s{i}", lambda s, i=i: {"n": s["n"] + 1, "log": [f"s{i}"]})
        builder.add_edge(START if i == 0 else f"s{i - 1}", f"s{i}")
    builder.add_edge(f"s{steps - 1}", END)
    return builder.compile(checkpointer=saver)


def test_sixteen_threads_write_to_one_saver_without_errors(tmp_path):
    saver = ResumeflowSaver(tmp_path / "lg.db")
    graph = _counter_graph(saver, steps=10)
    errors: list[BaseException] = []
    results: dict[int, dict] = {}

    def worker(k: int) -> None:
        try:
            for round_ in range(3):
                config = {"configurable": {"thread_id": f"t{k}-{round_}"}}
                results[k * 10 + round_] = graph.invoke({"n": 0, "log": []}, config, durability="sync")
                saver.put_writes(
                    saver.get_tuple(config).config, [("extra", k)], f"task-{k}"
                )
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 48
    assert all(r["n"] == 10 and len(r["log"]) == 10 for r in results.values())
    for k in range(16):
        history = list(saver.list({"configurable": {"thread_id": f"t{k}-2"}}))
        assert len(history) == 12  # input + 10 steps + the first loop checkpoint
        assert history[0].pending_writes == [(f"task-{k}", "extra", k)]
    saver.close()


def test_many_asyncio_tasks_share_one_saver(tmp_path):
    saver = ResumeflowSaver(tmp_path / "lg.db")
    graph = _counter_graph(saver, steps=8)

    async def main() -> list[dict]:
        return await asyncio.gather(
            *(
                graph.ainvoke({"n": 0, "log": []}, {"configurable": {"thread_id": f"a{k}"}})
                for k in range(32)
            )
        )

    outs = asyncio.run(main())
    assert [o["n"] for o in outs] == [8] * 32

    async def listed() -> int:
        return len([t async for t in saver.alist(None, filter={"step": 8})])

    assert asyncio.run(listed()) == 32
    saver.close()


# -- storage ---------------------------------------------------------------------------------


def test_an_unchanged_channel_is_stored_once_not_once_per_step(tmp_path):
    path = tmp_path / "lg.db"
    saver = ResumeflowSaver(path)
    big = os.urandom(1 << 20)  # 1 MiB that every one of 100 checkpoints includes
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    versions: dict[str, str] = {}
    for step in range(100):
        cp = empty_checkpoint()
        new = {"step": saver.get_next_version(versions.get("step"), None)}
        if step == 0:
            new["big"] = saver.get_next_version(None, None)
        versions.update(new)
        cp["channel_values"] = {"big": big, "step": step}
        cp["channel_versions"] = dict(versions)
        config = saver.put(config, cp, {"step": step}, new)
    saver.close()
    size = sum(p.stat().st_size for p in tmp_path.iterdir() if p.name.startswith("lg.db"))
    assert size < 4 << 20, size  # a snapshot per step would be > 100 MiB
    with ResumeflowSaver(path) as saver:
        latest = saver.get_tuple({"configurable": {"thread_id": "t"}})
        assert latest.checkpoint["channel_values"] == {"big": big, "step": 99}
        first = list(saver.list({"configurable": {"thread_id": "t"}}))[-1]
        assert first.checkpoint["channel_values"] == {"big": big, "step": 0}


def test_prune_keeps_the_latest_checkpoint_with_its_values_and_writes(tmp_path):
    saver = ResumeflowSaver(tmp_path / "lg.db")
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    versions: dict[str, str] = {}
    for step in range(5):
        cp = empty_checkpoint()
        new = {"x": saver.get_next_version(versions.get("x"), None)}
        if step == 0:
            new["const"] = saver.get_next_version(None, None)
        versions.update(new)
        cp["channel_values"] = {"x": step, "const": "kept"}
        cp["channel_versions"] = dict(versions)
        config = saver.put(config, cp, {"step": step}, new)
    saver.put_writes(config, [("x", 99)], "t1")
    saver.prune(["t"], strategy="keep_latest")
    remaining = list(saver.list({"configurable": {"thread_id": "t"}}))
    assert len(remaining) == 1
    assert remaining[0].checkpoint["channel_values"] == {"x": 4, "const": "kept"}
    assert remaining[0].pending_writes == [("t1", "x", 99)]
    saver.prune(["t"], strategy="delete")
    assert saver.get_tuple({"configurable": {"thread_id": "t"}}) is None
    saver.close()


def test_keep_latest_does_not_prune_a_thread_that_uses_delta_channels(tmp_path, caplog):
    saver = ResumeflowSaver(tmp_path / "lg.db")
    config = {"configurable": {"thread_id": "d", "checkpoint_ns": ""}}
    for step in range(3):
        meta = {"step": step, "counters_since_delta_snapshot": {"msgs": (step, step)}}
        config = saver.put(config, empty_checkpoint(), meta, {})
    saver.prune(["d"], strategy="keep_latest")
    assert len(list(saver.list({"configurable": {"thread_id": "d"}}))) == 3
    assert "DeltaChannel" in caplog.text
    saver.close()


def test_keep_latest_checks_delta_channels_in_every_namespace(tmp_path, caplog):
    # Regression: only the thread's newest checkpoint was checked; a subgraph interrupted
    # after the root's last step hid the root's DeltaChannel counters.
    saver = ResumeflowSaver(tmp_path / "lg.db")
    root = {"configurable": {"thread_id": "d", "checkpoint_ns": ""}}
    for step in range(3):
        meta = {"step": step, "counters_since_delta_snapshot": {"msgs": (step, step)}}
        root = saver.put(root, empty_checkpoint(), meta, {})
    sub = {"configurable": {"thread_id": "d", "checkpoint_ns": "sub:1"}}
    saver.put(sub, empty_checkpoint(), {"step": 0}, {})
    saver.prune(["d"], strategy="keep_latest")
    assert len(list(saver.list({"configurable": {"thread_id": "d", "checkpoint_ns": ""}}))) == 3
    assert "DeltaChannel" in caplog.text
    saver.close()
    with pytest.raises(rf.StoreError, match="closed"):
        asyncio.run(saver.aget_tuple(root))


def test_checkpoints_written_by_a_killed_process_are_all_there(tmp_path):
    path = tmp_path / "lg.db"
    child = python(
        "import os\n"
        "from langgraph.checkpoint.base import empty_checkpoint\n"
        "from resumeflow.langgraph import ResumeflowSaver\n"
        f"s = ResumeflowSaver({str(path)!r})\n"
        "cfg = {'configurable': {'thread_id': 'k', 'checkpoint_ns': ''}}\n"
        "for i in range(50):\n"
        "    cfg = s.put(cfg, empty_checkpoint(), {'step': i}, {})\n"
        "os._exit(9)\n"
    )
    assert child.returncode == 9, child.stderr
    with ResumeflowSaver(path) as saver:
        steps = [t.metadata["step"] for t in saver.list({"configurable": {"thread_id": "k"}})]
    assert steps == list(range(49, -1, -1))


@STORES
def test_pending_writes_survive_a_kill_9_before_the_next_checkpoint(tmp_path, store, request):
    """Pending writes are not fsynced on their own (they ride on the next checkpoint's
    fsync): a kill -9 right after ``put_writes`` still finds every one of them."""
    where = request.getfixturevalue("pg_url") if store == "postgres" else str(tmp_path / "lg.db")
    child = python(
        "import os, signal\n"
        "from langgraph.checkpoint.base import empty_checkpoint\n"
        "from resumeflow.langgraph import ResumeflowSaver\n"
        f"s = ResumeflowSaver({where!r})\n"
        "cfg = {'configurable': {'thread_id': 'w', 'checkpoint_ns': ''}}\n"
        "cfg = s.put(cfg, empty_checkpoint(), {'step': 0}, {})\n"
        "for t in range(20):\n"
        "    s.put_writes(cfg, [('out', {'task': t})], f'task-{t}')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert child.returncode == -9, child.stderr
    with ResumeflowSaver(where) as saver:
        tup = saver.get_tuple({"configurable": {"thread_id": "w", "checkpoint_ns": ""}})
    got = sorted((task, value["task"]) for task, channel, value in tup.pending_writes)
    assert got == sorted((f"task-{t}", t) for t in range(20))


# -- contract and bad input ------------------------------------------------------------------


def test_importing_resumeflow_does_not_import_langgraph():
    out = python("import sys, resumeflow; print(any(m.startswith('langgraph') for m in sys.modules))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_bad_input_gets_typed_errors_naming_the_field(tmp_path):
    with pytest.raises(rf.StoreError, match="directory"):
        ResumeflowSaver(tmp_path)
    foreign = tmp_path / "foreign.db"
    foreign.write_text("not a database at all, just text" * 100)
    with pytest.raises(rf.StoreError):
        ResumeflowSaver(foreign)
    assert foreign.read_text().startswith("not a database")  # left untouched
    with ResumeflowSaver(tmp_path / "lg.db") as saver:
        with pytest.raises(rf.InvalidArgument, match="thread_id"):
            saver.put({"configurable": {}}, empty_checkpoint(), {}, {})
        with pytest.raises(rf.InvalidArgument, match="checkpoint_id"):
            saver.put_writes({"configurable": {"thread_id": "t"}}, [("x", 1)], "task")
        with pytest.raises(rf.InvalidArgument, match="strategy"):
            saver.prune(["t"], strategy="newest")
        with pytest.raises(rf.InvalidArgument, match="durability"):
            ResumeflowSaver(tmp_path / "other.db", durability="fast")
