"""The Engine: start, pause, resume and inspect durable runs on an embedded SQLite store."""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import operator
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from . import _codec, _events, _queue, _store_url, _tracing, _workers
from ._core import (
    CoreEngine,
    CoreRun,
    InvalidArgument,
    RunFailed,
    SerializationError,
    StoreError,
    WorkflowMismatch,
)
from ._runner import Runner
from ._state import Checkpoint, RunState, Undecodable
from ._streaming import Subscription
from ._workflow import Workflow

_ACTIVE_STATUSES = frozenset({"queued", "running", "pending"})


class Run:
    """A run executing in the background (returned by ``Engine.start`` and ``resume``), or
    one that any worker may execute (``Engine.submit``, ``Engine.run_handle``): ``wait``,
    ``status``, ``interrupt`` and ``cancel`` then go through the store, so they work whichever
    process or host executes the run."""

    def __init__(self, engine: Engine, core: CoreRun | None, run_id: str | None = None) -> None:
        self._engine = engine
        self._core = core
        self._id = str(core.id) if core is not None else str(run_id)

    @property
    def id(self) -> str:
        return self._id

    def wait(self, timeout: float | None = None) -> RunState:
        """Blocks until the run stops; raises ``TimeoutError`` if ``timeout`` passes first.

        Ctrl-C interrupts the run (in-flight nodes finish, then it pauses) and re-raises. The
        engine's ``close`` (the end of a ``with Engine(...)`` block) then waits for those nodes;
        a second Ctrl-C cuts that wait short too, leaving the run resumable as after a crash.

        >>> import resumeflow as rf, tempfile, os
        >>> wf = rf.Workflow("wait_doc")
        >>> @wf.node
        ... def one():
        ...     return 1
        >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "w.db")) as engine:
        ...     engine.start(wf).wait(timeout=60).status
        'completed'
        """
        if self._core is None:
            return self._wait_in_store(timeout)
        try:
            result = self._core.wait(timeout)
        except KeyboardInterrupt:
            self._core.interrupt()
            raise
        if result is None:
            raise TimeoutError(f"run {self.id!r} still running after {timeout} s")
        state, live = result
        _tracing.finished(self._engine, self.id)
        return self._engine._state(state, live)

    def _wait_in_store(self, timeout: float | None) -> RunState:
        """Waits until the run is no longer queued or running, by whichever worker."""
        d = self._engine._core.wait_for_end(self.id, timeout)
        if d is None:
            raise TimeoutError(f"run {self.id!r} still {self.status} after {timeout} s")
        return self._engine._state(d)

    @property
    def status(self) -> str:
        """The run's committed status now (no output is loaded)."""
        return str(self._engine._core.get_current_state(self.id)["status"])

    def done(self) -> bool:
        """True once the run stopped (ended, paused or cancelled)."""
        if self._core is None:
            return self.status not in _ACTIVE_STATUSES
        return bool(self._core.done())

    def chunks(self) -> Subscription:
        """Items of this run's streaming (generator) nodes as they are yielded, as
        ``(node_id, item)`` pairs, until the run stops; see :class:`Subscription`."""
        return Subscription(self.id, lambda: not self.done())

    def interrupt(self) -> None:
        """Lets in-flight nodes finish, then pauses the run (a queued run pauses at once).
        Works whichever process executes the run: the request is recorded in the store."""
        if self._core is not None:
            self._core.interrupt()
        else:
            self._engine._core.request_control(self.id, "interrupt")

    def cancel(self) -> None:
        """Abandons in-flight nodes and marks the run cancelled (a running node sees
        ``ctx.cancelled`` and its next ``ctx.heartbeat()`` raises ``rf.Cancelled``). Works
        whichever process executes the run: the request is recorded in the store."""
        if self._core is not None:
            self._core.cancel()
        else:
            self._engine._core.request_control(self.id, "cancel")

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


#: The smallest ``max_store_bytes`` accepted: the schema alone takes a few dozen 4 KiB pages,
#: and a cap below this could not hold a single run.
MIN_STORE_BYTES = 1 << 20

#: Label (hidden from ``RunState.labels``) holding a digest of a run's encoded inputs, so
#: that ``execute_until`` on an existing run can tell whether new inputs differ.
INPUTS_DIGEST_LABEL = "resumeflow.inputs_sha256"


