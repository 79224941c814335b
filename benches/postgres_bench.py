"""resumeflow's PostgreSQL store against its SQLite store and its peers on the same PostgreSQL
server, measured in one run (docs/benchmarks.md W12, W9 on PostgreSQL, W13).

    python benches/postgres_bench.py [--quick] [--only w12,queue,w13,profile] [--rounds R]
                                     [--runs N] [--workers 1,4,8] [--url URL] [--json OUT]

The server: by default a throwaway cluster started here with tests/pg_cluster.py (initdb in a
temporary directory, a loopback port, scram-sha-256, ``fsync``, ``synchronous_commit`` and
``full_page_writes`` on, stopped and removed at the end). ``--url
postgresql://user:password@host:port/database`` uses an existing server instead; its role must
be allowed to ``CREATE SCHEMA`` in that database. Every measurement of every system gets a fresh
schema in that one database (resumeflow ``?schema=NAME``, DBOS ``dbos_system_schema``,
PostgresSaver a connection whose ``search_path`` is the schema), dropped afterwards. The server
settings that decide durability are read back and printed with the results.

W12  W1 chain (N no-op nodes, each adding 1 to its input; N = 1,000) and W2 fan-out
     (1 -> 500 parallel no-op nodes -> 1), the graphs of benches/workloads.py, on:
       resumeflow PostgreSQL  ``rf.Engine("postgresql://...?schema=...")``, durability "sync"
                              and "batched";
       resumeflow SQLite      ``rf.Engine("/tmp/.../store.db")`` (WAL, synchronous=FULL), "sync"
                              and "batched" (benches/workloads.py's runners);
       DBOS PostgreSQL        DBOS Transact with its system database on the same server (stock
                              configuration: DBOS's own engine, pool of 20), the chain and
                              fan-out workflows of benches/peer_dbos.py (each step committed in
                              its own transaction before the workflow gets its value);
       psycopg floor          (W1 only) one committed ``INSERT`` per node over one connection:
                              the commit latency of this server, what no durable engine beats.
     "sync" and DBOS commit every node before its dependants run; "batched" group-commits the
     completions of the nodes in flight. The clock covers ``engine.run`` / the workflow call
     only (store opened, schema created, DBOS launched before it). Rounds interleave the
     systems, rotating their order every round; one untimed warm-up run of each comes first.
     Figures: median µs per node, ratios to resumeflow PostgreSQL "sync".

W9   queued runs per second on one PostgreSQL database with K = 1, 4, 8 worker processes:
     N runs (300) of benches/queue_throughput.py's 10-node chain. K processes open
     ``rf.Engine(url, durability=D, max_concurrency=8)`` and report ready (not timed); the
     clock starts; this process submits the N runs (``engine.submit``, one commit each) while
     the workers already claim them (``engine.work([wf], idle_timeout=2)``); the clock stops
     at the last completion as the store recorded it (``RunState.updated_at``). Every run must
     complete, and the workers' ``finished`` counts must add up to N. D is "sync" and
     "batched". DBOS on the same server: K processes ``DBOS.launch()`` (one ``executor_id``
     each), listen on a queue (``worker_concurrency=8``, ``polling_interval_sec=0.05``),
     runs are enqueued with ``DBOSClient.enqueue``, the clock stops at the last
     ``workflow_status.updated_at``. runs/s = N / (last completion - start).

W13  LangGraph chain of 200 steps through ``graph.invoke(..., durability="sync")``:
     ``ResumeflowSaver(url)`` on PostgreSQL vs ``PostgresSaver`` (langgraph-checkpoint-postgres,
     on the connection its docs prescribe: autocommit, ``prepare_threshold=0``, ``dict_row``)
     on the same server, and ``InMemorySaver`` (no storage: the graph's own cost, subtracted to
     give each saver's overhead). Graphs: benches/langgraph_saver.py's workload A (no big
     channel) and C (a 100 KB ``str`` channel set by the first node and never changed), and D,
     the same with the channel as 100 KB of ``bytes``. D is there because PostgresSaver keeps
     ``str``/``int``/``float``/``bool``/``None`` channel values inline in every checkpoint's
     ``channel_values`` JSONB (an unchanged 100 KB ``str`` is stored again with every
     checkpoint) and other values once per version in ``checkpoint_blobs``
     (langgraph-checkpoint-postgres ``base.py``). Time per step; bytes on disk = the sum of
     ``pg_total_relation_size`` (heap, TOAST, indexes) over the tables of the system's schema
     after the run minus the same sum right after setup (and, as a cross-check, the
     ``pg_database_size`` delta over the whole measurement). If ``ResumeflowSaver`` refuses a
     PostgreSQL URL (builds before its PostgreSQL thread store), its rows are skipped with the
     error printed; the peers still run.

profile (only when named in ``--only``; about 35 s a system): what one W1 node costs the
     server, from its cumulative statistics: WAL fsyncs, committed transactions and WAL bytes
     per node for resumeflow "sync" / "batched", the psycopg floor and DBOS. Counts, not
     timings: they explain the W12 figures.

Needs a PostgreSQL server (or its binaries, for the throwaway cluster), ``psycopg[binary]``,
and for the peers ``dbos`` and ``langgraph-checkpoint-postgres`` (a missing peer is skipped).
Absolute figures depend on this machine's fsync latency; ratios compare systems measured in
the same run. The exit status is non-zero only if a part raised.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import resumeflow as rf  # noqa: E402
import workloads as wl  # noqa: E402

PARTS = ("w12", "queue", "w13", "profile")
DEFAULT_PARTS = ("w12", "queue", "w13")

CONFIG = {
    "quick": {"rounds": 2, "n": 200, "width": 100, "runs": 60, "queue_rounds": 1,
              "lg_steps": 50, "lg_rounds": 1, "profile_n": 50},
    "full": {"rounds": 5, "n": 1000, "width": 500, "runs": 300, "queue_rounds": 3,
             "lg_steps": 200, "lg_rounds": 3, "profile_n": 500},
}

RUNS_AT_ONCE = 8
DBOS_POLL_S = 0.05
IDLE_S = 2.0
READY_TIMEOUT_S = 120.0
DBOS_APP = "rf-pgbench"
DBOS_QUEUE = "rf_pgqueue"
DBOS_WORKFLOW = "rf_pgqueue_chain"


# --- the server ------------------------------------------------------------------------------


class Server:
    """One PostgreSQL database; hands out fresh schemas and measures them."""

    def __init__(self, url: str, cluster: Any = None) -> None:
        import psycopg

        self.url = url.split("?", 1)[0]
        self.cluster = cluster
        self.admin = psycopg.connect(self.url, autocommit=True)
        self._n = 0

    def new_schema(self, tag: str, create: bool = True) -> str:
        self._n += 1
        name = f"b_{tag}_{os.getpid()}_{self._n}"
        if create:
            self.admin.execute(f'CREATE SCHEMA "{name}"')
        return name

    def store_url(self, schema: str) -> str:
        return f"{self.url}?schema={schema}"

    def drop(self, schema: str) -> None:
        self.admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def schema_bytes(self, schema: str) -> int:
        """Heap + TOAST + indexes of every table in ``schema``."""
        row = self.admin.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'm')", (schema,)).fetchone()
        return int(row[0])

    def database_bytes(self) -> int:
        return int(self.admin.execute("SELECT pg_database_size(current_database())").fetchone()[0])

    def settings(self) -> dict[str, str]:
        names = ("server_version", "fsync", "synchronous_commit", "full_page_writes",
                 "wal_sync_method", "shared_buffers", "max_connections", "wal_level")
        return {n: self.admin.execute(f"SHOW {n}").fetchone()[0] for n in names}

    def close(self) -> None:
        self.admin.close()


@contextlib.contextmanager
def server(url: str | None) -> Iterator[Server]:
    if url:
        s = Server(url)
        try:
            yield s
        finally:
            s.close()
        return
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import pg_cluster

    cluster = pg_cluster.PgCluster()
    try:
        cluster.start()
        s = Server(cluster.url, cluster)
        try:
            yield s
        finally:
            s.close()
    finally:
        cluster.stop()


# --- measuring -------------------------------------------------------------------------------


def measure(systems: dict[str, Callable[[], float]], rounds: int,
            warmups: dict[str, Callable[[], float]] | None = None) -> dict[str, list[float]]:
    """Seconds per system per round; the order of the systems rotates every round."""
    for fn in (warmups or {}).values():
        fn()
    names = list(systems)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            samples[name].append(systems[name]())
    return samples


def _rows(wid: str, label: str, samples: dict[str, list[float]], per: int,
          base: str) -> list[dict]:
    med = {k: statistics.median(v) for k, v in samples.items()}
    return [
        {"id": wid, "workload": label, "system": name, "us_per_node": s / per * 1e6,
         f"ratio_to_{base.replace(' ', '_')}": s / med[base],
         "min_us": min(samples[name]) / per * 1e6, "max_us": max(samples[name]) / per * 1e6}
        for name, s in med.items()
    ]


# --- W12: W1 / W2 on PostgreSQL ---------------------------------------------------------------


def prepare_rf_pg_chain(pg: Server, n: int, durability: str) -> wl.Prepared:
    wf = wl.rf_chain_workflow(n)
    wf.validate()
    schema = pg.new_schema("rfc", create=False)
    engine = rf.Engine(pg.store_url(schema), durability=durability)

    def target() -> None:
        state = engine.run(wf)
        assert state.values[f"s{n - 1}"] == n

    def close() -> None:
        engine.close()
        pg.drop(schema)

    return target, close


def prepare_rf_pg_fanout(pg: Server, width: int, durability: str) -> wl.Prepared:
    wf = wl.rf_fanout_workflow(width)
    wf.validate()
    schema = pg.new_schema("rff", create=False)
    engine = rf.Engine(pg.store_url(schema), durability=durability)

    def target() -> None:
        state = engine.run(wf)
        assert state.values["join"] == 2 * width

    def close() -> None:
        engine.close()
        pg.drop(schema)

    return target, close


def prepare_pg_floor(pg: Server, n: int) -> wl.Prepared:
    """One committed INSERT per node over one connection (synchronous_commit as the server)."""
    import psycopg

    schema = pg.new_schema("floor")
    conn = psycopg.connect(pg.url, options=f"-c search_path={schema}")
    conn.execute("CREATE TABLE t (id integer PRIMARY KEY, v bytea NOT NULL)")
    conn.commit()

    def target() -> None:
        for i in range(n):
            conn.execute("INSERT INTO t (id, v) VALUES (%s, %s)", (i, b"\x01"))
            conn.commit()

    def close() -> None:
        conn.close()
        pg.drop(schema)

    return target, close


class DbosPg:
    """DBOS launched on a fresh system schema on the server; destroyed on exit."""

    def __init__(self, pg: Server) -> None:
        self.pg = pg

    def __enter__(self) -> DbosPg:
        import peer_dbos
        from dbos import DBOS

        self.wf = peer_dbos._workflows()
        self.schema = self.pg.new_schema("dbos", create=False)
        DBOS(config={  # type: ignore[arg-type]
            "name": peer_dbos.APP_NAME,
            "system_database_url": self.pg.url,
            "dbos_system_schema": self.schema,
            "log_level": "WARNING",
        })
        DBOS.launch()
        return self

    def __exit__(self, *exc: object) -> None:
        from dbos import DBOS

        try:
            DBOS.destroy()
        finally:
            self.pg.drop(self.schema)


def prepare_dbos_pg_chain(pg: Server, n: int) -> wl.Prepared:
    d = DbosPg(pg).__enter__()

    def target() -> None:
        out = d.wf["chain"](n)
        assert out == n, out

    return target, lambda: d.__exit__(None, None, None)


def run_dbos_pg_chain(pg: Server, n: int) -> float:
    return wl.timed(prepare_dbos_pg_chain(pg, n))


def run_dbos_pg_fanout(pg: Server, width: int) -> float:
    loop = asyncio.new_event_loop()
    try:
        with DbosPg(pg) as d:
            t0 = time.perf_counter()
            out = loop.run_until_complete(d.wf["fanout"](width))
            elapsed = time.perf_counter() - t0
    finally:
        loop.close()
    assert out == 2 * width, out
    return elapsed


def have_dbos() -> bool:
    return wl.have("dbos") and wl.have("peer_dbos")


def w12(pg: Server, n: int, width: int, rounds: int) -> list[dict]:
    dbos = have_dbos()
    chain: dict[str, Callable[[], float]] = {
        "resumeflow postgres sync": lambda: wl.timed(prepare_rf_pg_chain(pg, n, "sync")),
        "resumeflow postgres batched": lambda: wl.timed(prepare_rf_pg_chain(pg, n, "batched")),
        "resumeflow sqlite sync": lambda: wl.run_resumeflow_chain(n, "sync"),
        "resumeflow sqlite batched": lambda: wl.run_resumeflow_chain(n, "batched"),
        "psycopg floor (1 commit/node)": lambda: wl.timed(prepare_pg_floor(pg, n)),
    }
    fan: dict[str, Callable[[], float]] = {
        "resumeflow postgres sync": lambda: wl.timed(prepare_rf_pg_fanout(pg, width, "sync")),
        "resumeflow postgres batched":
            lambda: wl.timed(prepare_rf_pg_fanout(pg, width, "batched")),
        "resumeflow sqlite sync": lambda: wl.run_resumeflow_fanout(width, "sync"),
        "resumeflow sqlite batched": lambda: wl.run_resumeflow_fanout(width, "batched"),
    }
    if dbos:
        chain["dbos postgres"] = lambda: run_dbos_pg_chain(pg, n)
        fan["dbos postgres"] = lambda: run_dbos_pg_fanout(pg, width)
    else:
        print("W12: dbos not installed (pip install -r benches/requirements.txt): no DBOS rows")
    warm_chain = {
        "rf pg": lambda: wl.timed(prepare_rf_pg_chain(pg, 10, "sync")),
        "rf sqlite": lambda: wl.run_resumeflow_chain(10, "sync"),
        **({"dbos": lambda: run_dbos_pg_chain(pg, 10)} if dbos else {}),
    }
    warm_fan = {
        "rf pg": lambda: wl.timed(prepare_rf_pg_fanout(pg, 10, "sync")),
        **({"dbos": lambda: run_dbos_pg_fanout(pg, 10)} if dbos else {}),
    }
    base = "resumeflow postgres sync"
    rows = _rows("W12", f"W1 chain {n}", measure(chain, rounds, warm_chain), n, base)
    rows += _rows("W12", f"W2 fan-out {width}", measure(fan, rounds, warm_fan), width + 2, base)
    return rows


# --- profile: what one W1 node costs the server ---------------------------------------------

#: Cumulative statistics reach pg_stat_* when a backend has been idle for up to 10 s.
STATS_SETTLE_S = 11.0


def _server_counters(pg: Server) -> tuple[float, dict[str, int]]:
    time.sleep(STATS_SETTLE_S)
    row = pg.admin.execute(
        "SELECT (SELECT wal_sync FROM pg_stat_wal), "
        "(SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())"
    ).fetchone()
    return time.monotonic(), {"wal_syncs": int(row[0]), "commits": int(row[1])}


def _wal_lsn(pg: Server) -> int:
    return int(pg.admin.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


def profile(pg: Server, n: int) -> list[dict]:
    """Per W1 node, from the server's cumulative statistics: WAL fsyncs (``pg_stat_wal``),
    committed transactions (``pg_stat_database.xact_commit``, read-only ones included) and
    WAL bytes (``pg_current_wal_lsn`` just before and after the run). Each system's store is
    opened (DBOS launched) first; the fsyncs and commits counted over an idle window of the
    same length just before are subtracted (DBOS's background threads commit while idle)."""
    systems: dict[str, Callable[[], wl.Prepared]] = {
        "resumeflow postgres sync": lambda: prepare_rf_pg_chain(pg, n, "sync"),
        "resumeflow postgres batched": lambda: prepare_rf_pg_chain(pg, n, "batched"),
        "psycopg floor (1 commit/node)": lambda: prepare_pg_floor(pg, n),
    }
    if have_dbos():
        systems["dbos postgres"] = lambda: prepare_dbos_pg_chain(pg, n)
        wl.timed(prepare_dbos_pg_chain(pg, 10))  # warm-up: imports, registration
    rows = []
    for name, prepare in systems.items():
        target, close = prepare()
        try:
            t0, c0 = _server_counters(pg)
            t1, c1 = _server_counters(pg)
            lsn0 = _wal_lsn(pg)
            s0 = time.perf_counter()
            target()
            seconds = time.perf_counter() - s0
            wal_bytes = _wal_lsn(pg) - lsn0
            t2, c2 = _server_counters(pg)
        finally:
            close()
        idle = t1 - t0
        scale = (t2 - t1) / idle
        row: dict[str, Any] = {"id": "profile", "workload": f"W1 chain {n}, per node",
                               "system": name, "us_per_node": seconds / n * 1e6}
        for k in ("wal_syncs", "commits"):
            row[f"{k}_per_node"] = ((c2[k] - c1[k]) - (c1[k] - c0[k]) * scale) / n
        row["wal_bytes_per_node"] = wal_bytes / n
        row["idle_commits_per_s"] = (c1["commits"] - c0["commits"]) / idle
        row["idle_wal_syncs_per_s"] = (c1["wal_syncs"] - c0["wal_syncs"]) / idle
        rows.append(row)
    return rows


# --- W9 on PostgreSQL: queued runs per second with K worker processes -------------------------


def _touch(path: str) -> None:
    with open(path, "w"):
        pass


def _wait_for_file(path: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.002)


def rf_worker(url: str, ready: str, go: str, runs_at_once: int, durability: str) -> None:
    import queue_throughput as qt

    wf = qt.chain_workflow()
    with rf.Engine(url, durability=durability, max_concurrency=runs_at_once) as engine:
        _touch(ready)
        _wait_for_file(go)
        finished = engine.work([wf], idle_timeout=IDLE_S)
    print(json.dumps({"finished": finished}), flush=True)


def dbos_worker(url: str, schema: str, ready: str, stop: str, executor_id: str, poll: float,
                runs_at_once: int) -> None:
    from dbos import DBOS

    @DBOS.step()
    def add1(x: int) -> int:
        return x + 1

    @DBOS.workflow(name=DBOS_WORKFLOW)
    def chain(n: int) -> int:
        x = 0
        for _ in range(n):
            x = add1(x)
        return x

    DBOS(config={  # type: ignore[arg-type]
        "name": DBOS_APP, "system_database_url": url, "dbos_system_schema": schema,
        "executor_id": executor_id, "application_version": "1", "log_level": "WARNING",
    })
    DBOS.launch()
    DBOS.register_queue(DBOS_QUEUE, worker_concurrency=runs_at_once, polling_interval_sec=poll,
                        on_conflict="never_update")
    _touch(ready)
    _wait_for_file(stop)
    DBOS.destroy(workflow_completion_timeout_sec=0)


def _spawn(role: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--_{role}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _await_ready(children: list[subprocess.Popen[str]], ready: list[str]) -> None:
    import queue_throughput as qt

    qt._await_ready(children, ready)


def _reap(children: list[subprocess.Popen[str]], timeout: float = 600.0) -> list[str]:
    import queue_throughput as qt

    return qt._reap(children, timeout)


def queue_rf(pg: Server, n: int, workers: int, durability: str) -> dict[str, Any]:
    import queue_throughput as qt

    tmp = tempfile.mkdtemp(prefix="rfbench-pgqueue-")
    schema = pg.new_schema("rfq", create=False)
    url = pg.store_url(schema)
    try:
        go = os.path.join(tmp, "go")
        wf = qt.chain_workflow()
        with rf.Engine(url, durability="sync") as engine:  # the producer; creates the schema
            ready = [os.path.join(tmp, f"ready{i}") for i in range(workers)]
            children = [_spawn("rf-worker", url, ready[i], go, str(RUNS_AT_ONCE), durability)
                        for i in range(workers)]
            try:
                _await_ready(children, ready)
                t0 = time.time()
                _touch(go)
                for i in range(n):
                    engine.submit(wf, run_id=f"r{i}")
                submitted = time.time() - t0
                outs = _reap(children)
            except BaseException:
                for c in children:
                    c.kill()
                raise
            finished = [json.loads(o.strip().splitlines()[-1])["finished"] for o in outs]
            runs = engine.list_runs()
            completed = [r for r in runs if r.status == "completed"]
            assert len(runs) == n and len(completed) == n, f"{len(completed)}/{n} completed"
            last = qt.CHAIN_LENGTH - 1
            assert all(r.values[f"s{last}"] == qt.CHAIN_LENGTH for r in completed[:5])
            assert sum(finished) == n, f"workers finished {finished}, {n} were submitted"
            end = max(r.updated_at for r in completed)
        return {"seconds": end - t0, "submit_s": submitted,
                "busy_workers": sum(1 for f in finished if f)}
    finally:
        pg.drop(schema)
        shutil.rmtree(tmp, ignore_errors=True)


def queue_dbos(pg: Server, n: int, workers: int) -> dict[str, Any]:
    import queue_throughput as qt
    from dbos import DBOSClient

    tmp = tempfile.mkdtemp(prefix="rfbench-pgqueue-dbos-")
    schema = pg.new_schema("dbq", create=False)
    children: list[subprocess.Popen[str]] = []
    stop = os.path.join(tmp, "stop")
    try:
        ready = [os.path.join(tmp, f"ready{i}") for i in range(workers)]
        conf = (str(DBOS_POLL_S), str(RUNS_AT_ONCE))
        # The first worker creates the schema alone; then the others launch together.
        children.append(_spawn("dbos-worker", pg.url, schema, ready[0], stop, "pgq-0", *conf))
        _await_ready(children, ready[:1])
        for i in range(1, workers):
            children.append(_spawn("dbos-worker", pg.url, schema, ready[i], stop, f"pgq-{i}",
                                   *conf))
        _await_ready(children, ready)
        client = DBOSClient(system_database_url=pg.url, dbos_system_schema=schema,
                            application_name=DBOS_APP)
        try:
            t0 = time.time()
            for i in range(n):
                client.enqueue({"queue_name": DBOS_QUEUE, "workflow_name": DBOS_WORKFLOW,
                                "workflow_id": f"r{i}"}, qt.CHAIN_LENGTH)
            submitted = time.time() - t0
            query = (f'SELECT count(*), max(updated_at), count(DISTINCT executor_id) '
                     f'FROM "{schema}".workflow_status WHERE queue_name = %s '
                     "AND status = 'SUCCESS'")
            deadline = time.monotonic() + 600
            while True:
                done, last_ms, executors = pg.admin.execute(query, (DBOS_QUEUE,)).fetchone()
                if done >= n:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"DBOS completed {done}/{n} runs in 600 s")
                time.sleep(0.05)
            assert client.retrieve_workflow("r0").get_result() == qt.CHAIN_LENGTH
        finally:
            client.destroy()
        return {"seconds": int(last_ms) / 1000.0 - t0, "submit_s": submitted,
                "busy_workers": int(executors)}
    finally:
        _touch(stop)
        try:
            _reap(children, timeout=60)
        finally:
            pg.drop(schema)
            shutil.rmtree(tmp, ignore_errors=True)


def queue_bench(pg: Server, n: int, counts: list[int], rounds: int) -> list[dict]:
    dbos = have_dbos()
    systems: dict[str, Callable[[int], dict[str, Any]]] = {
        "resumeflow postgres sync": lambda k: queue_rf(pg, n, k, "sync"),
        "resumeflow postgres batched": lambda k: queue_rf(pg, n, k, "batched"),
    }
    if dbos:
        systems["dbos postgres"] = lambda k: queue_dbos(pg, n, k)
    else:
        print("queue: dbos not installed: resumeflow only")
    got: dict[tuple[str, int], list[dict[str, Any]]] = {}
    names = list(systems)
    for r in range(rounds):
        for k in counts:
            parts = []
            for i in range(len(names)):  # order rotates every round
                name = names[(i + r) % len(names)]
                m = systems[name](k)
                got.setdefault((name, k), []).append(m)
                parts.append(f"{name} {n / m['seconds']:.1f} runs/s "
                             f"({m['busy_workers']} busy)")
            print(f"  round {r + 1}, {k} worker(s): " + "; ".join(parts), flush=True)
    rows = []
    base = "resumeflow postgres sync"
    for k in counts:
        base_s = statistics.median(m["seconds"] for m in got[(base, k)])
        for name in names:
            ms = got[(name, k)]
            sec = statistics.median(m["seconds"] for m in ms)
            rows.append({
                "id": "W9pg", "workload": f"W9 queue {n} runs x 10 nodes", "workers": k,
                "system": name, "runs_per_s": n / sec,
                "vs_resumeflow_postgres_sync": base_s / sec,
                "submit_runs_per_s": n / statistics.median(m["submit_s"] for m in ms),
                "per_round_runs_per_s": " / ".join(f"{n / m['seconds']:.1f}" for m in ms),
                "busy_workers": min(m["busy_workers"] for m in ms),
            })
    return rows


# --- W13: LangGraph saver on PostgreSQL (ResumeflowSaver vs PostgresSaver) -------------------


def resumeflow_saver_pg_error(pg: Server) -> str | None:
    """None when ``ResumeflowSaver`` opens a PostgreSQL URL in this build, else why not."""
    from resumeflow.langgraph import ResumeflowSaver

    schema = pg.new_schema("lgprobe", create=False)
    try:
        ResumeflowSaver(pg.store_url(schema), durability="sync").close()
        return None
    except Exception as e:  # InvalidArgument before the PostgreSQL thread store landed
        return f"{type(e).__name__}: {e}"
    finally:
        pg.drop(schema)


def w13_langgraph_saver(pg: Server, steps: int, rounds: int) -> list[dict]:
    """LangGraph chain of ``steps`` steps (with and without a 100 KB channel that never
    changes): ResumeflowSaver on PostgreSQL vs PostgresSaver on the same server, and
    InMemorySaver (the graph's own cost). Time per step and bytes on disk per system."""
    if not wl.have("langgraph.checkpoint.postgres"):
        print("W13 skipped: langgraph-checkpoint-postgres is not installed "
              "(pip install langgraph-checkpoint-postgres)")
        return []
    import langgraph_saver as lgs
    import psycopg
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row
    from resumeflow.langgraph import ResumeflowSaver

    big = lgs._big_string()
    kb = lgs.BIG_BYTES // 1000
    graphs = {
        "A": (f"W13 LangGraph chain {steps}", lgs.chain_builder(steps),
              {"counter": 0, "tag": ""}),
        "C": (f"W13 LangGraph chain {steps} + {kb} KB str channel",
              lgs.chain_builder(steps, big), {"counter": 0, "tag": "", "big": ""}),
        "D": (f"W13 LangGraph chain {steps} + {kb} KB bytes channel",
              lgs.chain_builder(steps, big.encode()), {"counter": 0, "tag": "", "big": b""}),
    }
    config = {"configurable": {"thread_id": "t"}, "recursion_limit": steps + 10}

    def run(saver: Any, key: str) -> dict[str, Any]:
        _, builder, initial = graphs[key]
        graph = builder.compile(checkpointer=saver)
        t0 = time.perf_counter()
        out = graph.invoke(initial, config, durability="sync")
        seconds = time.perf_counter() - t0
        state = graph.get_state(config).values
        checkpoints = sum(1 for _ in graph.get_state_history(config))
        return {"seconds": seconds, "final": (out, state), "checkpoints": checkpoints}

    def in_memory(key: str) -> dict[str, Any]:
        return run(InMemorySaver(), key) | {"bytes": None, "db_delta": None}

    def postgres_saver(key: str) -> dict[str, Any]:
        db0 = pg.database_bytes()
        schema = pg.new_schema("lgpg")
        try:
            with psycopg.connect(pg.url, autocommit=True, prepare_threshold=0,
                                 row_factory=dict_row,
                                 options=f"-c search_path={schema}") as conn:
                saver = PostgresSaver(conn)
                saver.setup()
                empty = pg.schema_bytes(schema)
                got = run(saver, key)
            return got | {"bytes": pg.schema_bytes(schema) - empty,
                          "db_delta": pg.database_bytes() - db0}
        finally:
            pg.drop(schema)

    def resumeflow_saver(key: str) -> dict[str, Any]:
        db0 = pg.database_bytes()
        schema = pg.new_schema("lgrf", create=False)
        try:
            saver = ResumeflowSaver(pg.store_url(schema), durability="sync")
            try:
                empty = pg.schema_bytes(schema)
                got = run(saver, key)
            finally:
                saver.close()
            return got | {"bytes": pg.schema_bytes(schema) - empty,
                          "db_delta": pg.database_bytes() - db0}
        finally:
            pg.drop(schema)

    systems: dict[str, Callable[[str], dict[str, Any]]] = {
        "InMemorySaver (no storage)": in_memory,
        "PostgresSaver": postgres_saver,
    }
    skipped = resumeflow_saver_pg_error(pg)
    if skipped is None:
        systems["ResumeflowSaver postgres"] = resumeflow_saver
    else:
        print(f"W13: ResumeflowSaver on PostgreSQL skipped, this build refuses a URL: {skipped}")
    names = list(systems)
    rows = []
    for key, (label, _, _) in graphs.items():
        for name in names:  # warm-up, untimed
            systems[name](key)
        samples: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for r in range(rounds):
            for i in range(len(names)):
                name = names[(i + r) % len(names)]
                samples[name].append(systems[name](key))
        ref = samples[names[0]][0]
        for name in names:
            for s in samples[name]:
                assert s["final"] == ref["final"], f"{name}: final state differs on {key}"
                assert s["checkpoints"] == ref["checkpoints"], (name, key, s["checkpoints"])
        mem = statistics.median(s["seconds"] for s in samples[names[0]])
        pg_sec = statistics.median(s["seconds"] for s in samples["PostgresSaver"])
        for name in names:
            sec = statistics.median(s["seconds"] for s in samples[name])
            row: dict[str, Any] = {
                "id": "W13", "workload": label, "system": name,
                "us_per_step": sec / steps * 1e6,
                "overhead_us_per_step": (sec - mem) / steps * 1e6,
                "time_vs_PostgresSaver": sec / pg_sec,
                "checkpoints": ref["checkpoints"],
            }
            if samples[name][0]["bytes"] is not None:
                row["KiB_on_disk"] = statistics.median(s["bytes"] for s in samples[name]) / 1024
                row["db_delta_KiB"] = statistics.median(
                    s["db_delta"] for s in samples[name]) / 1024
            rows.append(row)
        if skipped is None:
            by = {r["system"]: r for r in rows if r["workload"] == label}
            p, q = by["PostgresSaver"], by["ResumeflowSaver postgres"]
            q["overhead_vs_PostgresSaver"] = (q["overhead_us_per_step"]
                                              / p["overhead_us_per_step"])
            q["bytes_vs_PostgresSaver"] = q["KiB_on_disk"] / p["KiB_on_disk"]
    if skipped is not None:
        rows.append({"id": "W13", "workload": "W13", "system": "ResumeflowSaver postgres",
                     "skipped": skipped[:120]})
    return rows


# --- the run ---------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("dbos", "langgraph", "langgraph-checkpoint", "langgraph-checkpoint-postgres",
                "psycopg", "SQLAlchemy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "-"
    # The core build this run loaded (the worker processes load the file again when they start).
    import hashlib

    core = rf._core.__file__
    with open(core, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    built = time.strftime("%Y-%m-%d %H:%M", time.gmtime(os.path.getmtime(core)))
    out["resumeflow _core"] = f"sha256 {digest}, built {built} UTC"
    return out


def memory_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (smoke)")
    parser.add_argument("--only", metavar="w12,queue,w13,profile",
                        help=f"comma-separated parts among {','.join(PARTS)} (default "
                        f"{','.join(DEFAULT_PARTS)})")
    parser.add_argument("--rounds", type=int, help="W12 rounds (default 5; quick 2)")
    parser.add_argument("--runs", type=int, help="runs per queue measurement (default 300)")
    parser.add_argument("--workers", default="1,4,8", help="queue worker processes (1,4,8)")
    parser.add_argument("--url", help="an existing server's postgresql://user:pw@host:port/db "
                        "(default: a throwaway cluster from tests/pg_cluster.py)")
    parser.add_argument("--json", metavar="OUT", help="write every row and the context here")
    args = parser.parse_args(argv)
    parts = list(DEFAULT_PARTS)
    if args.only:
        parts = [p.strip().lower() for p in args.only.split(",") if p.strip()]
        bad = [p for p in parts if p not in PARTS]
        if bad:
            parser.error(f"unknown part(s) {bad}; choose from {','.join(PARTS)}")
    mode = "quick" if args.quick else "full"
    cfg = dict(CONFIG[mode])
    if args.rounds:
        cfg["rounds"] = args.rounds
    if args.runs:
        cfg["runs"] = args.runs
    counts = [int(k) for k in args.workers.split(",") if k.strip()]

    from compare import git_commit, machine, print_table
    from resumeflow._store_url import redact

    info = machine() | {"mem_GiB": round(memory_gib(), 1), "loadavg_start": os.getloadavg()}
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join([os.path.basename(sys.executable), "benches/postgres_bench.py", *given])
    commit = git_commit()
    vers = versions()
    print(f"machine: {info['cpu']}, nproc {info['nproc']}, {info['mem_GiB']} GiB, "
          f"python {info['python']}; load average {info['loadavg_start']}")
    print(f"commit {commit}; command: {command}; mode {mode}; {cfg}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))

    rows: list[dict] = []
    failed: dict[str, str] = {}
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    with server(args.url) as pg:
        settings = pg.settings()
        print("server: " + ", ".join(f"{k}={v}" for k, v in settings.items())
              + (" (throwaway cluster)" if pg.cluster else f" ({redact(pg.url)})"))
        plan: dict[str, Callable[[], list[dict]]] = {
            "w12": lambda: w12(pg, cfg["n"], cfg["width"], cfg["rounds"]),
            "queue": lambda: queue_bench(pg, cfg["runs"], counts, cfg["queue_rounds"]),
            "w13": lambda: w13_langgraph_saver(pg, cfg["lg_steps"], cfg["lg_rounds"]),
            "profile": lambda: profile(pg, cfg["profile_n"]),
        }
        for part in parts:
            t0 = time.perf_counter()
            print(f"\n== {part} ==", flush=True)
            try:
                got = plan[part]()
            except Exception:
                failed[part] = traceback.format_exc()
                print(f"== {part} FAILED ==\n{failed[part]}", file=sys.stderr, flush=True)
                continue
            finally:
                timings[part] = time.perf_counter() - t0
            rows += got
            print(f"-- {part} ({timings[part]:.1f} s)")
            print_table(got)
            sys.stdout.flush()
    info["loadavg_end"] = os.getloadavg()
    print(f"\ntotal {time.perf_counter() - t_all:.1f} s; load average at the end "
          f"{info['loadavg_end']}")
    if failed:
        print(f"FAILED parts: {', '.join(failed)}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "commit": commit,
                       "command": command, "machine": info, "mode": mode, "config": cfg,
                       "workers": counts, "versions": vers, "server": settings,
                       "seconds": timings, "failed": failed, "rows": rows}, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_rf-worker":
        url, ready, go, at_once, durability = sys.argv[2:7]
        rf_worker(url, ready, go, int(at_once), durability)
    elif len(sys.argv) > 1 and sys.argv[1] == "--_dbos-worker":
        url, schema, ready, stop, executor_id, poll, at_once = sys.argv[2:9]
        dbos_worker(url, schema, ready, stop, executor_id, float(poll), int(at_once))
    else:
        sys.exit(main())
