"""A child process running a workflow is SIGKILLed mid-node; a new process recovers it."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time

import pytest
import resumeflow as rf
from conftest import chain_child, python, spawn, wait_for
from rf_workflows import chain, ledger_entries

# Every test taking `db` runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_stores


def test_kill_mid_node_then_recover_in_a_new_process(db, ledger):
    child = chain_child(db, ledger, "crash", x=2, slow_b=30)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL

    with rf.Engine(db) as engine:
        crashed = engine.get_current_state("crash")
    assert crashed.status == "running"
    assert crashed.nodes["a"].status == "completed"
    assert crashed.nodes["b"].status == "running" and crashed.nodes["b"].attempt == 1

    recovered = python(textwrap.dedent(f"""
        import json, resumeflow as rf
        from rf_workflows import chain
        with rf.Engine({db!r}) as e:
            runs = e.recover([chain])
            states = [r.wait() for r in runs]
            print(json.dumps([{{"id": s.run_id, "status": s.status, "values": s.values,
                                "attempts": {{k: n.attempt for k, n in s.nodes.items()}}}} for s in states]))
    """))
    assert recovered.returncode == 0, recovered.stderr
    [state] = json.loads(recovered.stdout)
    assert state["id"] == "crash"
    assert state["status"] == "completed"
    assert state["values"] == {"a": 3, "b": 30, "c": 35}
    entries = ledger_entries(ledger)
    assert [e for e in entries if e[0] == "a"] == [("a", 1)], "a finished before the kill: never again"
    assert [e for e in entries if e[0] == "b"] == [("b", 1), ("b", 2)], "in-flight b re-ran as attempt 2"
    assert [e for e in entries if e[0] == "c"] == [("c", 1)]
    assert state["attempts"] == {"a": 1, "b": 2, "c": 1}
    with rf.Engine(db) as engine:
        assert engine.check_integrity() == "ok"


def test_recover_leaves_live_runs_alone(db, ledger):
    child = chain_child(db, ledger, "alive", x=2, slow_b=3)
    try:
        with rf.Engine(db) as engine:
            assert engine.recover([chain]) == [], "a live worker's run is not taken"
            try:
                engine.resume("alive", chain)
                raise AssertionError("expected RunLocked")
            except rf.RunLocked as e:
                assert "alive" in str(e)
    finally:
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert [n for n, _ in ledger_entries(ledger)] == ["a", "b", "c"]


def test_partial_state_survives_a_kill(db, ledger):
    code = textwrap.dedent(f"""
        import os, time, resumeflow as rf
        from rf_workflows import record
        wf = rf.Workflow("epochs")

        @wf.node
        def train(ctx: rf.NodeContext, epochs: int = 6):
            state = ctx.load_partial_state() or {{"epoch": 0, "seen": []}}
            record("train-from-" + str(state["epoch"]), ctx.attempt)
            for epoch in range(state["epoch"], epochs):
                time.sleep(float(os.environ.get("RF_EPOCH_S", "0")))
                state = {{"epoch": epoch + 1, "seen": state["seen"] + [epoch]}}
                ctx.save_partial_state(state)
            return state["seen"]

        with rf.Engine({db!r}) as e:
            if os.environ.get("RF_MODE") == "recover":
                [run] = e.recover([wf])
                print(run.wait().values["train"])
            else:
                e.run(wf, run_id="ep")
    """)
    child = spawn(code, env_extra={"RF_EPOCH_S": "0.3"})
    with rf.Engine(db) as engine:
        def progressed():
            try:
                saved = engine.get_partial_state("ep", "train")
            except rf.RunNotFound:
                return False
            return saved is not None and saved["epoch"] >= 2
        try:
            wait_for(progressed)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.communicate(timeout=30)
        saved_epoch = engine.get_partial_state("ep", "train")["epoch"]
    done = python(code, env_extra={"RF_MODE": "recover", "RF_EPOCH_S": "0"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(list(range(6)))
    starts = [n for n, _ in ledger_entries(ledger)]
    assert starts == ["train-from-0", f"train-from-{saved_epoch}"], "resumed from the saved epoch"


def test_ctrl_c_interrupts_the_wait_and_the_run_resumes(db, ledger):
    child = spawn(
        textwrap.dedent(f"""
            import resumeflow as rf
            from rf_workflows import chain
            e = rf.Engine({db!r})
            try:
                e.run(chain, {{"x": 1}}, run_id="sigint")
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                e.close()  # in-flight b finishes, then the run pauses
                print("closed", flush=True)
        """),
        env_extra={"RF_SLOW_B": "1.0"},
    )
    wait_for(lambda: any(n == "b" for n, _ in ledger_entries(ledger)))
    t0 = time.monotonic()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert out.split() == ["interrupted", "closed"]
    assert time.monotonic() - t0 < 10
    with rf.Engine(db) as engine:
        state = engine.get_current_state("sigint")
        assert state.status == "paused", "Ctrl-C pauses the run after in-flight nodes"
        assert state.completed == ["a", "b"]
        done = engine.resume("sigint", chain).wait()
    assert done.status == "completed"
    assert [n for n, _ in ledger_entries(ledger)] == ["a", "b", "c"]
