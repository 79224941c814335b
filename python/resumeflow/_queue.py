"""The worker loop behind ``Engine.work``: claim queued runs of the served workflows (oldest
first), execute them, recover stale runs, and on the way out hand back what it paused.

Every rule that decides *which* run a worker gets, and that it gets it alone, lives in the
store (one claim transaction); this loop only decides *when* to ask: when it has room for
another run and the store changed (a submit, a run ending) — it sleeps in the core, with the
GIL released, between changes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import _tracing

if TYPE_CHECKING:
    from ._core import CoreRun
    from ._engine import Engine
    from ._workflow import Workflow

#: Runs one worker executes at the same time when the engine has no ``max_concurrency``.
DEFAULT_RUNS_AT_ONCE = 8

#: The longest a worker sleeps between two looks at the queue (seconds); it is woken at once
#: by commits in this process and within a few milliseconds by other processes' commits.
_IDLE_SLICE_S = 0.25


def served_workflows(workflows: Iterable[Workflow] | Mapping[str, Workflow]) -> dict[str, Workflow]:
    """Workflows by name, from a list or a ``{name: workflow}`` dict.

    >>> import resumeflow as rf
    >>> wf = rf.Workflow("served_doc")
    >>> list(served_workflows([wf]))
    ['served_doc']
    """
    from ._workflow import Workflow

    by_name = dict(workflows) if isinstance(workflows, Mapping) else {}
    if not isinstance(workflows, Mapping):
        for wf in workflows:
            if not isinstance(wf, Workflow):
                raise TypeError(f"workflows must be resumeflow.Workflow objects, got {type(wf).__name__}")
            if wf.name in by_name and by_name[wf.name] is not wf:
                raise ValueError(f"two different workflows are named {wf.name!r}")
            by_name[wf.name] = wf
    if not by_name:
        raise ValueError("work() needs at least one workflow to serve")
    return by_name


class Worker:
    """One ``Engine.work`` call: the runs it executes and how it stops."""

    def __init__(
        self,
        engine: Engine,
        workflows: Mapping[str, Workflow],
        *,
        max_runs: int | None,
        idle_timeout: float | None,
        runs_at_once: int,
    ) -> None:
        self.engine = engine
        self.workflows = dict(workflows)
        self.served = [(wf.validate(), engine._runner(wf)) for wf in self.workflows.values()]
        self.max_runs = max_runs
        self.idle_timeout = idle_timeout
        self.runs_at_once = runs_at_once
        self.active: list[CoreRun] = []
        self.finished = 0
        self.stop = threading.Event()
        self.stopped = threading.Event()
        # Stale runs are looked for about three times per lease period.
        self.recover_every = max(0.5, engine._lease_seconds / 3)

    def _room(self) -> bool:
        if len(self.active) >= self.runs_at_once:
            return False
        return self.max_runs is None or self.finished + len(self.active) < self.max_runs

    def _reap(self) -> None:
        still = []
        for handle in self.active:
            if handle.done():
                _tracing.finished(self.engine, handle.id)
                self.finished += 1
            else:
                still.append(handle)
        self.active = still

    def run(self) -> int:
        """Claims and executes runs until a stop condition (a first Ctrl-C is one); returns
        the runs finished. A second Ctrl-C, while handing back, propagates."""
        try:
            self._loop()
        except KeyboardInterrupt:
            pass
        finally:
            try:
                self._hand_back()
            finally:
                self.stopped.set()
        return self.finished

    def _loop(self) -> None:
        core = self.engine._core
        marker = 0
        next_recover = 0.0
        idle_since = time.monotonic()
        while not self.stop.is_set():
            self._reap()
            if self.max_runs is not None and self.finished >= self.max_runs:
                return
            now = time.monotonic()
            if now >= next_recover and self._room():
                next_recover = now + self.recover_every
                # `recover` tracks the handles on the engine already.
                self.active += [r._core for r in self.engine.recover(self.workflows) if r._core is not None]
            # The core appends each claimed run to `active` itself, before returning.
            served = _tracing.shared_runners(self.engine, "claim", self.served)
            while self._room() and core.claim(served, self.active):
                _tracing.began(self.engine, "claim", self.active[-1:])
                self.engine._track(self.active[-1])
            if self.active:
                idle_since = now
            elif self.idle_timeout is not None and now - idle_since >= self.idle_timeout:
                return
            marker = core.wait_for_change(marker, _IDLE_SLICE_S)

    def _hand_back(self) -> None:
        """Lets in-flight nodes finish, then puts the runs this worker paused back in the
        queue for another worker (they continue from where they stopped)."""
        self._reap()
        for handle in self.active:
            handle.interrupt()
        for handle in self.active:
            state: Any = None
            try:
                result = handle.wait(None)
                state = result[0] if result else None
            except KeyboardInterrupt:
                raise  # a second Ctrl-C: the leases expire and other workers recover the runs
            except Exception:  # noqa: BLE001 - the run's own failure is recorded in the store
                state = None
            if state is not None and state.get("status") == "paused":
                self.engine._core.requeue(handle.id)
            elif state is not None:
                self.finished += 1
        self.active = []
