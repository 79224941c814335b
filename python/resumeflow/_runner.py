"""Runs node callables for the engine: binds inputs, calls sync, async and generator nodes,
encodes outputs and classifies failures. Called from engine worker threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from typing import Any

from . import _codec, _streaming, _tracing
from ._context import NodeContext
from ._failures import before_oom_retry, is_oom
from ._workflow import Workflow

#: Outputs at least this large are offered to the store as blob files (it decides by its own
#: threshold); smaller ones are joined into bytes.
_STAGE_MIN = 1 << 20

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _event_loop() -> asyncio.AbstractEventLoop:
    """One asyncio loop on a daemon thread runs every ``async def`` node."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="resumeflow-asyncio", daemon=True).start()
            _loop = loop
        return _loop


#: How often a worker thread waiting for an ``async def`` node checks whether the attempt
#: timed out or its run was cancelled (seconds).
_CANCEL_POLL_S = 0.05


def _run_async(coro: Any, core_ctx: Any) -> Any:
    """Runs ``coro`` on the shared loop and returns its result; once the attempt timed out
    or its run was cancelled (``core_ctx.is_cancelled()``), cancels it — the coroutine gets
    ``asyncio.CancelledError`` at its current ``await`` — and returns only after it ended,
    so a timed-out async attempt never runs beside its retry."""
    ended = threading.Event()

    async def tracked() -> Any:
        try:
            return await coro
        finally:
            ended.set()

    future = asyncio.run_coroutine_threadsafe(tracked(), _event_loop())
    while not ended.wait(_CANCEL_POLL_S):
        if core_ctx.is_cancelled():
            future.cancel()
            ended.wait()
            break
    # An ending coroutine sets `ended` just before the future gets its result.
    try:
        return future.result()
    except concurrent.futures.CancelledError:
        from ._core import Cancelled

        raise Cancelled(
            f"run {core_ctx.run_id!r}: attempt {core_ctx.attempt} of node {core_ctx.node_id!r} "
            "was cancelled (it timed out or its run was cancelled)"
        ) from None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__qualname__
    return f"{name}: {text}" if text else name


def _effective(node: Any, kwargs: dict[str, Any], param: str) -> Any:
    """The value a parameter had in this attempt: passed in, or its default."""
    if param in kwargs:
        return kwargs[param]
    for p in node.params:
        if p.name == param and p.default is not inspect.Parameter.empty:
            return p.default
    return None


class Runner:
    """The callable the core invokes for each attempt of a node of ``workflow``."""

    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow

    def __call__(
        self,
        node_id: str,
        attempt: int,
        inputs: list[tuple[str, Any, bytes | None]],
        inputs_override: bytes | None,
        core_ctx: Any,
    ) -> tuple[Any, ...]:
        node = self.workflow[node_id]
        kwargs: dict[str, Any] = {}
        try:
            for param, live, raw in inputs:
                # A mutable output is decoded afresh for every dependant (its own copy, equal
                # to what a resume gives); immutables, tensors and arrays are shared.
                kwargs[param] = (
                    _codec.from_handover(live) if raw is None
                    else _codec.decode(raw, node=node_id, what=f"input {param!r}")
                )
            override = _codec.decode(inputs_override) if inputs_override else {}
            kwargs.update(override)
            streaming = node.is_generator or node.is_async_generator
            if streaming:
                items, cursor = _streaming.restore(core_ctx) if node.context_params else ([], None)
                for name in node.context_params:
                    kwargs[name] = _streaming.StreamContext(core_ctx, items, cursor)
                result = self._stream(node, kwargs, items, core_ctx)
            else:
                for name in node.context_params:
                    kwargs[name] = NodeContext(core_ctx)
                result = self._call(node, kwargs, core_ctx)
            # A stream's items are stored as one compressed bundle.
            parts = _codec.encode_parts(result, node=node_id)
            # What dependants in this process get: see _codec.live_handover.
            live = _codec.live_handover(result, parts)
            if streaming:
                return (True, parts[0] if len(parts) == 1 else list(parts), live, True)
            if len(parts) > 1 and _codec.parts_size(parts) >= _STAGE_MIN:
                # Large: the tensor memory goes straight to a blob file from this thread.
                staged = core_ctx.stage_file(parts)
                if staged is not None:
                    return (True, staged, live, False)
            # Several parts are joined by the core in one copy (no joined `bytes` here).
            return (True, parts[0] if len(parts) == 1 else list(parts), live, False)
        except BaseException as exc:  # noqa: BLE001 - every failure is recorded, even SystemExit
            failure = self._failure(node, kwargs, exc)
            _tracing.attempt_failed(exc, core_ctx, failure)
            return failure

    @staticmethod
    def _call(node: Any, kwargs: dict[str, Any], core_ctx: Any) -> Any:
        if node.is_async:
            return _run_async(node.fn(**kwargs), core_ctx)
        return node.fn(**kwargs)

    @staticmethod
    def _stream(node: Any, kwargs: dict[str, Any], items: list[Any], core_ctx: Any) -> list[Any]:
        """Runs a generator node: items (after any restored ones) are published live."""
        run_id = str(core_ctx.run_id)
        if node.is_async_generator:
            coro = _streaming.collect_async(node.fn(**kwargs), items, run_id, node.id)
            return _run_async(coro, core_ctx)
        return _streaming.collect(node.fn(**kwargs), items, run_id, node.id)

    @staticmethod
    def _failure(node: Any, kwargs: dict[str, Any], exc: BaseException) -> tuple[Any, ...]:
        from ._core import SerializationError
        from ._network import retry_after

        if isinstance(exc, SerializationError):
            return (False, _describe(exc), False, None, None)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) or not isinstance(exc, Exception):
            # A node that exits or raises BaseException fails; the engine keeps running.
            return (False, _describe(exc), False, None, None)
        try:
            retryable = node.retry.classify(exc)
        except Exception as classify_error:  # a broken retry_on predicate
            return (False, f"{_describe(exc)} (retry_on raised {_describe(classify_error)})", False, None, None)
        peak = None
        next_override = None
        if is_oom(exc):
            peak = before_oom_retry(exc)
            current = _effective(node, kwargs, node.on_oom.param) if node.on_oom else None
            if node.on_oom is not None and current is not None:
                try:
                    new = {node.on_oom.param: node.on_oom.next_value(current)}
                    next_override = _codec.encode(new, node=node.id, what="inputs_override")
                except Exception:  # keep the OOM as the reported failure
                    next_override = None
        # How long the server asked to wait (Retry-After), for the core's next backoff.
        hint = retry_after(exc) if retryable else None
        return (False, _describe(exc), retryable, peak, next_override, *(hint or (None, None)))
