"""OpenTelemetry spans, trace continuity across processes, metrics and log records
(docs/tracing.md). Spans go to the SDK's InMemorySpanExporter through a TracerProvider given
to ``resumeflow.tracing.instrument`` (the global provider can be set once per process, so
tests of the global one run in child processes)."""

from __future__ import annotations

import json
import logging
import os
import signal
import textwrap

import pytest

pytest.importorskip("opentelemetry.sdk")

import resumeflow as rf  # noqa: E402
import resumeflow.tracing  # noqa: E402
from conftest import python, spawn, wait_for  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402
from rf_tracing_workflows import read_spans, traced  # noqa: E402


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def engine(db, spans):
    provider, _ = spans
    with rf.Engine(db) as e:
        resumeflow.tracing.instrument(e, tracer_provider=provider)
        yield e


def by_name(exporter, name):
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_span_tree_of_a_three_node_run(engine, spans):
    _, exporter = spans
    state = engine.run(traced, {"x": 1}, run_id="tree")
    assert state.values == {"a": 2, "b": 20, "c": 25}
    [run] = by_name(exporter, "run traced")
    nodes = [s for s in exporter.get_finished_spans() if s.name.startswith("node ")]
    assert sorted(s.name for s in nodes) == ["node a", "node b", "node c"]
    for s in nodes:
        assert s.parent.span_id == run.context.span_id
        assert s.context.trace_id == run.context.trace_id
        assert run.start_time <= s.start_time <= s.end_time <= run.end_time
        assert s.attributes["resumeflow.run_id"] == "tree"
        assert s.attributes["resumeflow.workflow"] == "traced"
        assert s.attributes["resumeflow.node_id"] == s.name.split()[1]
        assert s.attributes["resumeflow.attempt"] == 1
    assert run.parent is None
    assert run.attributes["resumeflow.run_id"] == "tree"
    assert run.attributes["resumeflow.workflow"] == "traced"
    assert run.attributes["resumeflow.status"] == "completed"
    assert run.attributes["resumeflow.nodes_skipped"] == 0
    # The node span ends when the engine committed the node's completion (its event's time).
    events = {(e["kind"], e["node"]): e["at"] for e in engine.events("tree", after_seq=0)}
    for s in nodes:
        assert s.end_time == int(events[("NodeCompleted", s.name.split()[1])] * 1e9)
    # The run's trace context is stored with it.
    parent = engine.get_current_state("tree").labels[resumeflow.tracing.TRACEPARENT_LABEL]
    assert parent.split("-")[1] == format(run.context.trace_id, "032x")


def test_node_span_is_current_while_the_node_runs(db, spans):
    provider, exporter = spans
    wf = rf.Workflow("nested")

    @wf.node
    def work():
        with provider.get_tracer("user").start_as_current_span("user step"):
            return trace.get_current_span().get_span_context().trace_id

    @wf.node
    async def later(work):
        with provider.get_tracer("user").start_as_current_span("user async step"):
            return work

    with rf.Engine(db) as engine:
        resumeflow.tracing.instrument(engine, provider)
        engine.run(wf)
    [node] = by_name(exporter, "node work")
    [user] = by_name(exporter, "user step")
    assert user.parent.span_id == node.context.span_id
    [async_node] = by_name(exporter, "node later")
    [async_user] = by_name(exporter, "user async step")
    assert async_user.parent.span_id == async_node.context.span_id


def test_failed_then_retried_node_has_two_spans(db, spans):
    provider, exporter = spans
    wf = rf.Workflow("flaky")

    @wf.node(retry=rf.RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False))
    def shaky(ctx: rf.NodeContext):
        if ctx.attempt == 1:
            raise TimeoutError("upstream slow")
        return ctx.attempt

    with rf.Engine(db) as engine:
        resumeflow.tracing.instrument(engine, provider)
        assert engine.run(wf, run_id="f").values == {"shaky": 2}
    first, second = sorted(by_name(exporter, "node shaky"), key=lambda s: s.attributes["resumeflow.attempt"])
    assert (first.attributes["resumeflow.attempt"], second.attributes["resumeflow.attempt"]) == (1, 2)
    assert first.status.status_code == StatusCode.ERROR
    [exc] = [e for e in first.events if e.name == "exception"]
    assert exc.attributes["exception.type"] == "TimeoutError"
    assert exc.attributes["exception.message"] == "upstream slow"
    [retry] = [e for e in first.events if e.name == "retry"]
    assert retry.attributes["resumeflow.retry.delay_s"] == pytest.approx(0.01, abs=0.005)
    assert "upstream slow" in retry.attributes["resumeflow.retry.reason"]
    assert second.status.status_code != StatusCode.ERROR and not second.events
    assert first.end_time <= second.start_time


