"""The Engine: start, pause, resume and inspect durable runs on an embedded SQLite store."""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from . import _codec, _workers
from ._core import CoreEngine, CoreRun, RunFailed, SerializationError
from ._runner import Runner
from ._state import Checkpoint, RunState, Undecodable
from ._streaming import Subscription
from ._workflow import Workflow


class Run:
    """A run executing in the background (returned by ``Engine.start`` and ``resume``)."""

    def __init__(self, engine: Engine, core: CoreRun) -> None:
        self._engine = engine
        self._core = core

    @property
    def id(self) -> str:
        return str(self._core.id)

    def wait(self, timeout: float | None = None) -> RunState:
        """Blocks until the run stops; raises ``TimeoutError`` if ``timeout`` passes first.

        Ctrl-C interrupts the run (in-flight nodes finish, then it pauses) and re-raises.
        """
        try:
            result = self._core.wait(timeout)
        except KeyboardInterrupt:
            self._core.interrupt()
            raise
        if result is None:
            raise TimeoutError(f"run {self.id!r} still running after {timeout} s")
        state, live = result
        return self._engine._state(state, live)

    @property
    def status(self) -> str:
        """The run's committed status now (no output is loaded)."""
        return str(self._engine._core.get_current_state(self.id)["status"])

    def done(self) -> bool:
        return bool(self._core.done())

    def chunks(self) -> Subscription:
        """Items of this run's streaming (generator) nodes as they are yielded, as
        ``(node_id, item)`` pairs, until the run stops; see :class:`Subscription`."""
        return Subscription(self.id, lambda: not self.done())

    def interrupt(self) -> None:
        """Lets in-flight nodes finish, then pauses the run."""
        self._core.interrupt()

    def cancel(self) -> None:
        """Abandons in-flight nodes and marks the run cancelled."""
        self._core.cancel()

    def __repr__(self) -> str:
        return f"Run({self.id!r})"


def _encode_inputs(inputs: Mapping[str, Any] | None) -> dict[str, bytes]:
    if inputs is None:
        return {}
    if not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a dict of run inputs, got {type(inputs).__name__}")
    out = {}
    for k, v in inputs.items():
        if not isinstance(k, str):
            raise TypeError(f"run input names must be str, got {k!r}")
        out[k] = _codec.encode(v, what=f"inputs[{k!r}]")
    return out


def _older_than(value: Any) -> float | None:
    """Accepts seconds of age, a timedelta (age) or a datetime (cut-off)."""
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.astimezone()
        return value.timestamp()
    if isinstance(value, _dt.timedelta):
        return time.time() - value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return time.time() - float(value)
    raise TypeError("older_than must be seconds, a timedelta or a datetime")


