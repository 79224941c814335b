"""resumeflow's service: an HTTP API with a durable SSE event stream over an Engine
(``resumeflow serve``; ``pip install "resumeflow[server]"``).

The service is a layer on the public Python API, never a second engine: it holds no state the
store does not hold, so a server can be killed at any instant and another one carries on.
``import resumeflow`` never imports this package.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
