"""pytest-benchmark suite for the PostgreSQL workloads of benches/postgres_bench.py, small sizes.

    pytest benches/test_bench_postgres.py [--benchmark-only] [--benchmark-group-by=group]

A throwaway PostgreSQL cluster (tests/pg_cluster.py) serves the module; the tests skip when
this machine has no PostgreSQL server binaries. Each test times the same target as
postgres_bench.py (store opened in ``setup``, outside the clock; a fresh schema per round),
or runs one small measurement of a part that has no prepared form (the queue, the LangGraph
savers) and checks what it reports (those two use no ``benchmark`` fixture, so
``--benchmark-only`` skips them). No test asserts a timing.
"""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import pg_cluster  # noqa: E402
import postgres_bench as pb  # noqa: E402
import workloads as wl  # noqa: E402
from test_bench_workloads import bench_prepared  # noqa: E402

N = 100
WIDTH = 50


def bench(benchmark, prepare, **kw):
    """``bench_prepared``, except under ``--benchmark-disable``, where pytest-benchmark calls
    no teardown: then one ``target()`` here, closed (a DBOS left launched would outlive the
    cluster)."""
    if benchmark.disabled:
        target, close = prepare()
        try:
            return target()
        finally:
            close()
    return bench_prepared(benchmark, prepare, **kw)


@pytest.fixture(scope="module")
def pg():
    try:
        cluster = pg_cluster.PgCluster()
    except pg_cluster.PgUnavailable as e:
        pytest.skip(str(e))
    cluster.start()
    server = pb.Server(cluster.url, cluster)
    try:
        yield server
    finally:
        server.close()
        cluster.stop()


W1_SYSTEMS = {
    "resumeflow-postgres-sync": lambda pg: pb.prepare_rf_pg_chain(pg, N, "sync"),
    "resumeflow-postgres-batched": lambda pg: pb.prepare_rf_pg_chain(pg, N, "batched"),
    "resumeflow-sqlite-sync": lambda pg: wl.prepare_rf_chain(N, "sync"),
    "psycopg-floor": lambda pg: pb.prepare_pg_floor(pg, N),
    "dbos-postgres": lambda pg: pb.prepare_dbos_pg_chain(pg, N),
}


@pytest.mark.parametrize("system", list(W1_SYSTEMS))
def test_w12_chain(benchmark, pg, system):
    if system.startswith("dbos") and not pb.have_dbos():
        pytest.skip("dbos not installed")
    benchmark.group = f"W12 PostgreSQL chain {N}"
    bench(benchmark, lambda: W1_SYSTEMS[system](pg), rounds=3, per_unit=("us_per_node", N))


@pytest.mark.parametrize("durability", ["sync", "batched"])
def test_w12_fanout(benchmark, pg, durability):
    benchmark.group = f"W12 PostgreSQL fan-out {WIDTH}"
    bench(benchmark, lambda: pb.prepare_rf_pg_fanout(pg, WIDTH, durability), rounds=3,
          per_unit=("us_per_node", WIDTH + 2))


def test_queue_two_workers_complete_every_run(pg):
    got = pb.queue_rf(pg, 20, 2, "sync")  # asserts that all 20 completed, each by one worker
    assert got["seconds"] > 0 and got["busy_workers"] >= 1


def test_w13_savers_agree_or_resumeflow_is_skipped(pg):
    pytest.importorskip("langgraph.checkpoint.postgres")
    rows = pb.w13_langgraph_saver(pg, 5, 1)  # asserts equal final states and histories
    systems = {r["system"] for r in rows}
    assert {"InMemorySaver (no storage)", "PostgresSaver", "ResumeflowSaver postgres"} <= systems
    assert all(r["KiB_on_disk"] > 0 for r in rows if r["system"] == "PostgresSaver")
