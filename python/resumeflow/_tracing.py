"""Spans and log records for run executions, on the OpenTelemetry API when the application
configured it (see docs/tracing.md).

The rule that keeps this free when unused: whether an execution is observed is decided once,
where it begins (``start``, ``resume``, ``recover``, a worker's ``claim``): OpenTelemetry must
already be imported by the application and a real TracerProvider set (or one given with
``resumeflow.tracing.instrument``), or the ``resumeflow`` logger must be enabled for INFO
with a handler. Otherwise the engine gets the plain runner and nothing here runs per node.

An observed execution has an ``_Execution``: its ``run WORKFLOW`` span, the open node spans
and a cursor in the run's event log. Node spans start on the worker thread (and are current
there while the node runs); they end at the timestamp of the engine's own ``NodeCompleted`` /
``NodeFailed`` event, which one daemon thread per engine (``_Tracker``) reads from the store
as commits land, so a node span covers the durable commit of its result.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import CoreRun
    from ._engine import Engine

#: The labels holding a run's W3C trace context (set when a traced run starts or is
#: submitted; every later execution continues that trace).
TRACEPARENT_LABEL = "otel.traceparent"
TRACESTATE_LABEL = "otel.tracestate"

logger = logging.getLogger("resumeflow")
logger.addHandler(logging.NullHandler())

_TRACER_NAME = "resumeflow"
#: Run events after which an execution has stopped (then ``LeaseReleased`` follows).
_STOPS = {
    "RunPaused": "paused", "RunCompleted": "completed", "RunFailed": "failed",
    "RunCancelled": "cancelled", "RunQueued": "requeued",
}
#: The transition an execution's first ``LeaseAcquired`` is logged as, by how it began.
_BEGINS = {"start": "started", "resume": "resumed", "recover": "recovered", "claim": "started"}

#: The follower thread reads the logs at most this often (seconds): each read holds the
#: GIL a little, and the spans' end times come from the events, not from the read.
_FOLLOW_EVERY_S = 0.1

#: Providers given to ``instrument`` per engine (else the global one is used).
_explicit: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_trackers: weakref.WeakKeyDictionary[Any, _Tracker] = weakref.WeakKeyDictionary()
#: The node span of the attempt running on this thread, for ``attempt_failed``.
_local = threading.local()


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def set_tracer_provider(engine: Engine, provider: Any) -> None:
    """Traces ``engine``'s runs with ``provider`` instead of the global TracerProvider
    (``None`` goes back to the global one); see ``resumeflow.tracing.instrument``."""
    if provider is None:
        _explicit.pop(engine, None)
    else:
        _explicit[engine] = provider


def tracer_for(engine: Engine) -> Any:
    """The tracer for one execution of a run, or None when nothing would record its spans:
    OpenTelemetry not imported by the application, or only the default (proxy / no-op)
    provider set. The one check per execution; it never imports OpenTelemetry itself.

    >>> import resumeflow as rf, tempfile, os
    >>> engine = rf.Engine(os.path.join(tempfile.mkdtemp(), "t.db"))
    >>> tracer_for(engine) is None  # no TracerProvider configured in this process
    True
    >>> engine.close()
    """
    provider = _explicit.get(engine)
    if provider is None:
        if "opentelemetry.trace" not in sys.modules and not os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"):
            return None
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            return None
    from . import __version__

    return provider.get_tracer(_TRACER_NAME, __version__)


def logs_wanted() -> bool:
    """Whether run transitions are logged: the ``resumeflow`` logger is enabled for INFO
    and some handler other than its ``NullHandler`` would receive the records.

    >>> logs_wanted()  # logging not configured
    False
    """
    if not logger.isEnabledFor(logging.INFO):
        return False
    current: logging.Logger | None = logger
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        current = current.parent if current.propagate else None
    return False


def _log(level: int, message: str, *args: Any, **fields: Any) -> None:
    """One structured record: the fields are ``extra`` attributes of the record."""
    fields.setdefault("node_id", None)
    fields.setdefault("attempt", None)
    logger.log(level, message, *args, extra=fields)


# --- hooks called by the engine ------------------------------------------------------------


def execute(
    engine: Engine,
    workflow: str,
    kind: str,
    runner: Any,
    call: Callable[[Any, dict[str, str] | None], CoreRun],
    *,
    labels: dict[str, str] | None = None,
    run_id: str | None = None,
) -> CoreRun:
    """Begins one execution (``kind`` ``start`` or ``resume``): ``call(runner, labels)``
    starts it in the core; when observed, with a runner that opens node spans and labels
    carrying the new run span's trace context."""
    tracer = tracer_for(engine)
    if tracer is None and not logs_wanted():
        return call(runner, labels)
    stored = labels
    if run_id is not None and labels is None and tracer is not None:
        try:
            stored = engine._core.get_current_state(run_id).get("labels") or {}
        except Exception:  # noqa: BLE001 - the call itself reports a missing run
            stored = {}
    ex = _Execution(engine, workflow, kind, tracer, run_id)
    ex.begin(stored, own_caller=kind == "start")
    if labels is not None and ex.span is not None:
        labels = {**labels, **ex.trace_labels()}
    try:
        core = call(_TracedRunner(runner, ex) if ex.span is not None else runner, labels)
    except BaseException as exc:
        ex.abort(exc)
        raise
    ex.cursor = 0 if kind == "start" else None
    _tracker(engine).watch(ex, core)
    return core


