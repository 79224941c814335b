"""Workflows for the queue and worker tests (tests/test_cli_queue.py), importable by the
``resumeflow`` subprocesses those tests run from tests/.

Every node appends ``RUN_ID/NODE:ATTEMPT`` to the ledger named by ``RF_LEDGER`` (fsynced), so a
test can count which run executed which node, how often, across worker processes.
"""

from __future__ import annotations

import os
import time

import resumeflow as rf
from rf_workflows import FAST, record


def _nap(variable: str) -> None:
    time.sleep(float(os.environ.get(variable, "0")) + float(os.environ.get("RF_STEP_S", "0")))


# first -> second -> third; RF_STEP_S slows every node, RF_SLOW_SECOND the middle one.
steps = rf.Workflow("queued_steps")


@steps.node(retry=FAST)
def first(ctx: rf.NodeContext, x: int = 0):
    record(f"{ctx.run_id}/first", ctx.attempt)
    _nap("RF_SLOW_FIRST")
    return x + 1


@steps.node(retry=FAST)
def second(ctx: rf.NodeContext, first):
    record(f"{ctx.run_id}/second", ctx.attempt)
    _nap("RF_SLOW_SECOND")
    return first * 10


@steps.node(retry=FAST)
def third(ctx: rf.NodeContext, second):
    record(f"{ctx.run_id}/third", ctx.attempt)
    _nap("RF_SLOW_THIRD")
    return second + 5


# Imports fine, fails Workflow.validate(): a cycle through explicit wiring.
cyclic = rf.Workflow("cyclic")


@cyclic.node(inputs={"x": "right"})
def left(x):
    return x


@cyclic.node(inputs={"y": "left"})
def right(y):
    return y
