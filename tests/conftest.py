"""Shared fixtures: a fresh store per test, a subprocess runner for multi-process tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "runs.db")


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A side-effect ledger: every node execution appends ``node:attempt`` (fsynced)."""
    path = tmp_path / "ledger.txt"
    path.touch()
    monkeypatch.setenv("RF_LEDGER", str(path))
    return path


def python(code: str, *, env_extra: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a fresh interpreter that can import the test workflows."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout
    )


def spawn(code: str, *, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_for(predicate, timeout: float = 60.0) -> None:
    """Polls ``predicate`` until it is true; fails the test after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def chain_child(db: str, ledger: Path, run_id: str, *, x: int, slow_b: float) -> subprocess.Popen[str]:
    """Runs ``rf_workflows.chain`` as ``run_id`` in a child process (node b sleeps ``slow_b``
    seconds) and returns once b has started."""
    child = spawn(
        "import resumeflow as rf\n"
        "from rf_workflows import chain\n"
        f"with rf.Engine({db!r}) as e:\n"
        f"    e.run(chain, {{'x': {x}}}, run_id={run_id!r})\n",
        env_extra={"RF_SLOW_B": str(slow_b)},
    )
    from rf_workflows import ledger_entries

    try:
        wait_for(lambda: any(n == "b" for n, _ in ledger_entries(ledger)))
    except BaseException:
        child.kill()
        child.communicate(timeout=30)
        raise
    return child


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine (runs on the GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