def submit_labels(engine: Engine, workflow: str, labels: dict[str, str]) -> dict[str, str]:
    """Labels for a submitted run: with tracing on, a short ``submit WORKFLOW`` span (child
    of the caller's current span) is emitted and its context stored, so whichever worker
    claims the run continues this trace."""
    tracer = tracer_for(engine)
    if tracer is None:
        return labels
    from opentelemetry import trace

    parent = _extract(labels)
    with tracer.start_as_current_span(
        f"submit {workflow}", context=parent, kind=trace.SpanKind.PRODUCER,
        attributes={"resumeflow.workflow": workflow},
    ) as span:
        return {**labels, **_inject(span)}


def shared_runners(engine: Engine, kind: str, table: Any) -> Any:
    """``recover``'s and ``claim``'s ``(graph, runner)`` pairs (a dict or a list), with
    runners that open node spans when traced; the run ids are not known in advance, so
    those runners find (or begin) their run's execution by id."""
    tracer = tracer_for(engine)
    if tracer is None and not logs_wanted():
        if engine in _trackers:
            _trackers[engine].pending_tracer.pop(kind, None)
        return table
    tracker = _tracker(engine)
    tracker.pending_tracer[kind] = tracer
    if tracer is None:
        return table
    if isinstance(table, Mapping):
        return {name: (graph, tracker.shared_runner(runner, kind)) for name, (graph, runner) in table.items()}
    return [(graph, tracker.shared_runner(runner, kind)) for graph, runner in table]


def began(engine: Engine, kind: str, cores: list[CoreRun]) -> None:
    """Runs that ``recover`` or ``claim`` began, to be observed if ``shared_runners`` chose
    to (their execution may already exist: a node attempt got there first)."""
    tracker = _trackers.get(engine)
    if tracker is None or kind not in tracker.pending_tracer:
        return
    tracer = tracker.pending_tracer[kind]
    for core in cores:
        ex = tracker.lookup(str(core.id), None, kind, tracer)
        tracker.watch(ex, core)


def finished(engine: Engine, run_id: str) -> None:
    """The caller saw the run stop (``Run.wait``, a worker reaping it): end its spans now,
    so they are exported before the caller goes on."""
    tracker = _trackers.get(engine)
    if tracker is not None:
        tracker.finish(run_id)


def closing(engine: Engine) -> None:
    """The engine closes its store: end the spans of every run observed."""
    tracker = _trackers.get(engine)
    if tracker is not None:
        tracker.finish_all()


def attempt_failed(exc: BaseException, core_ctx: Any, failure: tuple[Any, ...]) -> None:
    """A node attempt failed on this worker thread: record the exception on its span and
    log it (``failure`` is the runner's failure tuple: error, retryable, peak, override).
    Never raises: a broken exporter or handler must not change the attempt's outcome."""
    try:
        _attempt_failed(exc, core_ctx, failure)
    except Exception:  # noqa: BLE001 - observability never fails a node
        pass


