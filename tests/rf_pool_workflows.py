"""Workflows for the queue tests, importable from worker subprocesses (PYTHONPATH=tests).

Every node appends ``run_id/node:attempt`` to the ledger named by ``RF_LEDGER`` (fsynced), so
tests can prove each node of each run ran exactly once across worker processes and kills.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import resumeflow as rf

FAST = rf.RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.05)


def record(ctx: rf.NodeContext) -> None:
    path = os.environ.get("RF_LEDGER")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{ctx.run_id}/{ctx.node_id}:{ctx.attempt}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def executions(path: str | Path) -> Counter[str]:
    """How often each ``run_id/node`` ran."""
    return Counter(line.rsplit(":", 1)[0] for line in Path(path).read_text().splitlines())


# Five nodes: a -> b -> (c, d) -> e. RF_SLOW_C slows c (seconds), so tests can kill a worker
# or cancel a run while a node is in flight.
five = rf.Workflow("five")


@five.node(retry=FAST)
def a(ctx: rf.NodeContext, x: int = 1):
    record(ctx)
    return x


@five.node(retry=FAST)
def b(ctx: rf.NodeContext, a):
    record(ctx)
    return a + 1


@five.node(retry=FAST)
def c(ctx: rf.NodeContext, b):
    record(ctx)
    deadline = time.monotonic() + float(os.environ.get("RF_SLOW_C", "0"))
    while time.monotonic() < deadline:
        if ctx.cancelled:
            raise rf.Cancelled("c saw the cancel")
        time.sleep(0.02)
    return b * 2


@five.node(retry=FAST)
def d(ctx: rf.NodeContext, b):
    record(ctx)
    return b * 3


@five.node(retry=FAST)
def e(ctx: rf.NodeContext, c, d):
    record(ctx)
    return c + d


def expected(x: int) -> int:
    """``e``'s output for input ``x``."""
    return (x + 1) * 2 + (x + 1) * 3


# Served by no worker in the tests.
orphan = rf.Workflow("orphan")


@orphan.node
def lonely():
    return "never"
