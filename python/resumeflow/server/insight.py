"""What an operator (or an agent) asks about runs, answered from the store: how far a run got,
which steps it is in, how long runs of a workflow usually take, and which runs are stuck.
These are domain rules, shared by every front end (the MCP tools today); no transport here.

A run is *stuck* when it is ``running`` but nobody is executing it any more:

- the lease on it has expired (its worker stopped renewing it — also what a worker does when a
  node goes silent past its ``heartbeat_timeout``), read from the store (``run_lease``); or
- the lease is held by a process on this host that no longer exists (the worker was killed),
  the rule the engine's own recovery applies (``owner_is_dead`` in the core's ``lease.rs``).

A stuck run of a served workflow does not stay stuck: every server's supervisor recovers it
within a few seconds (a third of the lease period at most after the lease expired).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import resumeflow as rf

#: Run statuses that still have work to do.
ACTIVE = ("queued", "pending", "running")
#: Node statuses of a step in progress.
IN_PROGRESS = ("running", "retrying")
#: Completed runs of a workflow the estimate looks at (the newest ones).
ESTIMATE_SAMPLE = 100
#: Failed runs listed by :func:`overview` (the newest ones).
FAILED_LIMIT = 100


def progress(state: rf.RunState) -> dict[str, int]:
    """``{"completed", "total"}``: nodes done (completed or skipped) out of the run's nodes.

    >>> import resumeflow as rf, tempfile, os
    >>> wf = rf.Workflow("progress_doc")
    >>> @wf.node
    ... def a():
    ...     return 1
    >>> @wf.node
    ... def b(a):
    ...     return a + 1
    >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "p.db")) as engine:
    ...     progress(engine.execute_until(wf, "a"))
    {'completed': 1, 'total': 2}
    """
    done = sum(1 for node in state.nodes.values() if node.status in ("completed", "skipped"))
    return {"completed": done, "total": len(state.nodes)}


def current_steps(state: rf.RunState, now: float | None = None) -> list[dict[str, Any]]:
    """The nodes in progress (running, or waiting to retry): ``node``, ``status``,
    ``attempt``, ``started_at`` and ``running_s`` (seconds since the attempt started).

    >>> import resumeflow as rf, tempfile, os
    >>> wf = rf.Workflow("steps_doc")
    >>> @wf.node
    ... def a():
    ...     return 1
    >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "c.db")) as engine:
    ...     current_steps(engine.run(wf))
    []
    """
    now = time.time() if now is None else now
    steps = []
    for node_id, node in state.nodes.items():
        if node.status in IN_PROGRESS:
            started = node.started_at
            steps.append({
                "node": node_id,
                "status": node.status,
                "attempt": node.attempt,
                "started_at": started,
                "running_s": round(now - started, 3) if started is not None else None,
            })
    return steps


def duration_s(state: rf.RunState) -> float | None:
    """Seconds a finished run took: from its first node's start (time spent queued does not
    count) to its last change; None for a run that never started a node.

    >>> import resumeflow as rf, tempfile, os
    >>> wf = rf.Workflow("duration_doc")
    >>> @wf.node
    ... def a():
    ...     return 1
    >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "d.db")) as engine:
    ...     0 <= duration_s(engine.run(wf)) < 60
    True
    """
    starts = [n.started_at for n in state.nodes.values() if n.started_at is not None]
    if not starts:
        return None
    return max(0.0, state.updated_at - min(starts))


def estimated_duration_s(engine: rf.Engine, workflow: str, sample: int = ESTIMATE_SAMPLE) -> float | None:
    """The median duration (:func:`duration_s`) of the workflow's newest ``sample`` completed
    runs, rounded to milliseconds; None when it has none.

    >>> import resumeflow as rf, tempfile, os
    >>> wf = rf.Workflow("estimate_doc")
    >>> @wf.node
    ... def a():
    ...     return 1
    >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "e.db")) as engine:
    ...     before = estimated_duration_s(engine, "estimate_doc")
    ...     _ = engine.run(wf)
    ...     before, estimated_duration_s(engine, "estimate_doc") >= 0
    (None, True)
    """
    runs = engine.list_runs("completed", workflow=workflow)
    runs.sort(key=lambda s: s.updated_at)
    durations = [d for d in (duration_s(s) for s in runs[-sample:]) if d is not None]
    return round(statistics.median(durations), 3) if durations else None


# -- leases ----------------------------------------------------------------------------------


def _hostname() -> str:
    """This host's name as the core writes it into lease owners (``host:pid:suffix``)."""
    try:
        with open("/proc/sys/kernel/hostname") as f:
            name = f.read().strip()
    except OSError:
        name = ""
    return (name or os.environ.get("HOSTNAME") or "localhost").replace(":", "_")


def _process_alive(pid: int) -> bool:
    if not os.path.isdir("/proc"):
        return True  # no way to tell here: only an expired lease counts
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]  # a zombie is gone for our purposes


