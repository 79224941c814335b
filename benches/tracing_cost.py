"""What tracing costs on W1 (a 1,000-node chain of no-op durable nodes, durability "batched"):
no TracerProvider, against an SDK TracerProvider with an in-memory exporter (spans exported
one by one, and through the SDK's batch processor), rounds interleaved, medians.

    python benches/tracing_cost.py [--nodes 1000] [--rounds 7]

Needs ``opentelemetry-sdk`` (requirements-dev.txt). The provider is given to the engine with
``resumeflow.tracing.instrument``; no global provider is set, so the "off" rows pay exactly
what an application without OpenTelemetry pays.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import resumeflow as rf  # noqa: E402
import resumeflow.tracing  # noqa: E402
from workloads import rf_chain_workflow  # noqa: E402


def provider(batch: bool):  # type: ignore[no-untyped-def]
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=8192) if batch else SimpleSpanProcessor(exporter))
    return tp, exporter


def one_run(wf: rf.Workflow, n: int, mode: str) -> float:
    """Seconds for ``engine.run`` of the chain on a fresh store (spans checked afterwards)."""
    tp = exporter = None
    if mode != "off":
        tp, exporter = provider(batch=mode == "batch")
    engine = rf.Engine(os.path.join(tempfile.mkdtemp(), "t.db"), durability="batched")
    try:
        if tp is not None:
            resumeflow.tracing.instrument(engine, tp)
        t0 = time.perf_counter()
        state = engine.run(wf)
        elapsed = time.perf_counter() - t0
        assert state.values[f"s{n - 1}"] == n
    finally:
        engine.close()
    if tp is not None:
        tp.force_flush()
        assert len(exporter.get_finished_spans()) == n + 1, "one run span and a span per node"
        tp.shutdown()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    n = args.nodes
    wf = rf_chain_workflow(n, "tracing_cost")
    wf.validate()
    modes = {"off": "no TracerProvider", "simple": "SDK provider, SimpleSpanProcessor + in-memory",
             "batch": "SDK provider, BatchSpanProcessor + in-memory"}
    for mode in modes:  # warm-up
        one_run(wf, n, mode)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            times[mode].append(one_run(wf, n, mode))
    base = statistics.median(times["off"])
    print(f"W1 chain {n}, durability batched, {args.rounds} interleaved rounds, medians")
    print("| tracing | µs per node | vs off |")
    print("| --- | --- | --- |")
    for mode, label in modes.items():
        med = statistics.median(times[mode])
        print(f"| {label} | {med / n * 1e6:.1f} | {med / base:.2f}× |")


if __name__ == "__main__":
    main()
