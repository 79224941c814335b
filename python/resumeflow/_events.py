"""Typed event payloads: what the core stores for each event (msgpack with named fields),
as plain dicts for ``Engine.events(run_id, after_seq=...)`` and the service's stream."""

from __future__ import annotations

from typing import Any

import msgpack


def _plain(value: Any) -> Any:
    """Value references become ``{"hash": hex, "size": n}``; containers are walked."""
    if isinstance(value, dict):
        if set(value) == {"hash", "size"} and isinstance(value["hash"], bytes):
            return {"hash": value["hash"].hex(), "size": value["size"]}
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def payload(raw: bytes) -> dict[str, Any]:
    """The fields of one stored event (``{}`` for events without fields).

    >>> payload(msgpack.packb({"NodeStarted": {"node": "a", "attempt": 1}}))
    {'node': 'a', 'attempt': 1}
    >>> payload(msgpack.packb("RunPaused"))
    {}
    """
    decoded = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    if isinstance(decoded, dict) and len(decoded) == 1:
        (fields,) = decoded.values()
        return _plain(fields) if isinstance(fields, dict) else {}
    return {}


def typed(rows: list[tuple[int, float, str, str | None, bytes]]) -> list[dict[str, Any]]:
    """Core event rows ``(seq, at, kind, node, payload)`` as dicts.

    >>> typed([(3, 1.5, "RunPaused", None, msgpack.packb("RunPaused"))])
    [{'seq': 3, 'at': 1.5, 'kind': 'RunPaused', 'node': None, 'data': {}}]
    """
    return [
        {"seq": seq, "at": at, "kind": kind, "node": node, "data": payload(raw)}
        for seq, at, kind, node, raw in rows
    ]
