"""The ``resumeflow`` command line, through real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import TESTS


def cli(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "resumeflow", *args], capture_output=True, text=True,
        cwd=TESTS, env=env, timeout=timeout,
    )


def as_json(proc: subprocess.CompletedProcess[str]):
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def test_run_until_resume_status_history_results_runs_cleanup(db, ledger):
    paused = as_json(cli("run", "rf_workflows:chain", "--db", db, "--json", "--input", "x=4",
                         "--run-id", "cli1", "--until", "b"))
    assert paused["status"] == "paused"
    assert paused["values"] == {"a": 5, "b": 50}
    assert paused["completed"] == ["a", "b"]

    done = as_json(cli("resume", "cli1", "--db", db, "--json"))
    assert done["status"] == "completed" and done["values"]["c"] == 55

    status = as_json(cli("status", "cli1", "--db", db, "--json"))
    assert status["run_id"] == "cli1" and status["status"] == "completed"
    assert set(status) >= {"run_id", "workflow", "status", "nodes", "completed", "pending", "values",
                           "checkpoint_id", "error"}

    history = as_json(cli("history", "cli1", "--db", db, "--json"))
    assert [cp["completed"] for cp in history] == [["a", "b", "c"], ["a", "b"], ["a"]]

    results = as_json(cli("results", "cli1", "--db", db, "--json"))
    assert results == {"run_id": "cli1", "values": {"a": 5, "b": 50, "c": 55}}

    runs = as_json(cli("runs", "--db", db, "--json"))
    assert [r["run_id"] for r in runs] == ["cli1"]

    cleaned = as_json(cli("cleanup", "cli1", "--keep-last", "1", "--db", db, "--json"))
    assert cleaned == {"deleted": 2}

    text = cli("status", "cli1", "--db", db)
    assert text.returncode == 0 and "completed" in text.stdout


def test_input_values_parse_as_json_else_string(db, ledger):
    out = as_json(cli("run", "rf_workflows:chain", "--db", db, "--json", "--input", "x=[1]",
                      "--until", "a"))
    assert out["status"] == "failed", "a list + 1 fails inside node a"
    assert "TypeError" in out["nodes"]["a"]["error"]


def test_failed_run_exits_1_and_errors_exit_2(db, tmp_path):
    (tmp_path / "failing.py").write_text(
        "import resumeflow as rf\nwf = rf.Workflow('f')\n"
        "@wf.node(retry=False)\ndef boom():\n    raise ValueError('boom')\n"
    )
    failed = cli("run", "failing:wf", "--db", db, "--json", env_extra={"PYTHONPATH": str(tmp_path)})
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["status"] == "failed"

    missing = cli("status", "nope", "--db", db)
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    bad_ref = cli("run", "no_such_module:wf", "--db", db)
    assert bad_ref.returncode == 2 and "no_such_module" in bad_ref.stderr
    fresh = cli("runs", "--db", str(tmp_path / "absent.db"), "--json")
    assert fresh.returncode == 0 and json.loads(fresh.stdout) == [], "opened as Engine(path) opens it"
    (tmp_path / "broken.py").write_text("def oops(:\n")
    broken = cli("run", "broken:wf", "--db", db, env_extra={"PYTHONPATH": str(tmp_path)})
    assert broken.returncode == 2 and "SyntaxError" in broken.stderr and "Traceback" not in broken.stderr
    usage = cli("cleanup", "--db", db)
    assert usage.returncode == 2


@pytest.mark.slow
def test_demo_kills_training_and_resumes(tmp_path):
    proc = cli("demo", "--db", str(tmp_path / "demo.db"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "killed the training process" in out
    assert "skipped on resume (already completed): prepare_data" in out
    assert "resumed from epoch" in out
    assert "final metric: test accuracy" in out
    epoch = int(out.split("resumed from epoch ")[1].split()[0])
    assert epoch >= 3, "training did not start over"
