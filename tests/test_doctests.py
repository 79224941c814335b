"""The examples in the package's docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "resumeflow",
    "resumeflow._codec",
    "resumeflow._failures",
    "resumeflow._network",
    "resumeflow._workflow",
    "resumeflow.langgraph",
    "resumeflow._engine",
    "resumeflow._store_url",
    "resumeflow._queue",
    "resumeflow._events",
    "resumeflow._tracing",
    "resumeflow._metrics",
    "resumeflow.tracing",
    "resumeflow.server.app",
    "resumeflow.server.auth",
    "resumeflow.server.errors",
    "resumeflow.server.insight",
    "resumeflow.server.mcp_http",
    "resumeflow.server.mcp_tools",
    "resumeflow.server.run_feed",
    "resumeflow.server.serve",
    "resumeflow.server.service",
    "resumeflow.server.stream",
    "resumeflow.server.supervisor",
    "resumeflow.server.values",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