def test_final_failure_marks_the_run_span(db, spans):
    provider, exporter = spans
    wf = rf.Workflow("broken")

    @wf.node(retry=False)
    def boom():
        raise ValueError("bad input")

    with rf.Engine(db) as engine:
        resumeflow.tracing.instrument(engine, provider)
        with pytest.raises(rf.RunFailed):
            engine.run(wf)
    [node] = by_name(exporter, "node boom")
    [run] = by_name(exporter, "run broken")
    assert node.status.status_code == StatusCode.ERROR
    assert node.events[0].attributes["exception.type"] == "ValueError"
    assert run.status.status_code == StatusCode.ERROR
    assert run.attributes["resumeflow.status"] == "failed"


def test_oom_retry_event_with_peak_and_shrunk_inputs(db, spans):
    provider, exporter = spans
    wf = rf.Workflow("oom")

    @wf.node(retry=rf.RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False),
             on_oom=rf.shrink("batch_size", factor=0.5))
    def fit(batch_size: int = 64):
        if batch_size > 32:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch_size

    with rf.Engine(db) as engine:
        resumeflow.tracing.instrument(engine, provider)
        assert engine.run(wf).values == {"fit": 32}
    first = next(s for s in by_name(exporter, "node fit") if s.attributes["resumeflow.attempt"] == 1)
    [oom] = [e for e in first.events if e.name == "out_of_memory"]
    assert oom.attributes["resumeflow.inputs_override.batch_size"] == 32
    assert [e.name for e in first.events] == ["exception", "out_of_memory", "retry"]


def test_resume_skips_completed_nodes_without_spans(engine, spans):
    _, exporter = spans
    paused = engine.execute_until(traced, "a", {"x": 1}, run_id="skip")
    assert paused.status == "paused"
    exporter.clear()
    engine.resume("skip", traced).wait()
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names == ["node b", "node c", "run traced"], "a completed before: no span"
    [run] = by_name(exporter, "run traced")
    assert run.attributes["resumeflow.nodes_skipped"] == 1
    assert run.attributes["resumeflow.execution"] == "resume"
    stored = engine.get_current_state("skip").labels[resumeflow.tracing.TRACEPARENT_LABEL]
    _, trace_id, span_id, _ = stored.split("-")
    assert format(run.context.trace_id, "032x") == trace_id, "the resume continues the trace"
    assert format(run.parent.span_id, "016x") == span_id, "as a child of the first run span"


def test_queued_run_claimed_by_a_worker_continues_the_submit_trace(engine, spans):
    _, exporter = spans
    run = engine.submit(traced, {"x": 2}, run_id="queued")
    [submit] = by_name(exporter, "submit traced")
    assert engine.work([traced], max_runs=1) == 1
    assert run.wait(timeout=30).status == "completed"
    [run_span] = by_name(exporter, "run traced")
    assert run_span.context.trace_id == submit.context.trace_id
    assert run_span.parent.span_id == submit.context.span_id
    assert run_span.attributes["resumeflow.execution"] == "claim"
    assert sorted(s.name for s in exporter.get_finished_spans() if s.name.startswith("node")) == [
        "node a", "node b", "node c"]


