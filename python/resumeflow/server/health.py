"""``/healthz`` and ``/metrics`` (Prometheus text format; no run ids in it).

Metrics are computed from the store when scraped (nothing is counted per node while nothing
scrapes), from one grouped query in the core (``store_summary``: runs by workflow and status,
node attempts by outcome, durations of completed attempts, OOM failures) rather than by
loading every run; plus active runs, the store's size and the core's own commit and
state-load histograms. ``resumeflow_runs_started_total`` counts the runs this server started."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

import resumeflow as rf
from resumeflow._store_url import is_url

FINISHED = ("completed", "failed", "cancelled")


def store_bytes(path: str) -> int | None:
    """Bytes the store takes on disk: the file, its WAL and its blob files (None for a store
    named by URL, e.g. PostgreSQL: its size is the database server's)."""
    if is_url(path):
        return None
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.path.getsize(path + suffix)
        except OSError:
            pass
    for root, _dirs, files in os.walk(path + ".blobs"):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def health(engine: rf.Engine) -> tuple[int, dict[str, Any]]:
    """The ``/healthz`` answer: 200 when the store can be read, else 503."""
    try:
        summary = engine._core.store_summary(time.time() - 3600)
        doc: dict[str, Any] = {
            "status": "ok",
            "version": rf.__version__,
            "active_runs": len(engine._core.active_runs()),
            "store_bytes": store_bytes(engine.path),
            "failed_runs_last_hour": sum(r["recent"] for r in summary["runs"] if r["status"] == "failed"),
            "commit_latency_p95_s": None,
        }
        latency = engine._core.store_latency()
        if latency is not None:
            doc["commit_latency_p95_s"] = latency["commit"]["recent_p95"]
        return 200, doc
    except Exception as exc:  # noqa: BLE001 - any failure to read means unhealthy
        return 503, {"status": "unavailable", "version": rf.__version__, "error": type(exc).__name__}


class StoreCollector:
    """Computes the store-derived metrics at scrape time."""

    def __init__(self, engine: rf.Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        summary = self.engine._core.store_summary(0.0)
        finished = CounterMetricFamily(
            "resumeflow_runs_finished", "Runs that ended, by workflow and status", labels=["workflow", "status"]
        )
        for row in summary["runs"]:
            if row["status"] in FINISHED:
                finished.add_metric([row["workflow"], row["status"]], row["runs"])
        attempts = CounterMetricFamily(
            "resumeflow_node_attempts", "Node attempts started, by outcome of the latest", labels=["workflow", "node", "outcome"]
        )
        ooms = CounterMetricFamily("resumeflow_oom_retries", "Nodes whose last failure was an out-of-memory", labels=["workflow", "node"])
        hist = HistogramMetricFamily(
            "resumeflow_node_duration_seconds", "Duration of completed node attempts", labels=["workflow", "node"]
        )
        oom: Counter[tuple[str, str]] = Counter()
        bounds = summary["duration_bounds"]
        for row in summary["nodes"]:
            wf_node = (row["workflow"], row["node"])
            if row["attempts"]:
                attempts.add_metric([*wf_node, row["status"]], row["attempts"])
            if row["oom"]:
                oom[wf_node] += row["oom"]
            per_bucket = row["duration_buckets"]
            if row["status"] == "completed" and sum(per_bucket):
                cumulative = list(accumulate(per_bucket))
                buckets = [(str(b), c) for b, c in zip(bounds, cumulative, strict=False)]
                buckets.append(("+Inf", cumulative[-1]))
                hist.add_metric(list(wf_node), buckets, row["duration_sum_s"])
        for wf_node, n in sorted(oom.items()):
            ooms.add_metric(list(wf_node), n)
        latency = self.engine._core.store_latency()
        if latency is not None:
            for name, key, help_text in (
                ("resumeflow_commit_seconds", "commit", "Group commits of the store, as the core timed them"),
                ("resumeflow_state_load_seconds", "state_load", "Run-state loads from the store, as the core timed them"),
            ):
                series = latency[key]
                family = HistogramMetricFamily(name, help_text)
                buckets = [(str(b), c) for b, c in zip(series["bounds"], series["cumulative"], strict=False)]
                buckets.append(("+Inf", series["cumulative"][-1]))
                family.add_metric([], buckets, series["sum"])
                yield family
        active = GaugeMetricFamily("resumeflow_active_runs", "Runs this server executes now")
        active.add_metric([], len(self.engine._core.active_runs()))
        yield from (finished, attempts, ooms, hist, active)
        on_disk = store_bytes(self.engine.path)
        if on_disk is not None:  # a file store; a URL's size is its database server's
            size = GaugeMetricFamily("resumeflow_store_bytes", "Bytes the store takes on disk")
            size.add_metric([], on_disk)
            yield size


class Metrics:
    """The server's Prometheus registry."""

    def __init__(self, engine: rf.Engine) -> None:
        self.registry = CollectorRegistry()
        self.runs_started = PromCounter(
            "resumeflow_runs_started", "Runs started through this server", ["workflow"], registry=self.registry
        )
        self.registry.register(StoreCollector(engine))  # type: ignore[arg-type]
