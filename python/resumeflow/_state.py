"""What callers read about runs: RunState, NodeState, Checkpoint."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _codec


@dataclass(frozen=True)
class Undecodable:
    """Stands in ``RunState.values`` for an output this process cannot decode (for example a
    value stored with a codec registered in another program). ``error`` says why."""

    node_id: str
    error: str

    def __repr__(self) -> str:
        return f"<undecodable output of {self.node_id!r}: {self.error}>"


@dataclass(frozen=True)
class NodeState:
    """One node of a run: status, durable attempt count, last error."""

    status: str
    attempt: int
    error: str | None
    retryable: bool | None
    started_at: float | None
    finished_at: float | None
    inputs_override: dict[str, Any] = field(default_factory=dict)
    peak_memory: int | None = None

    @classmethod
    def _from_core(cls, d: dict[str, Any]) -> NodeState:
        raw = d["inputs_override"]
        return cls(
            status=d["status"],
            attempt=d["attempt"],
            error=d["error"],
            retryable=d["retryable"],
            started_at=d["started_at"],
            finished_at=d["finished_at"],
            inputs_override=_codec.decode(raw) if raw else {},
            peak_memory=d["peak_memory"],
        )


@dataclass(frozen=True)
class RunState:
    """A run as of its latest committed step. ``values`` (the outputs of completed nodes) is
    loaded and decoded on first access: listing runs costs no value decoding."""

    run_id: str
    workflow: str
    status: str
    nodes: dict[str, NodeState]
    completed: list[str]
    pending: list[str]
    _values: Any = field(repr=False, compare=False)
    checkpoint_id: int | None
    error: str | None
    created_at: float
    updated_at: float
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def values(self) -> dict[str, Any]:
        """Outputs of the completed nodes, decoded (once, on first access)."""
        if callable(self._values):
            object.__setattr__(self, "_values", self._values())
        return self._values  # type: ignore[no-any-return]

    @classmethod
    def _from_core(cls, d: dict[str, Any], values: dict[str, Any] | Callable[[], dict[str, Any]]) -> RunState:
        nodes = {k: NodeState._from_core(v) for k, v in d["nodes"].items()}
        order = d["node_order"]
        completed = [n for n in order if n in nodes and nodes[n].status == "completed"]
        return cls(
            run_id=d["run_id"],
            workflow=d["workflow"],
            status=d["status"],
            nodes=nodes,
            completed=completed,
            pending=[n for n in order if n in nodes and nodes[n].status != "completed"],
            _values=values,
            checkpoint_id=d["checkpoint_id"],
            error=d["error"],
            created_at=d["created_at"],
            updated_at=d["updated_at"],
            labels=dict(d.get("labels") or {}),
        )

    def to_dict(self, *, values: bool = True) -> dict[str, Any]:
        """A JSON-friendly dict keyed by the attribute names (values left as they are);
        ``values=False`` leaves ``values`` out (and decodes nothing)."""
        d = {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "status": self.status,
            "nodes": {k: vars(v) for k, v in self.nodes.items()},
            "completed": self.completed,
            "pending": self.pending,
            "values": self.values if values else None,
            "checkpoint_id": self.checkpoint_id,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "labels": dict(self.labels),
        }
        if not values:
            del d["values"]
        return d


@dataclass(frozen=True)
class Checkpoint:
    """A durable, numbered point in a run's history."""

    checkpoint_id: int
    parent_id: int | None
    run_id: str
    created_at: float
    completed: list[str]
    kind: str = "completed"

    @classmethod
    def _from_core(cls, d: dict[str, Any]) -> Checkpoint:
        return cls(
            checkpoint_id=d["checkpoint_id"],
            parent_id=d["parent_id"],
            run_id=d["run_id"],
            created_at=d["created_at"],
            completed=list(d["completed"]),
            kind=d["kind"],
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict keyed by the attribute names."""
        return {
            "checkpoint_id": self.checkpoint_id,
            "parent_id": self.parent_id,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "completed": list(self.completed),
            "kind": self.kind,
        }

    @property
    def created(self) -> _dt.datetime:
        """``created_at`` as an aware UTC datetime."""
        return _dt.datetime.fromtimestamp(self.created_at, tz=_dt.UTC)
