"""Streaming (generator) nodes: chunks forwarded live to subscribers, one compressed bundle
stored at completion, and resumption from a cursor.

A generator node's yielded items are its output (a list), stored as one zstd-compressed entry
when the node completes — not one write per chunk. While it runs, every item is also handed
to the run's subscribers in this process (:meth:`resumeflow.Run.chunks`,
:meth:`resumeflow.Engine.subscribe`). A streaming node that calls
``ctx.save_partial_state(cursor)`` checkpoints the items yielded so far together with its
cursor — each save appends only the items yielded since the previous save (one segment per
save, in the same commit as the cursor), so checkpointing costs what it adds; a later attempt (after a crash or a retry) gets ``ctx.load_partial_state() == cursor``
and the items before it are restored, so it continues from the cursor instead of starting
over, and the final output is the whole stream.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from . import _codec
from ._context import NodeContext

#: Marks a partial state saved by a streaming node (items so far + the node's cursor).
_STREAM_KEY = "__resumeflow_stream__"

_lock = threading.Lock()
_subscribers: dict[str, list[queue.SimpleQueue[tuple[str, Any]]]] = {}


def publish(run_id: str, node_id: str, item: Any) -> None:
    """Hands ``item`` to every subscriber of ``run_id`` in this process."""
    with _lock:
        queues = list(_subscribers.get(run_id, ()))
    for q in queues:
        q.put((node_id, item))


class Subscription:
    """Chunks of one run's streaming nodes as they are yielded: iterate to get
    ``(node_id, item)`` pairs; iteration ends once the run is no longer executing here and
    every chunk was delivered. Only chunks yielded after subscribing arrive; a retried
    attempt yields (and delivers) its chunks again from its cursor. Subscriptions are per
    process and keyed by run id (two engines in one process running the same run id share
    them).

    >>> import resumeflow as rf, tempfile, os
    >>> wf = rf.Workflow("sub-doc")
    >>> @wf.node
    ... def numbers():
    ...     yield from range(3)
    >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "s.db")) as engine:
    ...     run = engine.start(wf)
    ...     got = [item for _node, item in run.chunks()]
    ...     state = run.wait()
    >>> state.status, len(got) <= 3
    ('completed', True)
    """

    def __init__(self, run_id: str, running: Callable[[], bool],
                 on_item: Callable[[], None] | None = None) -> None:
        self.run_id = run_id
        self._running = running
        self._queue: queue.SimpleQueue[tuple[str, Any]] = (
            queue.SimpleQueue() if on_item is None else _NotifyingQueue(on_item)
        )
        with _lock:
            _subscribers.setdefault(run_id, []).append(self._queue)
        # A subscription dropped without being iterated to the end stops receiving chunks.
        self._finalizer = weakref.finalize(self, _unsubscribe, run_id, self._queue)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        try:
            while True:
                try:
                    yield self._queue.get(timeout=0.05)
                except queue.Empty:
                    if not self._running() and self._queue.empty():
                        return
        finally:
            self.close()

    def close(self) -> None:
        """Stops receiving chunks."""
        self._finalizer()


class _NotifyingQueue(queue.SimpleQueue):  # type: ignore[type-arg]
    """A subscriber's queue that also calls ``on_item`` (from the publishing thread) after
    each item, so that an asyncio consumer is woken instead of polling."""

    def __init__(self, on_item: Callable[[], None]) -> None:
        super().__init__()
        self._on_item = on_item

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._on_item()


def _unsubscribe(run_id: str, q: queue.SimpleQueue[tuple[str, Any]]) -> None:
    with _lock:
        queues = _subscribers.get(run_id, [])
        if q in queues:
            queues.remove(q)
        if not queues:
            _subscribers.pop(run_id, None)


class StreamContext(NodeContext):
    """The context of a streaming node: ``save_partial_state(cursor)`` also checkpoints the
    items yielded since the last save; ``load_partial_state()`` returns the cursor."""

    __slots__ = ("_items", "_cursor", "_saved")

    def __init__(self, core: Any, items: list[Any], cursor: Any) -> None:
        super().__init__(core)
        self._items = items
        self._cursor = cursor
        #: How many of ``items`` are durable already (restored or saved).
        self._saved = len(items)

    def save_partial_state(self, obj: Any) -> None:
        count = len(self._items)
        first = self._saved
        state = {_STREAM_KEY: 2, "cursor": obj, "count": count}
        what = "partial_state"
        self._core.save_stream_state(
            _codec.encode(state, node=self.node_id, what=what),
            first,
            _codec.encode(self._items[first:count], node=self.node_id, what=what),
        )
        self._saved = count
        self._cursor = obj

    def load_partial_state(self) -> Any:
        return self._cursor


def restore(core_ctx: Any) -> tuple[list[Any], Any]:
    """Items and cursor a streaming node checkpointed in an earlier attempt (else none)."""
    raw = core_ctx.load_partial_state()
    if raw is None:
        return [], None
    saved = _codec.decode(raw)
    if isinstance(saved, dict) and saved.get(_STREAM_KEY) == 2:
        items = _restore_segments(core_ctx.load_partial_segments(), saved["count"])
        if items is None:  # segments gone (the node completed once): start over
            return [], None
        return items, saved["cursor"]
    if isinstance(saved, dict) and saved.get(_STREAM_KEY) == 1:  # stores written before v5
        return list(saved["items"]), saved["cursor"]
    return [], saved  # progress saved some other way (engine.save_partial_state)


def _restore_segments(segments: list[tuple[int, bytes]], count: int) -> list[Any] | None:
    """The first ``count`` items of contiguous segments ``[(first, encoded items), ...]``,
    or None if the segments do not reach ``count``."""
    items: list[Any] = []
    for first, raw in segments:
        if first != len(items):
            break
        items.extend(_codec.decode(raw))
        if len(items) >= count:
            return items[:count]
    return items if len(items) == count else None


def collect(iterator: Iterator[Any], items: list[Any], run_id: str, node_id: str) -> list[Any]:
    """Drains a generator into ``items``, publishing each item as it comes."""
    for item in iterator:
        items.append(item)
        publish(run_id, node_id, item)
    return items


async def collect_async(agen: Any, items: list[Any], run_id: str, node_id: str) -> list[Any]:
    """Drains an async generator into ``items``, publishing each item as it comes."""
    async for item in agen:
        items.append(item)
        publish(run_id, node_id, item)
    return items
