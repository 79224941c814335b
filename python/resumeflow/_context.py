"""The context a node receives: who it is, and its own saved progress."""

from __future__ import annotations

from typing import Any

from . import _codec


class NodeContext:
    """Passed to a parameter annotated ``rf.NodeContext`` (or named ``ctx``).

    ``save_partial_state(obj)`` stores progress durably; the next attempt, or a resumed run,
    gets it back from ``load_partial_state()``.
    """

    __slots__ = ("_core",)

    def __init__(self, core: Any) -> None:
        self._core = core

    @property
    def run_id(self) -> str:
        return str(self._core.run_id)

    @property
    def node_id(self) -> str:
        return str(self._core.node_id)

    @property
    def attempt(self) -> int:
        return int(self._core.attempt)

    def save_partial_state(self, obj: Any) -> None:
        """Saves ``obj`` (any encodable value) as this node's progress, durably."""
        # As parts: a large state's tensor memory goes to its blob file without being joined.
        self._core.save_partial_state_parts(_codec.encode_parts(obj, node=self.node_id, what="partial_state"))

    def load_partial_state(self) -> Any:
        """The progress saved by an earlier attempt, or None."""
        raw = self._core.load_partial_state()
        return None if raw is None else _codec.decode(raw)

    def heartbeat(self) -> None:
        """Tells the engine this node is alive (extends the run's lease now)."""
        self._core.heartbeat()

    @property
    def cancelled(self) -> bool:
        """True once the run was cancelled or this attempt timed out."""
        return bool(self._core.is_cancelled())

    def __repr__(self) -> str:
        return f"NodeContext(run_id={self.run_id!r}, node_id={self.node_id!r}, attempt={self.attempt})"
