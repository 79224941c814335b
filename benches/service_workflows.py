"""The workflows benches/service_bench.py serves with ``resumeflow serve`` (the same graphs as
``service_peer_langgraph.py``): ``noop3`` (a -> b -> c: 1, then each adds 1) and ``timed3`` (each node
sleeps, the first longer, and returns the time it ended)."""

from __future__ import annotations

import time

import resumeflow as rf

FIRST_SLEEP_S = 1.0
NEXT_SLEEP_S = 0.2

noop3 = rf.Workflow("noop3")


@noop3.node
def a() -> int:
    return 1


@noop3.node
def b(a: int) -> int:
    return a + 1


@noop3.node
def c(b: int) -> int:
    return b + 1


timed3 = rf.Workflow("timed3")


@timed3.node(name="a")
def timed_a() -> float:
    time.sleep(FIRST_SLEEP_S)
    return time.time()


@timed3.node(name="b", inputs={"after": "a"})
def timed_b(after: float) -> float:
    time.sleep(NEXT_SLEEP_S)
    return time.time()


@timed3.node(name="c", inputs={"after": "b"})
def timed_c(after: float) -> float:
    time.sleep(NEXT_SLEEP_S)
    return time.time()
