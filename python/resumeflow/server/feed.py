"""The change feed: one thread waits (GIL released, in the core) for the store to change —
a commit in this process wakes it at once, another process's within a few milliseconds — and
wakes every asyncio waiter. Streams then read the events after their cursor: no busy polling,
and one thread however many clients follow runs. Clients at the same cursor share one read
(:meth:`ChangeFeed.read`), so fifty followers of one run cost one query per change."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio

import resumeflow as rf

#: How long the feed thread sleeps in the core between looks at whether it should stop.
_SLICE_S = 0.5


class ChangeFeed:
    """Wakes asyncio waiters whenever the store changed."""

    def __init__(self, engine: rf.Engine) -> None:
        self._engine = engine
        self._version = 0
        self._changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reads: dict[tuple[Any, ...], asyncio.Future[Any]] = {}

    def start(self) -> None:
        """Starts the thread; call from the event loop that will wait on the feed."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Condition()
        self._thread = threading.Thread(target=self._watch, name="resumeflow-change-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the thread (it returns within half a second)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        marker = 0
        while not self._stop.is_set():
            try:
                new = self._engine._core.wait_for_change(marker, _SLICE_S)
            except Exception:  # noqa: BLE001 - the store closed: the server is stopping
                return
            if new != marker:
                marker = new
                loop = self._loop
                if loop is not None and not loop.is_closed():
                    asyncio.run_coroutine_threadsafe(self._bump(), loop)

    async def _bump(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._version += 1
            self._changed.notify_all()

    @property
    def version(self) -> int:
        """Changes seen so far."""
        return self._version

    async def wait(self, seen: int, timeout: float, also: asyncio.Event | None = None) -> int:
        """Waits until the store changed after version ``seen``, ``also`` is set (see
        :meth:`poke`), or ``timeout``."""
        assert self._changed is not None
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._version != seen or (also is not None and also.is_set())),
                    timeout,
                )
            except TimeoutError:
                pass
            return self._version

    def poke(self, event: asyncio.Event) -> None:
        """Sets ``event`` and wakes its waiter; callable from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._poke(event), loop)

    async def _poke(self, event: asyncio.Event) -> None:
        assert self._changed is not None
        async with self._changed:
            event.set()
            self._changed.notify_all()

    async def read(self, key: tuple[Any, ...], read: Any) -> Any:
        """``read()`` in a worker thread, shared by every caller that asks for the same
        ``key`` while it is in flight. A key must hold :attr:`version` as seen before the
        read, so that no caller gets a read that started before a change it was woken for."""
        future = self._reads.get(key)
        if future is None:
            future = asyncio.ensure_future(anyio.to_thread.run_sync(read))
            self._reads[key] = future
            future.add_done_callback(lambda _f: self._reads.pop(key, None))
        return await asyncio.shield(future)