def _inputs_digest(encoded: Mapping[str, bytes]) -> str:
    """A digest of encoded run inputs, independent of their order."""
    h = hashlib.sha256()
    for name in sorted(encoded):
        for part in (name.encode(), encoded[name]):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


def _invalid(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"invalid argument {field}: {message}")


def _count(field: str, value: Any, minimum: int, maximum: int = 2**64 - 1, hint: str = "") -> int:
    """An int argument in ``[minimum, maximum]``: ``TypeError`` for another type,
    ``InvalidArgument`` (a ``ValueError``) naming ``field`` for a value out of range."""
    if isinstance(value, bool):
        raise TypeError(f"{field} must be an int, got bool")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{field} must be an int, got {type(value).__name__}") from None
    if not minimum <= number <= maximum:
        bound = f"at least {minimum}" if maximum == 2**64 - 1 else f"between {minimum} and {maximum}"
        raise _invalid(field, f"must be {bound}{hint}, got {number}")
    return number


def _check_path(path: Any) -> str:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    try:
        text = os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike naming the store file, got {type(path).__name__}") from None
    if not isinstance(text, str):
        text = os.fsdecode(text)
    if not text.strip():
        raise _invalid("path", "must name the store file, got an empty path")
    if text == ":memory:" or text.startswith("file::memory:"):
        raise StoreError(
            f"store {text}: an in-memory store is not supported (durability needs a file that "
            "outlives the process); use a file, e.g. os.path.join(tempfile.mkdtemp(), 'runs.db')"
        )
    return text


