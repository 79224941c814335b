"""The store-wide run feed behind ``GET /api/v1/events``: one summary per run (status,
progress, timestamps) kept by one task per server, and every change of status, progress or checkpoint pushed
to each subscribed client as an SSE ``run`` message, with ``counts`` messages (runs per
status) whenever those change. The web monitor's runs list is live through it.

Reads are driven by :class:`~resumeflow.server.feed.ChangeFeed` (no polling while the store is
quiet) and are incremental: runs created after the newest one known (``after=`` in creation
order), the runs now queued/pending/running, and the ones that were active at the last read
and no longer are. A full read reconciles the rest (a run stopped twice between two reads, a
clock-skewed creation time) every :data:`RECONCILE_S` seconds at most, and no more often than
twenty times its own duration, so a store of many thousands of runs never keeps a core busy.
The task runs only while a client is subscribed.

Invariants a client may rely on: every message is a run's whole current summary (applying one
twice, or an older one after a newer one, is detected by ``updated_at``); a subscriber gets
``counts`` first, then the changes that follow, in the order the server saw them; with
``?since=TS`` it first gets every run updated at or after ``TS``. A client that reconnects
re-reads what it shows (``GET /api/v1/runs``) after the first ``counts`` of the new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio

import resumeflow as rf

from .feed import ChangeFeed

#: Statuses in which a run may still change without anyone resuming it.
ACTIVE = ("queued", "pending", "running")
STATUSES = ("queued", "pending", "running", "paused", "completed", "failed", "cancelled")
#: The longest time (s) between two full reads while the store changes.
RECONCILE_S = 10.0
#: The shortest time (s) between two reads: changes within it are read together.
MIN_GAP_S = 0.1
#: Messages a slow client may have waiting before its stream is closed (it reconnects).
BACKLOG = 5000


def summary(d: dict[str, Any]) -> dict[str, Any]:
    """A run's summary from the core's run dict.

    >>> summary({"run_id": "r", "workflow": "w", "status": "running", "created_at": 1.0,
    ...          "updated_at": 2.0, "error": None, "nodes": {"a": {"status": "completed"}, "b": {"status": "running"}}})
    {'run_id': 'r', 'workflow': 'w', 'status': 'running', 'completed': 1, 'total': 2, 'created_at': 1.0, 'updated_at': 2.0, 'error': None, 'checkpoint_id': None}
    """
    nodes = d.get("nodes") or {}
    return {
        "run_id": d["run_id"],
        "workflow": d["workflow"],
        "status": d["status"],
        "completed": sum(1 for n in nodes.values() if n.get("status") == "completed"),
        "total": len(nodes),
        "created_at": d.get("created_at"),
        "updated_at": d.get("updated_at"),
        "error": d.get("error"),
        "checkpoint_id": d.get("checkpoint_id"),
    }


def counts(runs: dict[str, dict[str, Any]], workflow: str | None) -> dict[str, Any]:
    """The ``counts`` message data: runs per status (every status listed), the total, and
    the same per workflow (``by_workflow``: only the workflows with runs).

    >>> c = counts({"r": {"workflow": "w", "status": "failed"}}, None)
    >>> c["counts"]["failed"], c["total"], c["by_workflow"]["w"]["failed"]
    (1, 1, 1)
    """
    per: dict[str, Counter[str]] = {}
    for s in runs.values():
        if workflow is None or s["workflow"] == workflow:
            per.setdefault(s["workflow"], Counter())[s["status"]] += 1
    every = sum(per.values(), Counter())
    return {
        "counts": {status: every.get(status, 0) for status in STATUSES},
        "total": sum(every.values()),
        "by_workflow": {wf: {status: c.get(status, 0) for status in STATUSES} for wf, c in sorted(per.items())},
    }


def _progress(s: dict[str, Any]) -> tuple[Any, ...]:
    """What a ``run`` message is sent for: the status, the completed nodes, and a new
    checkpoint (a rerun that ends as it began still cuts checkpoints)."""
    return s["status"], s["completed"], s["checkpoint_id"]


def _sse(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"event": kind, "data": json.dumps(data, allow_nan=False, default=repr)}


class _Subscriber:
    def __init__(self, workflow: str | None) -> None:
        self.workflow = workflow
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.last_counts: dict[str, Any] | None = None
        self.started = False  # its first counts went out: changes follow

    def put(self, msg: dict[str, Any] | None) -> bool:
        if msg is not None and self.queue.qsize() >= BACKLOG:
            return False
        self.queue.put_nowait(msg)
        return True


class RunFeed:
    """Summaries of every run in the store, kept current while someone listens."""

    def __init__(self, engine: rf.Engine, changes: ChangeFeed) -> None:
        self._engine = engine
        self._changes = changes
        self._runs: dict[str, dict[str, Any]] = {}
        self._newest: str | None = None
        self._subscribers: set[_Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._last_full = 0.0
        self._full_cost = 0.0

    # --- reading the store (worker threads) --------------------------------------------------

    def _read_full(self) -> dict[str, dict[str, Any]]:
        began = time.monotonic()
        found = {d["run_id"]: summary(d) for d in self._engine._core.list_runs_filtered(None, None, None, None, None)}
        self._full_cost = time.monotonic() - began
        return found

    def _read_changed(self, newest: str | None, watched: list[str]) -> dict[str, dict[str, Any] | None]:
        core = self._engine._core
        found: dict[str, dict[str, Any] | None] = {}
        if newest is not None:
            for d in core.list_runs_filtered(None, None, None, None, newest):
                found[d["run_id"]] = summary(d)
        for status in ACTIVE:
            for d in core.list_runs_filtered(status, None, None, None, None):
                found[d["run_id"]] = summary(d)
        for run_id in watched:
            if run_id not in found:
                try:
                    found[run_id] = summary(core.get_current_state(run_id))
                except rf.RunNotFound:
                    found[run_id] = None
        return found

    # --- the task (event loop) ---------------------------------------------------------------

    async def _loop(self) -> None:
        assert self._ready is not None
        try:
            while self._subscribers:
                seen = self._changes.version
                now = time.monotonic()
                full = (not self._ready.is_set() or self._newest is None
                        or now - self._last_full >= max(RECONCILE_S, 20 * self._full_cost))
                if full:
                    fresh = await anyio.to_thread.run_sync(self._read_full)
                    self._last_full = time.monotonic()
                    gone = [run_id for run_id in self._runs if run_id not in fresh]
                    self._apply({**fresh, **dict.fromkeys(gone)})
                else:
                    watched = [r for r, s in self._runs.items() if s["status"] in ACTIVE]
                    self._apply(await anyio.to_thread.run_sync(self._read_changed, self._newest, watched))
                self._ready.set()
                await self._changes.wait(seen, 15.0)
                await asyncio.sleep(MIN_GAP_S)
        except Exception:  # noqa: BLE001 - the store is gone (shutdown): end every stream
            self._ready.set()
            for sub in list(self._subscribers):
                sub.put(None)
        finally:
            self._task = None
            self._ready.clear()  # nobody listens: the next subscriber waits for a full read

    def _apply(self, found: dict[str, dict[str, Any] | None]) -> None:
        """Folds read summaries in and tells every subscriber what changed (no await: the
        snapshot and the messages stay in step)."""
        changed: list[dict[str, Any]] = []
        for run_id, new in found.items():
            old = self._runs.get(run_id)
            if new is None:
                self._runs.pop(run_id, None)
                continue
            if old is not None and (new["updated_at"] or 0) < (old["updated_at"] or 0):
                continue  # an older read than what we hold
            self._runs[run_id] = new
            if old is None or _progress(old) != _progress(new):
                changed.append({**new, "previous": old["status"] if old else None})
        if self._runs:
            self._newest = max(self._runs.values(), key=lambda s: (s["created_at"] or 0, s["run_id"]))["run_id"]
        changed.sort(key=lambda s: s["updated_at"] or 0)
        for sub in [s for s in self._subscribers if s.started]:
            ok = all(sub.put(_sse("run", c)) for c in changed if sub.workflow in (None, c["workflow"]))
            ok = ok and self._send_counts(sub)
            if not ok:
                self._drop(sub)

    def _send_counts(self, sub: _Subscriber) -> bool:
        now = counts(self._runs, sub.workflow)
        if now == sub.last_counts:
            return True
        sub.last_counts = now
        return sub.put(_sse("counts", now))

    def _drop(self, sub: _Subscriber) -> None:
        self._subscribers.discard(sub)
        sub.queue.put_nowait(None)  # past the backlog: the client reconnects and re-reads

    # --- subscribers -------------------------------------------------------------------------

    async def subscribe(self, *, workflow: str | None = None, since: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """SSE messages for one client: ``counts``, then (``since``) the runs updated since,
        then every change, until the client goes away or falls too far behind."""
        sub = _Subscriber(workflow)
        if self._ready is None:
            self._ready = asyncio.Event()
        self._subscribers.add(sub)
        if self._task is None:
            self._task = asyncio.create_task(self._loop())
        try:
            await self._ready.wait()
            if sub in self._subscribers:  # no await from here to the first put: in step
                sub.started = True
                self._send_counts(sub)
                if since is not None:
                    for s in sorted(self._runs.values(), key=lambda s: s["updated_at"] or 0):
                        if (s["updated_at"] or 0) >= since and workflow in (None, s["workflow"]):
                            sub.put(_sse("run", {**s, "previous": None}))
            while True:
                msg = await sub.queue.get()
                if msg is None:
                    return
                yield msg
        finally:
            self._subscribers.discard(sub)

    async def stop(self) -> None:
        """Ends the task and every stream (server shutdown)."""
        for sub in list(self._subscribers):
            self._drop(sub)
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
