"""Reliability under real faults: racing recoverers, a frozen (SIGSTOPped) worker, durability
modes under kill -9, heartbeats, a full store and a read-only store."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import textwrap
import time

import pytest
import resumeflow as rf
from conftest import python, spawn, wait_for
from rf_workflows import counts, ledger_entries


def _crash_runs(db: str, ledger, run_ids: list[str]) -> None:
    """Starts runs of `chain` in a child and SIGKILLs it while every run is inside node b."""
    child = spawn(
        textwrap.dedent(f"""
            import resumeflow as rf
            from rf_workflows import chain
            with rf.Engine({db!r}) as e:
                runs = [e.start(chain, {{"x": i}}, run_id=r) for i, r in enumerate({run_ids!r})]
                for r in runs:
                    r.wait()
        """),
        env_extra={"RF_SLOW_B": "30"},
    )
    try:
        wait_for(lambda: sum(1 for n, _ in ledger_entries(ledger) if n == "b") == len(run_ids))
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)


def test_four_processes_recover_at_once_each_run_resumed_by_exactly_one(db, ledger):
    run_ids = [f"r{i}" for i in range(8)]
    _crash_runs(db, ledger, run_ids)
    code = textwrap.dedent(f"""
        import json, sys, time, resumeflow as rf
        from rf_workflows import chain
        go = float(__import__("os").environ["GO"])
        with rf.Engine({db!r}) as e:
            while time.time() < go:
                time.sleep(0.001)
            runs = e.recover([chain])
            done = [r.wait() for r in runs]
            print(json.dumps([s.run_id for s in done if s.status == "completed"]))
    """)
    go = time.time() + 2.0
    procs = [spawn(code, env_extra={"RF_SLOW_B": "0.2", "GO": repr(go)}) for _ in range(4)]
    resumed: list[list[str]] = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        resumed.append(json.loads(out))
    flat = [r for rs in resumed for r in rs]
    assert sorted(flat) == sorted(run_ids), f"each run resumed by exactly one process: {resumed}"
    with rf.Engine(db) as engine:
        for i, r in enumerate(run_ids):
            state = engine.get_current_state(r)
            assert state.status == "completed"
            assert state.values == {"a": i + 1, "b": (i + 1) * 10, "c": (i + 1) * 10 + 5}
        assert engine.check_integrity() == "ok"
    c = counts(ledger)
    assert c["a"] == 8 and c["c"] == 8, "completed nodes never ran again; c ran once per run"
    assert c["b"] == 16, "in-flight b ran once before the crash and exactly once after"


def test_frozen_worker_is_fenced_after_its_lease_expires(db, ledger):
    worker = spawn(
        textwrap.dedent(f"""
            import resumeflow as rf
            from rf_workflows import chain
            with rf.Engine({db!r}, lease_seconds=1.0) as e:
                try:
                    e.run(chain, {{"x": 1}}, run_id="frozen")
                    print("finished")
                except rf.LeaseLost as err:
                    print("fenced")
        """),
        env_extra={"RF_SLOW_B": "2.0"},
    )
    wait_for(lambda: any(n == "b" for n, _ in ledger_entries(ledger)))
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        time.sleep(1.6)  # past the lease
        other = python(
            textwrap.dedent(f"""
                import resumeflow as rf
                from rf_workflows import chain
                with rf.Engine({db!r}) as e:
                    [run] = e.recover([chain])
                    print(run.wait().status)
            """),
            env_extra={"RF_SLOW_B": "0"},
        )
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip() == "completed"
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert out.strip() == "fenced", "the stale worker could not write and stopped cleanly"
    with rf.Engine(db) as engine:
        state = engine.get_current_state("frozen")
        assert state.status == "completed"
        assert state.values == {"a": 2, "b": 20, "c": 25}
        assert state.nodes["b"].attempt == 2, "the result committed is the new worker's"
        completions = [e for e in engine.events("frozen") if e[2] == "NodeCompleted"]
        assert [e[3] for e in completions] == ["a", "b", "c"], "each node committed once"
    assert counts(ledger) == {"a": 1, "b": 2, "c": 1}


def test_sync_acknowledged_run_survives_immediate_kill(db, ledger):
    proc = python(textwrap.dedent(f"""
        import os, signal, resumeflow as rf
        from rf_workflows import chain
        e = rf.Engine({db!r})
        state = e.run(chain, {{"x": 5}}, run_id="acked")
        print("acked", state.status, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """))
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split() == ["acked", "completed"]
    with rf.Engine(db) as engine:
        state = engine.get_current_state("acked")
        assert state.status == "completed"
        assert state.values == {"a": 6, "b": 60, "c": 65}
        assert engine.check_integrity() == "ok"


@pytest.mark.parametrize("durability", ["batched", "off"])
def test_weaker_durability_loses_no_more_than_documented(db, ledger, durability):
    wf_code = textwrap.dedent(f"""
        import os, time, resumeflow as rf
        from rf_workflows import make_chain
        wf = make_chain(30, "long")
        with rf.Engine({db!r}, durability={durability!r}) as e:
            if os.environ.get("MODE") == "recover":
                [run] = e.recover([wf])
                print(run.wait().values["s29"])
            else:
                e.run(wf, run_id="weak")
    """)
    child = spawn(wf_code, env_extra={"RF_STEP_S": "0.05"})
    wait_for(lambda: len(ledger_entries(ledger)) >= 12)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    with rf.Engine(db) as engine:
        state = engine.get_current_state("weak")
        assert engine.check_integrity() == "ok"
    assert state.status == "running", "killed mid-run"
    completed = state.completed
    if durability == "off":
        assert completed == [], "off writes nothing until the run stops"
    else:
        # Commits stay in order: what is committed is a prefix of the chain.
        assert completed == [f"s{i}" for i in range(len(completed))]
    started_before = len(ledger_entries(ledger))
    done = python(wf_code, env_extra={"MODE": "recover"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sum(range(1, 31)))
    rerun = [n for n, _ in ledger_entries(ledger)[started_before:]]
    assert not set(rerun) & set(completed), "nodes committed before the kill never ran again"


def test_heartbeats_keep_the_lease_and_silence_lets_another_worker_recover(db, ledger):
    code = textwrap.dedent(f"""
        import os, time, resumeflow as rf
        from rf_workflows import record
        wf = rf.Workflow("beats")

        @wf.node(heartbeat_timeout=0.5, retry=False)
        def long(ctx: rf.NodeContext):
            record("long", ctx.attempt)
            for _ in range(int(float(os.environ["WORK_S"]) / 0.1)):
                time.sleep(0.1)
                if os.environ.get("BEAT") == "1":
                    ctx.heartbeat()
            return ctx.attempt

        with rf.Engine({db!r}, lease_seconds=1.0) as e:
            if os.environ.get("MODE") == "recover":
                print([r.wait().values["long"] for r in e.recover([wf])])
            else:
                print(e.run(wf, run_id=os.environ["RUN"]).values["long"])
    """)
    # A node that heartbeats keeps its lease well past lease_seconds: nobody can take it.
    beating = spawn(code, env_extra={"WORK_S": "2.5", "BEAT": "1", "RUN": "beating"})
    wait_for(lambda: any(n == "long" for n, _ in ledger_entries(ledger)))
    time.sleep(1.5)
    probe = python(code, env_extra={"MODE": "recover", "WORK_S": "0"})
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]", "a heart-beating run is not stale"
    out, err = beating.communicate(timeout=60)
    assert beating.returncode == 0 and out.strip() == "1", err

    # A hung node (no heartbeats) lets the lease expire; another worker recovers the run.
    os.truncate(ledger, 0)
    hung = spawn(code, env_extra={"WORK_S": "60", "BEAT": "0", "RUN": "hung"})
    try:
        wait_for(lambda: any(n == "long" for n, _ in ledger_entries(ledger)))
        time.sleep(2.5)  # heartbeat timeout 0.5 s + lease 1 s, with margin
        rescue = python(code, env_extra={"MODE": "recover", "WORK_S": "0.2", "BEAT": "1"})
        assert rescue.returncode == 0, rescue.stderr
        assert rescue.stdout.strip() == "[2]", "recovered elsewhere, on attempt 2"
    finally:
        hung.kill()
        hung.communicate(timeout=30)
    with rf.Engine(db) as engine:
        assert engine.get_current_state("hung").status == "completed"


def test_full_store_is_a_typed_error_and_other_runs_stay_intact(db):
    wf = rf.Workflow("big")

    @wf.node
    def blob(size: int):
        return b"x" * size

    with rf.Engine(db, max_store_bytes=2_000_000, lease_seconds=0.5) as engine:
        engine.run(wf, {"size": 1000}, run_id="small")
        with pytest.raises(rf.StoreError) as info:
            engine.run(wf, {"size": 5_000_000}, run_id="huge")
        assert "full" in str(info.value) and db in str(info.value)
        assert engine.get_current_state("small").values == {"blob": b"x" * 1000}
        assert engine.check_integrity() == "ok"
    time.sleep(0.6)  # the failed worker's lease expires
    with rf.Engine(db) as engine:
        state = engine.resume("huge", wf).wait()
        assert state.status == "completed" and len(state.values["blob"]) == 5_000_000
        assert engine.get_current_state("small").status == "completed"


def test_read_only_store_is_refused_and_untouched(tmp_path):
    db = str(tmp_path / "ro.db")
    wf = rf.Workflow("ro")

    @wf.node
    def one():
        return 1

    with rf.Engine(db) as engine:
        engine.run(wf, run_id="kept")
    digest = hashlib.sha256(open(db, "rb").read()).hexdigest()
    os.chmod(db, 0o444)
    immutable = False
    if os.geteuid() == 0:
        # Root ignores file modes; the immutable attribute binds root too.
        import subprocess

        if subprocess.run(["chattr", "+i", db], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr: cannot make a file read-only here")
        immutable = True
    try:
        with pytest.raises(rf.StoreError, match="read-only") as info:
            rf.Engine(db)
        assert "ro.db" in str(info.value)
    finally:
        if immutable:
            import subprocess

            subprocess.run(["chattr", "-i", db], check=True)
        os.chmod(db, 0o644)
    assert hashlib.sha256(open(db, "rb").read()).hexdigest() == digest


def test_cleanup_during_a_live_run_is_safe(db):
    wf = rf.Workflow("live")
    for i in range(12):
        def step(prev=None, _i=i):
            time.sleep(0.02)
            return (prev or 0) + _i

        wf.node(step, name=f"n{i}", inputs={"prev": f"n{i - 1}"} if i else {})
    with rf.Engine(db) as engine:
        run = engine.start(wf, run_id="live")
        deleted = 0
        while not run.done():
            deleted += engine.cleanup("live", keep_last=1)
            time.sleep(0.01)
        state = run.wait()
        assert state.status == "completed" and state.values["n11"] == sum(range(12))
        assert deleted >= 1
        history = engine.history("live")
        assert history[0].completed == [f"n{i}" for i in range(12)]
        assert engine.check_integrity() == "ok"


def test_newer_schema_and_custom_base_exceptions(db):
    with rf.Engine(db):
        pass
    bump = python(f"import sqlite3; c = sqlite3.connect({db!r}); c.execute('pragma user_version=999'); c.commit()")
    assert bump.returncode == 0, bump.stderr
    with pytest.raises(rf.StoreError, match="newer"):
        rf.Engine(db)

    class Abort(BaseException):
        pass

    wf = rf.Workflow("abort")

    @wf.node(retry=False)
    def aborts():
        raise Abort("stop everything")

    with rf.Engine(str(db) + ".2") as engine:
        with pytest.raises(rf.RunFailed) as info:
            engine.run(wf)
    assert "Abort: stop everything" in info.value.state.nodes["aborts"].error
