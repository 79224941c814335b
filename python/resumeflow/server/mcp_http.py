"""MCP over streamable HTTP at ``/mcp`` on ``resumeflow serve``: the tools of
:mod:`.mcp_tools` on the app's shared service, mounted only when the MCP SDK is importable
(``pip install "resumeflow[mcp]"``); without it the rest of the server works as before and
``/mcp`` is 404. The app's ``_Limits`` middleware demands the bearer token on ``/mcp`` first.

Without a token the server listens on loopback only (``serve`` refuses anything else), and the
SDK's DNS-rebinding protection is on (Host and Origin must be loopback names). With a token a
rebinding page cannot authenticate, so any Host is accepted (a server behind a proxy or on a
LAN address)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from .service import RunService

#: Where the tools are served.
PATH = "/mcp"


def available() -> bool:
    """Whether the MCP SDK can be imported (``resumeflow[mcp]``).

    >>> isinstance(available(), bool)
    True
    """
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError:
        return False
    return True


def session_manager(service: RunService, *, token: str | None) -> Any:
    """The SDK's streamable-HTTP session manager for the tools on ``service``, or None without
    the SDK. Its ``run()`` must be entered in the app's lifespan.

    >>> import resumeflow as rf, tempfile, os
    >>> wf = rf.Workflow("mcp_http_doc")
    >>> @wf.node
    ... def one():
    ...     return 1
    >>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "h.db")) as engine:
    ...     manager = session_manager(RunService(engine, [wf]), token=None)
    ...     manager is None or hasattr(manager, "run")
    True
    """
    if not available():
        return None
    from mcp.server.transport_security import TransportSecuritySettings

    from .mcp_tools import build_mcp

    server = build_mcp(service, stream_base=None, token=None)
    if token:
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    else:
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    server.streamable_http_app(streamable_http_path=PATH, transport_security=security)
    return server.session_manager


def mount(app: Any, manager: Any) -> None:
    """Routes ``/mcp`` (every method) of the FastAPI ``app`` to ``manager``; nothing without one."""
    if manager is None:
        return
    from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
    from starlette.routing import Route

    app.router.routes.append(Route(PATH, endpoint=StreamableHTTPASGIApp(manager)))


@contextlib.asynccontextmanager
async def running(manager: Any) -> AsyncIterator[None]:
    """The session manager's task group for the app's lifespan (nothing without one)."""
    if manager is None:
        yield
        return
    async with manager.run():
        yield
