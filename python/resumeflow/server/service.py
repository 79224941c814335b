"""The one service object every front end shares (HTTP routes today, MCP tools next): it
validates what a request names, calls the public Python API and shapes the answers. No engine
logic lives here; the engine's own checks (run ids, inputs, graphs) raise typed errors that
`errors.py` maps to HTTP codes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import resumeflow as rf

from . import values
from .errors import ServiceError
from .models import RUN_ID_PATTERN

_RUN_ID = re.compile(RUN_ID_PATTERN)


def run_json(state: rf.RunState) -> dict[str, Any]:
    """A run as the API shows it: the CLI's ``--json`` RunState without ``values``."""
    d = state.to_dict(values=False)
    d["nodes"] = {k: values.to_json(v) for k, v in d["nodes"].items()}
    return d


def checkpoint_json(cp: rf.Checkpoint) -> dict[str, Any]:
    """A checkpoint as the CLI's ``--json`` shows it."""
    return cp.to_dict()


class RunService:
    """Runs of the served ``workflows`` on ``engine``. Runs started here are queued and
    executed by this server's own workers (see `supervisor.py`); interrupt and cancel reach a
    run wherever it executes.

    >>> import resumeflow as rf, tempfile, os
    >>> wf = rf.Workflow("service_doc")
    >>> @wf.node
    ... def one():
    ...     return 1
    >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "s.db")) as engine:
    ...     RunService(engine, [wf]).start({"workflow": "service_doc", "run_id": "s1"})["status"]
    'queued'
    """

    def __init__(self, engine: rf.Engine, workflows: list[rf.Workflow] | Mapping[str, rf.Workflow]) -> None:
        self.engine = engine
        self.workflows: dict[str, rf.Workflow] = (
            dict(workflows) if isinstance(workflows, Mapping) else {wf.name: wf for wf in workflows}
        )
        for wf in self.workflows.values():
            wf.validate()

    # --- lookups ---------------------------------------------------------------------------

    def workflow(self, name: str) -> rf.Workflow:
        """A served workflow (404 for any other name: nothing is ever imported)."""
        wf = self.workflows.get(name)
        if wf is None:
            known = ", ".join(sorted(self.workflows)) or "none"
            raise ServiceError(404, "WorkflowNotFound", f"workflow {name!r} is not served here (served: {known})")
        return wf

    @staticmethod
    def check_run_id(run_id: str) -> str:
        """422 unless ``run_id`` is a valid run id (checked before the store is asked)."""
        if not _RUN_ID.match(run_id):
            shown = run_id[:40] + ("…" if len(run_id) > 40 else "")
            raise ServiceError(
                422, "ValidationError", f"run_id: {shown!r} is not a valid run id (1-200 characters from [A-Za-z0-9_.:@+-])"
            )
        return run_id

    def describe_workflows(self) -> list[dict[str, Any]]:
        """``GET /api/v1/workflows``."""
        out = []
        for name in sorted(self.workflows):
            wf = self.workflows[name]
            nodes = []
            for node_id in wf.nodes:
                wired = {param: source for param, kind, source, _ in wf._bindings(wf[node_id]) if kind == "node"}
                nodes.append({"id": node_id, "inputs": wired})
            out.append({"name": name, "nodes": nodes})
        return out

    # --- runs ------------------------------------------------------------------------------

    def start(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Queues a run (executed by this server's workers) or, with ``until``, starts it
        here up to that node."""
        wf = self.workflow(request["workflow"])
        inputs = request.get("inputs") or {}
        run_id = request.get("run_id")
        labels = request.get("labels") or {}
        until = request.get("until")
        if until:  # executed here at once, up to `until` (the queue runs whole workflows)
            run = self.engine.start(wf, inputs, run_id=run_id, labels=labels, _until=until)
        else:
            run = self.engine.submit(wf, inputs, run_id=run_id, labels=labels)
        return run_json(self.engine._current_state_lazy(run.id))

    def get(self, run_id: str) -> dict[str, Any]:
        """``GET /api/v1/runs/ID``."""
        return run_json(self.engine._current_state_lazy(self.check_run_id(run_id)))

    def list_runs(self, *, status: str | None, workflow: str | None, limit: int, offset: int) -> dict[str, Any]:
        """``GET /api/v1/runs``: newest first."""
        runs = self.engine.list_runs(status, workflow=workflow, limit=limit, offset=offset, newest_first=True)
        return {"runs": [run_json(s) for s in runs]}

    def results(self, run_id: str) -> dict[str, Any]:
        """``GET /api/v1/runs/ID/results``."""
        state = self.engine.get_current_state(self.check_run_id(run_id))
        return {"run_id": run_id, "values": {k: values.to_json(v) for k, v in state.values.items()}}

    def history(self, run_id: str) -> list[dict[str, Any]]:
        """``GET /api/v1/runs/ID/history``."""
        return [checkpoint_json(cp) for cp in self.engine.history(self.check_run_id(run_id))]

    def resume(self, run_id: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /api/v1/runs/ID/resume``: continues the run in this server."""
        state = self.engine._current_state_lazy(self.check_run_id(run_id))
        wf = self.workflow(state.workflow)
        run = self.engine.resume(
            run_id,
            wf,
            checkpoint_id=request.get("checkpoint_id"),
            updates=request.get("updates") or None,
            rerun=request.get("rerun") or None,
        )
        return run_json(self.engine._current_state_lazy(run.id))

    def control(self, run_id: str, kind: str) -> dict[str, Any]:
        """``POST /api/v1/runs/ID/interrupt`` and ``/cancel``, wherever the run executes."""
        handle = self.engine.run_handle(self.check_run_id(run_id))
        if kind == "cancel":
            handle.cancel()
        else:
            handle.interrupt()
        return run_json(self.engine._current_state_lazy(run_id))
