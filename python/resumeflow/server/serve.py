"""``resumeflow serve MODULE:WORKFLOW ... [--db] [--host] [--port] [--token]``: uvicorn on the
service. SIGTERM or Ctrl-C: stop accepting, finish in-flight nodes, hand the runs back and
release the leases (another server takes over at once), exit 0."""

from __future__ import annotations

import ipaddress
import os
import signal
from typing import Any

import resumeflow as rf

DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """True for loopback addresses and ``localhost``.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuses a non-loopback host without a token (``ValueError`` saying what to do)."""
    if not is_loopback(host) and not token:
        raise ValueError(
            f"refusing to listen on {host!r} without a token: anyone who can reach it could run "
            "and cancel workflows. Pass --token (or set RESUMEFLOW_TOKEN), or listen on 127.0.0.1"
        )


def serve(
    engine: rf.Engine,
    workflows: list[rf.Workflow],
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    max_body: int | None = None,
    keep_checkpoints: int | None = None,
    keep_days: float | None = None,
    log_level: str = "warning",
) -> None:
    """Serves until SIGTERM / Ctrl-C; the caller closes ``engine`` afterwards."""
    import uvicorn

    from .app import MAX_BODY, create_app

    token = token or os.environ.get("RESUMEFLOW_TOKEN") or None
    check_exposure(host, token)
    app: Any = create_app(
        engine, workflows, token=token, max_body=max_body or MAX_BODY,
        keep_checkpoints=keep_checkpoints, keep_days=keep_days,
    )
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=60)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the handler
    # it found: make that one a no-op, so a graceful stop exits 0 (SIGINT still ends as 130).
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
