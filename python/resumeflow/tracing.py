"""OpenTelemetry for resumeflow: spans of run executions, metrics, and the ``resumeflow``
logger's records (docs/tracing.md).

Nothing here is needed for spans: with ``opentelemetry-api`` installed (extra
``resumeflow[otel]``) and a TracerProvider set by the application, every run execution is
traced. ``instrument`` traces one engine with a provider of its own instead (tests, or an
application with several providers); ``instrument_metrics`` exports ``Engine.metrics()`` as
observable instruments.

>>> import resumeflow as rf, resumeflow.tracing, tempfile, os
>>> from opentelemetry.sdk.trace import TracerProvider
>>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
>>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
>>> exporter = InMemorySpanExporter()
>>> provider = TracerProvider()
>>> provider.add_span_processor(SimpleSpanProcessor(exporter))
>>> wf = rf.Workflow("tracing_doc")
>>> @wf.node
... def one():
...     return 1
>>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "t.db")) as engine:
...     resumeflow.tracing.instrument(engine, tracer_provider=provider)
...     _ = engine.run(wf)
>>> sorted(span.name for span in exporter.get_finished_spans())
['node one', 'run tracing_doc']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._metrics import instrument_metrics
from ._tracing import TRACEPARENT_LABEL, TRACESTATE_LABEL, logger, set_tracer_provider

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["TRACEPARENT_LABEL", "TRACESTATE_LABEL", "instrument", "instrument_metrics", "logger"]


def instrument(engine: Engine, tracer_provider: Any = None) -> None:
    """Traces ``engine``'s run executions with ``tracer_provider`` rather than the global
    TracerProvider (``None``: back to the global one). The choice is read once per
    execution, at its start.

    >>> import resumeflow as rf, tempfile, os
    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "i.db")) as engine:
    ...     instrument(engine, TracerProvider())
    ...     instrument(engine, None)
    """
    set_tracer_provider(engine, tracer_provider)