def test_run_killed_and_recovered_in_new_process_stays_in_its_trace(db, tmp_path):
    """The child sets the global TracerProvider (as an application does) and is SIGKILLed
    inside node b; a new process recovers the run: its spans are in the original trace."""
    out = str(tmp_path / "spans.jsonl")
    code = textwrap.dedent(f"""
        import os, resumeflow as rf
        from rf_tracing_workflows import export_to, traced
        export_to({out!r})
        with rf.Engine({db!r}) as e:
            if os.environ.get("RF_MODE") == "recover":
                [run] = e.recover([traced])
                print(run.wait().status)
            else:
                e.run(traced, {{"x": 1}}, run_id="crash")
    """)
    child = spawn(code, env_extra={"RF_SLOW_B": "30"})
    try:
        wait_for(lambda: any(s["name"] == "node a" for s in read_spans(out)))
        with rf.Engine(db) as engine:
            wait_for(lambda: engine.get_current_state("crash").nodes["b"].status == "running")
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    first = read_spans(out)
    assert [s["name"] for s in first] == ["node a"], "the killed process never ended its run span"
    done = python(code, env_extra={"RF_MODE": "recover", "RF_SLOW_B": "0"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "completed"
    spans = read_spans(out)
    recovered = [s for s in spans if s["pid"] != first[0]["pid"]]
    assert sorted(s["name"] for s in recovered) == ["node b", "node c", "run traced"], [(s["name"], s["attributes"]) for s in spans]
    [run] = [s for s in recovered if s["name"] == "run traced"]
    assert {s["trace_id"] for s in spans} == {first[0]["trace_id"]}, "one trace across both processes"
    assert run["parent_id"] == first[0]["parent_id"], "a child of the first execution's run span"
    assert run["attributes"]["resumeflow.execution"] == "recover"
    assert run["attributes"]["resumeflow.nodes_skipped"] == 1
    assert {s["attributes"]["resumeflow.attempt"] for s in recovered if s["name"] == "node b"} == {2}


def test_no_spans_without_a_provider(db):
    """Without a configured TracerProvider no tracer is asked for and no span exists; and
    OpenTelemetry is never imported by resumeflow itself."""
    code = textwrap.dedent(f"""
        import sys, resumeflow as rf
        from rf_tracing_workflows import traced
        with rf.Engine({db!r}) as e:
            e.run(traced, {{"x": 1}})
        assert not any(m.startswith("opentelemetry") for m in sys.modules), "imported otel"

        from opentelemetry import trace
        asked = []
        for cls in (trace.ProxyTracerProvider, trace.NoOpTracerProvider):
            cls.get_tracer = lambda self, *a, **k: asked.append(a)
        made = []
        real_init = trace.NonRecordingSpan.__init__
        trace.NonRecordingSpan.__init__ = lambda self, *a: (made.append(a), real_init(self, *a))[1]
        from resumeflow import _tracing
        with rf.Engine({db!r}) as e:
            e.run(traced, {{"x": 2}})
            e.submit(traced, {{"x": 3}}, run_id="q")
            e.work([traced], max_runs=1)
            e.resume(e.execute_until(traced, "a", {{"x": 4}}).run_id, traced).wait()
            assert e not in _tracing._trackers, "nothing observed"
        print(len(asked), len(made))
    """)
    done = python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "0"]


def test_global_provider_traces_without_instrument(db, tmp_path):
    out = str(tmp_path / "spans.jsonl")
    done = python(textwrap.dedent(f"""
        import resumeflow as rf
        from rf_tracing_workflows import export_to, traced
        with rf.Engine({db!r}) as e:
            export_to({out!r})  # set after the engine opened: read at each run's start
            e.run(traced, {{"x": 1}})
    """))
    assert done.returncode == 0, done.stderr
    assert sorted(s["name"] for s in read_spans(out)) == ["node a", "node b", "node c", "run traced"]


def test_metrics_after_a_known_workload(db):
    wf = rf.Workflow("counted")

    @wf.node(retry=rf.RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False))
    def flaky(ctx: rf.NodeContext):
        if ctx.attempt == 1:
            raise ConnectionError("reset")
        return 1

    @wf.node
    def after(flaky):
        return flaky

    reader = InMemoryMetricReader()
    with rf.Engine(db) as engine:
        for i in range(3):
            engine.run(wf, run_id=f"m{i}")
        engine.submit(wf, run_id="waiting")
        m = engine.metrics()
        resumeflow.tracing.instrument_metrics(engine, MeterProvider(metric_readers=[reader]))
        data = reader.get_metrics_data()
    assert m["runs_total"] == 4
    assert m["runs_by_status"] == {"completed": 3, "queued": 1}
    assert m["runs_started"] == {"counted": 3}
    assert m["runs_finished"] == {"counted": {"completed": 3}}
    rows = {n["node"]: n for n in m["nodes"] if n["status"] == "completed"}
    assert {(n["node"], n["attempts"]) for n in m["nodes"] if n["status"] == "pending"} == {
        ("flaky", 0), ("after", 0)}, "the queued run's nodes"
    assert rows["flaky"]["attempts"] == 6 and rows["flaky"]["retries"] == 3
    assert rows["after"]["attempts"] == 3 and rows["after"]["retries"] == 0
    assert m["node_attempts_total"] == 9
    assert m["retries_total"] == 3
    assert m["oom_retries_total"] == 0
    assert m["commit_seconds"]["count"] > 0
    assert m["active_runs"] == 0
    points = {
        metric.name: [(dict(p.attributes), p.value) for p in metric.data.data_points if hasattr(p, "value")]
        for rm in data.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics
    }
    assert points["resumeflow_runs_finished_total"] == [({"workflow": "counted", "status": "completed"}, 3)]
    assert points["resumeflow_runs_started_total"] == [({"workflow": "counted"}, 3)]
    assert sorted((a["node"], v) for a, v in points["resumeflow_node_attempts_total"]) == [("after", 3), ("flaky", 6)]
    assert points["resumeflow_active_runs"] == [({}, 0)]
    assert points["resumeflow_commit_seconds_count"][0][1] > 0


