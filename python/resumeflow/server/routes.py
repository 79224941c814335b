"""The ``/api/v1`` routes: validate, call the shared service, shape JSON. Blocking engine calls
run in worker threads (the engine releases the GIL while it waits)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from . import stream
from .models import ResumeRun, StartRun
from .service import RunService

router = APIRouter(prefix="/api/v1")

#: Seconds between keep-alive comments on an idle stream (the contract: at most 15).
KEEPALIVE_S = 10.0


def _service(request: Request) -> RunService:
    return request.app.state.service  # type: ignore[no-any-return]


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))


@router.get("/workflows", summary="Workflows this server serves")
async def list_workflows(request: Request) -> list[dict[str, Any]]:
    return _service(request).describe_workflows()


@router.post("/runs", status_code=202, summary="Start a run (queued for this server's workers)")
async def start_run(request: Request, body: StartRun) -> JSONResponse:
    run = await _call(_service(request).start, body.model_dump())
    request.app.state.metrics.runs_started.labels(workflow=body.workflow).inc()
    return JSONResponse(run, status_code=202, headers={"Location": f"/api/v1/runs/{run['run_id']}"})


@router.get("/runs", summary="Runs, newest first")
async def list_runs(
    request: Request,
    status: Annotated[str | None, Query(pattern="^(queued|pending|running|paused|completed|failed|cancelled)$")] = None,
    workflow: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.\-]{1,200}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    return await _call(_service(request).list_runs, status=status, workflow=workflow, limit=limit, offset=offset)  # type: ignore[no-any-return]


@router.get("/runs/{run_id}", summary="A run")
async def get_run(request: Request, run_id: str) -> dict[str, Any]:
    return await _call(_service(request).get, run_id)  # type: ignore[no-any-return]


@router.get("/runs/{run_id}/results", summary="Outputs of the completed nodes")
async def get_results(request: Request, run_id: str) -> dict[str, Any]:
    return await _call(_service(request).results, run_id)  # type: ignore[no-any-return]


@router.get("/runs/{run_id}/history", summary="Checkpoints, newest first")
async def get_history(request: Request, run_id: str) -> list[dict[str, Any]]:
    return await _call(_service(request).history, run_id)  # type: ignore[no-any-return]


@router.post("/runs/{run_id}/resume", status_code=202, summary="Resume a run (in this server)")
async def resume_run(request: Request, run_id: str, body: ResumeRun | None = None) -> JSONResponse:
    run = await _call(_service(request).resume, run_id, (body or ResumeRun()).model_dump())
    return JSONResponse(run, status_code=202)


@router.post("/runs/{run_id}/interrupt", status_code=202, summary="Pause after in-flight nodes, wherever it runs")
async def interrupt_run(request: Request, run_id: str) -> JSONResponse:
    return JSONResponse(await _call(_service(request).control, run_id, "interrupt"), status_code=202)


@router.post("/runs/{run_id}/cancel", status_code=202, summary="Cancel, wherever it runs")
async def cancel_run(request: Request, run_id: str) -> JSONResponse:
    return JSONResponse(await _call(_service(request).control, run_id, "cancel"), status_code=202)


@router.get("/events", summary="Server-Sent Events: every run's status changes, store-wide (live)")
async def store_events(
    request: Request,
    workflow: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.\-]{1,200}$")] = None,
    since: Annotated[float | None, Query(ge=0)] = None,
) -> EventSourceResponse:
    """``counts`` first (``{"counts": {status: n}, "total": n}``, again whenever they change),
    then a ``run`` message (``run_id``, ``workflow``, ``status``, ``previous``, ``completed``,
    ``total``, ``created_at``, ``updated_at``, ``error``, ``checkpoint_id``) for every run whose
    status, progress or checkpoint changes; with ``since``, first every run updated at or after that time. Messages carry no
    id: a reconnecting client re-reads ``GET /api/v1/runs``. Only changes after the stream
    opened are sent, so a client opens it before reading the list."""
    feed = request.app.state.run_feed
    return EventSourceResponse(feed.subscribe(workflow=workflow, since=since), ping=KEEPALIVE_S)


@router.get("/runs/{run_id}/events", summary="Server-Sent Events: the run's durable log, then live")
async def run_events(
    request: Request,
    run_id: str,
    after: Annotated[int | None, Query(ge=0)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    service = _service(request)
    await _call(service.get, run_id)  # 404 / 422 before the stream starts
    cursor = after or 0
    if last_event_id:
        try:
            cursor = max(cursor, int(last_event_id))
        except ValueError:
            from .errors import ServiceError

            raise ServiceError(422, "ValidationError", "Last-Event-ID: must be an event id (an integer seq)") from None
    events = stream.follow(service.engine, request.app.state.feed, run_id, cursor, KEEPALIVE_S)
    return EventSourceResponse(events, ping=KEEPALIVE_S)