def owner_is_dead(owner: str) -> bool:
    """True when the lease owner ``owner`` (``host:pid:suffix``) is a process on this host
    that no longer exists; an owner on another host is never presumed dead (its lease has to
    expire). The same rule as the engine's recovery.

    >>> owner_is_dead(f"{_hostname()}:{os.getpid()}:0a1b2c3d"), owner_is_dead("elsewhere:1:x")
    (False, False)
    """
    parts = owner.rsplit(":", 2)
    if len(parts) != 3:
        return False
    host, pid_text, _suffix = parts
    if host != _hostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    return pid != os.getpid() and not _process_alive(pid)


def stuck_reason(engine: rf.Engine, raw: dict[str, Any], now: float | None = None) -> tuple[str | None, str | None]:
    """Why the running run whose raw core state is ``raw`` is stuck (None if it is not, or
    is not running), and who holds its lease (read from the store)."""
    if raw["status"] != "running":
        return None, None
    now = time.time() if now is None else now
    lease = engine._core.run_lease(raw["run_id"])
    owner, expires = lease["owner"], lease["expires"]
    if owner and 0 < expires <= now:
        return f"its lease expired {now - expires:.1f} s ago (held by {owner}): its worker stopped renewing it", owner
    if owner and owner_is_dead(owner):
        pid = owner.rsplit(":", 2)[1]
        return f"its worker (pid {pid} on this host, lease owner {owner}) is gone; the lease is held by a dead process", owner
    return None, owner


# -- the overview ----------------------------------------------------------------------------


def failure(state: rf.RunState) -> dict[str, Any]:
    """A failed run: the failing node(s), their errors and whether a retry could help.

    >>> import resumeflow as rf, tempfile, os
    >>> wf = rf.Workflow("failure_doc")
    >>> @wf.node(retry=False)
    ... def boom():
    ...     raise ValueError("no input file")
    >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "f.db")) as engine:
    ...     failure(engine.start(wf, run_id="f1").wait())["failed_nodes"]
    [{'node': 'boom', 'attempt': 1, 'error': 'ValueError: no input file', 'retryable': False}]
    """
    failed = [
        {"node": node_id, "attempt": node.attempt, "error": node.error, "retryable": node.retryable}
        for node_id, node in state.nodes.items()
        if node.status == "failed"
    ]
    return {
        "run_id": state.run_id,
        "workflow": state.workflow,
        "status": state.status,
        "failed_node": failed[0]["node"] if failed else None,
        "error": state.error,
        "failed_nodes": failed,
        "progress": progress(state),
        "updated_at": state.updated_at,
    }


def summary(state: rf.RunState, now: float | None = None) -> dict[str, Any]:
    """A run in a few fields: id, workflow, status, progress, current steps, timestamps."""
    return {
        "run_id": state.run_id,
        "workflow": state.workflow,
        "status": state.status,
        "progress": progress(state),
        "current_steps": current_steps(state, now),
        "created_at": state.created_at,
        "updated_at": state.updated_at,
    }


#: Values ``overview`` accepts for ``status``: a bucket, or a run status it narrows to.
OVERVIEW_FILTERS = ("active", "stuck", "failed", "queued", "pending", "running")


def overview(engine: rf.Engine, status: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """``{"active", "stuck", "failed"}``: runs with work left that someone is executing or
    will (queued ones included), running runs nobody executes any more (each with its
    ``reason``), and the newest :data:`FAILED_LIMIT` failed runs with their failing node and
    error. ``status`` narrows it to one bucket or one run status (see :data:`OVERVIEW_FILTERS`).

    >>> import resumeflow as rf, tempfile, os
    >>> wf = rf.Workflow("overview_doc")
    >>> @wf.node(retry=False)
    ... def boom():
    ...     raise ValueError("bad")
    >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "o.db")) as engine:
    ...     _ = engine.start(wf, run_id="o1").wait()
    ...     _ = engine.submit(wf, run_id="o2")
    ...     seen = overview(engine)
    ...     [r["run_id"] for r in seen["active"]], seen["stuck"], [r["failed_node"] for r in seen["failed"]]
    (['o2'], [], ['boom'])
    """
    if status is not None and status not in OVERVIEW_FILTERS:
        raise ValueError(f"status: {status!r} is not one of {', '.join(OVERVIEW_FILTERS)} (or null for all)")
    now = time.time()
    out: dict[str, list[dict[str, Any]]] = {"active": [], "stuck": [], "failed": []}
    if status in (None, "active", "stuck", "queued", "pending", "running"):
        wanted = [status] if status in ACTIVE else list(ACTIVE)
        for run_status in wanted:
            for raw in engine._core.list_runs_filtered(run_status, None, None, None, None):
                state = engine._state(raw, lazy=True)
                reason, owner = stuck_reason(engine, raw, now)
                if reason is None and status != "stuck":
                    out["active"].append(summary(state, now))
                elif reason is not None and status != "active":
                    out["stuck"].append({**summary(state, now), "reason": reason,
                                         "lease_owner": owner})
    if status in (None, "failed"):
        failed = engine.list_runs("failed")
        failed.sort(key=lambda s: s.updated_at, reverse=True)
        out["failed"] = [failure(s) for s in failed[:FAILED_LIMIT]]
    return out
