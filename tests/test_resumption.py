"""The nine resumption scenarios at the Python level, through the public API."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import resumeflow as rf
from conftest import python, spawn
from rf_workflows import FAST, chain, counts, ledger_entries, make_chain

# Every test taking `db` runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_stores


def test_basic_resumption(db, ledger):
    with rf.Engine(db) as engine:
        state = engine.execute_until(chain, "b", {"x": 1}, run_id="r1")
        assert state.status == "paused"
        assert state.completed == ["a", "b"]
        assert state.pending == ["c"]
        assert state.values == {"a": 2, "b": 20}
        assert counts(ledger) == {"a": 1, "b": 1}
        done = engine.resume("r1", chain).wait()
        assert done.status == "completed"
        assert done.values == {"a": 2, "b": 20, "c": 25}
        assert counts(ledger) == {"a": 1, "b": 1, "c": 1}, "resume ran only c"


def test_checkpointer_integration(db, ledger):
    # Process 1 runs until b and exits; process 2 finds the latest checkpoint by id, sees the
    # same state, and completes the run.
    first = python(textwrap.dedent(f"""
        import json, resumeflow as rf
        from rf_workflows import chain
        with rf.Engine({db!r}) as e:
            s = e.execute_until(chain, "b", {{"x": 3}}, run_id="p")
            print(json.dumps({{"status": s.status, "cp": s.checkpoint_id, "values": s.values}}))
    """))
    assert first.returncode == 0, first.stderr
    before = json.loads(first.stdout)
    assert before["status"] == "paused"
    second = python(textwrap.dedent(f"""
        import json, resumeflow as rf
        from rf_workflows import chain
        with rf.Engine({db!r}) as e:
            s = e.get_current_state("p")
            latest = e.history("p")[0]
            done = e.resume("p", chain).wait()
            print(json.dumps({{"status": s.status, "cp": s.checkpoint_id, "values": s.values,
                               "latest": latest.checkpoint_id, "latest_completed": latest.completed,
                               "final": done.status, "final_values": done.values}}))
    """))
    assert second.returncode == 0, second.stderr
    after = json.loads(second.stdout)
    assert after["latest"] == before["cp"], "latest checkpoint found by id"
    assert {k: after[k] for k in ("status", "cp", "values")} == before, "same state in a new process"
    assert after["latest_completed"] == ["a", "b"]
    assert after["final"] == "completed"
    assert after["final_values"] == {"a": 4, "b": 40, "c": 45}
    assert counts(ledger) == {"a": 1, "b": 1, "c": 1}


def test_partial_results(db, ledger):
    wf = rf.Workflow("partial")

    @wf.node
    def src():
        return 1

    @wf.node(retry=FAST)
    def broken(src):
        raise ValueError(f"bad row {src}")

    @wf.node
    def after_broken(broken):
        return broken

    @wf.node
    def side(src):
        return src + 100

    with rf.Engine(db) as engine:
        with pytest.raises(rf.RunFailed) as info:
            engine.run(wf, run_id="pr")
        state = info.value.state
        assert state.status == "failed"
        assert engine.get_partial_results("pr") == {"src": 1, "side": 101}
        node = state.nodes["broken"]
        assert node.status == "failed"
        assert node.error == "ValueError: bad row 1"
        assert node.retryable is False
        assert node.attempt == 1
        assert "broken" not in state.values
        assert state.nodes["after_broken"].status == "pending"
        assert "broken" in state.error


def test_resumption_cleanup(db, ledger):
    wf = make_chain(4)
    with rf.Engine(db) as engine:
        engine.run(wf, run_id="c")
        assert len(engine.history("c")) == 4
        before = engine.get_current_state("c")
        with pytest.raises(ValueError):
            engine.cleanup("c", keep_last=0)
        assert engine.cleanup("c", keep_last=1) == 3
        history = engine.history("c")
        assert len(history) == 1
        assert history[0].completed == ["s0", "s1", "s2", "s3"]
        after = engine.get_current_state("c")
        assert after.values == before.values and after.status == before.status
        assert after.checkpoint_id == before.checkpoint_id
        # Still resumable: re-run the last node.
        done = engine.resume("c", wf, rerun=["s3"]).wait()
        assert done.status == "completed"
        assert done.values == before.values
        assert counts(ledger)["s3"] == 2 and counts(ledger)["s2"] == 1


def test_resumption_history(db, ledger):
    k = 5
    wf = make_chain(k)
    with rf.Engine(db) as engine:
        engine.execute_until(wf, "s1", run_id="h")
        assert len(engine.history("h")) == 2
        engine.resume("h", wf).wait()
        history = engine.history("h")
        assert len(history) == k
        for i, cp in enumerate(history):
            assert cp.run_id == "h"
            assert len(cp.completed) == k - i, "newest first"
            if i + 1 < k:
                assert cp.parent_id == history[i + 1].checkpoint_id
                assert cp.checkpoint_id > history[i + 1].checkpoint_id
            else:
                assert cp.parent_id is None
        assert engine.get_current_state("h").checkpoint_id == history[0].checkpoint_id


def test_error_recovery(db, ledger):
    wf = rf.Workflow("recovery")
    fail_times = {"flaky": 2}
    broken = {"on": True}

    @wf.node(retry=FAST)
    def flaky(ctx: rf.NodeContext):
        if fail_times["flaky"] > 0:
            fail_times["flaky"] -= 1
            raise ConnectionError("network blip")
        return ctx.attempt

    @wf.node(retry=FAST)
    def strict(flaky):
        if broken["on"]:
            raise KeyError("missing column")
        return flaky * 2

    @wf.node
    def final(strict):
        return strict + 1

    with rf.Engine(db) as engine:
        with pytest.raises(rf.RunFailed):
            engine.run(wf, run_id="e")
        state = engine.get_current_state("e")
        assert state.nodes["flaky"].status == "completed"
        assert state.nodes["flaky"].attempt == 3, "two retryable failures then success"
        assert state.values["flaky"] == 3
        assert state.nodes["strict"].attempt == 1, "non-retryable fails on attempt 1"
        assert state.nodes["strict"].retryable is False
        started = [e for e in engine.events("e") if e[2] == "NodeStarted" and e[3] == "flaky"]
        assert len(started) == 3, "three durable attempts"
        broken["on"] = False
        done = engine.resume("e", wf).wait()
        assert done.status == "completed"
        assert done.values == {"flaky": 3, "strict": 6, "final": 7}
        assert done.nodes["flaky"].attempt == 3, "flaky did not run again"
        assert done.nodes["strict"].attempt == 2


def test_concurrent_resumption(db, ledger):
    with rf.Engine(db) as engine:
        engine.execute_until(chain, "a", {"x": 1}, run_id="race")
    code = textwrap.dedent(f"""
        import json, sys, time, resumeflow as rf
        from rf_workflows import chain
        go = float(sys.argv[-1]) if len(sys.argv) > 1 else 0
        with rf.Engine({db!r}) as e:
            while time.time() < {{go}}:
                time.sleep(0.001)
            try:
                s = e.resume("race", chain).wait()
                print(json.dumps({{"won": True, "status": s.status}}))
            except rf.RunLocked as err:
                print(json.dumps({{"won": False, "error": str(err)}}))
    """)
    import time

    go = time.time() + 1.5
    procs = [spawn(code.replace("{go}", repr(go)), env_extra={"RF_SLOW_B": "1.0"}) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    winners = [o for o in outs if o["won"]]
    assert len(winners) == 1, outs
    assert winners[0]["status"] == "completed"
    loser = [o for o in outs if not o["won"]][0]
    assert "locked" in loser["error"]
    assert counts(ledger) == {"a": 1, "b": 1, "c": 1}, "every node executed exactly once"


@pytest.mark.parametrize("stop", ["a", "b", "c"])
def test_multiple_resumption_points(db, ledger, stop):
    with rf.Engine(db) as engine:
        reference = engine.run(chain, {"x": 7}, run_id="ref").values
        os.truncate(ledger, 0)
        paused = engine.execute_until(chain, stop, {"x": 7}, run_id="r")
        assert paused.status == "paused"
        assert stop in paused.completed
        done = engine.resume("r", chain).wait()
        assert done.status == "completed"
        assert done.values == reference
        assert counts(ledger) == {"a": 1, "b": 1, "c": 1}
        assert all(attempt == 1 for _, attempt in ledger_entries(ledger))


def test_resumption_with_modification(db, ledger):
    with rf.Engine(db) as engine:
        engine.execute_until(chain, "b", {"x": 1}, run_id="m")
        done = engine.resume("m", chain, updates={"b": 100}).wait()
        assert done.status == "completed"
        assert done.values["b"] == 100
        assert done.values["c"] == 105, "c sees the new value"
        assert counts(ledger) == {"a": 1, "b": 1, "c": 1}
        history = engine.history("m")
        assert any(cp.kind == "modified" for cp in history), "the modification is in history"
        modified = next(cp for cp in history if cp.kind == "modified")
        assert "b" in modified.completed and "c" not in modified.completed
