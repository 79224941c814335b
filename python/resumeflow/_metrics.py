"""``Engine.metrics()``: the store's run and node counts and the core's latency histograms in
one dict, and their export as OpenTelemetry observable instruments (``instrument_metrics``)
named like the Prometheus metrics of ``resumeflow serve`` (docs/service.md, "Metrics")."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._engine import Engine

#: Statuses a run ends with (``resumeflow_runs_finished_total``).
FINISHED = ("completed", "failed", "cancelled")


def snapshot(engine: Engine, recent_seconds: float = 3600.0) -> dict[str, Any]:
    """The engine's metrics now, from two reads in the core (``store_summary`` and
    ``store_latency``); see ``Engine.metrics`` for the keys.

    >>> import resumeflow as rf, tempfile, os
    >>> wf = rf.Workflow("metrics_doc")
    >>> @wf.node
    ... def one():
    ...     return 1
    >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "m.db")) as engine:
    ...     _ = engine.run(wf)
    ...     m = snapshot(engine)
    >>> m["runs_total"], m["runs_by_status"], m["node_attempts_total"], m["retries_total"]
    (1, {'completed': 1}, 1, 0)
    """
    since = time.time() - recent_seconds
    summary = engine._core.store_summary(since)
    latency = engine._core.store_latency()
    runs = [dict(row) for row in summary["runs"]]
    by_status: dict[str, int] = {}
    started: dict[str, int] = {}
    finished: dict[str, dict[str, int]] = {}
    for row in runs:
        by_status[row["status"]] = by_status.get(row["status"], 0) + row["runs"]
        if row["status"] != "queued":
            started[row["workflow"]] = started.get(row["workflow"], 0) + row["runs"]
        if row["status"] in FINISHED:
            finished.setdefault(row["workflow"], {})[row["status"]] = row["runs"]
    nodes = []
    for row in summary["nodes"]:
        node = dict(row)
        node["duration_count"] = sum(row["duration_buckets"]) if row["status"] == "completed" else 0
        # Attempts beyond each started node's first.
        node["retries"] = max(0, row["attempts"] - row["started"])
        nodes.append(node)
    return {
        "runs": runs,
        "runs_total": sum(by_status.values()),
        "runs_by_status": by_status,
        "runs_started": started,
        "runs_finished": finished,
        "nodes": nodes,
        "node_attempts_total": sum(n["attempts"] for n in nodes),
        "retries_total": sum(n["retries"] or 0 for n in nodes),
        "oom_retries_total": sum(n["oom"] for n in nodes),
        "duration_bounds": list(summary["duration_bounds"]),
        "commit_seconds": latency["commit"] if latency else None,
        "state_load_seconds": latency["state_load"] if latency else None,
        "active_runs": len(engine._core.active_runs()),
        "recent_since": since,
    }


class _Snapshots:
    """One snapshot per collection: the instruments' callbacks run one after another."""

    def __init__(self, engine: Engine, max_age_s: float = 0.5) -> None:
        self.engine = engine
        self.max_age_s = max_age_s
        self.lock = threading.Lock()
        self.taken = 0.0
        self.value: dict[str, Any] | None = None

    def get(self) -> dict[str, Any]:
        with self.lock:
            now = time.monotonic()
            if self.value is None or now - self.taken > self.max_age_s:
                self.value = snapshot(self.engine)
                self.taken = now
            return self.value


def instrument_metrics(engine: Engine, meter_provider: Any = None) -> list[Any]:
    """Registers observable instruments reading ``engine.metrics()`` on ``meter_provider``
    (the global MeterProvider when None); returns them. Names follow the Prometheus metrics
    of ``resumeflow serve``; a histogram there is a ``_sum`` and a ``_count`` counter here
    (the OpenTelemetry API has no observable histogram).

    >>> import resumeflow as rf, tempfile, os
    >>> from opentelemetry.sdk.metrics import MeterProvider
    >>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    >>> reader = InMemoryMetricReader()
    >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "m.db")) as engine:
    ...     instruments = instrument_metrics(engine, MeterProvider(metric_readers=[reader]))
    ...     names = sorted(m.name for rm in reader.get_metrics_data().resource_metrics
    ...                    for sm in rm.scope_metrics for m in sm.metrics)
    >>> "resumeflow_active_runs" in names, len(instruments)
    (True, 11)
    """
    from opentelemetry import metrics
    from opentelemetry.metrics import Observation

    from . import __version__

    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    meter = provider.get_meter("resumeflow", __version__)
    snaps = _Snapshots(engine)

    def runs_started(_options: Any) -> list[Observation]:
        return [Observation(n, {"workflow": wf}) for wf, n in snaps.get()["runs_started"].items()]

    def runs_finished(_options: Any) -> list[Observation]:
        return [
            Observation(n, {"workflow": wf, "status": status})
            for wf, by in snaps.get()["runs_finished"].items() for status, n in by.items()
        ]

    def node_rows(field: str, *, outcome: bool = False, completed_only: bool = False) -> Any:
        def observe(_options: Any) -> list[Observation]:
            out = []
            for n in snaps.get()["nodes"]:
                if completed_only and n["status"] != "completed":
                    continue
                labels = {"workflow": n["workflow"], "node": n["node"]}
                if outcome:
                    labels["outcome"] = n["status"]
                if n[field] or field not in ("oom", "attempts"):  # as /metrics: no empty series
                    out.append(Observation(n[field], labels))
            return out
        return observe

    def latency(key: str, field: str) -> Any:
        def observe(_options: Any) -> list[Observation]:
            series = snaps.get()[key]
            return [] if series is None else [Observation(series[field])]
        return observe

    def active(_options: Any) -> list[Observation]:
        return [Observation(snaps.get()["active_runs"])]

    counter = meter.create_observable_counter
    return [
        counter("resumeflow_runs_started_total", [runs_started], description="Runs that left the queue, by workflow"),
        counter("resumeflow_runs_finished_total", [runs_finished], description="Runs that ended, by workflow and status"),
        counter("resumeflow_node_attempts_total", [node_rows("attempts", outcome=True)],
                description="Node attempts started, by outcome of the latest"),
        counter("resumeflow_oom_retries_total", [node_rows("oom")],
                description="Nodes whose last failure was an out-of-memory"),
        counter("resumeflow_node_duration_seconds_sum", [node_rows("duration_sum_s", completed_only=True)], unit="s",
                description="Total duration of completed node attempts"),
        counter("resumeflow_node_duration_seconds_count", [node_rows("duration_count", completed_only=True)],
                description="Completed node attempts timed"),
        counter("resumeflow_commit_seconds_sum", [latency("commit_seconds", "sum")], unit="s",
                description="Time spent in group commits of the store"),
        counter("resumeflow_commit_seconds_count", [latency("commit_seconds", "count")],
                description="Group commits of the store"),
        counter("resumeflow_state_load_seconds_sum", [latency("state_load_seconds", "sum")], unit="s",
                description="Time spent loading run states"),
        counter("resumeflow_state_load_seconds_count", [latency("state_load_seconds", "count")],
                description="Run-state loads from the store"),
        meter.create_observable_gauge("resumeflow_active_runs", [active], description="Runs this engine executes now"),
    ]
