"""The SSE stream of a run: its durable event log replayed after a cursor (``Last-Event-ID``
or ``?after=``), then followed live, whoever executes the run. Each message's id is the event's
seq in the log, so a client that reconnects with the last id it saw gets every later event
exactly once, in order, across server restarts."""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, cast

import anyio

import resumeflow as rf

from .._streaming import Subscription
from . import values
from .feed import ChangeFeed

#: Log kinds shown to clients, by SSE event type; other kinds (leases, checkpoints) are
#: internal and skipped (their seqs are simply absent from the ids).
EVENT_TYPES = {
    "NodeStarted": "step_start",
    "NodeCompleted": "step_complete",
    "NodeFailed": "step_failed",
    "NodeRetryScheduled": "step_retrying",
    "RunPaused": "workflow_paused",
    "RunCompleted": "workflow_complete",
    "RunFailed": "workflow_failed",
    "RunCancelled": "workflow_cancelled",
}
TERMINAL = frozenset({"workflow_paused", "workflow_complete", "workflow_failed", "workflow_cancelled"})
#: Run statuses after which a stream with nothing left to send closes.
STOPPED = frozenset({"paused", "completed", "failed", "cancelled"})
#: Events read from the store per page.
PAGE = 500


def _chunks(subscription: Subscription, run_id: str) -> list[dict[str, Any]]:
    """Items streamed so far and not yet sent, as ``chunk`` messages (no id: they are not
    events of the durable log; the node's output holds them once it completes)."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            node, item = subscription._queue.get_nowait()
        except queue.Empty:
            return out
        out.append(_chunk(run_id, node, item))


def message(run_id: str, event: dict[str, Any], attempts: dict[str, int]) -> dict[str, Any] | None:
    """The SSE message (``id``, ``event``, ``data``) for one log event, or None if internal.

    >>> message("r", {"seq": 4, "at": 1.0, "kind": "NodeStarted", "node": "a", "data": {"node": "a", "attempt": 1}}, {})
    {'id': '4', 'event': 'step_start', 'data': '{"run_id": "r", "seq": 4, "ts": 1.0, "node": "a", "attempt": 1}'}
    """
    kind = EVENT_TYPES.get(event["kind"])
    fields = event["data"]
    node = event["node"]
    if node is not None and "attempt" in fields:
        attempts[node] = fields["attempt"]
    if kind is None:
        return None
    data: dict[str, Any] = {"run_id": run_id, "seq": event["seq"], "ts": event["at"]}
    if node is not None:
        data["node"] = node
        data["attempt"] = fields.get("attempt", attempts.get(node))
    if kind == "step_failed":
        data.update(error=fields.get("error"), retryable=fields.get("retryable"), will_retry=fields.get("will_retry"))
    elif kind == "step_retrying":
        data["delay_s"] = fields.get("delay_ms", 0) / 1000.0
        if fields.get("reason"):
            data["reason"] = fields["reason"]
    elif kind == "workflow_failed":
        data["error"] = fields.get("error")
    return {"id": str(event["seq"]), "event": kind, "data": json.dumps(data, allow_nan=False, default=repr)}


def _saved_items(engine: rf.Engine, run_id: str, node: str, sent: int) -> list[Any]:
    """Items ``node`` saved with its cursor (its durable segments) from index ``sent`` on:
    what a stream sees of a streaming node another process executes. Segments are removed
    when the node completes (its output holds every item), so items saved just before that
    may not reach a stream that reads too late."""
    from .. import _codec

    items: list[Any] = []
    for first, raw in engine._core.partial_segments(run_id, node):
        decoded = _codec.decode(raw)
        start = max(0, sent - first)
        if first + len(decoded) > sent:
            items.extend(decoded[start:])
    return items


def _chunk(run_id: str, node: str, item: Any) -> dict[str, Any]:
    data = {"run_id": run_id, "node": node, "item": values.to_json(item)}
    return {"event": "chunk", "data": json.dumps(data, allow_nan=False, default=repr)}


def _page(engine: rf.Engine, run_id: str, cursor: int) -> list[dict[str, Any]]:
    """Up to :data:`PAGE` events after ``cursor``, as dicts."""
    return cast(list[dict[str, Any]], engine.events(run_id, after_seq=cursor, limit=PAGE))


def _status(engine: rf.Engine, run_id: str) -> str:
    return engine.run_handle(run_id).status


async def follow(engine: rf.Engine, feed: ChangeFeed, run_id: str, after: int, keepalive_s: float) -> AsyncIterator[dict[str, Any]]:
    """SSE messages of ``run_id`` after seq ``after``, then live ones, until a terminal one
    (or, with nothing left to send, until the run is stopped)."""
    # Items of streaming nodes this process executes reach subscribers live, not the log;
    # each one wakes this stream.
    item = asyncio.Event()
    subscription = Subscription(run_id, lambda: True, on_item=lambda: feed.poke(item))
    try:
        async for msg in _follow(engine, feed, run_id, after, keepalive_s, subscription, item):
            yield msg
    finally:
        subscription.close()


async def _follow(
    engine: rf.Engine, feed: ChangeFeed, run_id: str, after: int, keepalive_s: float,
    subscription: Subscription, item_arrived: asyncio.Event,
) -> AsyncIterator[dict[str, Any]]:
    cursor = after
    attempts: dict[str, int] = {}
    remote_sent: dict[str, int] = {}  # items of streaming nodes executed elsewhere, sent so far
    stopped = False
    while True:
        seen = feed.version
        item_arrived.clear()
        for chunk in _chunks(subscription, run_id):  # before the events that follow them
            yield chunk
        events = await feed.read(("events", run_id, cursor, seen), partial(_page, engine, run_id, cursor))
        sent = False
        read_segments: set[str] = set()
        for event in events:
            cursor = event["seq"]
            node = event["node"]
            if event["kind"] == "PartialStateSaved" and node and node not in read_segments \
                    and run_id not in engine._core.active_runs():
                # Executed in another process: its items reach this stream through the
                # segments it saves with its cursor (at save granularity, not per item).
                read_segments.add(node)
                done = remote_sent.get(node, 0)
                saved = await anyio.to_thread.run_sync(_saved_items, engine, run_id, node, done)
                remote_sent[node] = done + len(saved)
                for value in saved:
                    yield _chunk(run_id, node, value)
            msg = message(run_id, event, attempts)
            if msg is None:
                continue
            sent = True
            yield msg
            if msg["event"] in TERMINAL:
                return
        if len(events) == PAGE:
            continue
        if not sent:  # nothing a client sees after the cursor (internal events at most)
            if stopped:
                return  # stopped, and nothing after the cursor even after the status read
            # The status changes in the transaction of the run's last event: once it reads
            # stopped, one more read of the log gets everything the run wrote.
            status = await anyio.to_thread.run_sync(_status, engine, run_id)
            if status in STOPPED:
                stopped = True
                continue
        else:
            stopped = False
        await feed.wait(seen, keepalive_s, also=item_arrived)