def _attempt_failed(exc: BaseException, core_ctx: Any, failure: tuple[Any, ...]) -> None:
    span = getattr(_local, "span", None)
    if span is not None:
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(failure[1])))
        span.set_attribute("resumeflow.retryable", bool(failure[2]))
        from ._failures import is_oom

        if is_oom(exc):
            event: dict[str, Any] = {"exception.type": type(exc).__qualname__}
            if failure[3] is not None:
                event["resumeflow.peak_memory"] = int(failure[3])
            event.update(_override_attributes(failure[4]))
            span.add_event("out_of_memory", event)
    if logger.isEnabledFor(logging.WARNING):
        _log(
            logging.WARNING, "attempt %d of node %r of run %r failed: %s",
            int(core_ctx.attempt), str(core_ctx.node_id), str(core_ctx.run_id), failure[1],
            run_id=str(core_ctx.run_id), node_id=str(core_ctx.node_id),
            attempt=int(core_ctx.attempt), event="attempt_failed", error=str(failure[1]),
            retryable=bool(failure[2]),
        )


def _override_attributes(raw: bytes | None) -> dict[str, Any]:
    """The inputs an OOM shrank, as span attributes ``resumeflow.inputs_override.PARAM``."""
    if not raw:
        return {}
    from . import _codec

    try:
        shrunk = _codec.decode(raw)
    except Exception:  # noqa: BLE001 - an attribute is not worth a failure
        return {}
    out = {}
    for name, value in dict(shrunk).items():
        ok = isinstance(value, (bool, int, float, str))
        out[f"resumeflow.inputs_override.{name}"] = value if ok else repr(value)
    return out


def _inject(span: Any) -> dict[str, str]:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    out = {TRACEPARENT_LABEL: carrier["traceparent"]} if "traceparent" in carrier else {}
    if carrier.get("tracestate"):
        out[TRACESTATE_LABEL] = carrier["tracestate"]
    return out


def _extract(labels: Mapping[str, str] | None) -> Any:
    """The context stored in a run's labels, or None."""
    if not labels or TRACEPARENT_LABEL not in labels:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": labels[TRACEPARENT_LABEL]}
    if TRACESTATE_LABEL in labels:
        carrier["tracestate"] = labels[TRACESTATE_LABEL]
    return TraceContextTextMapPropagator().extract(carrier)


def _tracker(engine: Engine) -> _Tracker:
    tracker = _trackers.get(engine)
    if tracker is None:
        tracker = _trackers.setdefault(engine, _Tracker(engine))
    return tracker


# --- one observed execution ----------------------------------------------------------------