class Engine:
    """Runs workflows durably on the SQLite store at ``path`` (created if missing).

    Beyond shared/API.md: ``max_store_bytes`` caps the store's size (writes past it fail with
    ``StoreError`` and change nothing); ``blob_file_threshold`` (bytes, default 64 MiB): a value
    whose stored form is at least this large is kept as a file in ``<path>.blobs/``, written and
    fsynced before the commit that references it (large tensors at disk speed, no database
    bloat); ``cleanup`` removes the files nothing references any more.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "resumeflow.db",
        *,
        max_concurrency: int | None = None,
        durability: str = "sync",
        resources: Mapping[str, int] | None = None,
        lease_seconds: float = 30.0,
        max_store_bytes: int | None = None,
        blob_file_threshold: int | None = None,
    ) -> None:
        self.path = os.fspath(path)
        _workers.ensure_started()
        self._core = CoreEngine(
            self.path,
            max_concurrency=max_concurrency,
            durability=durability,
            resources=dict(resources) if resources else None,
            lease_seconds=float(lease_seconds),
            max_store_bytes=max_store_bytes,
            blob_file_threshold=blob_file_threshold,
        )
        self._runners: dict[int, Runner] = {}

    def subscribe(self, run_id: str) -> Subscription:
        """Items of ``run_id``'s streaming nodes as this engine's workers yield them, as
        ``(node_id, item)`` pairs, until the run stops executing here.

        >>> import resumeflow as rf, tempfile, os
        >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "s.db")) as engine:
        ...     list(engine.subscribe("not-running"))
        []
        """
        return Subscription(run_id, lambda: run_id in self._core.active_runs())

    # --- helpers ---------------------------------------------------------------------------

    def _runner(self, wf: Workflow) -> Runner:
        runner = self._runners.get(id(wf))
        if runner is None or runner.workflow is not wf:
            runner = Runner(wf)
            self._runners[id(wf)] = runner
        return runner

    def _state(self, d: dict[str, Any], live: Mapping[str, Any] | None = None) -> RunState:
        values: dict[str, Any] = {}
        live = live or {}
        for node_id in d["node_order"]:
            node = d["nodes"].get(node_id)
            if node is None or node["status"] != "completed" or node["output"] is None:
                continue
            if node_id in live:
                values[node_id] = live[node_id]
            else:
                digest, size = node["output"]
                try:
                    values[node_id] = _codec.decode(self._core.load_value(digest, size))
                except SerializationError as e:
                    # A value this process cannot decode (a codec registered elsewhere, pickle
                    # not enabled) must not hide the run's state.
                    values[node_id] = Undecodable(node_id, str(e))
        return RunState._from_core(d, values)

    @staticmethod
    def _check_workflow(wf: Any) -> Workflow:
        if not isinstance(wf, Workflow):
            raise TypeError(f"expected a resumeflow.Workflow, got {type(wf).__name__}")
        return wf

    # --- runs ------------------------------------------------------------------------------

    def start(
        self,
        wf: Workflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        _until: str | None = None,
    ) -> Run:
        """Starts a run in the background and returns at once."""
        graph = self._check_workflow(wf).validate()
        core = self._core.start(
            graph, self._runner(wf), _encode_inputs(inputs), run_id=run_id, until=_until,
            labels=dict(labels) if labels else None,
        )
        return Run(self, core)

    def run(
        self,
        wf: Workflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> RunState:
        """Runs to the end; raises ``RunFailed`` (with ``.state``) if the run fails."""
        state = self.start(wf, inputs, run_id=run_id, labels=labels).wait()
        return _raise_if_failed(state)

    def execute_until(
        self,
        wf: Workflow,
        until: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
    ) -> RunState:
        """Runs only ``until`` and its ancestors, commits, and leaves the run ``paused``.

        With ``run_id`` naming an existing (paused) run, continues that run instead.
        """
        graph = self._check_workflow(wf).validate()
        if run_id is not None and self._exists(run_id):
            core = self._core.resume(run_id, graph, self._runner(wf), until=until)
        else:
            core = self._core.start(graph, self._runner(wf), _encode_inputs(inputs), run_id=run_id, until=until)
        return Run(self, core).wait()

    def _exists(self, run_id: str) -> bool:
        from ._core import RunNotFound

        try:
            self._core.get_current_state(run_id)
            return True
        except RunNotFound:
            return False

    def resume(
        self,
        run_id: str,
        wf: Workflow,
        *,
        checkpoint_id: int | None = None,
        updates: Mapping[str, Any] | None = None,
        rerun: Iterable[str] | None = None,
        allow_mismatch: bool = False,
    ) -> Run:
        """Continues a stopped run; completed nodes are not executed again."""
        graph = self._check_workflow(wf).validate()
        encoded_updates = None
        if updates:
            encoded_updates = {
                k: _codec.encode(v, node=k, what=f"updates[{k!r}]") for k, v in updates.items()
            }
        if isinstance(rerun, str):
            rerun = [rerun]
        core = self._core.resume(
            run_id, graph, self._runner(wf), checkpoint_id=checkpoint_id,
            updates=encoded_updates, rerun=list(rerun) if rerun else None,
            allow_mismatch=allow_mismatch,
        )
        return Run(self, core)

    def recover(self, workflows: Iterable[Workflow] | Mapping[str, Workflow]) -> list[Run]:
        """Resumes every run left ``running`` by a dead or expired worker, for these workflows."""
        if isinstance(workflows, Mapping):
            by_name = dict(workflows)
        else:
            by_name = {wf.name: wf for wf in workflows}
        table = {
            name: (self._check_workflow(wf).validate(), self._runner(wf)) for name, wf in by_name.items()
        }
        return [Run(self, core) for core in self._core.recover(table)]

    # --- inspection ------------------------------------------------------------------------

    def get_current_state(self, run_id: str) -> RunState:
        """The run's latest committed state."""
        return self._state(self._core.get_current_state(run_id))

    def get_partial_results(self, run_id: str) -> dict[str, Any]:
        """Decoded outputs of the run's completed nodes only."""
        return {k: _codec.decode(v) for k, v in self._core.get_partial_results(run_id).items()}

    def save_partial_state(self, run_id: str, node_id: str, state: Any) -> None:
        """Stores a node's own progress (as ``ctx.save_partial_state`` does)."""
        self._core.save_partial_state(run_id, node_id, _codec.encode(state, node=node_id, what="partial_state"))

    def get_partial_state(self, run_id: str, node_id: str) -> Any:
        """A node's saved progress, or None."""
        raw = self._core.get_partial_state(run_id, node_id)
        return None if raw is None else _codec.decode(raw)

    def history(self, run_id: str) -> list[Checkpoint]:
        """The run's checkpoints, newest first."""
        return [Checkpoint._from_core(d) for d in self._core.history(run_id)]

    def cleanup(self, run_id: str | None = None, *, keep_last: int = 1, older_than: Any = None) -> int:
        """Deletes old checkpoints (never a run's newest); returns how many were deleted."""
        if not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be an int >= 1 (the newest checkpoint is always kept), got {keep_last!r}")
        return int(self._core.cleanup(run_id, keep_last, _older_than(older_than)))

    def list_runs(self, status: str | None = None) -> list[RunState]:
        """Runs in the store (optionally with this status), oldest first."""
        return [self._state(d) for d in self._core.list_runs(status)]

    def events(self, run_id: str) -> list[tuple[int, float, str, str | None]]:
        """The run's event log: ``(seq, at, kind, node_id)``, oldest first."""
        return list(self._core.events(run_id))

    def check_integrity(self) -> str:
        """``PRAGMA integrity_check`` of the store: ``"ok"``, or the problems found.

        Prefer this to opening the file with the ``sqlite3`` module in the same process while
        an Engine is open: two SQLite libraries in one process release each other's locks.
        """
        return str(self._core.check_integrity())

    # --- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Interrupts active runs (in-flight nodes finish), waits for them, closes the store."""
        self._core.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Engine({self.path!r})"


def _raise_if_failed(state: RunState) -> RunState:
    if state.status == "failed":
        err = RunFailed(f"run {state.run_id!r} failed: {state.error}")
        err.state = state  # type: ignore[attr-defined]
        raise err
    return state
