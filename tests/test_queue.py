"""The queue: runs submitted by one process, claimed exactly once by a pool of worker
processes, controlled (interrupt, cancel) and awaited from processes that do not run them."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time

import pytest
import resumeflow as rf
from conftest import spawn, wait_for
from rf_pool_workflows import executions, expected, five, orphan

# Every test taking `db` runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_stores


def worker(db: str, *, idle: float = 3.0, env: dict[str, str] | None = None, lease: float = 30.0):
    """A worker process serving ``five`` until the queue stays empty for ``idle`` seconds;
    prints the number of runs it finished."""
    code = textwrap.dedent(f"""
        import resumeflow as rf
        from rf_pool_workflows import five
        with rf.Engine({db!r}, lease_seconds={lease}) as e:
            print("finished", e.work([five], idle_timeout={idle}), flush=True)
    """)
    return spawn(code, env_extra=env)


def owners(engine: rf.Engine, run_id: str) -> set[str]:
    """The lease owners that ever took ``run_id``."""
    return {e["data"]["owner"] for e in engine.events(run_id, after_seq=0, limit=10_000) if e["kind"] == "LeaseAcquired"}


def started(ledger, key: str) -> bool:
    return ledger.exists() and key in executions(ledger)


def test_four_workers_run_300_queued_runs_each_node_exactly_once(db, ledger):
    with rf.Engine(db) as engine:
        runs = [engine.submit(five, {"x": i}, run_id=f"q{i:03d}") for i in range(300)]
        assert {r.status for r in runs} == {"queued"}
        assert len(engine.list_runs("queued")) == 300
    workers = [worker(db) for _ in range(4)]
    outs = [w.communicate(timeout=300) for w in workers]
    for w, (_out, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err
    finished = [int(out.split()[-1]) for out, _ in outs]
    assert sum(finished) == 300, finished
    assert sum(1 for n in finished if n > 0) >= 2, f"the pool shared the queue: {finished}"
    ran = executions(ledger)
    assert set(ran.values()) == {1}, "every node of every run executed exactly once"
    assert len(ran) == 300 * 5
    with rf.Engine(db) as engine:
        for i, r in enumerate(runs):
            state = engine.get_current_state(r.id)
            assert state.status == "completed", (r.id, state.status)
            assert state.values["e"] == expected(i)
            assert len(owners(engine, r.id)) == 1, f"{r.id} claimed by one worker"
        assert engine.check_integrity() == "ok"


def test_a_killed_worker_is_recovered_by_another_without_rerunning_completed_nodes(db, ledger):
    with rf.Engine(db) as engine:
        run = engine.submit(five, {"x": 4}, run_id="killed")
    first = worker(db, env={"RF_SLOW_C": "60"})
    try:
        wait_for(lambda: started(ledger, "killed/c"), timeout=60)
        with rf.Engine(db) as watcher:  # d committed (not only started) before the kill
            wait_for(lambda: watcher.get_current_state("killed").nodes["d"].status == "completed", timeout=30)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=30)
    second = worker(db, idle=1.0)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    with rf.Engine(db) as engine:
        state = engine.run_handle("killed").wait(timeout=30)
        assert state.status == "completed"
        assert state.values["e"] == expected(4)
        assert len(owners(engine, run.id)) == 2
    ran = executions(ledger)
    assert ran["killed/a"] == ran["killed/b"] == ran["killed/d"] == ran["killed/e"] == 1
    assert ran["killed/c"] == 2, "only the in-flight node ran again"


def test_cancel_from_another_process_ends_the_run_within_seconds(db, ledger):
    with rf.Engine(db) as engine:
        run = engine.submit(five, {"x": 1}, run_id="cancel-me")
        busy = worker(db, idle=1.0, env={"RF_SLOW_C": "60"})
        try:
            wait_for(lambda: started(ledger, "cancel-me/c"), timeout=60)
            t0 = time.monotonic()
            run.cancel()
            state = run.wait(timeout=10)
            took = time.monotonic() - t0
        finally:
            out, err = busy.communicate(timeout=60)
        assert state.status == "cancelled"
        assert took < 5.0, took
        assert "e" not in state.values
        assert busy.returncode == 0, err
        # Cancelling an ended run changes nothing.
        run.cancel()
        assert engine.get_current_state("cancel-me").status == "cancelled"


def test_interrupt_from_another_process_pauses_after_in_flight_nodes_then_resume_completes(db, ledger):
    with rf.Engine(db) as engine:
        run = engine.submit(five, {"x": 2}, run_id="pause-me")
        busy = worker(db, idle=1.0, env={"RF_SLOW_C": "1.5"})
        try:
            wait_for(lambda: started(ledger, "pause-me/c"), timeout=60)
            engine.run_handle("pause-me").interrupt()
            state = run.wait(timeout=20)
        finally:
            busy.communicate(timeout=60)
        assert state.status == "paused"
        assert state.nodes["c"].status == "completed", "the in-flight node finished"
        assert state.nodes["e"].status == "pending"
        resumed = engine.resume("pause-me", five).wait(timeout=30)
        assert resumed.status == "completed" and resumed.values["e"] == expected(2)
    assert executions(ledger)["pause-me/c"] == 1


def test_wait_on_a_run_nobody_executes_times_out(db):
    with rf.Engine(db) as engine:
        run = engine.submit(five, {"x": 3})
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="queued"):
            run.wait(timeout=0.5)
        assert time.monotonic() - t0 < 5
        assert run.status == "queued" and not run.done()


def test_a_run_whose_workflow_no_worker_serves_stays_queued(db):
    with rf.Engine(db) as engine:
        lonely = engine.submit(orphan, run_id="lonely", labels={"team": "ml"})
        served = engine.submit(five, {"x": 5}, run_id="served")
        assert engine.work([five], idle_timeout=0.3) == 1
        assert engine.get_current_state("served").status == "completed"
        queued = engine.list_runs(status="queued")
        assert [s.run_id for s in queued] == ["lonely"]
        assert queued[0].labels == {"team": "ml"}
        assert [s.run_id for s in engine.list_runs(workflow="orphan", labels={"team": "ml"})] == ["lonely"]
        assert lonely.status == "queued" and served.status == "completed"


def test_close_from_another_thread_stops_work_and_requeues_its_runs(db, ledger, monkeypatch):
    monkeypatch.setenv("RF_SLOW_C", "1.0")
    engine = rf.Engine(db)
    engine.submit(five, {"x": 7}, run_id="handed-back")
    got: list[int] = []
    thread = threading.Thread(target=lambda: got.append(engine.work([five])))
    thread.start()
    wait_for(lambda: started(ledger, "handed-back/c"), timeout=60)
    engine.close()
    thread.join(timeout=30)
    assert not thread.is_alive() and got == [0]
    with rf.Engine(db) as again:
        state = again.get_current_state("handed-back")
        assert state.status == "queued", "a stopping worker hands its runs back"
        assert state.nodes["c"].status == "completed", "in-flight nodes finished first"
        assert again.work([five], max_runs=1) == 1
        assert again.get_current_state("handed-back").values["e"] == expected(7)
    ran = executions(ledger)
    assert ran["handed-back/c"] == 1 and ran["handed-back/a"] == 1


def test_bad_submissions_are_typed_errors_and_store_nothing(db):
    broken = rf.Workflow("broken")

    @broken.node
    def needs(required_input):
        return required_input

    with rf.Engine(db) as engine:
        engine.submit(five, {"x": 1}, run_id="taken")
        with pytest.raises(rf.InvalidArgument, match="run_id"):
            engine.submit(five, {"x": 1}, run_id="no spaces/allowed")
        with pytest.raises(rf.RunExists, match="taken"):
            engine.submit(five, {"x": 1}, run_id="taken")
        with pytest.raises(rf.GraphError, match="required_input"):
            engine.submit(broken)
        with pytest.raises(rf.GraphError, match="nope"):
            engine.submit(five, {"nope": 1})
        assert [s.run_id for s in engine.list_runs()] == ["taken"]
        with pytest.raises(rf.RunNotFound):
            engine.run_handle("missing")


def test_events_after_a_cursor_are_typed_and_complete(db):
    with rf.Engine(db) as engine:
        run = engine.submit(five, {"x": 1}, run_id="ev")
        engine.work([five], max_runs=1)
        run.wait(timeout=30)
        everything = engine.events("ev", after_seq=0, limit=10_000)
        assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
        assert everything[1]["kind"] == "RunQueued"
        page, cursor = [], 0
        while batch := engine.events("ev", after_seq=cursor, limit=4):
            page += batch
            cursor = batch[-1]["seq"]
        assert page == everything
        done = [e for e in everything if e["kind"] == "NodeCompleted"]
        assert {e["node"] for e in done} == {"a", "b", "c", "d", "e"}
        assert len(done[0]["data"]["value"]["hash"]) == 64
