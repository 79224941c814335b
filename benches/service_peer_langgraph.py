"""The peer of benches/service_bench.py: the same two 3-node graphs as LangGraph ``StateGraph``s,
served by LangGraph's own HTTP server (``langgraph dev``, in memory) from its own venv.

``noop3``: a -> b -> c, each a no-op that adds 1. ``timed3``: each node sleeps (the first one
longer, so stream clients can join before its end) and returns the time it ended, which the
benchmark subtracts from the moment the node's update reached each stream client.
"""

from __future__ import annotations

import time
from typing import TypedDict

from langgraph.graph import END, START, StateGraph

FIRST_SLEEP_S = 1.0
NEXT_SLEEP_S = 0.2


class Count(TypedDict, total=False):
    x: int


class Times(TypedDict, total=False):
    a: float
    b: float
    c: float


def _noop() -> object:
    g = StateGraph(Count)
    for name in ("a", "b", "c"):
        g.add_node(name, lambda s: {"x": s.get("x", 0) + 1})
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_edge("c", END)
    return g.compile()


def _timed_node(name: str, sleep: float):
    def node(_state: Times) -> Times:
        time.sleep(sleep)
        return {name: time.time()}  # type: ignore[misc]

    return node


def _timed() -> object:
    g = StateGraph(Times)
    g.add_node("a", _timed_node("a", FIRST_SLEEP_S))
    g.add_node("b", _timed_node("b", NEXT_SLEEP_S))
    g.add_node("c", _timed_node("c", NEXT_SLEEP_S))
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_edge("c", END)
    return g.compile()


noop3 = _noop()
timed3 = _timed()
