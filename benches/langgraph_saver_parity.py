"""Where a LangGraph app switching from SqliteSaver to ResumeflowSaver would notice a
difference in speed (issue 21): the two savers on identical work, interleaved, in one run.

    python benches/langgraph_saver_parity.py [--rounds R] [--quick] [--json OUT]

Workloads (``durability="sync"`` for graph runs; both savers on WAL + ``synchronous=FULL``):
  L  large values elsewhere: ms per invoke of a small 3-node graph on fresh threads, before
     and after 5 other threads stored a 10 MB document each (``--quick``: 2 MB).
  F  metadata filter: 20,000 checkpoints (``--quick``: 4,000) put directly with metadata
     ``{"step", "source", "user"}`` (100 users), then ``list(None, filter={"user": "u7"})``:
     ms per full scan (median of 5 scans).
  G  a growing list channel: a 300-step chain (``--quick``: 60) whose every node appends a
     20 KB string to a list channel reduced with ``operator.add``: seconds per invoke.
Medians over the rounds; the savers alternate order every round.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from resumeflow.langgraph import ResumeflowSaver


def _sqlite(path: str) -> tuple[Any, Callable[[], None]]:
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    saver = SqliteSaver(conn)
    saver.setup()
    return saver, conn.close


def _resumeflow(path: str) -> tuple[Any, Callable[[], None]]:
    saver = ResumeflowSaver(path, durability="sync")
    return saver, saver.close


SAVERS = {"SqliteSaver": _sqlite, "ResumeflowSaver": _resumeflow}


class Small(TypedDict, total=False):
    n: int
    doc: str


def _small_graph(saver: Any) -> Any:
    g = StateGraph(Small)
    for name in ("a", "b", "c"):
        g.add_node(name, lambda s: {"n": s.get("n", 0) + 1})
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_edge("c", END)
    return g.compile(checkpointer=saver)


def large_values(make: Any, path: str, mb: int, invokes: int = 50) -> dict[str, float]:
    saver, close = make(path)
    try:
        graph = _small_graph(saver)

        def per_invoke(tag: str) -> float:
            t0 = time.perf_counter()
            for i in range(invokes):
                graph.invoke({"n": 0}, {"configurable": {"thread_id": f"{tag}-{i}"}}, durability="sync")
            return (time.perf_counter() - t0) / invokes * 1e3

        before = per_invoke("before")
        doc = "d" * (mb << 20)
        for i in range(5):
            graph.invoke({"n": 0, "doc": doc + str(i)}, {"configurable": {"thread_id": f"doc-{i}"}}, durability="sync")
        after = per_invoke("after")
    finally:
        close()
    return {"before_ms": before, "after_ms": after}


def metadata_filter(make: Any, path: str, n: int) -> dict[str, float]:
    saver, close = make(path)
    try:
        cfg: dict[str, Any] = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        for i in range(n):
            cp = empty_checkpoint()
            cfg = saver.put(cfg, cp, {"step": i, "source": "loop", "user": f"u{i % 100}"}, {})
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            found = list(saver.list(None, filter={"user": "u7"}))
            times.append((time.perf_counter() - t0) * 1e3)
        assert len(found) == n // 100, len(found)
    finally:
        close()
    return {"scan_ms": statistics.median(times)}


class Growing(TypedDict, total=False):
    items: Annotated[list[str], operator.add]


def growing_list(make: Any, path: str, steps: int) -> dict[str, float]:
    saver, close = make(path)
    try:
        g = StateGraph(Growing)
        chunk = "x" * 20_000
        for i in range(steps):
            g.add_node(f"n{i}", lambda s, i=i: {"items": [chunk + str(i)]})
            g.add_edge(START if i == 0 else f"n{i - 1}", f"n{i}")
        g.add_edge(f"n{steps - 1}", END)
        graph = g.compile(checkpointer=saver)
        t0 = time.perf_counter()
        out = graph.invoke({"items": []}, {"configurable": {"thread_id": "g"}, "recursion_limit": steps + 10},
                           durability="sync")
        elapsed = time.perf_counter() - t0
        assert len(out["items"]) == steps
    finally:
        close()
    return {"invoke_s": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    mb, n, steps = (2, 4000, 60) if args.quick else (10, 20000, 300)
    if args.quick:
        args.rounds = 1
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in SAVERS}
    for r in range(args.rounds):
        names = list(SAVERS) if r % 2 == 0 else list(reversed(SAVERS))
        for name in names:
            make = SAVERS[name]
            for workload, run, arg in (("L", large_values, mb), ("F", metadata_filter, n), ("G", growing_list, steps)):
                tmp = tempfile.mkdtemp(prefix="rf-lgparity-")
                try:
                    for key, value in run(make, os.path.join(tmp, "db.sqlite"), arg).items():
                        samples[name].setdefault(f"{workload}.{key}", []).append(value)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    summary = {name: {k: statistics.median(v) for k, v in s.items()} for name, s in samples.items()}
    print(f"# LangGraph saver parity: {args.rounds} rounds; L {mb} MB docs, F {n} checkpoints, G {steps} steps; "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    keys = sorted(summary["SqliteSaver"])
    print(f"{'figure':<16}" + "".join(f"{name:>18}" for name in SAVERS) + f"{'ratio rf/sqlite':>18}")
    for key in keys:
        a, b = summary["SqliteSaver"][key], summary["ResumeflowSaver"][key]
        print(f"{key:<16}{a:>18.2f}{b:>18.2f}{b / a:>17.2f}x")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"samples": samples, "summary": summary}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
