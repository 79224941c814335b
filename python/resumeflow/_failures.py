"""Failure classification: which exceptions are retried, OOM detection, OOM shrink rules.

>>> is_retryable(TimeoutError("slow"))
True
>>> is_retryable(ValueError("bad"))
False
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _network
from ._core import ResumeflowError


class Retryable(ResumeflowError):
    """Raise from a node to force a retry (within the node's RetryPolicy)."""


class NonRetryable(ResumeflowError):
    """Raise from a node to fail it at once, whatever the exception inside."""


# Message forms of accelerator and allocator out-of-memory errors (docs/failures.md).
OOM_MESSAGES = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "XPU out of memory",
    "MPS backend out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED",
    "DefaultCPUAllocator: can't allocate memory",
    "would exceed allowed memory",
)

_TRANSIENT_ERRNOS = {
    errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET,
    errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE, errno.ENETUNREACH,
    errno.EHOSTUNREACH, errno.ENETDOWN,
}


def _torch_oom_classes() -> tuple[type, ...]:
    torch = sys.modules.get("torch")
    if torch is None:
        return ()
    classes = []
    for owner in (torch, getattr(torch, "cuda", None)):
        cls = getattr(owner, "OutOfMemoryError", None)
        if isinstance(cls, type):
            classes.append(cls)
    return tuple(classes)


def _oom_message_types() -> tuple[type, ...]:
    types: list[type] = [RuntimeError, MemoryError]
    torch = sys.modules.get("torch")
    accel = getattr(torch, "AcceleratorError", None) if torch is not None else None
    if isinstance(accel, type):
        types.append(accel)
    return tuple(types)


def is_oom(exc: BaseException) -> bool:
    """True for accelerator/allocator out-of-memory errors in every known form.

    >>> is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    True
    >>> is_oom(RuntimeError("shape mismatch"))
    False
    """
    oom_classes = _torch_oom_classes()
    if oom_classes and isinstance(exc, oom_classes):
        return True
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    if isinstance(exc, _oom_message_types()):
        text = str(exc)
        return any(m in text for m in OOM_MESSAGES)
    return False


def is_retryable(exc: BaseException) -> bool:
    """The default classifier: OOM, timeouts, connection and transient OS errors, Retryable,
    and the transient failures of HTTP, gRPC and LLM clients (docs/failures.md has the table).

    >>> is_retryable(ConnectionResetError())
    True
    >>> is_retryable(NonRetryable("stop"))
    False
    """
    if isinstance(exc, NonRetryable):
        return False
    if isinstance(exc, Retryable):
        return True
    verdict = _network.classify(exc)
    if verdict is not None:
        return verdict
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if is_oom(exc):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    return False


class _RetryOnStatus:
    """The predicate :func:`retry_on_status` returns."""

    def __init__(self, statuses: frozenset[int]) -> None:
        self.statuses = statuses

    def __call__(self, exc: BaseException) -> bool:
        status = _network.status_of(exc)
        if status is None:
            return is_retryable(exc)
        return status in self.statuses

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _RetryOnStatus) and other.statuses == self.statuses

    def __hash__(self) -> int:
        return hash(self.statuses)

    def __repr__(self) -> str:
        return f"retry_on_status({', '.join(map(str, sorted(self.statuses)))})"


def retry_on_status(*statuses: int) -> Callable[[BaseException], bool]:
    """A ``RetryPolicy(retry_on=...)`` predicate: an HTTP client's response error (httpx,
    requests, aiohttp, the openai and anthropic SDKs) is retried when its status is one of
    ``statuses``, and only then; every other failure as :func:`is_retryable` says.

    >>> policy = RetryPolicy(retry_on=retry_on_status(429, 503))
    >>> policy.retry_on
    retry_on_status(429, 503)
    >>> policy.classify(ConnectionResetError()), policy.classify(ValueError())
    (True, False)
    """
    for status in statuses:
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ValueError(f"retry_on_status takes HTTP status codes (100-599), got {status!r}")
    if not statuses:
        raise ValueError("retry_on_status needs at least one HTTP status code, e.g. retry_on_status(429, 503)")
    return _RetryOnStatus(frozenset(statuses))


RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how far apart a node's retryable failures are retried.

    >>> RetryPolicy(max_attempts=5).max_attempts
    5
    """

    max_attempts: int = 3
    initial_interval: float = 0.5
    backoff_factor: float = 2.0
    max_interval: float = 60.0
    jitter: bool = True
    retry_on: RetryOn | None = None

    def __post_init__(self) -> None:
        if self.max_interval == 60.0 and self.initial_interval > 60.0:
            # The default cap must not make a long first interval invalid.
            object.__setattr__(self, "max_interval", float(self.initial_interval))
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if self.initial_interval < 0 or self.max_interval < 0:
            raise ValueError("RetryPolicy intervals must be >= 0 seconds")
        if self.backoff_factor < 1:
            raise ValueError(f"RetryPolicy.backoff_factor must be >= 1, got {self.backoff_factor!r}")
        if self.max_interval < self.initial_interval:
            raise ValueError("RetryPolicy.max_interval must be >= initial_interval")

    def classify(self, exc: BaseException) -> bool:
        """Whether ``exc`` is retryable under this policy."""
        if isinstance(exc, NonRetryable):
            return False
        if isinstance(exc, Retryable):
            return True
        rule = self.retry_on
        if rule is None:
            return is_retryable(exc)
        if isinstance(rule, type) or isinstance(rule, tuple):
            return isinstance(exc, rule)
        return bool(rule(exc))

    def as_spec(self) -> tuple[int, float, float, float, bool]:
        return (
            self.max_attempts,
            float(self.initial_interval),
            float(self.backoff_factor),
            float(self.max_interval),
            bool(self.jitter),
        )


@dataclass(frozen=True)
class Shrink:
    """An OOM shrink rule made by :func:`shrink`."""

    param: str
    factor: float = 0.5
    minimum: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def next_value(self, current: Any) -> Any:
        if not isinstance(current, (int, float)) or isinstance(current, bool):
            raise TypeError(
                f"on_oom shrink of {self.param!r} needs a number, got {type(current).__name__}"
            )
        if isinstance(current, float):
            return max(float(self.minimum), current * self.factor)
        return max(self.minimum, int(current * self.factor))


def shrink(param: str, factor: float = 0.5, minimum: int = 1) -> Shrink:
    """After each OOM, multiply parameter ``param`` by ``factor`` (rounded down, >= minimum).

    >>> shrink("batch_size").next_value(64)
    32
    """
    if not 0 < factor < 1:
        raise ValueError(f"shrink factor must be between 0 and 1, got {factor!r}")
    return Shrink(param, factor, minimum)


def before_oom_retry(exc: BaseException) -> int | None:
    """Frees what a failed attempt held and returns the peak accelerator memory, if known."""
    import gc
    import traceback

    if exc.__traceback__ is not None:
        traceback.clear_frames(exc.__traceback__)
    gc.collect()
    torch = sys.modules.get("torch")
    peak = None
    if torch is not None and torch.cuda.is_available():
        try:
            peak = int(torch.cuda.max_memory_allocated())
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        except Exception:  # a broken CUDA context must not hide the node's own failure
            pass
    return peak
