"""Shared fixtures: a fresh store per test, a subprocess runner for multi-process tests.

Stores: ``db`` is a fresh SQLite file per test. A module marked ``pytestmark =
pytest.mark.both_stores`` runs each of its tests that take ``db`` twice, ids ``[sqlite]`` and
``[postgres]``; there ``db`` is either the file's path or a PostgreSQL URL with a schema of its
own (``pg_url``), so a test written against ``rf.Engine(db)`` runs unchanged on both. A test of
such a module that inspects the SQLite file itself is marked ``@pytest.mark.sqlite_only``.
PostgreSQL tests skip where no server binaries are installed, and fail instead under CI
(``CI=true``).
"""

from __future__ import annotations

import atexit
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_cluster import PgCluster, PgUnavailable

TESTS = Path(__file__).resolve().parent
STORES = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_stores: run each test taking `db` on SQLite and on PostgreSQL")
    config.addinivalue_line("markers", "sqlite_only: inspects the SQLite file itself (in a both_stores module)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db" not in metafunc.fixturenames or metafunc.definition.get_closest_marker("both_stores") is None:
        return
    kinds = ("sqlite",) if metafunc.definition.get_closest_marker("sqlite_only") else STORES
    metafunc.parametrize("db", kinds, indirect=True, ids=list(kinds))


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgCluster]:
    """One PostgreSQL cluster for the session (see tests/pg_cluster.py): ``.url``, ``.sql()``
    as superuser, ``.restart()``."""
    try:
        cluster = PgCluster()
    except PgUnavailable as e:
        if in_ci():
            pytest.fail(f"PostgreSQL is required under CI: {e}", pytrace=False)
        pytest.skip(f"PostgreSQL not available: {e}")
    atexit.register(cluster.stop)  # also when the session dies before the fixture's teardown
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_server: PgCluster) -> str:
    """The test role's URL with a schema of this test's own (created by the store)."""
    return f"{pg_server.url}?schema=t_{secrets.token_hex(6)}"


@pytest.fixture
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store: a SQLite file, or (parametrized ``postgres``) a PostgreSQL schema URL."""
    if getattr(request, "param", "sqlite") == "postgres":
        return request.getfixturevalue("pg_url")
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
