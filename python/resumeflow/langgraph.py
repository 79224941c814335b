"""A LangGraph checkpointer on the resumeflow store: ``ResumeflowSaver``.

Install with ``pip install resumeflow[langgraph]``; importing :mod:`resumeflow` never
imports LangGraph, only this module does.

Checkpoints live in the resumeflow SQLite file (its own ``thread_*`` tables), written by the
store's single writer with group commit, so many threads or asyncio tasks can write at once
without "database is locked". Channel values are stored once per version and their bytes
are content-addressed, so a step that changes one channel stores one value, not a snapshot
of the whole state; ``prune`` / ``delete_thread`` / ``delete_for_runs`` reclaim what nothing
references any more.

Switching an existing app takes two lines::

    from resumeflow.langgraph import ResumeflowSaver
    graph = builder.compile(checkpointer=ResumeflowSaver("checkpoints.db"))

Example (a one-node graph, resumed state read back):

>>> import tempfile, os
>>> from typing import TypedDict
>>> from langgraph.graph import StateGraph, START, END
>>> class S(TypedDict):
...     n: int
>>> builder = StateGraph(S)
>>> _ = builder.add_node("inc", lambda s: {"n": s["n"] + 1})
>>> _ = builder.add_edge(START, "inc"); _ = builder.add_edge("inc", END)
>>> saver = ResumeflowSaver(os.path.join(tempfile.mkdtemp(), "lg.db"))
>>> graph = builder.compile(checkpointer=saver)
>>> graph.invoke({"n": 1}, {"configurable": {"thread_id": "t1"}})
{'n': 2}
>>> saver.get_tuple({"configurable": {"thread_id": "t1"}}).checkpoint["channel_values"]["n"]
2
>>> saver.close()
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import json
import logging
import math
import os
import random
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    SerializerProtocol,
    get_checkpoint_id,
    get_checkpoint_metadata,
)

from ._core import CoreThreadStore, InvalidArgument, StoreError
from ._engine import Engine

__all__ = ["ResumeflowSaver"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_Typed = tuple[str, bytes]

#: Checkpoints fetched per page when listing with a metadata filter or without a limit.
_PAGE = 256

#: Metadata key present on threads whose graph uses LangGraph's ``DeltaChannel``.
_DELTA_KEY = "counters_since_delta_snapshot"


def _required(config: RunnableConfig | None, key: str, method: str, *, allow_empty: bool = False) -> str:
    """``config["configurable"][key]`` as text, or an ``InvalidArgument`` naming it (an empty
    value is one only where SqliteSaver accepts it: a ``thread_id``)."""
    value = ((config or {}).get("configurable") or {}).get(key)
    if value is None or (value == "" and not allow_empty):
        raise InvalidArgument(
            f"ResumeflowSaver.{method}: config['configurable'][{key!r}] is required, got {config!r}"
        )
    return str(value)


def _checkpoint_id(config: RunnableConfig | None) -> str | None:
    """The checkpoint id ``config`` names; an empty one names none ("the latest"), as in
    SqliteSaver and InMemorySaver.

    >>> _checkpoint_id({"configurable": {"thread_id": "t", "checkpoint_id": ""}}) is None
    True
    """
    return (get_checkpoint_id(config) or None) if config else None


#: Metadata filter keys SqliteSaver accepts (a dotted key is a path into nested metadata).
_FILTER_KEY = re.compile(r"^[a-zA-Z0-9_.-]+$")
_MISSING = object()


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it, the way SqliteSaver's ``json.dumps`` of metadata sees
    it: keys as text (``1`` → ``"1"``, ``True`` → ``"true"``), tuples as lists; what JSON
    cannot hold (bytes, sets, dates, NaN) is ``None`` — only for filtering: the metadata
    itself is stored with the serializer, losslessly.

    >>> _jsonable({1: (1, 2), "b": {True: b"x"}})
    {'1': [1, 2], 'b': {'true': None}}
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_json_key(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return None


def _json_key(key: Any) -> Any:
    """A dict key as ``json.dumps`` writes it (other keys unchanged)."""
    if isinstance(key, str):
        return key
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, (int, float)):
        return json.dumps(key)
    return key


def _text_keys(value: Any) -> Any:
    """Metadata with its dict keys as text, recursively (SqliteSaver returns them so)."""
    if isinstance(value, dict):
        return {_json_key(k): _text_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text_keys(v) for v in value]
    return value


def _metadata_json(metadata: Any) -> str:
    """The JSON form of metadata the store keeps for filters."""
    text = json.dumps(_jsonable(metadata), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escape it
        text = json.dumps(_jsonable(metadata), separators=(",", ":"), allow_nan=False)
    return text


def _filter_operand(value: Any) -> Any:
    """What SqliteSaver compares a metadata path with: None, a number, a str, or compact
    JSON text for a dict or list (every other value as ``str``)."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _extract(document: Any, key: str) -> Any:
    """SQLite's ``json_extract(document, '$.' || key)`` on a :func:`_jsonable` document:
    ``None`` for a missing path, ``0``/``1`` for booleans, compact JSON for containers."""
    current = document
    for part in key.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    if isinstance(current, bool):
        return int(current)
    if isinstance(current, (dict, list)):
        return json.dumps(current, ensure_ascii=False, separators=(",", ":"))
    return current