def _check_resources(resources: Any) -> dict[str, int] | None:
    if resources is None:
        return None
    if not isinstance(resources, Mapping):
        raise TypeError(f"resources must be a dict of resource name -> capacity, got {type(resources).__name__}")
    out = {}
    for name, capacity in resources.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"resources names must be non-empty str, got {name!r}")
        out[name] = _count(f"resources[{name!r}]", capacity, 0, 2**32 - 1)
    return out or None


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
    """Runs workflows durably on the SQLite store at ``path`` (created if missing), or, when
    ``path`` is a URL ``postgresql://user:password@host:port/dbname?schema=NAME``, on a
    PostgreSQL store with the same API and semantics. ``repr(engine)`` and the messages Python
    code writes about the store never show a URL's password.

    Beyond the basic options: ``max_store_bytes`` caps the store's size (writes past it fail with
    ``StoreError`` and change nothing; at least ``MIN_STORE_BYTES``, 1 MiB);
    ``blob_file_threshold`` (bytes, default 64 MiB): a value
    whose stored form is at least this large is kept as a file in ``<path>.blobs/``, written and
    fsynced before the commit that references it (large tensors at disk speed, no database
    bloat); ``cleanup`` removes the files nothing references any more. ``read_only=True``
    opens an existing store this process may not write, for inspection only (nothing is
    created or migrated; writes fail with ``StoreError``); it needs a core built with that
    mode, and is a ``StoreError`` saying so otherwise. On PostgreSQL, values of any size live in
    the database unless ``blob_dir`` names a directory every host mounts (values at or above
    ``blob_file_threshold`` then go there as files); ``max_store_bytes`` applies to SQLite only.

    Bad arguments are refused before the store is touched: a wrong type is a ``TypeError``, a
    value out of range an ``rf.InvalidArgument`` (also a ``ValueError``) naming the argument;
    ``":memory:"`` is a ``StoreError`` (a store must be a file).

    >>> import resumeflow as rf, tempfile, os
    >>> rf.Engine(os.path.join(tempfile.mkdtemp(), "e.db"), max_concurrency=-1)
    Traceback (most recent call last):
    ...
    resumeflow.InvalidArgument: invalid argument max_concurrency: must be at least 1 (or None for no limit), got -1
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
        read_only: bool = False,
        blob_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = _check_path(path)
        if max_concurrency is not None:
            max_concurrency = _count("max_concurrency", max_concurrency, 1, hint=" (or None for no limit)")
        if not isinstance(durability, str):
            raise TypeError(f"durability must be one of 'sync', 'batched', 'off', got {type(durability).__name__}")
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)):
            raise TypeError(f"lease_seconds must be a number of seconds, got {type(lease_seconds).__name__}")
        if not (math.isfinite(lease_seconds) and lease_seconds > 0):
            raise _invalid("lease_seconds", f"must be a positive number of seconds, got {lease_seconds}")
        if max_store_bytes is not None:
            max_store_bytes = _count(
                "max_store_bytes", max_store_bytes, MIN_STORE_BYTES,
                hint=" bytes (1 MiB: a smaller store cannot hold a run), or None for no cap",
            )
        if blob_file_threshold is not None:
            blob_file_threshold = _count("blob_file_threshold", blob_file_threshold, 0)
        checked_resources = _check_resources(resources)
        if not read_only:  # a read-only engine runs no node: no worker threads
            _workers.ensure_started()
        options: dict[str, Any] = {}
        if read_only:
            options["read_only"] = True
        if blob_dir is not None:
            if not _store_url.is_url(self.path):
                raise _invalid(
                    "blob_dir",
                    "is for a PostgreSQL store (a directory every host mounts); a SQLite store "
                    "keeps its blob files beside its file",
                )
            options["blob_dir"] = os.fspath(blob_dir)
        leaked: Exception | None = None
        try:
            self._core = CoreEngine(
                self.path,
                max_concurrency=max_concurrency,
                durability=durability,
                resources=checked_resources,
                lease_seconds=float(lease_seconds),
                max_store_bytes=max_store_bytes,
                blob_file_threshold=blob_file_threshold,
                **options,
            )
        except TypeError as e:
            if read_only and "read_only" in str(e):
                raise StoreError(
                    f"store {_store_url.redact(self.path)}: this build of resumeflow cannot open a store read-only; "
                    "give this process write access to the file and its directory, or inspect a "
                    "writable copy"
                ) from None
            raise
        except Exception as e:
            scrubbed = _store_url.scrub(str(e), self.path)
            if scrubbed == str(e):
                raise
            leaked = type(e)(scrubbed)
        if leaked is not None:  # raised here, not in the except: no __context__ keeps the password
            raise leaked
        self._runners: dict[int, Runner] = {}
        #: Handles of the runs this engine started or resumed (``close`` waits for them).
        self._handles: list[CoreRun] = []
        self._lease_seconds = float(lease_seconds)
        self._max_concurrency = max_concurrency
        #: The ``work`` loops running on this engine (``close`` stops them first).
        self._workers: list[_queue.Worker] = []

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

    def _track(self, core: CoreRun) -> Run:
        """A handle for ``core``, remembered so that ``close`` can wait for it."""
        self._handles = [h for h in self._handles if not h.done()]
        self._handles.append(core)
        return Run(self, core)

    def _state(self, d: dict[str, Any], live: Mapping[str, Any] | None = None, *, lazy: bool = False) -> RunState:
        labels = d.get("labels")
        if labels and INPUTS_DIGEST_LABEL in labels:
            d = dict(d, labels={k: v for k, v in labels.items() if k != INPUTS_DIGEST_LABEL})
        if lazy:
            return RunState._from_core(d, lambda: self._values(d, live))
        return RunState._from_core(d, self._values(d, live))

    def _values(self, d: dict[str, Any], live: Mapping[str, Any] | None) -> dict[str, Any]:
        """Decoded outputs of a state dict's completed nodes (live objects where given)."""
        values: dict[str, Any] = {}
        live = live or {}
        for node_id in d["node_order"]:
            node = d["nodes"].get(node_id)
            if node is None or node["status"] != "completed" or node["output"] is None:
                continue
            try:
                if node_id in live:  # output of this process: a fresh copy unless immutable
                    values[node_id] = _codec.from_handover(live[node_id])
                else:
                    digest, size = node["output"]
                    values[node_id] = _codec.decode(self._core.load_value(digest, size))
            except (SerializationError, StoreError) as e:
                # A value this process cannot decode (a codec registered elsewhere, pickle
                # not enabled) or read (its blob file is gone) must not hide the run's
                # state; `check_integrity()` reports a missing file, and
                # `resume(run_id, wf, rerun=[node_id])` writes it again.
                values[node_id] = Undecodable(node_id, str(e))
        return values

    def _prepare_new_run(
        self, wf: Workflow, inputs: Mapping[str, Any] | None, labels: Mapping[str, str] | None
    ) -> tuple[Any, dict[str, bytes], dict[str, str]]:
        """What starting or submitting a run checks first: the graph, the encoded inputs (no
        unknown ones), and the labels with the inputs' digest."""
        graph = self._check_workflow(wf).validate()
        encoded = _encode_inputs(inputs)
        wf.check_inputs(encoded)
        all_labels = dict(labels) if labels else {}
        if INPUTS_DIGEST_LABEL in all_labels:
            raise _invalid("labels", f"{INPUTS_DIGEST_LABEL!r} is reserved by resumeflow")
        all_labels[INPUTS_DIGEST_LABEL] = _inputs_digest(encoded)
        return graph, encoded, all_labels

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
        """Starts a run in the background and returns at once.

        Run inputs that no node parameter reads raise ``GraphError`` naming them (and the
        inputs the workflow knows), rather than being ignored.

        >>> import resumeflow as rf, tempfile, os
        >>> wf = rf.Workflow("start_doc")
        >>> @wf.node
        ... def double(n: int):
        ...     return 2 * n
        >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "s.db")) as engine:
        ...     engine.start(wf, {"n": 4}).wait().values
        {'double': 8}
        """
        return self._track(self._start(wf, inputs, run_id=run_id, labels=labels, until=_until))

    def _start(
        self,
        wf: Workflow,
        inputs: Mapping[str, Any] | None,
        *,
        run_id: str | None,
        labels: Mapping[str, str] | None = None,
        until: str | None = None,
    ) -> CoreRun:
        graph, encoded, all_labels = self._prepare_new_run(wf, inputs, labels)
        return _tracing.execute(
            self, wf.name, "start", self._runner(wf),
            lambda runner, labels: self._core.start(graph, runner, encoded, run_id=run_id, until=until, labels=labels),
            labels=all_labels,
        )

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

        With ``run_id`` naming an existing (paused) run, continues that run instead, with its
        stored inputs: passing ``inputs`` that differ from them raises ``rf.InvalidArgument``
        (a ``ValueError``) naming the run and the inputs; the same inputs, or none, are fine.

        >>> import resumeflow as rf, tempfile, os
        >>> wf = rf.Workflow("until_doc")
        >>> @wf.node
        ... def a(n: int):
        ...     return n + 1
        >>> @wf.node
        ... def b(a):
        ...     return a * 10
        >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "u.db")) as engine:
        ...     first = engine.execute_until(wf, "a", {"n": 1}, run_id="u")
        ...     engine.execute_until(wf, "b", run_id="u").values
        {'a': 2, 'b': 20}
        """
        graph = self._check_workflow(wf).validate()
        stored = self._stored_state(run_id) if run_id is not None else None
        if run_id is not None and stored is not None:
            self._check_same_inputs(stored, inputs)
            with _mismatch_hint():
                core = _tracing.execute(
                    self, wf.name, "resume", self._runner(wf),
                    lambda runner, _labels: self._core.resume(run_id, graph, runner, until=until), run_id=run_id,
                )
        else:
            core = self._start(wf, inputs, run_id=run_id, until=until)
        return self._track(core).wait()

    def _stored_state(self, run_id: str) -> dict[str, Any] | None:
        """The run's raw committed state, or None if the store does not hold it."""
        from ._core import RunNotFound

        try:
            return self._core.get_current_state(run_id)
        except RunNotFound:
            return None

    def _exists(self, run_id: str) -> bool:
        return self._stored_state(run_id) is not None

    @staticmethod
    def _check_same_inputs(stored: Mapping[str, Any], inputs: Mapping[str, Any] | None) -> None:
        """``execute_until`` on an existing run keeps its stored inputs: refuse different ones."""
        if not inputs:
            return
        encoded = _encode_inputs(inputs)
        digest = (stored.get("labels") or {}).get(INPUTS_DIGEST_LABEL)
        if digest is not None and digest == _inputs_digest(encoded):
            return
        run_id = stored["run_id"]
        why = (
            "they differ from the inputs it was started with"
            if digest is not None
            else "its stored inputs cannot be compared (it was started by an older resumeflow)"
        )
        raise _invalid(
            "inputs",
            f"run {run_id!r} already exists and continues with its stored inputs, so "
            f"inputs={dict(inputs)!r} cannot be applied ({why}); call execute_until without "
            "inputs to continue it, or pass a new run_id to start a run with these inputs",
        )

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
        """Continues a stopped run; completed nodes are not executed again.

        ``allow_mismatch=True`` resumes even though ``wf``'s node ids or wiring differ from the
        stored run's (a ``WorkflowMismatch`` otherwise): completed nodes keep their outputs,
        so only use it when those outputs still fit the new graph.

        >>> import resumeflow as rf, tempfile, os
        >>> wf = rf.Workflow("resume_doc")
        >>> @wf.node
        ... def a(n: int):
        ...     return n + 1
        >>> @wf.node
        ... def b(a):
        ...     return a * 10
        >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "r.db")) as engine:
        ...     paused = engine.execute_until(wf, "a", {"n": 1})
        ...     engine.resume(paused.run_id, wf).wait().values
        {'a': 2, 'b': 20}
        """
        graph = self._check_workflow(wf).validate()
        encoded_updates = None
        if updates:
            encoded_updates = {
                k: _codec.encode(v, node=k, what=f"updates[{k!r}]") for k, v in updates.items()
            }
        if isinstance(rerun, str):
            rerun = [rerun]
        with _mismatch_hint():
            core = _tracing.execute(
                self, wf.name, "resume", self._runner(wf),
                lambda runner, _labels: self._core.resume(
                    run_id, graph, runner, checkpoint_id=checkpoint_id,
                    updates=encoded_updates, rerun=list(rerun) if rerun else None,
                    allow_mismatch=bool(allow_mismatch),
                ),
                run_id=run_id,
            )
        return self._track(core)

    # --- queue and workers -----------------------------------------------------------------

    def submit(
        self,
        wf: Workflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Run:
        """Records a run with status ``queued`` and returns at once; any worker
        (``engine.work``, ``resumeflow worker``, in any process sharing the store) claims it,
        exactly once. The graph and inputs are checked first: a workflow that fails to
        validate, unknown inputs, a bad or duplicate ``run_id`` raise, and nothing is stored.

        >>> import resumeflow as rf, tempfile, os
        >>> wf = rf.Workflow("submit_doc")
        >>> @wf.node
        ... def double(n: int):
        ...     return 2 * n
        >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "q.db")) as engine:
        ...     run = engine.submit(wf, {"n": 21})
        ...     queued = run.status
        ...     engine.work([wf], max_runs=1)
        ...     queued, run.wait(timeout=60).values
        1
        ('queued', {'double': 42})
        """
        graph, encoded, all_labels = self._prepare_new_run(wf, inputs, labels)
        all_labels = _tracing.submit_labels(self, wf.name, all_labels)
        submitted = self._core.submit(graph, encoded, run_id=run_id, labels=all_labels)
        return Run(self, None, submitted)

    def run_handle(self, run_id: str) -> Run:
        """A handle on any stored run, wherever it executes (``RunNotFound`` if the store
        has none): ``wait`` reads the store, ``interrupt`` and ``cancel`` are recorded for
        the worker that holds the run.

        >>> import resumeflow as rf, tempfile, os
        >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "h.db")) as engine:
        ...     engine.run_handle("nope")
        Traceback (most recent call last):
        ...
        resumeflow.RunNotFound: run "nope" not found in the store
        """
        self._core.get_current_state(run_id)  # RunNotFound
        return Run(self, None, run_id)

    def work(
        self,
        workflows: Iterable[Workflow] | Mapping[str, Workflow],
        *,
        max_runs: int | None = None,
        idle_timeout: float | None = None,
    ) -> int:
        """Blocks, executing queued runs of ``workflows`` (oldest first; up to the engine's
        ``max_concurrency`` nodes at a time) and recovering their stale runs (whose worker
        died), so a pool of workers needs no supervisor. Returns the number of runs it
        finished once ``max_runs`` were finished, once nothing was queued for
        ``idle_timeout`` seconds, or when stopped (Ctrl-C, or ``engine.close()`` from
        another thread). Stopping lets in-flight nodes finish and puts the runs it was
        executing back in the queue, to continue where they stopped.

        >>> import resumeflow as rf, tempfile, os
        >>> wf = rf.Workflow("work_doc")
        >>> @wf.node
        ... def one():
        ...     return 1
        >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "w.db")) as engine:
        ...     engine.work([wf], idle_timeout=0.1)
        0
        """
        if max_runs is not None:
            max_runs = _count("max_runs", max_runs, 1, hint=" (or None for no limit)")
        if idle_timeout is not None:
            if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)):
                raise TypeError(f"idle_timeout must be a number of seconds, got {type(idle_timeout).__name__}")
            if not (math.isfinite(idle_timeout) and idle_timeout >= 0):
                raise _invalid("idle_timeout", f"must be a number of seconds >= 0, got {idle_timeout}")
        served = _queue.served_workflows(workflows)
        for wf in served.values():
            self._check_workflow(wf)
        worker = _queue.Worker(
            self,
            served,
            max_runs=max_runs,
            idle_timeout=idle_timeout,
            runs_at_once=self._max_concurrency or _queue.DEFAULT_RUNS_AT_ONCE,
        )
        self._workers.append(worker)
        try:
            return worker.run()
        finally:
            self._workers.remove(worker)

    def recover(self, workflows: Iterable[Workflow] | Mapping[str, Workflow]) -> list[Run]:
        """Resumes every run left ``running`` by a dead or expired worker, for these workflows."""
        if isinstance(workflows, Mapping):
            by_name = dict(workflows)
        else:
            by_name = {wf.name: wf for wf in workflows}
        table = {
            name: (self._check_workflow(wf).validate(), self._runner(wf)) for name, wf in by_name.items()
        }
        cores = self._core.recover(_tracing.shared_runners(self, "recover", table))
        _tracing.began(self, "recover", cores)
        return [self._track(core) for core in cores]

    # --- inspection ------------------------------------------------------------------------

    def get_current_state(self, run_id: str) -> RunState:
        """The run's latest committed state."""
        return self._state(self._core.get_current_state(run_id))

    def _current_state_lazy(self, run_id: str) -> RunState:
        """``get_current_state`` whose ``values`` are decoded only if used (front ends that
        show a run without its outputs)."""
        return self._state(self._core.get_current_state(run_id), lazy=True)

    def get_partial_results(self, run_id: str) -> dict[str, Any]:
        """Decoded outputs of the run's completed nodes only (a value that cannot be read or
        decoded is an ``rf.Undecodable`` saying why, as in ``RunState.values``)."""
        return dict(self.get_current_state(run_id).values)

    def save_partial_state(self, run_id: str, node_id: str, state: Any) -> None:
        """Stores a node's own progress (as ``ctx.save_partial_state`` does)."""
        parts = _codec.encode_parts(state, node=node_id, what="partial_state")
        self._core.save_partial_state_parts(run_id, node_id, parts)

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

    def list_runs(
        self,
        status: str | None = None,
        *,
        workflow: str | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
        after: str | None = None,
        newest_first: bool = False,
        offset: int = 0,
    ) -> list[RunState]:
        """Runs in the store, oldest first (``newest_first``: the reverse), filtered by
        ``status``, ``workflow`` and ``labels`` (all must match); ``limit``, ``offset``
        (matching runs skipped) and ``after`` (a run id: only runs after it in that order)
        page through them. No value is read until a state's ``.values`` is used.

        >>> import resumeflow as rf, tempfile, os
        >>> wf = rf.Workflow("list_doc")
        >>> @wf.node
        ... def one():
        ...     return 1
        >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "l.db")) as engine:
        ...     _ = [engine.submit(wf, run_id=f"r{i}", labels={"team": "a"}) for i in range(3)]
        ...     [s.run_id for s in engine.list_runs("queued", labels={"team": "a"}, limit=2, after="r0")]
        ['r1', 'r2']
        >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "l.db")) as engine:
        ...     _ = [engine.submit(wf, run_id=f"r{i}") for i in range(3)]
        ...     [s.run_id for s in engine.list_runs(newest_first=True, offset=1)]
        ['r1', 'r0']
        """
        if limit is not None:
            limit = _count("limit", limit, 1, hint=" (or None for every run)")
        offset = _count("offset", offset, 0)
        wanted = dict(labels) if labels else None
        found = self._core.list_runs_filtered(status, workflow, wanted, limit, after,
                                              bool(newest_first), offset)
        return [self._state(d, lazy=True) for d in found]

    def events(
        self, run_id: str, after_seq: int | None = None, limit: int | None = None
    ) -> list[tuple[int, float, str, str | None]] | list[dict[str, Any]]:
        """The run's event log, oldest first: ``(seq, at, kind, node_id)`` tuples; with
        ``after_seq`` (a cursor: the last seq seen, 0 for the start) up to ``limit`` (default
        1000) events after it as dicts ``{"seq", "at", "kind", "node", "data"}`` with the
        event's typed fields in ``data``. Events a ``cleanup`` compacted are gone: a cursor
        inside a compacted range gets the ``Compacted`` event (its ``seq`` ends the range)
        first, then what follows.

        >>> import resumeflow as rf, tempfile, os
        >>> wf = rf.Workflow("events_doc")
        >>> @wf.node
        ... def one():
        ...     return 1
        >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "e.db")) as engine:
        ...     _ = engine.run(wf, run_id="e1")
        ...     [e["kind"] for e in engine.events("e1", after_seq=0, limit=3)]
        ['RunCreated', 'LeaseAcquired', 'NodeStarted']
        """
        if after_seq is None and limit is None:
            return list(self._core.events(run_id))
        return _events.typed(self._core.events_after(run_id, after_seq or 0, 1000 if limit is None else limit))

    def metrics(self, recent_seconds: float = 3600.0) -> dict[str, Any]:
        """Counts and latencies in one dict, read from the core: ``runs`` (rows of workflow,
        status, runs, and ``recent``: those updated in the last ``recent_seconds``),
        ``runs_total``, ``runs_by_status``, ``runs_started`` / ``runs_finished`` (by
        workflow), ``nodes`` (per workflow and node: status of the latest attempt,
        ``attempts``, ``retries`` (attempts beyond each node's first; None where the store
        cannot tell, for nodes not completed), ``oom``, durations),
        ``node_attempts_total``, ``retries_total``, ``oom_retries_total``,
        ``commit_seconds`` and ``state_load_seconds`` (histograms, or None), ``active_runs``
        (executing in this engine). ``resumeflow.tracing.instrument_metrics`` exports them.

        >>> import resumeflow as rf, tempfile, os
        >>> wf = rf.Workflow("metrics_engine_doc")
        >>> @wf.node
        ... def one():
        ...     return 1
        >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "m.db")) as engine:
        ...     _ = [engine.run(wf) for _ in range(2)]
        ...     engine.metrics()["runs_finished"]
        {'metrics_engine_doc': {'completed': 2}}
        """
        from ._metrics import snapshot

        return snapshot(self, recent_seconds)

    def check_integrity(self) -> str:
        """``PRAGMA integrity_check`` of the store: ``"ok"``, or the problems found.

        Prefer this to opening the file with the ``sqlite3`` module in the same process while
        an Engine is open: two SQLite libraries in one process release each other's locks.
        """
        return str(self._core.check_integrity())

    # --- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Interrupts active runs (in-flight nodes finish), waits for them, closes the store.

        The wait can be cut short with Ctrl-C (``KeyboardInterrupt``): the store is then left
        open until the process exits, and the runs are resumable as after a crash.

        >>> import resumeflow as rf, tempfile, os
        >>> engine = rf.Engine(os.path.join(tempfile.mkdtemp(), "c.db"))
        >>> engine.close()
        >>> engine.close()  # closing twice is harmless
        """
        for worker in list(self._workers):  # a `work` loop in another thread hands back first
            worker.stop.set()
        for worker in list(self._workers):
            while not worker.stopped.wait(0.1):
                pass
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.interrupt()
        for handle in handles:
            try:
                handle.wait(None)  # interruptible, unlike the core's own wait in close()
            except KeyboardInterrupt:
                self._handles = [h for h in handles if not h.done()]
                raise
            except Exception:  # noqa: BLE001 - a failed run is the caller's to inspect
                pass
        _tracing.closing(self)
        self._core.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Engine({_store_url.redact(self.path)!r})"


class _mismatch_hint:
    """Adds to a ``WorkflowMismatch`` how to resume anyway."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if not isinstance(exc, WorkflowMismatch) or "allow_mismatch" in str(exc):
            return
        how = (
            "Engine.resume(run_id, wf, allow_mismatch=True) (CLI: resumeflow resume RUN_ID "
            "--allow-mismatch), if the completed nodes' outputs still fit the new graph; or start "
            "a new run"
        )
        message = str(exc)
        tail = "or allow the mismatch explicitly"
        if tail in message:
            message = message.replace(tail, f"{tail} with {how}")
        else:
            message = f"{message}; to resume anyway pass {how}"
        raise WorkflowMismatch(message) from None


def _raise_if_failed(state: RunState) -> RunState:
    if state.status == "failed":
        err = RunFailed(f"run {state.run_id!r} failed: {state.error}")
        err.state = state  # type: ignore[attr-defined]
        raise err
    return state
