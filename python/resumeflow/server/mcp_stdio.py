"""``resumeflow mcp MODULE:WORKFLOW ... --db PATH [--server-url URL]``: the MCP tools over
stdio, for an MCP client that spawns the server (Claude Code's ``claude mcp add``, an IDE). The
process also executes the runs it starts and recovers stale runs of its workflows (the
server's :class:`Supervisor`), so it needs no ``resumeflow serve`` beside it; the event
streams ``invoke_stream`` names are on the ``resumeflow serve`` at ``--server-url``.

stdout carries the protocol only: while serving, the SDK points fd 1 at stderr, so a node's
``print`` cannot corrupt it. Closing stdin (or SIGTERM) stops it like ``resumeflow worker``:
in-flight nodes finish, the runs go back to the queue, their leases are released."""

from __future__ import annotations

import signal
from typing import Any

import resumeflow as rf

from .service import RunService
from .supervisor import Supervisor

#: Where ``invoke_stream`` points without ``--server-url`` (``resumeflow serve``'s default).
DEFAULT_SERVER_URL = "http://127.0.0.1:8765"


def serve_stdio(
    engine: rf.Engine,
    workflows: list[rf.Workflow],
    *,
    server_url: str = DEFAULT_SERVER_URL,
    token: str | None = None,
) -> None:
    """Serves the tools on stdin/stdout until stdin closes or SIGTERM / Ctrl-C; the caller
    closes ``engine`` afterwards.

    Example: ``serve_stdio(rf.Engine("runs.db"), [wf], server_url="http://127.0.0.1:8765")``.
    """
    import anyio

    from .mcp_tools import build_mcp

    service = RunService(engine, workflows)
    server = build_mcp(service, stream_base=server_url, token=token)
    supervisor = Supervisor(engine, list(service.workflows.values()))

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    supervisor.start()
    try:
        anyio.run(server.run_stdio_async)
    except KeyboardInterrupt:
        pass
    finally:
        supervisor.stop()
        signal.signal(signal.SIGTERM, previous)