def _metadata_matches(metadata: Any, operands: builtins.list[tuple[str, Any]]) -> bool:
    """Whether metadata passes every ``(key, operand)`` of a filter, as SqliteSaver decides.

    >>> _metadata_matches({"nested": {"k": 1}, "ok": True}, [("nested.k", 1), ("ok", True)])
    True
    >>> _metadata_matches({"a": 1}, [("b", None)]), _metadata_matches({"a": 1}, [("a", "1")])
    (True, False)
    """
    document = _jsonable(metadata)
    for key, operand in operands:
        found = _extract(document, key)
        if operand is None:
            if found is not None:
                return False
        elif found is None or found != operand or isinstance(found, str) != isinstance(operand, str):
            return False
    return True


def _filter_operands(filter: dict[str, Any] | None) -> builtins.list[tuple[str, Any]]:
    """``list``'s metadata filter as ``(key, operand)`` pairs; a key SqliteSaver would refuse
    is a ``ValueError`` here too."""
    operands = []
    for key, value in (filter or {}).items():
        if not isinstance(key, str) or not _FILTER_KEY.match(key):
            raise ValueError(
                f"Invalid filter key: {key!r}. Filter keys must contain only alphanumeric "
                "characters, underscores, dots, and hyphens."
            )
        operands.append((key, _filter_operand(value)))
    return operands


def _plain_bytes(value: Any) -> Any:
    """A ``bytearray`` channel value as ``bytes``: SqliteSaver serializes the checkpoint
    whole, which returns it as ``bytes`` (nested ones already are).

    >>> _plain_bytes(bytearray(b"x")), _plain_bytes([1])
    (b'x', [1])
    """
    return bytes(value) if type(value) is bytearray else value


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
        }
    }