class _Execution:
    """One execution of a run: its run span, open node spans and cursor in the event log."""

    def __init__(self, engine: Engine, workflow: str | None, kind: str, tracer: Any, run_id: str | None) -> None:
        self.core_engine = engine._core
        self.workflow = workflow
        self.kind = kind
        self.tracer = tracer
        self.run_id = run_id
        self.span: Any = None
        self.started_ns = 0
        self.context: Any = None
        #: Event seq this execution's events come after (None: find its LeaseAcquired).
        self.cursor: int | None = None
        self.handle: CoreRun | None = None
        #: ``lock`` guards the span tables (held briefly: worker threads take it per
        #: attempt); ``drain_lock`` makes one reader of the log at a time (held across
        #: store reads).
        self.lock = threading.RLock()
        self.drain_lock = threading.Lock()
        #: Node spans whose attempt's outcome is not in the log yet: span, start (ns); and
        #: each node's latest attempt (the one a ``NodeCompleted`` ends).
        self.open: dict[tuple[str, int], tuple[Any, int]] = {}
        self.latest: dict[str, int] = {}
        #: Failed attempts whose retry delay follows: span, end (ns), error.
        self.awaiting_retry: dict[str, tuple[Any, int, str]] = {}
        self.executed: set[str] = set()
        self.status: str | None = None
        self.stopped_at: float | None = None
        self.ended = False

    def begin(self, stored: Mapping[str, str] | None, *, own_caller: bool) -> None:
        """Starts the run span: a child of the stored trace context when the run has one
        (a resume, a recovery, a claim), else of the caller's current span."""
        if self.tracer is None:
            return
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        parent = _extract(stored)
        links = []
        if parent is not None and not own_caller:
            caller = trace.get_current_span().get_span_context()
            if caller.is_valid:
                links.append(trace.Link(caller, {"resumeflow.link": "caller"}))
        attributes: dict[str, Any] = {"resumeflow.execution": self.kind}
        if self.workflow:
            attributes["resumeflow.workflow"] = self.workflow
        if self.run_id:
            attributes["resumeflow.run_id"] = self.run_id
        self.started_ns = time.time_ns()
        self.span = self.tracer.start_span(
            f"run {self.workflow}", context=parent, attributes=attributes, links=links,
            start_time=self.started_ns,
        )
        self.context = trace.set_span_in_context(self.span, otel_context.Context())

    def trace_labels(self) -> dict[str, str]:
        return _inject(self.span)

    def abort(self, exc: BaseException) -> None:
        """The core refused to begin the execution: the run span ends with that error."""
        if self.span is not None:
            from opentelemetry.trace import Status, StatusCode

            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            self.span.end()
        self.ended = True

    # node spans (worker threads)

    def node_started(self, node_id: str, attempt: int) -> Any:
        start_ns = time.time_ns()
        span = self.tracer.start_span(
            f"node {node_id}", context=self.context, start_time=start_ns,
            attributes={
                "resumeflow.run_id": self.run_id or "", "resumeflow.workflow": self.workflow or "",
                "resumeflow.node_id": node_id, "resumeflow.attempt": attempt,
            },
        )
        with self.lock:
            self.executed.add(node_id)
            if self.ended:  # the execution stopped while this attempt began: nothing to wait for
                return span
            self.open[(node_id, attempt)] = (span, start_ns)
            self.latest[node_id] = attempt
        return span

    def node_returned(self, node_id: str, attempt: int, span: Any) -> None:
        with self.lock:
            if self.ended and (node_id, attempt) not in self.open:
                span.end()

    # the event log (tracker thread, or a caller that saw the run stop)

    def drain(self) -> None:
        """Applies this execution's events committed since the last look."""
        with self.drain_lock:
            if self.ended or self.run_id is None:
                return
            if self.cursor is None:
                self.cursor = self._execution_start()
            while True:
                rows = self.core_engine.events_after(self.run_id, self.cursor, 1000)
                with self.lock:
                    for seq, at, kind, node, raw in rows:
                        self.cursor = seq
                        self._apply(at, kind, node, raw)
                if len(rows) < 1000:
                    return

    def _execution_start(self) -> int:
        """The seq before this execution's ``LeaseAcquired`` (the latest one in the log)."""
        last = 0
        if self.run_id is None:
            return last
        for seq, _at, kind, _node in self.core_engine.events(self.run_id):
            if kind == "LeaseAcquired":
                last = seq - 1
        return last

    def _apply(self, at: float, kind: str, node: str | None, raw: bytes) -> None:
        if kind == "LeaseAcquired":
            if self.status is None:
                self.status = "running"
                self._log_run(_BEGINS.get(self.kind, "started"))
            return
        if kind in ("NodeCompleted", "NodeFailed", "NodeRetryScheduled"):
            if self.span is not None:
                self._node_event(at, kind, node or "", raw)
            return
        if kind in _STOPS:
            self.status = _STOPS[kind]
            self.stopped_at = at
            error = None
            if kind == "RunFailed":
                from ._events import payload

                error = payload(raw).get("error")
            self._log_run(self.status, error=error)
        elif kind == "LeaseReleased" and self.stopped_at is not None:
            self.stopped_at = at

    def _node_event(self, at: float, kind: str, node: str, raw: bytes) -> None:
        if kind == "NodeCompleted":  # the common case: no payload to decode
            opened = self.open.pop((node, self.latest.get(node, 0)), None)
            if opened is not None:
                opened[0].end(end_time=max(_ns(at), opened[1]))
            return
        from ._events import payload

        data = payload(raw)
        if kind == "NodeRetryScheduled":
            waiting = self.awaiting_retry.pop(node, None)
            if waiting is not None:
                span, end_ns, error = waiting
                event: dict[str, Any] = {"resumeflow.retry.delay_s": data.get("delay_ms", 0) / 1000}
                reason = data.get("reason") or error
                if reason:
                    event["resumeflow.retry.reason"] = str(reason)
                span.add_event("retry", event, timestamp=end_ns)
                span.end(end_time=end_ns)
            return
        opened = self.open.pop((node, int(data.get("attempt", 0))), None)
        if opened is None:
            return
        span, start_ns = opened
        end_ns = max(_ns(at), start_ns)
        error = str(data.get("error", ""))
        span.set_attribute("resumeflow.error", error)
        if data.get("peak_memory") is not None:
            span.set_attribute("resumeflow.peak_memory", int(data["peak_memory"]))
        if data.get("will_retry"):
            self.awaiting_retry[node] = (span, end_ns, error)
        else:
            span.end(end_time=end_ns)

    def _log_run(self, transition: str, error: str | None = None) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {"run_id": self.run_id, "workflow": self.workflow, "event": f"run_{transition}",
                                  "transition": transition}
        if error is not None:
            fields["error"] = error
        _log(logging.INFO, "run %r (%s) %s", self.run_id, self.workflow, transition, **fields)

    def stopped(self) -> bool:
        return self.stopped_at is not None or (self.handle is not None and self.handle.done())

    def finish(self) -> None:
        """Ends the run span (and any node span the log did not end) at the stop's time."""
        try:
            self.drain()
        except Exception:  # noqa: BLE001 - a closed store: end with what was seen
            pass
        with self.drain_lock, self.lock:
            if self.ended:
                return
            self.ended = True
            if self.span is None:
                return
            end_ns = _ns(self.stopped_at) if self.stopped_at is not None else time.time_ns()
            end_ns = max(end_ns, self.started_ns)
            for span, failed_ns, _error in self.awaiting_retry.values():
                span.end(end_time=failed_ns)
            for span, start_ns in self.open.values():
                span.set_attribute("resumeflow.abandoned", True)
                span.end(end_time=max(end_ns, start_ns))
            self.awaiting_retry.clear()
            self.open.clear()
            self._end_run_span(end_ns)

    def _end_run_span(self, end_ns: int) -> None:
        from opentelemetry.trace import Status, StatusCode

        span = self.span
        span.set_attribute("resumeflow.run_id", self.run_id or "")
        if self.workflow:
            span.set_attribute("resumeflow.workflow", self.workflow)
        span.set_attribute("resumeflow.nodes_executed", len(self.executed))
        try:
            state = self.core_engine.get_current_state(self.run_id or "")
            completed = [n for n, s in state["nodes"].items() if s["status"] == "completed"]
            skipped = len([n for n in completed if n not in self.executed])
            span.set_attribute("resumeflow.nodes_skipped", skipped)
            span.set_attribute("resumeflow.status", str(state["status"]))
            if state["status"] == "failed":
                span.set_status(Status(StatusCode.ERROR, str(state.get("error") or "run failed")))
        except Exception:  # noqa: BLE001 - a closed store: the counts are left out
            if self.status:
                span.set_attribute("resumeflow.status", self.status)
        span.end(end_time=end_ns)


