"""Compare resumeflow with its peers on identical work, interleaved in one run.

    python benches/compare.py [--quick] [--json OUT]

Workloads (shared/BENCHMARKS.md):
  W1  a chain of N no-op durable nodes (each adds 1 to its input);
  W2  fan-out/fan-in: 1 -> 500 parallel no-op nodes -> 1.
Systems: resumeflow (durability "sync" and "batched"), LangGraph with its SQLite checkpointer
(durability "sync"; skipped if not installed), raw sqlite3 with one committed insert per node
under the same pragmas (the storage floor), and plain Python calls (no durability).
Every durable system commits each node's result before its dependants run. Figures are
medians of several rounds; ratios compare systems measured in the same run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import operator
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Annotated, TypedDict

import resumeflow as rf


class ChainState(TypedDict):
    x: int


class FanState(TypedDict):
    x: Annotated[int, operator.add]


def _tmp_db(tag: str) -> str:
    return os.path.join(tempfile.mkdtemp(prefix=f"rfbench-{tag}-"), "store.db")


# --- W1: chain ----------------------------------------------------------------------------


def rf_chain_workflow(n: int) -> rf.Workflow:
    wf = rf.Workflow(f"chain{n}")
    for i in range(n):
        if i == 0:
            wf.node(lambda: 1, name="s0", retry=False)
        else:
            wf.node(lambda prev: prev + 1, name=f"s{i}", inputs={"prev": f"s{i - 1}"}, retry=False)
    return wf


def run_resumeflow_chain(n: int, durability: str) -> float:
    wf = rf_chain_workflow(n)
    wf.validate()
    with rf.Engine(_tmp_db("rf"), durability=durability) as engine:
        t0 = time.perf_counter()
        state = engine.run(wf)
        elapsed = time.perf_counter() - t0
    assert state.values[f"s{n - 1}"] == n
    return elapsed


def run_langgraph_chain(n: int) -> float:
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph

    g = StateGraph(ChainState)
    for i in range(n):
        g.add_node(f"s{i}", lambda s: {"x": s["x"] + 1})
        g.add_edge(START if i == 0 else f"s{i - 1}", f"s{i}")
    g.add_edge(f"s{n - 1}", END)
    conn = sqlite3.connect(_tmp_db("lg"), check_same_thread=False)
    saver = SqliteSaver(conn)
    graph = g.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "t"}, "recursion_limit": n * 2 + 10}
    t0 = time.perf_counter()
    out = graph.invoke({"x": 0}, config, durability="sync")
    elapsed = time.perf_counter() - t0
    conn.close()
    assert out["x"] == n
    return elapsed


def run_sqlite_floor(n: int, synchronous: str = "FULL") -> float:
    conn = sqlite3.connect(_tmp_db("floor"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
    t0 = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (id, v) VALUES (?, ?)", (i, b"\x01"))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def run_plain_python(n: int) -> float:
    fns = [lambda x: x + 1 for _ in range(n)]
    t0 = time.perf_counter()
    x = 0
    for f in fns:
        x = f(x)
    assert x == n
    return time.perf_counter() - t0


# --- W2: fan-out / fan-in ----------------------------------------------------------------


def run_resumeflow_fanout(width: int, durability: str) -> float:
    wf = rf.Workflow(f"fan{width}")
    wf.node(lambda: 1, name="src", retry=False)
    for i in range(width):
        wf.node(lambda src: src + 1, name=f"w{i}", inputs={"src": "src"}, retry=False)

    def join(**parts):
        return sum(parts.values())

    join.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(f"w{i}", inspect.Parameter.KEYWORD_ONLY) for i in range(width)]
    )
    wf.node(join, name="join", retry=False)
    wf.validate()
    with rf.Engine(_tmp_db("rf2"), durability=durability) as engine:
        t0 = time.perf_counter()
        state = engine.run(wf)
        elapsed = time.perf_counter() - t0
    assert state.values["join"] == 2 * width
    return elapsed


def run_langgraph_fanout(width: int) -> float:
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph

    g = StateGraph(FanState)
    g.add_node("src", lambda s: {"x": 1})
    g.add_edge(START, "src")
    for i in range(width):
        g.add_node(f"w{i}", lambda s: {"x": 1})
        g.add_edge("src", f"w{i}")
    g.add_node("join", lambda s: {"x": 0})
    g.add_edge([f"w{i}" for i in range(width)], "join")
    g.add_edge("join", END)
    conn = sqlite3.connect(_tmp_db("lg2"), check_same_thread=False)
    graph = g.compile(checkpointer=SqliteSaver(conn))
    t0 = time.perf_counter()
    out = graph.invoke({"x": 0}, {"configurable": {"thread_id": "t"}}, durability="sync")
    elapsed = time.perf_counter() - t0
    conn.close()
    assert out["x"] == 1 + width
    return elapsed


def _have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _measure(systems: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(rounds):
        for name, fn in systems.items():  # interleaved
            samples[name].append(fn())
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    n = 200 if args.quick else 1000
    width = 100 if args.quick else 500
    rounds = 3 if args.quick else 5
    langgraph = _have("langgraph.checkpoint.sqlite")

    rows = []
    w1 = {
        "resumeflow sync": lambda: run_resumeflow_chain(n, "sync"),
        "resumeflow batched": lambda: run_resumeflow_chain(n, "batched"),
        "sqlite3 floor (FULL)": lambda: run_sqlite_floor(n, "FULL"),
        "sqlite3 floor (NORMAL)": lambda: run_sqlite_floor(n, "NORMAL"),
        "plain python": lambda: run_plain_python(n),
    }
    if langgraph:
        w1["langgraph sync"] = lambda: run_langgraph_chain(n)
    med = _measure(w1, rounds)
    for name, seconds in med.items():
        rows.append({"workload": f"W1 chain {n}", "system": name, "us_per_node": seconds / n * 1e6})

    w2 = {
        "resumeflow sync": lambda: run_resumeflow_fanout(width, "sync"),
        "resumeflow batched": lambda: run_resumeflow_fanout(width, "batched"),
    }
    if langgraph:
        w2["langgraph sync"] = lambda: run_langgraph_fanout(width)
    med2 = _measure(w2, rounds)
    for name, seconds in med2.items():
        rows.append({"workload": f"W2 fan-out {width}", "system": name, "us_per_node": seconds / (width + 2) * 1e6})

    base = {r["workload"]: r["us_per_node"] for r in rows if r["system"] == "resumeflow sync"}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, rounds {rounds} (median)")
    print(f"{'workload':<18} {'system':<24} {'us/node':>10} {'vs resumeflow sync':>20}")
    for r in rows:
        ratio = r["us_per_node"] / base[r["workload"]]
        r["ratio_to_resumeflow_sync"] = ratio
        print(f"{r['workload']:<18} {r['system']:<24} {r['us_per_node']:>10.1f} {ratio:>19.2f}x")
    if not langgraph:
        print("(langgraph not installed: pip install -r benches/requirements.txt to compare)")
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        with open(args.json, "w") as f:
            json.dump({"commit": commit, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