class ResumeflowSaver(BaseCheckpointSaver[str]):
    """A LangGraph ``BaseCheckpointSaver`` storing checkpoints in a resumeflow store.

    ``path_or_engine`` is a store path (opened, or created, here) or an open
    :class:`resumeflow.Engine`, whose store and writer are then shared. ``durability`` is
    ``"sync"`` (every put fsynced before it returns; the default), ``"batched"`` or
    ``"off"``; it only applies when a path is given. Every sync method has a real async
    twin that runs the store call off the event loop with the GIL released.

    >>> import tempfile, os
    >>> saver = ResumeflowSaver(os.path.join(tempfile.mkdtemp(), "lg.db"))
    >>> cfg = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    >>> from langgraph.checkpoint.base import empty_checkpoint
    >>> stored = saver.put(cfg, empty_checkpoint(), {"step": -1}, {})
    >>> saver.get_tuple(stored).metadata["step"]
    -1
    >>> saver.close()
    """

    def __init__(
        self,
        path_or_engine: str | os.PathLike[str] | Engine,
        *,
        durability: str = "sync",
        serde: SerializerProtocol | None = None,
    ) -> None:
        super().__init__(serde=serde)
        if isinstance(path_or_engine, Engine):
            self._store = CoreThreadStore.of_engine(path_or_engine._core)
        else:
            self._store = CoreThreadStore(os.fspath(path_or_engine), durability)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The store file.

        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "lg.db")
        >>> with ResumeflowSaver(p) as s: s.path == p
        True
        """
        return self._store.path

    def close(self) -> None:
        """Closes the store (unless it belongs to an engine) and the async worker threads.

        >>> import tempfile, os
        >>> ResumeflowSaver(os.path.join(tempfile.mkdtemp(), "lg.db")).close()
        """
        with self._pool_lock:
            pool, self._pool = self._pool, None
            self._closed = True
        if pool is not None:
            pool.shutdown(wait=True)
        self._store.close()

    def __enter__(self) -> ResumeflowSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> ResumeflowSaver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    # -- encoding -----------------------------------------------------------------------

    def _dump(self, value: Any) -> _Typed:
        tag, data = self.serde.dumps_typed(value)
        if type(data) is bytes:
            return tag, data
        if isinstance(data, str):  # a serializer that returns text (the protocol says bytes)
            return tag, data.encode()
        return tag, bytes(data)

    def _dump_metadata(self, metadata: Any) -> _Typed:
        """Metadata with the serializer; what it cannot hold but JSON can (an int of 2**64
        or more, which LangGraph copies from ``configurable``) as JSON, as SqliteSaver does."""
        try:
            return self._dump(metadata)
        except (TypeError, OverflowError) as exc:
            try:
                return "json", json.dumps(metadata).encode()
            except (TypeError, ValueError):
                raise exc from None

    def _tuple(self, row: Any) -> CheckpointTuple:
        thread_id, ns, checkpoint_id, parent_id, body, meta, values, writes, versions = row
        checkpoint: Checkpoint = self.serde.loads_typed(body)
        if "channel_versions" not in checkpoint:  # text versions are kept once, by the store
            checkpoint["channel_versions"] = dict(versions)
        checkpoint["channel_values"] = {ch: self.serde.loads_typed(v) for ch, v in values}
        return CheckpointTuple(
            config=_config(thread_id, ns, checkpoint_id),
            checkpoint=checkpoint,
            metadata=self.serde.loads_typed(meta),
            parent_config=_config(thread_id, ns, parent_id) if parent_id else None,
            pending_writes=[(task, ch, self.serde.loads_typed(v)) for task, ch, v, _ in writes],
        )

    # -- sync API -----------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``, else the newest of the
        thread's namespace), with channel values and pending writes; ``None`` if absent.

        >>> import tempfile, os
        >>> with ResumeflowSaver(os.path.join(tempfile.mkdtemp(), "lg.db")) as s:
        ...     s.get_tuple({"configurable": {"thread_id": "nobody"}}) is None
        True
        """
        thread_id = _required(config, "thread_id", "get_tuple", allow_empty=True)
        ns = config["configurable"].get("checkpoint_ns", "")
        if ns is None:  # no checkpoint has a null namespace (SqliteSaver: none found)
            return None
        row = self._store.get(thread_id, str(ns), _checkpoint_id(config))
        return None if row is None else self._tuple(row)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first: of ``config``'s thread (and namespace, and checkpoint id
        when given) or of every thread, whose metadata has every ``filter`` item (a dotted
        key is a path into nested metadata), older than ``before`` (a ``before`` without a
        checkpoint id: none), at most ``limit`` (a negative limit: no limit) — as SqliteSaver.

        >>> import tempfile, os
        >>> from langgraph.checkpoint.base import empty_checkpoint
        >>> with ResumeflowSaver(os.path.join(tempfile.mkdtemp(), "lg.db")) as s:
        ...     cfg = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        ...     for step in range(3):
        ...         cfg = s.put(cfg, empty_checkpoint(), {"step": step}, {})
        ...     [t.metadata["step"] for t in s.list({"configurable": {"thread_id": "t"}})]
        [2, 1, 0]
        """
        for fetch in self._page_fetchers(config, filter, before, limit):
            page = fetch()
            if page is None:
                return
            yield from page

    def _page_fetchers(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> Iterator[Callable[[], builtins.list[CheckpointTuple] | None]]:
        """Endless fetchers of ``list``'s pages (``None`` once done): each is one store call
        (metadata filters run in it, in SQL), so ``alist`` can run each off the event loop."""
        configurable = config["configurable"] if config else {}
        thread_id = configurable.get("thread_id")
        operands = _filter_operands(filter)
        if before is not None and not get_checkpoint_id(before):
            limit = 0  # "older than no checkpoint": nothing (SqliteSaver: `checkpoint_id < NULL`)
        if limit is not None and limit < 0:
            limit = None  # SQLite's LIMIT -1
        ns = configurable.get("checkpoint_ns")
        query: dict[str, Any] = {
            "thread_id": None if thread_id is None else str(thread_id),
            "checkpoint_ns": None if ns is None else str(ns),
            "checkpoint_id": _checkpoint_id(config),
            "before": get_checkpoint_id(before) if before else None,
            "metadata_filter": operands or None,
        }
        remaining = [limit]
        cursor: list[tuple[str, str, str] | None] = [None]

        def fetch() -> builtins.list[CheckpointTuple] | None:
            left = remaining[0]
            if left is not None and left <= 0:
                return None
            size = _PAGE if left is None else min(left, _PAGE)
            rows = self._store.list_checkpoints(**query, after=cursor[0], limit=size, with_contents=True)
            if not rows:
                return None
            last = rows[-1]
            cursor[0] = (last[2], last[0], last[1])
            page: builtins.list[CheckpointTuple] = []
            for row in rows:
                if left is not None and len(page) >= left:
                    break
                # The store filtered in SQL; checkpoints written before it kept the metadata's
                # JSON form pass that unfiltered, so every one is checked here too.
                if operands and not _metadata_matches(self.serde.loads_typed(row[5]), operands):
                    continue
                page.append(self._tuple(row))
            if left is not None:
                remaining[0] = left - len(page)
            return page

        while True:
            yield fetch

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Stores ``checkpoint`` after the one ``config`` names; only the channels in
        ``new_versions`` store a value. Returns the new checkpoint's config.

        >>> import tempfile, os
        >>> from langgraph.checkpoint.base import empty_checkpoint
        >>> with ResumeflowSaver(os.path.join(tempfile.mkdtemp(), "lg.db")) as s:
        ...     cp = empty_checkpoint()
        ...     cp["channel_values"] = {"x": [1, 2]}; cp["channel_versions"] = {"x": "1"}
        ...     cfg = s.put({"configurable": {"thread_id": "t"}}, cp, {}, {"x": "1"})
        ...     s.get_tuple(cfg).checkpoint["channel_values"]
        {'x': [1, 2]}
        """
        thread_id = _required(config, "thread_id", "put", allow_empty=True)
        configurable = config["configurable"]
        ns = configurable.get("checkpoint_ns") or ""
        body = checkpoint.copy()
        values: dict[str, Any] = body.pop("channel_values")  # type: ignore[misc]
        new_values = [
            (ch, str(version), self._dump(_plain_bytes(values[ch])) if ch in values else None)
            for ch, version in new_versions.items()
        ]
        channel_versions = body["channel_versions"]
        versions = [(ch, str(v)) for ch, v in channel_versions.items()]
        if all(type(v) is str for v in channel_versions.values()):
            # The store keeps the version map (it needs it to load values): not twice.
            del body["channel_versions"]  # type: ignore[misc]
        meta = _text_keys(get_checkpoint_metadata(config, metadata))
        run_id = meta.get("run_id")
        self._store.put(
            thread_id,
            ns,
            checkpoint["id"],
            _checkpoint_id(config),
            None if run_id is None else str(run_id),
            self._dump(body),
            self._dump_metadata(meta),
            versions,
            new_values,
            _metadata_json(meta),
        )
        return _config(thread_id, ns, checkpoint["id"])

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Stores a task's writes after the checkpoint ``config`` names. A write already
        stored for ``(task_id, idx)`` is kept (a retried task does not duplicate it); errors,
        interrupts and resume values replace theirs.

        >>> import tempfile, os
        >>> from langgraph.checkpoint.base import empty_checkpoint
        >>> with ResumeflowSaver(os.path.join(tempfile.mkdtemp(), "lg.db")) as s:
        ...     cfg = s.put({"configurable": {"thread_id": "t"}}, empty_checkpoint(), {}, {})
        ...     s.put_writes(cfg, [("x", 1)], "task-1")
        ...     s.get_tuple(cfg).pending_writes
        [('task-1', 'x', 1)]
        """
        thread_id = _required(config, "thread_id", "put_writes", allow_empty=True)
        checkpoint_id = _required(config, "checkpoint_id", "put_writes")
        rows = [
            (WRITES_IDX_MAP.get(channel, idx), channel, self._dump(value))
            for idx, (channel, value) in enumerate(writes)
        ]
        self._store.put_writes(
            thread_id,
            config["configurable"].get("checkpoint_ns", ""),
            checkpoint_id,
            str(task_id),
            task_path,
            rows,
        )

    def delete_thread(self, thread_id: str) -> None:
        """Deletes every checkpoint, write and value of ``thread_id`` (all namespaces).

        >>> import tempfile, os
        >>> with ResumeflowSaver(os.path.join(tempfile.mkdtemp(), "lg.db")) as s:
        ...     s.delete_thread("never-written")
        """
        self._store.delete_threads([str(thread_id)])

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Deletes the checkpoints (and their writes) whose metadata ``run_id`` is listed.

        >>> import tempfile, os
        >>> with ResumeflowSaver(os.path.join(tempfile.mkdtemp(), "lg.db")) as s:
        ...     s.delete_for_runs([])
        """
        self._store.delete_runs([str(r) for r in run_ids])

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copies every checkpoint and write of one thread to another (values are shared,
        not duplicated: they are content-addressed).

        >>> import tempfile, os
        >>> from langgraph.checkpoint.base import empty_checkpoint
        >>> with ResumeflowSaver(os.path.join(tempfile.mkdtemp(), "lg.db")) as s:
        ...     _ = s.put({"configurable": {"thread_id": "a"}}, empty_checkpoint(), {}, {})
        ...     s.copy_thread("a", "b")
        ...     s.get_tuple({"configurable": {"thread_id": "b"}}) is not None
        True
        """
        self._store.copy_thread(str(source_thread_id), str(target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"`` keeps only the newest checkpoint of each namespace (and its
        writes); ``"delete"`` removes the threads. A thread whose graph uses LangGraph's
        ``DeltaChannel`` is not pruned by ``keep_latest`` (its newest checkpoint may need its
        ancestors' writes to rebuild a delta channel); a warning says so.

        >>> import tempfile, os
        >>> from langgraph.checkpoint.base import empty_checkpoint
        >>> with ResumeflowSaver(os.path.join(tempfile.mkdtemp(), "lg.db")) as s:
        ...     cfg = {"configurable": {"thread_id": "t"}}
        ...     for _ in range(3):
        ...         cfg = s.put(cfg, empty_checkpoint(), {}, {})
        ...     s.prune(["t"])
        ...     len(list(s.list({"configurable": {"thread_id": "t"}})))
        1
        """
        ids = [str(t) for t in thread_ids]
        if strategy == "keep_latest":
            ids = [t for t in ids if not self._uses_delta_channels(t)]
        self._store.prune(ids, strategy)

    def _uses_delta_channels(self, thread_id: str) -> bool:
        """True if the newest checkpoint of any namespace of the thread carries LangGraph's
        ``DeltaChannel`` counters (checked per namespace: a subgraph interrupted after the
        root's last step has newer checkpoints than the root)."""
        newest: dict[str, Any] = {}
        for row in self._store.list_checkpoints(thread_id=thread_id, with_contents=False):
            newest.setdefault(row[1], row)  # newest first: the first row of each namespace
        for ns, row in newest.items():
            if _DELTA_KEY in (self.serde.loads_typed(row[5]) or {}):
                logger.warning(
                    "resumeflow: not pruning thread %r: namespace %r uses DeltaChannel, whose "
                    "newest checkpoint needs its ancestors' writes",
                    thread_id,
                    ns,
                )
                return True
        return False

    def get_next_version(self, current: str | None, channel: None) -> str:
        """A version above ``current``: ``"<counter, 32 digits>.<random>"`` (the SQLite and
        Postgres savers' format, so versions sort as text).

        >>> s = ResumeflowSaver.__new__(ResumeflowSaver)
        >>> s.get_next_version(None, None) < s.get_next_version("00000000000000000000000000000001.5", None)
        True
        """
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    # -- async API: the same calls, run on worker threads (the GIL is released inside) ----

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._closed:
                raise StoreError(f"ResumeflowSaver on {self.path} is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=min(32, (os.cpu_count() or 1) + 4),
                    thread_name_prefix="resumeflow-saver",
                )
            return self._pool

    async def _off_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), functools.partial(fn, *args, **kwargs))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Async :meth:`get_tuple`."""
        return await self._off_loop(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Async :meth:`list`: each page is fetched off the event loop."""
        for fetch in self._page_fetchers(config, filter, before, limit):
            page = await self._off_loop(fetch)
            if page is None:
                return
            for item in page:
                yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Async :meth:`put`."""
        return await self._off_loop(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Async :meth:`put_writes`."""
        await self._off_loop(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        """Async :meth:`delete_thread`."""
        await self._off_loop(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Async :meth:`delete_for_runs`."""
        await self._off_loop(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Async :meth:`copy_thread`."""
        await self._off_loop(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Async :meth:`prune`."""
        await self._off_loop(self.prune, thread_ids, strategy=strategy)
