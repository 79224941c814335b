"""Compare LangGraph's SqliteSaver with resumeflow's ResumeflowSaver on identical graphs.

    python benches/langgraph_saver.py [--rounds N] [--quick] [--no-async] [--json OUT]

Both checkpointers run the same compiled LangGraph graphs, invoked with
``durability="sync"`` (every checkpoint is persisted before the next step runs).

Workloads:
  A  chain: a StateGraph of N nodes n0 -> n1 -> ... (default 200); each node increments an
     int counter and sets a small string. Time per step = invoke wall time / N.
  B  fan-out: START -> K parallel nodes (default 50) -> join -> END; each branch appends one
     item to a list channel reduced with ``operator.add``. Time per step = invoke wall time /
     (K + 1) node executions.
  C  store growth: workload A whose state also carries a ~100 KB string, set once by the
     first node and never changed afterwards. A saver that stores a full snapshot per step
     grows by about N x 100 KB; one that stores each channel version once does not.

Systems: ``SqliteSaver`` and ``ResumeflowSaver(path, durability="sync")`` through
``graph.invoke``; and, when aiosqlite is installed (and ``--no-async`` is not given),
``AsyncSqliteSaver`` and the same ``ResumeflowSaver`` through ``graph.ainvoke``.

Fairness: every run uses a fresh database file. The SQLite savers get a connection opened
with ``sqlite3.connect(path, check_same_thread=False)`` (``aiosqlite.connect(path)`` for the
async one) on which ``PRAGMA journal_mode=WAL`` and ``PRAGMA synchronous=FULL`` are set before
the saver is built, which is the durability of ResumeflowSaver's ``"sync"`` mode (WAL, every
commit fsynced with ``synchronous=FULL``). Schema creation (``saver.setup()``) and graph
compilation happen before the clock starts; only ``invoke`` / ``ainvoke`` is timed, with
``time.perf_counter``. Rounds are interleaved: each round runs every system once on every
workload, and the order of the systems is reversed every other round. One untimed warm-up
run per system and workload comes first. Figures are medians over the rounds.

Store size: after the run the saver is closed (``ResumeflowSaver.close()``, which
checkpoints its WAL; the SQLite connection's ``close()``), then the sizes of the files that
exist among ``db`` and ``db-wal`` are summed.

Correctness: the script asserts that every run of every system ends with the same final
state (the value returned by ``invoke`` and the latest checkpointed state read back through
``graph.get_state``) and the same number of checkpoints in the thread's history.

``--quick`` runs one round with a 50-step chain and a 10-way fan-out. ``--json OUT`` writes
the raw samples and the summary as JSON. Needs ``langgraph`` and
``langgraph-checkpoint-sqlite`` (see benches/requirements.txt) and resumeflow installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import os
import platform
import random
import shutil
import sqlite3
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from resumeflow.langgraph import ResumeflowSaver

try:
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
except ImportError:  # the async variant is skipped
    aiosqlite = None
    AsyncSqliteSaver = None

BIG_BYTES = 100_000


# -- graphs ------------------------------------------------------------------------------


class ChainState(TypedDict):
    counter: int
    tag: str


class BigChainState(TypedDict):
    counter: int
    tag: str
    big: str


class FanState(TypedDict):
    items: Annotated[list[str], operator.add]
    count: int


def _big_string() -> str:
    """A ~100 KB string of seeded pseudo-random letters (not trivially compressible)."""
    rng = random.Random(42)
    return "".join(rng.choices(string.ascii_letters + string.digits, k=BIG_BYTES))


def _chain_node(i: int, big: str | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def node(state: dict[str, Any]) -> dict[str, Any]:
        update: dict[str, Any] = {"counter": state["counter"] + 1, "tag": f"n{i}"}
        if big is not None and i == 0:
            update["big"] = big
        return update

    return node


def chain_builder(n: int, big: str | None = None) -> StateGraph:
    builder = StateGraph(BigChainState if big is not None else ChainState)
    for i in range(n):
        builder.add_node(f"n{i}", _chain_node(i, big))
    builder.add_edge(START, "n0")
    for i in range(n - 1):
        builder.add_edge(f"n{i}", f"n{i + 1}")
    builder.add_edge(f"n{n - 1}", END)
    return builder


def _branch_node(i: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def node(state: dict[str, Any]) -> dict[str, Any]:
        return {"items": [f"b{i}"]}

    return node


def _join(state: dict[str, Any]) -> dict[str, Any]:
    return {"count": len(state["items"])}


def fanout_builder(k: int) -> StateGraph:
    builder = StateGraph(FanState)
    names = [f"b{i}" for i in range(k)]
    for i, name in enumerate(names):
        builder.add_node(name, _branch_node(i))
        builder.add_edge(START, name)
    builder.add_node("join", _join)
    builder.add_edge(names, "join")
    builder.add_edge("join", END)
    return builder


@dataclass
class Workload:
    key: str
    label: str
    builder: StateGraph
    initial: dict[str, Any]
    steps: int  # node executions
    recursion_limit: int


def make_workloads(chain: int, fanout: int) -> list[Workload]:
    big = _big_string()
    return [
        Workload(
            "A",
            f"A chain {chain}",
            chain_builder(chain),
            {"counter": 0, "tag": ""},
            chain,
            chain + 10,
        ),
        Workload(
            "B",
            f"B fan-out {fanout} + join",
            fanout_builder(fanout),
            {"items": [], "count": 0},
            fanout + 1,
            25,
        ),
        Workload(
            "C",
            f"C chain {chain} + {BIG_BYTES // 1000} KB string",
            chain_builder(chain, big),
            {"counter": 0, "tag": "", "big": ""},
            chain,
            chain + 10,
        ),
    ]


# -- systems -----------------------------------------------------------------------------


@dataclass
class RunResult:
    seconds: float
    bytes_on_disk: int
    final: Any
    checkpoints: int


def _store_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def _config(w: Workload) -> dict[str, Any]:
    return {"configurable": {"thread_id": "t"}, "recursion_limit": w.recursion_limit}


def _sqlite_conn(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _run_sync(w: Workload, saver: Any, closer: Callable[[], None], path: str) -> RunResult:
    try:
        graph = w.builder.compile(checkpointer=saver)
        config = _config(w)
        t0 = time.perf_counter()
        out = graph.invoke(w.initial, config, durability="sync")
        seconds = time.perf_counter() - t0
        state = graph.get_state(config).values
        checkpoints = sum(1 for _ in graph.get_state_history(config))
    finally:
        closer()
    return RunResult(seconds, _store_bytes(path), (out, state), checkpoints)


def run_sqlite(w: Workload, path: str) -> RunResult:
    conn = _sqlite_conn(path)
    saver = SqliteSaver(conn)
    saver.setup()
    return _run_sync(w, saver, conn.close, path)


def run_memory(w: Workload, path: str) -> RunResult:
    """The same graph on InMemorySaver: what LangGraph itself costs, no persistence."""
    return _run_sync(w, InMemorySaver(), lambda: None, path)


def run_resumeflow(w: Workload, path: str) -> RunResult:
    saver = ResumeflowSaver(path, durability="sync")
    return _run_sync(w, saver, saver.close, path)


async def _run_async(w: Workload, saver: Any) -> tuple[float, Any, int]:
    graph = w.builder.compile(checkpointer=saver)
    config = _config(w)
    t0 = time.perf_counter()
    out = await graph.ainvoke(w.initial, config, durability="sync")
    seconds = time.perf_counter() - t0
    state = (await graph.aget_state(config)).values
    checkpoints = 0
    async for _ in graph.aget_state_history(config):
        checkpoints += 1
    return seconds, (out, state), checkpoints


def run_sqlite_async(w: Workload, path: str) -> RunResult:
    async def go() -> tuple[float, Any, int]:
        assert aiosqlite is not None and AsyncSqliteSaver is not None
        conn = await aiosqlite.connect(path)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            saver = AsyncSqliteSaver(conn)
            await saver.setup()
            return await _run_async(w, saver)
        finally:
            await conn.close()

    seconds, final, checkpoints = asyncio.run(go())
    return RunResult(seconds, _store_bytes(path), final, checkpoints)


def run_resumeflow_async(w: Workload, path: str) -> RunResult:
    async def go() -> tuple[float, Any, int]:
        async with ResumeflowSaver(path, durability="sync") as saver:
            return await _run_async(w, saver)

    seconds, final, checkpoints = asyncio.run(go())
    return RunResult(seconds, _store_bytes(path), final, checkpoints)


@dataclass
class System:
    key: str
    label: str
    run: Callable[[Workload, str], RunResult]
    samples: dict[str, list[RunResult]] = field(default_factory=dict)


# pairs compared in the table: (SQLite system, resumeflow system, API)
PAIRS = [("sqlite", "resumeflow", "invoke"), ("sqlite_async", "resumeflow_async", "ainvoke")]


def make_systems(with_async: bool) -> list[System]:
    systems = [
        System("memory", "InMemorySaver", run_memory),
        System("sqlite", "SqliteSaver", run_sqlite),
        System("resumeflow", "ResumeflowSaver", run_resumeflow),
    ]
    if with_async:
        systems += [
            System("sqlite_async", "AsyncSqliteSaver", run_sqlite_async),
            System("resumeflow_async", "ResumeflowSaver (async)", run_resumeflow_async),
        ]
    return systems


# -- driver ------------------------------------------------------------------------------


def _check(w: Workload, ref: dict[str, RunResult], sys_label: str, r: RunResult) -> None:
    if w.key not in ref:
        ref[w.key] = r
        return
    base = ref[w.key]
    assert r.final == base.final, f"{sys_label} ended {w.label} with a different final state"
    assert r.checkpoints == base.checkpoints, (
        f"{sys_label} stored {r.checkpoints} checkpoints for {w.label}, expected {base.checkpoints}"
    )


def _verify_expected(w: Workload, r: RunResult, chain: int, fanout: int) -> None:
    out, state = r.final
    assert out == state, f"{w.label}: invoke output differs from the checkpointed state"
    if w.key in ("A", "C"):
        assert out["counter"] == chain and out["tag"] == f"n{chain - 1}", out
        if w.key == "C":
            assert len(out["big"]) == BIG_BYTES
    else:
        assert sorted(out["items"]) == sorted(f"b{i}" for i in range(fanout)), out
        assert out["count"] == fanout, out


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in (
        "langgraph",
        "langgraph-checkpoint",
        "langgraph-checkpoint-sqlite",
        "aiosqlite",
        "resumeflow",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _fmt_us(s: float) -> str:
    return f"{s * 1e6:,.1f}"


def _fmt_bytes(b: float) -> str:
    return f"{b / 1024:,.0f} KiB" if b < 1024 * 1024 else f"{b / 1024 / 1024:,.2f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--quick", action="store_true", help="1 round, 50-step chain, 10-way fan-out")
    ap.add_argument("--chain", type=int, default=None, help="chain length (default 200)")
    ap.add_argument("--fanout", type=int, default=None, help="fan-out width (default 50)")
    ap.add_argument("--no-async", action="store_true", help="skip the ainvoke variants")
    ap.add_argument("--json", metavar="PATH", help="write results as JSON to PATH")
    args = ap.parse_args(argv)

    rounds = 1 if args.quick else args.rounds
    chain = args.chain or (50 if args.quick else 200)
    fanout = args.fanout or (10 if args.quick else 50)
    with_async = not args.no_async and aiosqlite is not None
    if not args.no_async and aiosqlite is None:
        print("aiosqlite is not installed: skipping the async (ainvoke) variants", file=sys.stderr)

    workloads = make_workloads(chain, fanout)
    systems = make_systems(with_async)
    versions = _versions()
    print(
        f"# LangGraph saver benchmark: {rounds} round(s), chain {chain}, fan-out {fanout}, "
        f"durability sync"
    )
    print("# " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    tmp = tempfile.mkdtemp(prefix="rf-lgsaver-")
    ref: dict[str, RunResult] = {}
    counter = 0

    def one(system: System, w: Workload) -> RunResult:
        nonlocal counter
        counter += 1
        path = os.path.join(tmp, f"{counter:04d}-{system.key}-{w.key}.db")
        r = system.run(w, path)
        _verify_expected(w, r, chain, fanout)
        _check(w, ref, system.label, r)
        return r

    try:
        for system in systems:  # untimed warm-up
            for w in workloads:
                one(system, w)
        for rnd in range(rounds):
            order = systems if rnd % 2 == 0 else list(reversed(systems))
            for system in order:
                for w in workloads:
                    r = one(system, w)
                    system.samples.setdefault(w.key, []).append(r)
                    print(
                        f"  round {rnd + 1}/{rounds} {system.label:<24} {w.label:<28} "
                        f"{_fmt_us(r.seconds / w.steps):>10} us/step  "
                        f"{_fmt_bytes(r.bytes_on_disk):>10}",
                        flush=True,
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    by_key = {s.key: s for s in systems}
    rows = []
    for sq_key, rf_key, api in PAIRS:
        if sq_key not in by_key:
            continue
        sq, rf = by_key[sq_key], by_key[rf_key]
        for w in workloads:
            sq_t = statistics.median(r.seconds for r in sq.samples[w.key]) / w.steps
            rf_t = statistics.median(r.seconds for r in rf.samples[w.key]) / w.steps
            sq_b = statistics.median(r.bytes_on_disk for r in sq.samples[w.key])
            rf_b = statistics.median(r.bytes_on_disk for r in rf.samples[w.key])
            rows.append(
                {
                    "workload": w.key,
                    "label": w.label,
                    "api": api,
                    "steps": w.steps,
                    "checkpoints": ref[w.key].checkpoints,
                    "sqlite_system": sq.label,
                    "resumeflow_system": rf.label,
                    "sqlite_s_per_step": sq_t,
                    "resumeflow_s_per_step": rf_t,
                    "time_ratio": sq_t / rf_t,
                    "sqlite_bytes": sq_b,
                    "resumeflow_bytes": rf_b,
                    "bytes_ratio": sq_b / rf_b,
                }
            )

    print()
    print(
        f"Median of {rounds} round(s); durability sync; ratio = SQLite saver / ResumeflowSaver "
        f"(> 1: resumeflow faster / smaller)."
    )
    print()
    print(
        "| workload | API | steps | SQLite saver µs/step | ResumeflowSaver µs/step | time ratio "
        "| SQLite saver on disk | ResumeflowSaver on disk | size ratio |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['label']} | {row['api']} | {row['steps']} "
            f"| {_fmt_us(row['sqlite_s_per_step'])} | {_fmt_us(row['resumeflow_s_per_step'])} "
            f"| {row['time_ratio']:.2f}× | {_fmt_bytes(row['sqlite_bytes'])} "
            f"| {_fmt_bytes(row['resumeflow_bytes'])} | {row['bytes_ratio']:.2f}× |"
        )

    if "memory" in by_key:
        print()
        print(
            "Saver overhead per step = time per step minus InMemorySaver's on the same graph "
            "(what persistence costs); ratio > 1: resumeflow's overhead is lower."
        )
        print()
        print("| workload | InMemorySaver µs/step | SqliteSaver overhead µs | ResumeflowSaver overhead µs | overhead ratio |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for row in rows:
            if row["api"] != "invoke":
                continue
            mem = statistics.median(r.seconds for r in by_key["memory"].samples[row["workload"]]) / row["steps"]
            sq_o = row["sqlite_s_per_step"] - mem
            rf_o = row["resumeflow_s_per_step"] - mem
            row["memory_s_per_step"] = mem
            row["overhead_ratio"] = sq_o / rf_o if rf_o > 0 else float("inf")
            print(
                f"| {row['label']} | {_fmt_us(mem)} | {_fmt_us(sq_o)} | {_fmt_us(rf_o)} "
                f"| {row['overhead_ratio']:.2f}× |"
            )

    if args.json:
        doc = {
            "rounds": rounds,
            "chain": chain,
            "fanout": fanout,
            "big_bytes": BIG_BYTES,
            "versions": versions,
            "summary": rows,
            "samples": {
                s.key: {
                    wk: [{"seconds": r.seconds, "bytes": r.bytes_on_disk} for r in rs]
                    for wk, rs in s.samples.items()
                }
                for s in systems
            },
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
