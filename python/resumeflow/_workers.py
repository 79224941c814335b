"""The Python worker threads that run node attempts.

Threads take attempts from the engine's queue (waiting with the GIL released) and hold the
GIL only while they call node code. The pool grows whenever a worker takes an attempt and no
other worker is idle, so independent nodes always run in parallel; at interpreter exit the
pool stops taking work and attempts not yet started stay unrecorded, as after a crash.
"""

from __future__ import annotations

import atexit
import os
import threading
import time

from . import _core

MAX_WORKERS = 256
_lock = threading.Lock()
_threads: list[threading.Thread] = []
_stopping = False


def _spawn() -> None:
    t = threading.Thread(target=_work, name=f"resumeflow-worker-{len(_threads)}", daemon=True)
    _threads.append(t)
    t.start()


def _grow_if_needed() -> None:
    if _core.idle_workers() > 0 or _stopping:
        return
    with _lock:
        alive = [t for t in _threads if t.is_alive()]
        _threads[:] = alive
        if len(alive) < MAX_WORKERS:
            _spawn()


def _work() -> None:
    while not _stopping:
        task = _core.next_task(0.25)
        if task is None:
            continue
        _grow_if_needed()
        task.run()


def ensure_started(minimum: int = 2) -> None:
    """Starts the pool (idempotent)."""
    with _lock:
        alive = [t for t in _threads if t.is_alive()]
        _threads[:] = alive
        for _ in range(minimum - len(alive)):
            _spawn()


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's worker threads: start from scratch."""
    global _lock, _stopping
    _lock = threading.Lock()
    _threads.clear()
    _stopping = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def shutdown() -> None:
    """Stops handing out work and lets idle workers end before the interpreter finalizes."""
    global _stopping
    _stopping = True
    _core.shutdown_workers()
    deadline = time.monotonic() + 1.0
    for t in list(_threads):  # idle workers return at once; busy ones are left to CPython
        t.join(timeout=max(0.0, deadline - time.monotonic()))
