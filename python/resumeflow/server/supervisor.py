"""The server's own worker and supervisor: one thread runs ``engine.work`` over the served
workflows — it executes the runs the server queues and, every few seconds, recovers stale runs
of those workflows (lease expired or owner gone), so a run whose server died resumes by itself
on another one. With a retention policy, a second thread runs ``cleanup`` periodically.

Stopping (``stop``) is what ``engine.close()`` does first: in-flight nodes finish, the runs go
back to the queue, leases are released, so another server takes over at once."""

from __future__ import annotations

import logging
import threading
import time

import resumeflow as rf

log = logging.getLogger("resumeflow.server")


class Supervisor:
    """Runs the work loop (and retention) in background threads.

    >>> import resumeflow as rf, tempfile, os
    >>> wf = rf.Workflow("supervisor_doc")
    >>> @wf.node
    ... def one():
    ...     return 1
    >>> engine = rf.Engine(os.path.join(tempfile.mkdtemp(), "s.db"))
    >>> sup = Supervisor(engine, [wf]); sup.start()
    >>> engine.submit(wf).wait(timeout=30).status
    'completed'
    >>> sup.stop(); engine.close()
    """

    def __init__(
        self,
        engine: rf.Engine,
        workflows: list[rf.Workflow],
        *,
        keep_checkpoints: int | None = None,
        keep_days: float | None = None,
        retention_every_s: float = 300.0,
    ) -> None:
        self.engine = engine
        self.workflows = list(workflows)
        self.keep_checkpoints = keep_checkpoints
        self.keep_days = keep_days
        self.retention_every_s = retention_every_s
        self.pruned_checkpoints = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads.append(threading.Thread(target=self._work, name="resumeflow-server-worker", daemon=True))
        if self.keep_checkpoints is not None or self.keep_days is not None:
            self._threads.append(threading.Thread(target=self._retain, name="resumeflow-retention", daemon=True))
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                self.engine.work(self.workflows)
            except Exception:  # noqa: BLE001 - keep serving; the error is logged
                if self._stopping.is_set():
                    return
                log.exception("work loop failed; restarting it in 1 s")
                time.sleep(1.0)

    def _retain(self) -> None:
        while not self._stopping.wait(self.retention_every_s):
            try:
                older = self.keep_days * 86400 if self.keep_days is not None else None  # age
                deleted = self.engine.cleanup(keep_last=self.keep_checkpoints or 1, older_than=older)
                self.pruned_checkpoints += deleted
                if deleted:
                    log.info("retention: deleted %d checkpoints", deleted)
            except Exception:  # noqa: BLE001
                log.exception("retention cleanup failed")

    def stop(self) -> None:
        """Stops the work loop (its runs are handed back) and retention."""
        self._stopping.set()
        for worker in list(self.engine._workers):
            worker.stop.set()
        for t in self._threads:
            t.join(timeout=60)
