"""DBOS Transact (``pip install dbos``) on SQLite as a peer for benches/compare.py.

    python benches/peer_dbos.py          # one chain of 200 and one fan-out of 100, µs per step

Workloads (identical to compare.py's W1 and W2):
  chain    a ``@DBOS.workflow()`` that calls ``n`` ``@DBOS.step()`` functions in sequence, each
           adding 1 to the previous result (the first gets 0), so the result is ``n``;
  fan-out  an async ``@DBOS.workflow()``: a source step returns 1, ``width`` async steps each add 1
           to it concurrently, a join step sums them (result ``2 * width``); ``width + 2`` steps.
           Concurrency is what DBOS documents for running steps in parallel inside one workflow
           (dbos-inc agent-skills "Running Async Steps In Parallel", concurrent-async support of
           dbos-transact-py PR #559): start the async steps with ``asyncio.create_task`` in a
           deterministic order, then ``asyncio.gather`` them. Queues / ``DBOS.start_workflow``
           would turn every worker into a child workflow (extra status rows, 1 s queue polling),
           which is not the same work as one node.
Each run gets a fresh system database file in a temp dir; ``DBOS(config)`` + ``DBOS.launch()``
happen before the clock starts and ``DBOS.destroy()`` after it stops, so many runs fit in one
process. Timing is from the workflow call to its result.

Durability (checked against dbos 3.4.0's source, dbos/_sys_db_sqlite.py and _sys_db.py):
  * DBOS commits every step's output in its own transaction (``record_operation_result``:
    ``with engine.begin()``, one INSERT into ``operation_outputs``) before the workflow code gets
    the value back, so each step is committed before the next one runs, as in resumeflow "sync".
  * Stock DBOS sets no journal_mode or synchronous pragma on SQLite (its connect hook only sets
    ``isolation_level="IMMEDIATE"``, ``busy_timeout=30000`` and ``foreign_keys=ON``), so it runs
    with SQLite's defaults: rollback journal (``journal_mode=DELETE``) and ``synchronous=FULL``
    (compile default 2 here). That is durable, but not the same commit path as resumeflow "sync"
    (WAL + ``synchronous=FULL``).
  * To make it identical we pass DBOS's documented ``system_database_engine`` config hook: an
    engine built exactly as DBOS builds its own for SQLite (same pool kwargs: pool_size=20,
    max_overflow=0, pool_timeout=30, pool_pre_ping; same connect hook) plus
    ``PRAGMA journal_mode=WAL`` and ``PRAGMA synchronous=FULL`` on every new connection
    (``_engine`` below). ``match_pragmas=False`` runs stock DBOS instead.
  * Verified: ``_pragmas()`` reads, after each run, every connection in DBOS's system-DB pool;
    all report ``journal_mode=wal``, ``synchronous=2`` (FULL) (``available()`` requires it).
    Under ``strace -f -e fdatasync,fsync`` a 50-step chain issued 54 fdatasyncs inside the timed
    window (one per step commit, plus workflow start/end and WAL checkpoints); stock DBOS issued
    208 (rollback journal: about 4 per commit).
  * On SQLite all commits share one writer lock, so the fan-out's concurrent step commits
    serialize across DBOS's 20 pooled connections (waiting in SQLite's busy handler); that cost is
    DBOS's own and is part of what the fan-out figure measures.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

APP_NAME = "rf-bench-dbos"


@functools.cache
def _workflows() -> dict[str, Callable[..., Any]]:
    """Register the DBOS functions once per process (DBOS keeps them in a global registry that
    survives ``DBOS.destroy()``), before the first ``DBOS(config=...)``."""
    from dbos import DBOS

    @DBOS.step()
    def add1(x: int) -> int:
        return x + 1

    @DBOS.workflow()
    def chain(n: int) -> int:
        x = 0
        for _ in range(n):
            x = add1(x)
        return x

    @DBOS.step()
    async def source() -> int:
        return 1

    @DBOS.step()
    async def add1_async(x: int) -> int:
        return x + 1

    @DBOS.step()
    async def join(parts: list[int]) -> int:
        return sum(parts)

    @DBOS.workflow()
    async def fanout(width: int) -> int:
        s = await source()
        tasks = [asyncio.create_task(add1_async(s)) for _ in range(width)]
        parts = await asyncio.gather(*tasks)
        return await join(list(parts))

    return {"chain": chain, "fanout": fanout}


def _engine(url: str) -> Any:
    """DBOS's own SQLite system-database engine (dbos/_dbos_config.py defaults,
    dbos/_sys_db_sqlite.py connect hook) plus WAL + synchronous=FULL."""
    import sqlalchemy as sa

    engine = sa.create_engine(
        url, pool_size=20, max_overflow=0, pool_timeout=30, pool_pre_ping=True
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite runs PRAGMAs outside any transaction, so these take effect immediately.
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=FULL")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")
        dbapi_conn.isolation_level = "IMMEDIATE"

    return engine


class _Dbos:
    """Context manager: fresh SQLite system DB, DBOS launched on entry, destroyed on exit."""

    def __init__(self, match_pragmas: bool = True) -> None:
        self.match_pragmas = match_pragmas
        self.engine: Any = None
        self.pragmas: list[tuple[str, int]] = []

    def __enter__(self) -> _Dbos:
        from dbos import DBOS

        self.wf = _workflows()
        self.dir = tempfile.mkdtemp(prefix="rfbench-dbos-")
        url = "sqlite:///" + os.path.join(self.dir, "dbos_sys.sqlite")
        config: dict[str, Any] = {
            "name": APP_NAME,
            "system_database_url": url,
            "log_level": "WARNING",
        }
        if self.match_pragmas:
            self.engine = _engine(url)
            config["system_database_engine"] = self.engine
        DBOS(config=config)  # type: ignore[arg-type]
        DBOS.launch()
        return self

    def __exit__(self, *exc: object) -> None:
        from dbos import DBOS

        try:
            self.pragmas = _pragmas()
        finally:
            DBOS.destroy()
            if self.engine is not None:  # DBOS does not dispose an engine it was given
                self.engine.dispose()
            shutil.rmtree(self.dir, ignore_errors=True)


def _pragmas() -> list[tuple[str, int]]:
    """(journal_mode, synchronous) of every connection DBOS's system-DB pool holds now."""
    from dbos._dbos import _get_dbos_instance

    engine = _get_dbos_instance()._sys_db.engine
    pool = engine.pool
    conns = [pool.connect() for _ in range(pool.checkedin() or 1)]
    try:
        return [
            (
                c.dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0],
                c.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0],
            )
            for c in conns
        ]
    finally:
        for c in conns:
            c.close()


