"""Workflows for the web monitor tests (tests/test_monitor.py), served by the ``resumeflow
serve`` subprocesses those tests start (PYTHONPATH=tests). Every node writes the fsynced
ledger of rf_server_workflows (``RUN_ID/NODE:ATTEMPT``)."""

from __future__ import annotations

from pathlib import Path

import resumeflow as rf
from rf_pool_workflows import record

# flaky: setup -> risky -> report. `risky` raises (final, not retried) until the file named by
# the run input `flag` exists: the test "fixes the cause" by creating it, then resumes.
flaky = rf.Workflow("flaky")


@flaky.node(retry=False)
def setup(ctx: rf.NodeContext, flag: str):
    record(ctx)
    return flag


@flaky.node(retry=False)
def risky(ctx: rf.NodeContext, setup):
    record(ctx)
    if not Path(setup).exists():
        raise ValueError(f"flag file {setup} is missing")
    return "fixed"


@flaky.node(retry=False)
def report(ctx: rf.NodeContext, risky):
    record(ctx)
    return f"report: {risky}"


# fan: root -> left, root -> right, (left, right) -> join. A rerun of `left` executes left and
# join again, never root or right.
fan = rf.Workflow("fan")


@fan.node(retry=False)
def root(ctx: rf.NodeContext, seed: int = 1):
    record(ctx)
    return seed


@fan.node(retry=False)
def left(ctx: rf.NodeContext, root):
    record(ctx)
    return root + 1


@fan.node(retry=False)
def right(ctx: rf.NodeContext, root):
    record(ctx)
    return root * 10


@fan.node(retry=False)
def join(ctx: rf.NodeContext, left, right):
    record(ctx)
    return {"left": left, "right": right}
