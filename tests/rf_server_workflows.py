"""Workflows for the service tests (tests/test_server.py), importable by the ``resumeflow
serve`` and ``resumeflow worker`` subprocesses those tests start (PYTHONPATH=tests).

Every node appends ``RUN_ID/NODE:ATTEMPT`` to the ledger named by ``RF_LEDGER`` (fsynced), so a
test can prove which node of which run executed how often, across server kills and restarts.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import resumeflow as rf

FAST = rf.RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.05)


from rf_pool_workflows import record  # noqa: E402  (the same fsynced ledger lines)


def ledger_lines(path: str | Path) -> list[tuple[str, int]]:
    """``(run_id/node, attempt)`` for every execution the ledger recorded, in order."""
    out = []
    for line in Path(path).read_text().splitlines():
        node, attempt = line.rsplit(":", 1)
        out.append((node, int(attempt)))
    return out


def executions(path: str | Path, run_id: str | None = None) -> Counter[str]:
    """How often each ``run_id/node`` (or, given ``run_id``, each node of that run) started."""
    counted: Counter[str] = Counter()
    for key, _ in ledger_lines(path):
        run, node = key.rsplit("/", 1)
        if run_id is None:
            counted[key] += 1
        elif run == run_id:
            counted[node] += 1
    return counted


def _nap(ctx: rf.NodeContext, seconds: float) -> None:
    """Sleeps ``seconds``, ending early with ``rf.Cancelled`` once the run is cancelled."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ctx.cancelled:
            raise rf.Cancelled(f"{ctx.node_id} saw the cancel")
        time.sleep(0.02)


# quick: a -> b -> c; `a` reads the run input `count`. c == (count + 1) * 2.
quick = rf.Workflow("quick")


@quick.node(retry=FAST)
def a(ctx: rf.NodeContext, count: int):
    record(ctx)
    return count


@quick.node(retry=FAST)
def b(ctx: rf.NodeContext, a):
    record(ctx)
    return a + 1


@quick.node(retry=FAST)
def c(ctx: rf.NodeContext, b):
    record(ctx)
    return b * 2


# slow: prepare -> nap -> finish. `nap` sleeps the run input `delay` seconds (RF_SLOW when the
# run gives none) and honours a cancel while it sleeps.
slow = rf.Workflow("slow")


@slow.node(retry=FAST)
def prepare(ctx: rf.NodeContext, label: str = "x"):
    record(ctx)
    return label


@slow.node(retry=FAST)
def nap(ctx: rf.NodeContext, prepare, delay: float = -1.0):
    record(ctx)
    _nap(ctx, delay if delay >= 0 else float(os.environ.get("RF_SLOW", "0")))
    return prepare + "!"


@slow.node(retry=FAST)
def finish(ctx: rf.NodeContext, nap):
    record(ctx)
    return nap + "?"


# remote: the same shape as slow, served by a `resumeflow worker` and not by the test server,
# so interrupt and cancel through HTTP must reach a run another process executes.
remote = rf.Workflow("remote")


@remote.node(retry=FAST)
def first(ctx: rf.NodeContext):
    record(ctx)
    return 1


@remote.node(retry=FAST)
def held(ctx: rf.NodeContext, first, delay: float = 30.0):
    record(ctx)
    _nap(ctx, delay)
    return first + 1


@remote.node(retry=FAST)
def last(ctx: rf.NodeContext, held):
    record(ctx)
    return held + 1


# odd: outputs JSON cannot hold as they are (bytes, an array, a NaN) and one it can. numpy is
# imported above, not in `grid`: a first import of numpy in one node thread while another
# node's output is being encoded fails with "partially initialized module 'numpy'".
odd = rf.Workflow("odd")


@odd.node(retry=False)
def raw():
    return b"\x00\xffbytes"


@odd.node(retry=False)
def grid():
    return np.arange(6, dtype=np.float32).reshape(2, 3)


@odd.node(retry=False)
def not_a_number():
    return float("nan")


@odd.node(retry=False)
def plain():
    return {"k": [1, 2.5, "s", None, True]}


# remote_stream (not served by the test servers: a `resumeflow worker` runs it): a streaming
# node that saves its cursor after every item, so a server's stream sees the items durably.
remote_stream = rf.Workflow("remote_stream")


@remote_stream.node(retry=FAST)
def saved_tokens(ctx: rf.NodeContext, items: int = 6, gap: float = 0.3):
    record(ctx)
    time.sleep(0.5)
    for i in range(items):
        yield f"tok{i}"
        ctx.save_partial_state(i + 1)
        time.sleep(gap)


# streamy: one streaming (generator) node; its items reach live clients as `chunk` messages.
streamy = rf.Workflow("streamy")


@streamy.node(retry=FAST)
def tokens(ctx: rf.NodeContext, items: int = 8, gap: float = 0.2):
    record(ctx)
    time.sleep(0.5)  # time for a client to subscribe before the first item
    for i in range(items):
        yield f"tok{i}"
        time.sleep(gap)
