"""The MCP tools (``resumeflow mcp`` over stdio, ``/mcp`` on ``resumeflow serve``), on the
official MCP Python SDK (``pip install "resumeflow[mcp]"``). A thin layer: each tool validates
its arguments (JSON schemas from the signatures), calls the shared :class:`RunService` or the
rules in :mod:`.insight` in a worker thread, and shapes JSON. Every failure is an MCP tool
error (``isError``) whose text names the bad argument or the run; never a traceback or a path.
"""

# No `from __future__ import annotations`: the SDK reads these signatures at runtime.

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

import resumeflow as rf

from . import insight
from .errors import ServiceError, public_message
from .models import NAME_PATTERN, RUN_ID_PATTERN
from .service import RunService
from .stream import EVENT_TYPES

T = TypeVar("T")

#: The SSE event types a stream carries (``chunk``: items of streaming nodes, no id).
STREAM_EVENT_TYPES = [*EVENT_TYPES.values(), "chunk"]
#: Run statuses after which ``invoke`` returns.
STOPPED = ("paused", "completed", "failed", "cancelled")
#: How long ``invoke`` waits for the run to end between two progress reports (s).
INVOKE_POLL_S = 0.25

INSTRUCTIONS = """\
resumeflow runs durable, resumable workflows (DAGs of nodes; completed nodes are never run again).
Start a run with invoke_async (returns at once with a run_id), then poll invoke_status or open the
event stream named by invoke_stream; get_results has the outputs. A failed run is resumed with
invoke_resume: from_node reruns a node (after you fixed its cause), skip records a node's output
instead of running it. workflow_monitor lists active, stuck and failed runs. invoke blocks until
the run ends and reports progress (nodes completed/total) when you send a progress token."""

RunId = Annotated[str, Field(description="the run's id, as invoke_async returned it", pattern=RUN_ID_PATTERN)]
WorkflowName = Annotated[str, Field(description="a workflow this server serves (see list_workflows)",
                                    pattern=NAME_PATTERN)]
Inputs = Annotated[dict[str, Any] | None, Field(description="run inputs by name, default {} (list_workflows shows "
                                                "which ones each workflow takes and which are required)")]


def _public_error(exc: BaseException, store_path: str) -> str:
    """The text of a tool error: the error's type and message, without the store's path."""
    if isinstance(exc, ServiceError):
        return f"{exc.kind}: {exc}"
    if isinstance(exc, (rf.ResumeflowError, TypeError, ValueError, KeyError, TimeoutError)):
        return f"{type(exc).__name__}: {public_message(exc, store_path)}"
    return f"InternalError: {type(exc).__name__} (the server keeps serving; see its log)"


