"""What ``resumeflow worker`` shows while it works, and how it stops.

Display: a line for each run the worker takes (claimed from the queue, or a stale run it
recovered) and for each run that stops, with counts, on stderr: plain lines when stderr is not a
terminal (a log), a ``rich`` live status line under them when it is, nothing with ``--json``.

Stopping: the first Ctrl-C or SIGTERM asks the ``work`` loop to stop, from a helper thread, the
way ``Engine.close()`` does (its in-flight nodes finish, its runs go back to the queue, its
leases are released), and ``worker`` exits 0; a second one exits at once (``os._exit(130)``),
leaving the runs it held to be recovered by any worker (their in-flight nodes run again). The
handlers do not raise ``KeyboardInterrupt`` into the work loop: one landing between a claim and
the loop's bookkeeping would leave a claimed run that nobody hands back.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._engine import Engine

#: How often the display looks at the runs this worker holds (seconds).
POLL_S = 0.1

#: What a stopped run is shown as, by its status once its handle is done.
_ENDED_AS = {
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "paused": "paused",
    "queued": "handed back",
}


class WorkerDisplay:
    """Reports the runs one ``engine.work`` call takes and how each stops.

    ``mode`` is ``"off"`` (nothing), ``"lines"`` (plain lines on stderr) or ``"live"`` (a rich
    live line on stderr, with the same lines printed above it).
    """

    def __init__(self, engine: Engine, mode: str) -> None:
        self.engine = engine
        self.mode = mode
        self.stopping = False
        self.counts: Counter[str] = Counter()
        #: Core run handles the work loop took, in order (appended by the loop's thread).
        self._taken: list[Any] = []
        self._holding: dict[str, Any] = {}
        self._done = threading.Event()
        self._live: Any = None

    # --- output ----------------------------------------------------------------------------

    def note(self, text: str) -> None:
        """A line on stderr (above the live line, if one is shown); shown in every mode."""
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def _line(self, text: str) -> None:
        if self.mode != "off":
            self.note(f"resumeflow worker: {text} · {self.tally()}")
        if self._live is not None:
            self._live.update(self._status_line())

    def tally(self) -> str:
        """The counts so far, e.g. ``2 running, 5 completed, 1 failed``."""
        parts = [f"{len(self._holding)} running"]
        parts += [f"{self.counts[k]} {k}" for k in _ENDED_AS.values() if self.counts[k]]
        return ", ".join(parts)

    def _status_line(self) -> Any:
        from rich.text import Text

        held = ", ".join(list(self._holding)[:5]) + (" …" if len(self._holding) > 5 else "")
        action = "stopping" if self.stopping else "working"
        return Text(f"{action}: {self.tally()}" + (f" ({held})" if held else ""))

    # --- watching the work loop ------------------------------------------------------------

    @contextmanager
    def watching(self) -> Iterator[WorkerDisplay]:
        """Shows the runs taken by the ``engine.work`` call made inside this block."""
        if self.mode == "off":
            yield self
            return
        # Every run a work loop takes goes through Engine._track (which lets close() wait for
        # it); seeing it there catches runs that start and end between two polls.
        original = self.engine._track

        def track(core: Any) -> Any:
            self._taken.append(core)
            return original(core)

        self.engine._track = track  # type: ignore[method-assign]
        poller = threading.Thread(target=self._poll, name="resumeflow-worker-display", daemon=True)
        live = None
        if self.mode == "live":
            from rich.console import Console
            from rich.live import Live

            live = Live(self._status_line(), console=Console(stderr=True), refresh_per_second=4,
                        transient=True)
            live.start()
            self._live = live
        poller.start()
        try:
            yield self
        finally:
            self._done.set()
            poller.join()
            del self.engine._track  # the class's method again
            if live is not None:
                live.stop()
                self._live = None

    def _poll(self) -> None:
        seen = 0
        while True:
            last = self._done.wait(POLL_S)
            taken = self._taken[seen:]
            seen += len(taken)
            for core in taken:
                self._took(core)
            for run_id, core in list(self._holding.items()):
                if core.done():
                    del self._holding[run_id]
                    self._ended(run_id)
            if self._live is not None:
                self._live.update(self._status_line())
            if last:
                return

    def _state(self, run_id: str) -> dict[str, Any] | None:
        try:
            return self.engine._core.get_current_state(run_id)
        except Exception:  # noqa: BLE001 - the display must never stop the worker
            return None

    def _took(self, core: Any) -> None:
        run_id = str(core.id)
        if run_id in self._holding:  # a recovered run is tracked by recover() and by the loop
            return
        self._holding[run_id] = core
        self.counts["taken"] += 1
        state = self._state(run_id)
        workflow = state["workflow"] if state else "?"
        self._line(f"run {run_id} started ({workflow})")

    def _ended(self, run_id: str) -> None:
        state = self._state(run_id)
        status = state["status"] if state else "unknown"
        shown = _ENDED_AS.get(status, status)
        if status == "paused" and self.stopping:
            shown = "handed back"  # the work loop requeues it right after it pauses
        self.counts[shown] += 1
        detail = ""
        if state:
            done = sum(1 for n in state["nodes"].values() if n["status"] == "completed")
            detail = f" ({done}/{len(state['nodes'])} nodes)"
            if shown == "handed back":
                detail += ", back in the queue"
        self._line(f"run {run_id} {shown}{detail}")


class GracefulStop:
    """SIGINT and SIGTERM handlers for one ``engine.work`` call (see the module docstring)."""

    def __init__(self, engine: Engine, display: WorkerDisplay) -> None:
        self.engine = engine
        self.display = display
        self.requested = threading.Event()
        self.work_returned = threading.Event()
        self._stopper: threading.Thread | None = None

    @contextmanager
    def installed(self) -> Iterator[GracefulStop]:
        """Handlers in place for the block (only the main thread can install them)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            self.work_returned.set()
            if self._stopper is not None:
                self._stopper.join()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self.requested.is_set():
            self.display.note(
                f"resumeflow worker: {name} again: exiting now; the runs it held stay resumable "
                "and any worker on this store takes them over (their in-flight nodes run again)"
            )
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        self.requested.set()
        self.display.stopping = True
        self.display.note(
            f"resumeflow worker: {name}: stopping; in-flight nodes finish, then their runs go "
            "back to the queue for another worker; press Ctrl-C again to exit now"
        )
        self._stopper = threading.Thread(target=self._stop_loop, name="resumeflow-worker-stop",
                                         daemon=True)
        self._stopper.start()

    def _stop_loop(self) -> None:
        """Asks the work loop to stop until it has returned (a signal may come before the loop
        registered itself)."""
        while not self.work_returned.is_set():
            workers = getattr(self.engine, "_workers", None)
            if workers is None:  # an Engine without visible work loops: close() stops them
                self.engine.close()
                return
            for worker in list(workers):
                worker.stop.set()  # what Engine.close() does first, without closing the store
            self.work_returned.wait(0.05)
