"""The ASGI application: ``create_app(engine, workflows, *, token=None)``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

import resumeflow as rf

from . import errors, health, mcp_http, web
from .auth import token_ok
from .feed import ChangeFeed
from .routes import router
from .run_feed import RunFeed
from .service import RunService
from .supervisor import Supervisor

#: Request bodies larger than this are refused with 413 (``resumeflow serve --max-body``).
MAX_BODY = 1 << 20


class _Limits:
    """ASGI middleware: the token on ``/api/v1`` and ``/mcp``, and the body cap."""

    def __init__(self, app: Any, token: str | None, max_body: int) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        protected = path.startswith("/api/v1") or path.startswith("/mcp")
        if protected and not token_ok(headers.get("authorization"), self.token):
            await _send_json(send, 401, errors.body("Unauthorized", "missing or wrong bearer token"),
                             {"www-authenticate": "Bearer"})
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _send_json(send, 413, errors.body("PayloadTooLarge", f"request body over {self.max_body} bytes"))
            return
        seen = 0

        async def capped_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, capped_receive, send)
        except _TooLarge:
            await _send_json(send, 413, errors.body("PayloadTooLarge", f"request body over {self.max_body} bytes"))


class _TooLarge(Exception):
    pass


async def _send_json(send: Any, status: int, document: Any, extra: dict[str, str] | None = None) -> None:
    payload = json.dumps(document).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def create_app(
    engine: rf.Engine,
    workflows: list[rf.Workflow] | Mapping[str, rf.Workflow],
    *,
    token: str | None = None,
    max_body: int = MAX_BODY,
    keep_checkpoints: int | None = None,
    keep_days: float | None = None,
) -> Any:
    """The service as an ASGI application on ``engine``, serving ``workflows`` only. While it
    runs (its lifespan), its own worker executes the runs it queues and recovers stale runs of
    these workflows; at shutdown the worker hands its runs back (the engine stays open: its
    owner closes it).

    >>> import resumeflow as rf, tempfile, os
    >>> wf = rf.Workflow("app_doc")
    >>> @wf.node
    ... def one():
    ...     return 1
    >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "a.db")) as engine:
    ...     app = create_app(engine, [wf])
    ...     "/api/v1/runs/{run_id}/events" in app.openapi()["paths"]
    True
    """
    service = RunService(engine, workflows)
    feed = ChangeFeed(engine)
    run_feed = RunFeed(engine, feed)
    supervisor = Supervisor(engine, list(service.workflows.values()),
                            keep_checkpoints=keep_checkpoints, keep_days=keep_days)
    mcp_sessions = mcp_http.session_manager(service, token=token)  # None without the MCP SDK

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        feed.start()
        supervisor.start()
        try:
            async with mcp_http.running(mcp_sessions):
                yield
        finally:
            await run_feed.stop()
            supervisor.stop()
            feed.stop()

    app = FastAPI(title="resumeflow", version=rf.__version__, lifespan=lifespan)
    app.state.service = service
    app.state.feed = feed
    app.state.run_feed = run_feed
    app.state.supervisor = supervisor
    app.state.metrics = health.Metrics(engine)
    app.include_router(router)
    mcp_http.mount(app, mcp_sessions)
    web.mount(app)
    store_path = engine.path

    @app.exception_handler(errors.ServiceError)
    async def _service_error(_request: Request, exc: errors.ServiceError) -> JSONResponse:
        return JSONResponse(errors.body(exc.kind, str(exc)), status_code=exc.status)

    @app.exception_handler(rf.ResumeflowError)
    async def _engine_error(_request: Request, exc: rf.ResumeflowError) -> JSONResponse:
        status = errors.status_of(exc) or 500
        return JSONResponse(errors.body(type(exc).__name__, errors.public_message(exc, store_path)), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()))
            problems.append(f"{where}: {e.get('msg', 'invalid')}")
        return JSONResponse(errors.body("ValidationError", "; ".join(problems) or "invalid request"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body that is not JSON: invalid like any other body
            return JSONResponse(errors.body("ValidationError", f"body: {exc.detail}"), status_code=422)
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return JSONResponse(errors.body(kind, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, (TypeError, ValueError)):  # bad values the engine refused
            return JSONResponse(errors.body(type(exc).__name__, errors.public_message(exc, store_path)), status_code=422)
        return JSONResponse(errors.body("InternalError", "internal server error"), status_code=500)

    @app.get("/healthz", summary="Health: the store is readable")
    async def healthz() -> JSONResponse:
        import anyio

        status, doc = await anyio.to_thread.run_sync(lambda: health.health(engine))
        return JSONResponse(doc, status_code=status)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        import anyio

        text = await anyio.to_thread.run_sync(lambda: generate_latest(app.state.metrics.registry))
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_Limits, token=token, max_body=max_body)
    return app