def test_log_records_for_transitions_and_failed_attempts(db, caplog):
    wf = rf.Workflow("logged")

    @wf.node(retry=rf.RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=False))
    def once(ctx: rf.NodeContext):
        if ctx.attempt == 1:
            raise TimeoutError("slow")
        return 1

    caplog.set_level(logging.INFO, logger="resumeflow")
    with rf.Engine(db) as engine:
        engine.execute_until(wf, "once", run_id="L")
        engine.resume("L", wf, rerun=["once"]).wait()
    records = [r for r in caplog.records if r.name == "resumeflow"]
    runs = [(r.run_id, r.transition) for r in records if getattr(r, "transition", None)]
    assert runs == [("L", "started"), ("L", "paused"), ("L", "resumed"), ("L", "completed")]
    [failed] = [r for r in records if r.event == "attempt_failed"]
    assert (failed.run_id, failed.node_id, failed.attempt, failed.levelno) == ("L", "once", 1, logging.WARNING)
    assert failed.error == "TimeoutError: slow" and failed.retryable is True
    assert all(r.workflow == "logged" for r in records if getattr(r, "transition", None))


def test_logger_is_silent_by_default():
    done = python(textwrap.dedent("""
        import logging, resumeflow as rf
        print([type(h).__name__ for h in logging.getLogger("resumeflow").handlers])
    """))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.replace("'", '"')) == ["NullHandler"]
    assert done.stderr == ""


def test_recovered_transition_is_logged(db, caplog, tmp_path):
    child = spawn(
        f"import resumeflow as rf\nfrom rf_tracing_workflows import traced\n"
        f"with rf.Engine({db!r}) as e:\n    e.run(traced, {{'x': 1}}, run_id='rec')\n",
        env_extra={"RF_SLOW_B": "30"},
    )
    try:
        with rf.Engine(db) as engine:
            def b_running():
                try:
                    return engine.get_current_state("rec").nodes["b"].status == "running"
                except rf.RunNotFound:
                    return False
            wait_for(b_running)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=30)
    caplog.set_level(logging.INFO, logger="resumeflow")
    os.environ["RF_SLOW_B"] = "0"
    try:
        with rf.Engine(db) as engine:
            [run] = engine.recover([traced])
            assert run.wait().status == "completed"
    finally:
        del os.environ["RF_SLOW_B"]
    transitions = [r.transition for r in caplog.records if getattr(r, "transition", None)]
    assert transitions == ["recovered", "completed"]