class _TracedRunner:
    """The engine's runner for one traced execution: each attempt runs inside its node span."""

    __slots__ = ("base", "execution", "tracker", "kind")

    def __init__(self, base: Any, execution: _Execution | None = None, tracker: _Tracker | None = None,
                 kind: str = "") -> None:
        self.base = base
        self.execution = execution
        self.tracker = tracker
        self.kind = kind

    def __call__(self, node_id: str, attempt: int, inputs: Any, inputs_override: Any, core_ctx: Any) -> Any:
        ex = self.execution
        if ex is None:
            assert self.tracker is not None
            ex = self.tracker.lookup(str(core_ctx.run_id), self.base.workflow.name, self.kind, None)
        elif ex.run_id is None:
            ex.run_id = str(core_ctx.run_id)
        if ex.span is None:
            return self.base(node_id, attempt, inputs, inputs_override, core_ctx)
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        span = ex.node_started(node_id, attempt)
        token = otel_context.attach(trace.set_span_in_context(span))
        _local.span = span
        try:
            return self.base(node_id, attempt, inputs, inputs_override, core_ctx)
        finally:
            _local.span = None
            otel_context.detach(token)
            ex.node_returned(node_id, attempt, span)


class _Tracker:
    """An engine's observed executions, and the daemon thread that follows their logs."""

    def __init__(self, engine: Engine) -> None:
        self.core_engine = engine._core
        self.engine_ref = weakref.ref(engine)
        self.lock = threading.Lock()
        self.executions: dict[str, _Execution] = {}
        self.thread: threading.Thread | None = None
        #: The tracer ``shared_runners`` chose for the current recover / claim, by kind.
        self.pending_tracer: dict[str, Any] = {}
        self.runners: dict[tuple[int, str], _TracedRunner] = {}

    def shared_runner(self, runner: Any, kind: str) -> _TracedRunner:
        key = (id(runner), kind)
        traced = self.runners.get(key)
        if traced is None or traced.base is not runner:
            traced = self.runners[key] = _TracedRunner(runner, tracker=self, kind=kind)
        return traced

    def lookup(self, run_id: str, workflow: str | None, kind: str, tracer: Any) -> _Execution:
        """The execution of ``run_id`` being observed, begun now if none is. Whoever gets
        here first begins its run span; every other caller waits for that (a node attempt
        that found the execution before its span existed ran untraced: regression test
        ``test_run_killed_and_recovered_in_new_process_stays_in_its_trace``)."""
        with self.lock:
            ex = self.executions.get(run_id)
            if ex is None or ex.ended:
                engine = self.engine_ref()
                if engine is None:
                    raise RuntimeError("resumeflow: the engine was closed")
                if tracer is None:
                    tracer = self.pending_tracer.get(kind)
                ex = _Execution(engine, workflow, kind, tracer, run_id)
                self.executions[run_id] = ex
        with ex.lock:
            if ex.span is None and ex.tracer is not None:
                stored = None
                try:
                    state = self.core_engine.get_current_state(run_id)
                    stored = state.get("labels") or {}
                    ex.workflow = ex.workflow or state["workflow"]
                except Exception:  # noqa: BLE001 - traced without the stored context
                    stored = None
                ex.begin(stored, own_caller=False)
        return ex

    def watch(self, ex: _Execution, core: CoreRun) -> None:
        ex.handle = core
        if ex.run_id is None:
            ex.run_id = str(core.id)
        if ex.span is not None:
            ex.span.set_attribute("resumeflow.run_id", ex.run_id)
        with self.lock:
            self.executions[ex.run_id] = ex
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._follow, name="resumeflow-tracing", daemon=True)
                self.thread.start()

    def _follow(self) -> None:
        marker = 0
        while True:
            with self.lock:
                live = [ex for ex in self.executions.values() if not ex.ended]
                if not live:
                    self.thread = None
                    return
            try:
                marker = self.core_engine.wait_for_change(marker, 0.25)
                time.sleep(_FOLLOW_EVERY_S)  # span end times come from the log: no hurry
                for ex in live:
                    ex.drain()
                    if ex.stopped():
                        self._finish(ex)
            except Exception:  # noqa: BLE001 - the store closed: `closing` ends the spans
                with self.lock:
                    self.thread = None
                return

    def _finish(self, ex: _Execution) -> None:
        ex.finish()
        with self.lock:
            if self.executions.get(ex.run_id or "") is ex:
                del self.executions[ex.run_id or ""]

    def finish(self, run_id: str) -> None:
        with self.lock:
            ex = self.executions.get(run_id)
        if ex is not None:
            self._finish(ex)

    def finish_all(self) -> None:
        with self.lock:
            live = list(self.executions.values())
        for ex in live:
            self._finish(ex)