class _Tools:
    """The tool implementations, bound to one service. ``stream_base`` is the base URL of the
    ``resumeflow serve`` whose SSE streams ``invoke_stream`` names (None: the URL the request
    came in on, for ``/mcp``); ``token`` is sent in the stream's headers when set."""

    def __init__(self, service: RunService, stream_base: str | None, token: str | None) -> None:
        self.service = service
        self.engine = service.engine
        self.stream_base = stream_base.rstrip("/") if stream_base else None
        self.token = token

    async def call(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` in a worker thread; any failure becomes a tool error."""
        try:
            return await anyio.to_thread.run_sync(fn)
        except ToolError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is the caller's tool error
            raise ToolError(_public_error(exc, self.engine.path)) from None

    # -- shapes ------------------------------------------------------------------------------

    def status_of(self, run_id: str) -> dict[str, Any]:
        """The run (as ``GET /api/v1/runs/ID``) with ``progress`` and ``current_steps``."""
        run = self.service.get(run_id)
        state = self.engine._current_state_lazy(run_id)
        run["progress"] = insight.progress(state)
        run["current_steps"] = insight.current_steps(state)
        return run

    def describe(self) -> list[dict[str, Any]]:
        described = self.service.describe_workflows()
        for entry in described:
            wf = self.service.workflows[entry["name"]]
            seen: dict[str, dict[str, Any]] = {}
            for node_id in wf.nodes:
                for param, kind, _source, required in wf._bindings(wf[node_id]):
                    if kind != "input":
                        continue
                    item = seen.setdefault(param, {"name": param, "required": False, "nodes": []})
                    item["required"] = item["required"] or required
                    item["nodes"].append(node_id)
            entry["run_inputs"] = list(seen.values())
            entry["estimated_duration_s"] = insight.estimated_duration_s(self.engine, entry["name"])
        return described

    def stream_info(self, run_id: str, ctx: Context | None) -> dict[str, Any]:
        base, auth = self.stream_base, None
        request = _http_request(ctx)
        if request is not None:
            base = base or str(request.base_url).rstrip("/")
            auth = request.headers.get("authorization")
        headers = {"Accept": "text/event-stream"}
        if auth:
            headers["Authorization"] = auth
        elif self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return {
            "url": f"{base or 'http://127.0.0.1:8765'}/api/v1/runs/{run_id}/events",
            "headers": headers,
            "event_types": STREAM_EVENT_TYPES,
            "resume": "send the last event id seen as the Last-Event-ID header (or ?after=ID) to "
                      "get every later event exactly once; the stream ends after workflow_paused, "
                      "workflow_complete, workflow_failed or workflow_cancelled",
        }

    def resume(self, run_id: str, from_node: str | None, skip: dict[str, Any] | None,
               checkpoint_id: int | None) -> dict[str, Any]:
        state = self.engine._current_state_lazy(self.service.check_run_id(run_id))
        wf = self.service.workflow(state.workflow)
        for field, names in (("from_node", [from_node] if from_node else []), ("skip", list(skip or {}))):
            unknown = [n for n in names if n not in wf]
            if unknown:
                raise ServiceError(422, "ValidationError",
                                   f"{field}: workflow {wf.name!r} of run {run_id!r} has no node "
                                   f"{unknown[0]!r} (nodes: {', '.join(wf.nodes)})")
        request = {"checkpoint_id": checkpoint_id, "updates": skip or None,
                   "rerun": [from_node] if from_node else None}
        self.service.resume(run_id, request)
        return self.status_of(run_id)


def _http_request(ctx: Context | None) -> Any:
    """The Starlette request of a tool call over streamable HTTP, else None."""
    try:
        request = ctx.request_context.request if ctx is not None else None
    except (AttributeError, ValueError):
        return None
    return request if hasattr(request, "base_url") else None


def build_mcp(service: RunService, *, stream_base: str | None = None, token: str | None = None) -> MCPServer:
    """The MCP server with resumeflow's tools over ``service`` (its transport is the caller's:
    ``run_stdio_async`` for ``resumeflow mcp``, the session manager for ``/mcp``).

    >>> import asyncio, resumeflow as rf, tempfile, os
    >>> wf = rf.Workflow("mcp_doc")
    >>> @wf.node
    ... def one():
    ...     return 1
    >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "m.db")) as engine:
    ...     server = build_mcp(RunService(engine, [wf]))
    ...     sorted(t.name for t in asyncio.run(server.list_tools()))
    ['get_results', 'invoke', 'invoke_async', 'invoke_cancel', 'invoke_resume', 'invoke_status', 'invoke_stream', 'list_workflows', 'workflow_monitor']
    """
    tools = _Tools(service, stream_base, token)
    server: MCPServer = MCPServer("resumeflow", version=rf.__version__, instructions=INSTRUCTIONS,
                                  log_level="WARNING")

    @server.tool()
    async def list_workflows() -> list[dict[str, Any]]:
        """The workflows this server can run: each with its nodes (and which node feeds which
        parameter), the run inputs it takes (required or not) and estimated_duration_s (median of
        its past completed runs, null if none). Only these workflows can be started."""
        return await tools.call(tools.describe)

    @server.tool()
    async def invoke_async(workflow: WorkflowName, inputs: Inputs = None,
                           run_id: Annotated[str | None, Field(description="an id for the new run (default: generated); "
                                                               "a run with this id must not exist",
                                                               pattern=RUN_ID_PATTERN)] = None,
                           ctx: Context | None = None) -> dict[str, Any]:
        """Starts a run of `workflow` without waiting: returns at once with run_id, status
        ("queued": this server's workers execute it), estimated_duration_s (median of the
        workflow's past completed runs, null if none) and stream_url (its live Server-Sent Events).
        Then poll invoke_status(run_id) or read the stream; get_results(run_id) has the outputs."""

        def start() -> dict[str, Any]:
            run = service.start({"workflow": workflow, "inputs": inputs or {}, "run_id": run_id})
            return {
                "run_id": run["run_id"],
                "status": run["status"],
                "estimated_duration_s": insight.estimated_duration_s(service.engine, workflow),
                "stream_url": tools.stream_info(run["run_id"], ctx)["url"],
            }

        return await tools.call(start)

    @server.tool()
    async def invoke(workflow: WorkflowName, inputs: Inputs = None, ctx: Context | None = None) -> dict[str, Any]:
        """Runs `workflow` and waits until it ends (completed, failed, paused or cancelled),
        sending MCP progress notifications (nodes completed / total) when the request carries a
        progress token. Returns the run as invoke_status does, plus "values" (the outputs) when
        it completed. For long runs prefer invoke_async: a run continues even if this call is
        abandoned."""
        run = await tools.call(lambda: service.start({"workflow": workflow, "inputs": inputs or {}}))
        run_id = run["run_id"]
        reported = -1
        while True:
            status = await tools.call(lambda: tools.status_of(run_id))
            done, total = status["progress"]["completed"], status["progress"]["total"]
            stopped = status["status"] in STOPPED
            if ctx is not None and (done != reported or stopped):
                steps = ", ".join(s["node"] for s in status["current_steps"])
                message = f"{status['status']}: {done}/{total} nodes" + (f" ({steps})" if steps else "")
                await ctx.report_progress(done, total, message)
                reported = done
            if stopped:
                break
            await tools.call(lambda: service.engine._core.wait_for_end(run_id, INVOKE_POLL_S))
        if status["status"] == "completed":
            status["values"] = (await tools.call(lambda: service.results(run_id)))["values"]
        return status

    @server.tool()
    async def invoke_status(run_id: RunId) -> dict[str, Any]:
        """A run's state: status (queued, running, paused, completed, failed, cancelled), each
        node's status, attempts and error, plus progress {"completed", "total"} and current_steps
        (the nodes in progress, with how long they have been running)."""
        return await tools.call(lambda: tools.status_of(run_id))

    @server.tool()
    async def invoke_stream(run_id: RunId, ctx: Context | None = None) -> dict[str, Any]:
        """Where to read the run's live events: url (Server-Sent Events on resumeflow serve),
        headers to send, and event_types. The stream replays the run's log, then follows it
        live, and ends after the run pauses, completes, fails or is cancelled."""
        await tools.call(lambda: service.get(run_id))  # the run exists
        return tools.stream_info(run_id, ctx)

    @server.tool()
    async def invoke_resume(
        run_id: RunId,
        from_node: Annotated[str | None, Field(description="rerun this node and every node that depends on it "
                                               "(e.g. after fixing what made it fail)", pattern=NAME_PATTERN)] = None,
        skip: Annotated[dict[str, Any] | None, Field(description='{"node": value}: record value as that node\'s '
                                                     "output instead of running it (its dependants run with it)")] = None,
        checkpoint_id: Annotated[int | None, Field(description="resume from this earlier checkpoint (nodes completed "
                                                   "after it run again)", ge=1)] = None,
    ) -> dict[str, Any]:
        """Continues a paused, failed, interrupted or crashed run in this server (also a
        completed one with from_node, skip or checkpoint_id); completed nodes are not run again.
        Returns the run as invoke_status does."""
        return await tools.call(lambda: tools.resume(run_id, from_node, skip, checkpoint_id))

    @server.tool()
    async def invoke_cancel(run_id: RunId) -> dict[str, Any]:
        """Cancels a run wherever it executes: in-flight nodes are abandoned and the run ends
        "cancelled" within a few seconds. Returns the run as invoke_status does."""

        def cancel() -> dict[str, Any]:
            service.control(run_id, "cancel")
            return tools.status_of(run_id)

        return await tools.call(cancel)

    @server.tool()
    async def get_results(run_id: RunId) -> dict[str, Any]:
        """The outputs of the run's completed nodes: {"run_id", "values": {node: value}}; a value
        JSON cannot hold is {"type", "repr"} (+ "dtype", "shape" for arrays and tensors)."""
        return await tools.call(lambda: service.results(run_id))

    @server.tool()
    async def workflow_monitor(
        status: Annotated[str | None, Field(description="narrow to one bucket (active, stuck, failed) or one run "
                                            "status (queued, pending, running); null for everything")] = None,
    ) -> dict[str, Any]:
        """What needs attention: {"active": runs with work left, "stuck": running runs whose
        worker is gone (lease expired or owner process dead; each with a reason; served workflows
        are recovered within seconds), "failed": the newest failed runs with their failing node
        and error (resume them with invoke_resume)}."""
        return await tools.call(lambda: insight.overview(service.engine, status))

    return server
