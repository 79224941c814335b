"""One table from resumeflow's errors to HTTP status codes, and the JSON error shape
``{"error": {"type", "message"}}``: no traceback or internal path ever reaches a client."""

from __future__ import annotations

from typing import Any

import resumeflow as rf
from resumeflow._store_url import redact, scrub

#: Error type -> HTTP status (the first matching class wins).
STATUS: list[tuple[type[BaseException], int]] = [
    (rf.RunNotFound, 404),
    (rf.CheckpointNotFound, 404),
    (rf.RunExists, 409),
    (rf.RunLocked, 409),
    (rf.RunNotResumable, 409),
    (rf.WorkflowMismatch, 409),
    (rf.GraphError, 422),
    (rf.InvalidArgument, 422),
    (rf.SerializationError, 422),
    (rf.StoreError, 503),
]


class ServiceError(Exception):
    """An error the service raises itself (unknown workflow, bad id in a path, ...)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def body(kind: str, message: str) -> dict[str, Any]:
    """The JSON error document.

    >>> body("RunNotFound", "run 'x' not found")
    {'error': {'type': 'RunNotFound', 'message': "run 'x' not found"}}
    """
    return {"error": {"type": kind, "message": message}}


def status_of(exc: BaseException) -> int | None:
    """The HTTP status for a resumeflow error, or None for anything else.

    >>> status_of(rf.RunNotFound("x")), status_of(ValueError("x"))
    (404, None)
    """
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return None


def public_message(exc: BaseException, store_path: str) -> str:
    """The error's message without the store's path on disk or URL (a client need not know
    it), and never a URL's password.

    >>> url = "postgresql://rf:pw@db:5432/runs"
    >>> public_message(rf.StoreError(f"store {redact(url)}: connection refused"), url)
    'store <store>: connection refused'
    """
    text = str(exc).replace(store_path, "<store>")
    text = text.replace(redact(store_path), "<store>")
    return scrub(text, store_path)
