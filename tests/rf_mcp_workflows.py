"""Workflows for the MCP tests (tests/test_mcp.py), importable by the ``resumeflow mcp`` and
``resumeflow serve`` subprocesses those tests start (PYTHONPATH=tests). Every node records
its executions in the fsynced ledger named by ``RF_LEDGER`` (see rf_server_workflows.py)."""

from __future__ import annotations

import os
import time

import resumeflow as rf
from rf_pool_workflows import record

# flaky: fetch -> check -> report. `check` fails (for good: no retry) until the file named by
# the run input `gate` exists: the test "fixes the cause" by creating it.
flaky = rf.Workflow("flaky")


@flaky.node(retry=False)
def fetch(ctx: rf.NodeContext, n: int):
    record(ctx)
    return n


@flaky.node(retry=False)
def check(ctx: rf.NodeContext, fetch, gate: str):
    record(ctx)
    if not os.path.exists(gate):
        raise ValueError("the gate file is missing: create it, then rerun this node")
    return fetch * 2


@flaky.node(retry=False)
def report(ctx: rf.NodeContext, check):
    record(ctx)
    return {"total": check}


# steps: s1 -> s2 -> s3 -> s4, each sleeping `pause` seconds: progress a client can watch.
steps = rf.Workflow("steps")


@steps.node
def s1(ctx: rf.NodeContext, pause: float = 0.3):
    record(ctx)
    time.sleep(pause)
    return 1


@steps.node
def s2(ctx: rf.NodeContext, s1, pause: float = 0.3):
    record(ctx)
    time.sleep(pause)
    return s1 + 1


@steps.node
def s3(ctx: rf.NodeContext, s2, pause: float = 0.3):
    record(ctx)
    time.sleep(pause)
    return s2 + 1


@steps.node
def s4(ctx: rf.NodeContext, s3, pause: float = 0.3):
    record(ctx)
    time.sleep(pause)
    return s3 + 1
