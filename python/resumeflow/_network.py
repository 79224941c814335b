"""Failures of network clients: which are transient, and how long the server asked to wait.

The rules match the names in an exception's class hierarchy (``type(exc).__mro__``: top-level
package and class name), so none of httpx, requests, urllib3, aiohttp, grpc, openai or anthropic
is imported here: ``import resumeflow`` stays light, and a client that is never used costs
nothing. The most specific class that a rule names decides.

>>> class TimeoutException(Exception): ...
>>> class ReadTimeout(TimeoutException): ...
>>> TimeoutException.__module__ = ReadTimeout.__module__ = "httpx"  # as if httpx raised it
>>> classify(ReadTimeout())
True
>>> classify(ValueError("not a network failure")) is None
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

#: HTTP statuses worth another attempt: request timeout, too early, too many requests, server
#: errors a later attempt may not meet, and 529 (the Anthropic API's "overloaded").
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 529})

#: gRPC status codes worth another attempt (``exc.code().name``).
RETRYABLE_GRPC_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})

#: Packages that publish another one's exception classes under their own name.
_ALIASES = {"httpx2": "httpx"}

_SDK_TRANSIENT = frozenset({
    "APIConnectionError", "APITimeoutError", "RateLimitError", "InternalServerError",
    "OverloadedError",
})
_SDK_FINAL = frozenset({
    "BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError",
    "UnprocessableEntityError",
})

#: Failures before (or instead of) a complete response: always transient.
TRANSIENT: dict[str, frozenset[str]] = {
    "httpx": frozenset({"TimeoutException", "NetworkError", "RemoteProtocolError"}),
    "requests": frozenset({"ConnectionError", "Timeout", "ChunkedEncodingError"}),
    "urllib3": frozenset({"NewConnectionError", "ConnectTimeoutError", "ProtocolError", "ReadTimeoutError"}),
    "aiohttp": frozenset({"ClientConnectionError", "ServerTimeoutError", "ClientPayloadError"}),
    "openai": _SDK_TRANSIENT,
    "anthropic": _SDK_TRANSIENT,
}
#: Client errors no retry mends.
FINAL: dict[str, frozenset[str]] = {"openai": _SDK_FINAL, "anthropic": _SDK_FINAL}
#: Errors that carry an HTTP response: their status decides (:data:`RETRYABLE_STATUSES`).
STATUS: dict[str, frozenset[str]] = {
    "httpx": frozenset({"HTTPStatusError"}),
    "requests": frozenset({"HTTPError"}),
    "aiohttp": frozenset({"ClientResponseError"}),
    "openai": frozenset({"APIStatusError"}),
    "anthropic": frozenset({"APIStatusError"}),
}


def _names(exc: BaseException) -> Iterator[tuple[str, str]]:
    """``(package, class name)`` for each class of ``exc``, the most specific first."""
    for cls in type(exc).__mro__:
        package = str(getattr(cls, "__module__", "")).partition(".")[0]
        yield _ALIASES.get(package, package), cls.__name__


def _is_status_class(package: str, name: str) -> bool:
    return name in STATUS.get(package, ())


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a known client's response error, else None.

    >>> class HTTPStatusError(Exception):
    ...     def __init__(self, status_code):
    ...         self.response = type("Response", (), {"status_code": status_code})()
    >>> HTTPStatusError.__module__ = "httpx"
    >>> status_of(HTTPStatusError(503)), status_of(OSError())
    (503, None)
    """
    if not any(_is_status_class(p, n) for p, n in _names(exc)):
        return None
    response = getattr(exc, "response", None)
    for owner, attr in ((exc, "status_code"), (exc, "status"), (response, "status_code"), (response, "status")):
        value = getattr(owner, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _grpc_verdict(exc: BaseException) -> bool | None:
    code = getattr(exc, "code", None)
    if not callable(code):
        return None
    try:
        name = getattr(code(), "name", None)
    except Exception:  # an RpcError that is not a call outcome
        return None
    return None if name is None else name in RETRYABLE_GRPC_CODES


def classify(exc: BaseException) -> bool | None:
    """True (transient) or False (final) for a known network client's failure; None for any
    other exception, which the rest of :func:`resumeflow.is_retryable` then judges.

    >>> class ClientResponseError(Exception):
    ...     def __init__(self, status):
    ...         self.status = status
    >>> ClientResponseError.__module__ = "aiohttp.client_exceptions"
    >>> classify(ClientResponseError(429)), classify(ClientResponseError(404))
    (True, False)
    """
    for package, name in _names(exc):
        if name in TRANSIENT.get(package, ()):
            return True
        if name in FINAL.get(package, ()):
            return False
        if _is_status_class(package, name):
            status = status_of(exc)
            return None if status is None else status in RETRYABLE_STATUSES
        if package == "urllib3" and name == "MaxRetryError":
            reason = getattr(exc, "reason", None)
            return classify(reason) if isinstance(reason, BaseException) else None
        if package == "grpc" and name == "RpcError":
            return _grpc_verdict(exc)
    return None


def _header(headers: Any, name: str) -> str | None:
    """One header of an httpx, requests or aiohttp response (all case-insensitive), or of a
    plain mapping."""
    if headers is None:
        return None
    try:
        value = headers.get(name)
        if value is None and isinstance(headers, dict):
            value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    except Exception:  # headers of an unknown shape carry no hint
        return None
    return None if value is None else str(value).strip()


def _seconds(raw: str) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date (the time left until it)."""
    try:
        value = float(raw)
    except ValueError:
        try:
            import email.utils  # lazily: it costs ~14 ms at `import resumeflow`

            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # HTTP dates are GMT
            return None
        value = when.timestamp() - time.time()
    return max(0.0, value) if math.isfinite(value) else None


def _own_hint(exc: BaseException) -> tuple[float, str] | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or getattr(exc, "headers", None)
    status = status_of(exc)
    prefix = f"HTTP {status} " if status is not None else "HTTP "
    raw_ms = _header(headers, "retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms):
            return max(0.0, ms / 1000.0), f"{prefix}retry-after-ms: {raw_ms}"
    raw = _header(headers, "retry-after")
    if raw is not None:
        seconds = _seconds(raw)
        if seconds is not None:
            return seconds, f"{prefix}Retry-After: {raw}"
    value = getattr(exc, "retry_after", None)
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return max(0.0, float(value)), f"{type(exc).__name__}.retry_after: {value}"
    return None


def retry_after(exc: BaseException) -> tuple[float, str] | None:
    """``(seconds, reason)`` when the failure says how long to wait before the next attempt:
    the response's ``retry-after-ms`` header (as the OpenAI SDK sends it), its ``Retry-After``
    header (seconds or an HTTP date), or the exception's own ``retry_after`` (seconds or a
    timedelta). The exceptions it was raised from (``raise ... from``) are looked at too.

    >>> class HTTPStatusError(Exception):
    ...     def __init__(self, status_code, headers):
    ...         self.response = type("Response", (), {"status_code": status_code, "headers": headers})()
    >>> HTTPStatusError.__module__ = "httpx"
    >>> retry_after(HTTPStatusError(429, {"Retry-After": "20"}))
    (20.0, 'HTTP 429 Retry-After: 20')
    >>> retry_after(HTTPStatusError(503, {})) is None
    True
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        hint = _own_hint(current)
        if hint is not None:
            return hint
        current = current.__cause__ or current.__context__
    return None