def run_dbos_chain(n: int, match_pragmas: bool = True) -> float:
    """Wall seconds for a DBOS workflow of ``n`` sequential no-op durable steps."""
    with _Dbos(match_pragmas) as d:
        t0 = time.perf_counter()
        out = d.wf["chain"](n)
        elapsed = time.perf_counter() - t0
    assert out == n, out
    return elapsed


def run_dbos_fanout(width: int, match_pragmas: bool = True) -> float:
    """Wall seconds for 1 -> ``width`` parallel steps -> 1 in one async DBOS workflow
    (``asyncio.create_task`` per step in deterministic order, then ``asyncio.gather``)."""
    loop = asyncio.new_event_loop()
    try:
        with _Dbos(match_pragmas) as d:
            t0 = time.perf_counter()
            out = loop.run_until_complete(d.wf["fanout"](width))
            elapsed = time.perf_counter() - t0
    finally:
        loop.close()
    assert out == 2 * width, out
    return elapsed


@functools.cache
def available() -> bool:
    """True when dbos imports and a one-step workflow runs on SQLite with WAL + FULL."""
    try:
        import dbos  # noqa: F401

        with _Dbos() as d:
            ok = d.wf["chain"](1) == 1
        return ok and all(p == ("wal", 2) for p in d.pragmas)
    except Exception:
        return False


if __name__ == "__main__":
    from importlib.metadata import version

    print(f"dbos {version('dbos')}, available: {available()}")
    for label, match in (("WAL+FULL", True), ("stock", False)):
        n, width = 200, 100
        chain = run_dbos_chain(n, match)
        fan = run_dbos_fanout(width, match)
        print(
            f"{label:>8}: chain {n}: {chain / n * 1e6:8.1f} µs/step   "
            f"fan-out {width}: {fan / (width + 2) * 1e6:8.1f} µs/step"
        )
