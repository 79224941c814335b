"""Workflows used by the tests, importable from subprocesses (PYTHONPATH=tests).

Every node appends ``node:attempt`` to the ledger file named by ``RF_LEDGER`` (fsynced), so
tests can count executions across processes and crashes.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import resumeflow as rf

FAST = rf.RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.05)


def record(node: str, attempt: int) -> None:
    path = os.environ.get("RF_LEDGER")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{node}:{attempt}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def ledger_entries(path: str | Path) -> list[tuple[str, int]]:
    out = []
    for line in Path(path).read_text().splitlines():
        node, attempt = line.rsplit(":", 1)
        out.append((node, int(attempt)))
    return out


def counts(path: str | Path) -> Counter[str]:
    return Counter(node for node, _ in ledger_entries(path))


# a -> b -> c; b can be slowed with RF_SLOW_B (seconds) and c with RF_SLOW_C.
chain = rf.Workflow("chain")


@chain.node(retry=FAST)
def a(ctx: rf.NodeContext, x: int = 1):
    record("a", ctx.attempt)
    return x + 1


@chain.node(retry=FAST)
def b(ctx: rf.NodeContext, a):
    record("b", ctx.attempt)
    time.sleep(float(os.environ.get("RF_SLOW_B", "0")))
    return a * 10


@chain.node(retry=FAST)
def c(ctx: rf.NodeContext, b):
    record("c", ctx.attempt)
    time.sleep(float(os.environ.get("RF_SLOW_C", "0")))
    return b + 5


def make_chain(k: int, name: str = "chaink") -> rf.Workflow:
    """``s0 -> s1 -> ... -> s{k-1}``, each adding its index to the input."""
    wf = rf.Workflow(name)
    for i in range(k):
        def step(ctx: rf.NodeContext, prev=None, _i=i):
            record(f"s{_i}", ctx.attempt)
            time.sleep(float(os.environ.get("RF_STEP_S", "0")))
            return (prev or 0) + _i + 1

        if i == 0:
            wf.node(step, name="s0", retry=FAST, inputs={})
        else:
            wf.node(step, name=f"s{i}", retry=FAST, inputs={"prev": f"s{i - 1}"})
    return wf


def sleepy_chain() -> rf.Workflow:
    return chain


# One node that saves partial state back to back (RF_BUSY_SAVES times, a write transaction
# each) before it returns: a worker is always about to be inside a write.
busy = rf.Workflow("busy")


@busy.node(retry=FAST)
def busy_saves(ctx: rf.NodeContext):
    record("busy", ctx.attempt)
    start = (ctx.load_partial_state() or {"i": 0})["i"]
    for i in range(start, int(os.environ.get("RF_BUSY_SAVES", "20"))):
        ctx.save_partial_state({"i": i + 1})
    return "saved"
