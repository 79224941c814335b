"""Workflows and a JSON-lines span exporter for tests/test_tracing.py (also imported by its
child processes, which set the global TracerProvider as an application would)."""

from __future__ import annotations

import json
import os
import threading
import time

import resumeflow as rf

# a -> b -> c; b sleeps RF_SLOW_B seconds (so a test can kill the process in it).
traced = rf.Workflow("traced")


@traced.node
def a(x: int):
    return x + 1


@traced.node
def b(a):
    time.sleep(float(os.environ.get("RF_SLOW_B", "0")))
    return a * 10


@traced.node
def c(b):
    return b + 5


def export_to(path: str) -> None:
    """Sets the global TracerProvider: every ended span is appended to ``path`` as one
    JSON line, flushed at once (so a SIGKILL loses only spans not yet ended)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    lock = threading.Lock()

    class JsonLines(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            with lock, open(path, "a") as f:
                for s in spans:
                    f.write(json.dumps({
                        "name": s.name,
                        "trace_id": format(s.context.trace_id, "032x"),
                        "span_id": format(s.context.span_id, "016x"),
                        "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
                        "attributes": dict(s.attributes),
                        "pid": os.getpid(),
                    }) + "\n")
                f.flush()
                os.fsync(f.fileno())
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLines()))
    trace.set_tracer_provider(provider)


def read_spans(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
