"""``resumeflow submit`` and ``resumeflow worker``, through real subprocesses: a pool of
workers on one store runs every queued run exactly once, a SIGTERM hands a run back, a second
signal exits at once and leaves the run to any other worker, bad usage stores nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import TESTS, wait_for
from rf_workflows import ledger_entries

# Every test taking `db` runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_stores

WORKFLOW = "rf_queue_workflows:steps"


def cli(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "resumeflow", *args], capture_output=True, text=True,
        cwd=TESTS, env=env, timeout=timeout,
    )


def worker(db: str, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "resumeflow", "worker", WORKFLOW, "--db", db, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=TESTS, env=env,
    )


def finish(child: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
    try:
        return child.communicate(timeout=timeout)
    except BaseException:
        child.kill()
        child.communicate()
        raise


def as_json(proc: subprocess.CompletedProcess[str]):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def executions(ledger: Path) -> Counter[str]:
    """``run/node`` -> how many times it started."""
    return Counter(node for node, _ in ledger_entries(ledger))


def submit(db: str, run_id: str, *extra: str) -> dict:
    return as_json(cli("submit", WORKFLOW, "--db", db, "--run-id", run_id, "--json", *extra))


def run_ids(db: str) -> list[str]:
    return [r["run_id"] for r in as_json(cli("runs", "--db", db, "--json"))]


def test_two_workers_run_ten_submitted_runs_each_exactly_once(db, ledger):
    for i in range(10):
        queued = submit(db, f"q{i}", "--input", f"x={i}", "--label", "batch=ten")
        assert queued["status"] == "queued" and queued["completed"] == []
        assert queued["labels"] == {"batch": "ten", "resumeflow.workflow": WORKFLOW}
    assert executions(ledger) == Counter(), "submit executes nothing"

    # Two runs at a time each, every node 0.2 s: one worker alone would need ~3 s, so both work.
    slow = {"RF_STEP_S": "0.2"}
    capped = worker(db, "--max-runs", "6", "--idle-timeout", "3", "--max-concurrency", "2",
                    "--json", env_extra=slow)
    idle = worker(db, "--idle-timeout", "3", "--max-concurrency", "2", "--json", env_extra=slow)
    outs = [finish(capped), finish(idle)]
    assert capped.returncode == 0 and idle.returncode == 0, [err for _, err in outs]
    finished = [json.loads(out) for out, _ in outs]
    assert finished[0]["finished"] <= 6, "--max-runs caps what a worker takes"
    assert finished[0]["finished"] + finished[1]["finished"] == 10
    assert min(f["finished"] for f in finished) >= 1, f"one worker did everything: {finished}"

    ran = executions(ledger)
    expected = {f"q{i}/{node}": 1 for i in range(10) for node in ("first", "second", "third")}
    assert ran == Counter(expected), "every node of every run executed exactly once"
    assert all(attempt == 1 for _, attempt in ledger_entries(ledger))
    runs = as_json(cli("runs", "--db", db, "--json"))
    assert sorted(r["run_id"] for r in runs) == sorted(f"q{i}" for i in range(10))
    for r in runs:
        i = int(r["run_id"][1:])
        assert r["status"] == "completed" and r["values"]["third"] == (i + 1) * 10 + 5


def test_worker_prints_a_line_per_run_with_counts(db, ledger):
    submit(db, "w0")
    submit(db, "w1")
    done = cli("worker", WORKFLOW, "--db", db, "--idle-timeout", "0.5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "finished 2 run(s)"
    err = done.stderr
    assert "serving queued_steps (rf_queue_workflows:steps)" in err
    assert "run w0 started (queued_steps)" in err and "run w1 started (queued_steps)" in err
    assert "run w0 completed (3/3 nodes)" in err and "run w1 completed (3/3 nodes)" in err
    assert "stopped · 0 running, 2 completed" in err
    assert "Traceback" not in err


def _wait_until_started(child: subprocess.Popen[str], ledger: Path, entry: str, times: int = 1) -> None:
    def started() -> bool:
        assert child.poll() is None, f"worker exited early: {child.communicate()}"
        return executions(ledger)[entry] >= times

    try:
        wait_for(started, timeout=60)
    except BaseException:
        child.kill()
        child.communicate()
        raise


def test_sigterm_hands_the_run_back_and_another_worker_finishes_it(db, ledger):
    submit(db, "slow1")
    child = worker(db, "--json", env_extra={"RF_SLOW_SECOND": "2"})
    _wait_until_started(child, ledger, "slow1/second")
    sent = time.monotonic()
    child.send_signal(signal.SIGTERM)
    out, err = finish(child, timeout=30)
    elapsed = time.monotonic() - sent
    assert child.returncode == 0, err
    assert elapsed < 10, f"took {elapsed:.1f} s to stop"
    assert json.loads(out) == {"finished": 0}
    assert "SIGTERM: stopping" in err and "Traceback" not in err

    state = as_json(cli("status", "slow1", "--db", db, "--json"))
    assert state["status"] == "queued", "the run went back to the queue"
    assert state["completed"] == ["first", "second"], "the in-flight node finished first"

    other = cli("worker", WORKFLOW, "--db", db, "--max-runs", "1", "--idle-timeout", "30", "--json")
    assert as_json(other) == {"finished": 1}
    state = as_json(cli("status", "slow1", "--db", db, "--json"))
    assert state["status"] == "completed" and state["values"]["third"] == 15
    assert executions(ledger) == Counter({"slow1/first": 1, "slow1/second": 1, "slow1/third": 1}), \
        "nodes completed before the SIGTERM were not run again"


def test_second_signal_exits_at_once_and_another_worker_takes_the_run_over(db, ledger):
    submit(db, "stuck")
    child = worker(db, env_extra={"RF_SLOW_SECOND": "60"})
    _wait_until_started(child, ledger, "stuck/second")
    child.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert child.poll() is None, "the first Ctrl-C waits for the in-flight node"
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    _, err = finish(child, timeout=30)
    assert time.monotonic() - sent < 5
    assert child.returncode == 130, err
    assert "press Ctrl-C again" in err and "Ctrl-C again: exiting now" in err
    assert "Traceback" not in err

    # The dead worker's lease is taken over at once (its process on this host is gone).
    other = cli("worker", WORKFLOW, "--db", db, "--max-runs", "1", "--idle-timeout", "30", "--json")
    assert as_json(other) == {"finished": 1}
    state = as_json(cli("status", "stuck", "--db", db, "--json"))
    assert state["status"] == "completed"
    assert executions(ledger) == Counter({"stuck/first": 1, "stuck/second": 2, "stuck/third": 1}), \
        "only the node in flight at the exit ran again"


def test_submitted_run_resumes_with_the_stored_reference(db, ledger):
    submit(db, "later", "--input", "x=2")
    done = as_json(cli("resume", "later", "--db", db, "--json"))
    assert done["status"] == "completed" and done["values"]["third"] == 35


def test_submit_bad_usage_exits_2_and_stores_nothing(tmp_path, db, ledger):
    fresh = str(tmp_path / "fresh.db")
    unknown = cli("submit", WORKFLOW, "--db", fresh, "--input", "nope=1")
    assert unknown.returncode == 2 and "'nope'" in unknown.stderr and "known inputs: 'x'" in unknown.stderr
    assert not os.path.exists(fresh), "a refused submit creates no store"

    submit(db, "keep")
    refused = {
        "unknown input": (["--input", "nope=1"], "unknown run input 'nope'"),
        "not k=v": (["--input", "x"], "--input expects k=v"),
        "bad run id": (["--run-id", "bad id"], "run_id"),
        "duplicate run id": (["--run-id", "keep"], '"keep" already exists'),
        "reserved label": (["--label", "resumeflow.workflow=x"], "reserved"),
        "bad label": (["--label", "novalue"], "--label expects k=v"),
    }
    for why, (extra, message) in refused.items():
        proc = cli("submit", WORKFLOW, "--db", db, *extra)
        assert proc.returncode == 2, (why, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (why, proc.stderr)
        assert proc.stdout == "", why
    cyclic = cli("submit", "rf_queue_workflows:cyclic", "--db", db)
    assert cyclic.returncode == 2 and "cycle" in cyclic.stderr and "Traceback" not in cyclic.stderr
    missing = cli("submit", "no_such_module:wf", "--db", db)
    assert missing.returncode == 2 and "no_such_module" in missing.stderr
    assert run_ids(db) == ["keep"], "nothing new was stored"


def test_worker_bad_usage_exits_2_and_creates_no_store(tmp_path):
    fresh = str(tmp_path / "fresh.db")
    for extra, message in (
        (["--max-runs", "0"], "--max-runs must be at least 1"),
        (["--idle-timeout", "-1"], "--idle-timeout must be"),
        (["--idle-timeout", "nan"], "--idle-timeout must be"),
        (["--max-concurrency", "0"], "max_concurrency"),
    ):
        proc = cli("worker", WORKFLOW, "--db", fresh, *extra)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
        assert "Traceback" not in proc.stderr
    for refs, message in (
        (["no_such_module:wf"], "no_such_module"),
        (["rf_queue_workflows:cyclic"], "cycle"),
        ([WORKFLOW, "rf_queue_workflows:nothing"], "not a resumeflow.Workflow"),
    ):
        proc = cli("worker", *refs, "--db", fresh)
        assert proc.returncode == 2 and message in proc.stderr, (refs, proc.stderr)
    assert not os.path.exists(fresh)
