"""The benchmark workloads of docs/benchmarks.md (W1-W8), shared by the two entry points:
``benches/compare.py`` (the table, interleaved rounds, ratios) and
``benches/test_bench_workloads.py`` (pytest-benchmark).

Two layers:
  * runners (``run_*``, ``w*_once``): one measurement of one system, returning seconds (or a
    small dict); each builds its own fresh store, so they can be called in any order;
  * workloads (``w1`` ... ``w8``): several rounds, systems interleaved within each round,
    medians, ratios taken between figures of the same run; each returns table rows (dicts with
    ``id``, ``workload``, ``system`` and the figures, units in the key names).

torch, numpy and langgraph are imported inside the functions that need them, so that a child
process measuring peak RSS (W6) loads only resumeflow.
"""

from __future__ import annotations

import atexit
import inspect
import json
import math
import operator
import os
import resource
import select
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import resumeflow as rf

BENCHES = os.path.dirname(os.path.abspath(__file__))
KiB = 1024
MiB = 1024 * 1024

# --- scratch space --------------------------------------------------------------------------

_root: str | None = None


def _scratch_root() -> str:
    global _root
    if _root is None:
        _root = tempfile.mkdtemp(prefix="rfbench-")
        atexit.register(shutil.rmtree, _root, True)
    return _root


def scratch_dir(tag: str) -> str:
    """A fresh directory under this process's scratch root (removed at exit)."""
    return tempfile.mkdtemp(prefix=f"{tag}-", dir=_scratch_root())


def tmp_db(tag: str) -> str:
    return os.path.join(scratch_dir(tag), "store.db")


def store_bytes(db: str) -> int:
    """Bytes the store occupies on disk: the main file plus its WAL (if any)."""
    return sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))


# --- statistics -----------------------------------------------------------------------------


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) — with few samples, p95 is the maximum."""
    s = sorted(samples)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def measure(systems: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median seconds per system; the systems are interleaved within each round."""
    samples: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(rounds):
        for name, fn in systems.items():
            samples[name].append(fn())
    return {name: statistics.median(v) for name, v in samples.items()}


def _child(code: str, *, env_extra: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen:
    """A fresh interpreter that can ``import workloads``."""
    env = dict(os.environ)
    env.update(env_extra or {})
    prelude = f"import sys; sys.path.insert(0, {BENCHES!r}); import workloads\n"
    return subprocess.Popen([sys.executable, "-c", prelude + code], env=env, **kw)


def _run_child(code: str, timeout: float = 600) -> str:
    proc = _child(code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{err[-4000:]}")
    return out


# --- W1: chain ------------------------------------------------------------------------------
#
# Every runner comes in two forms: ``prepare_*`` builds the graph and opens a fresh store and
# returns ``(target, close)`` — ``target()`` is exactly the timed work (it checks its result) —
# and ``run_*`` times one ``target()`` (what compare.py interleaves). The pytest-benchmark
# suite times the same targets.

Prepared = tuple[Callable[[], Any], Callable[[], None]]


def timed(prepared: Prepared) -> float:
    """Seconds for one call of the prepared target; closes it afterwards."""
    target, close = prepared
    try:
        t0 = time.perf_counter()
        target()
        return time.perf_counter() - t0
    finally:
        close()


class ChainState(TypedDict):
    x: int


class FanState(TypedDict):
    x: Annotated[int, operator.add]


def rf_chain_workflow(n: int, name: str | None = None) -> rf.Workflow:
    """``s0`` returns 1, ``s{i}`` returns its input + 1."""
    wf = rf.Workflow(name or f"chain{n}")
    for i in range(n):
        if i == 0:
            wf.node(lambda: 1, name="s0", retry=False)
        else:
            wf.node(lambda prev: prev + 1, name=f"s{i}", inputs={"prev": f"s{i - 1}"}, retry=False)
    return wf


def prepare_rf_chain(n: int, durability: str, wf: rf.Workflow | None = None) -> Prepared:
    wf = wf or rf_chain_workflow(n)
    wf.validate()
    engine = rf.Engine(tmp_db("rf"), durability=durability)

    def target() -> None:
        state = engine.run(wf)
        assert state.values[f"s{n - 1}"] == n

    return target, engine.close


def run_resumeflow_chain(n: int, durability: str) -> float:
    return timed(prepare_rf_chain(n, durability))


def prepare_langgraph_chain(n: int) -> Prepared:
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph

    g = StateGraph(ChainState)
    for i in range(n):
        g.add_node(f"s{i}", lambda s: {"x": s["x"] + 1})
        g.add_edge(START if i == 0 else f"s{i - 1}", f"s{i}")
    g.add_edge(f"s{n - 1}", END)
    conn = sqlite3.connect(tmp_db("lg"), check_same_thread=False)
    graph = g.compile(checkpointer=SqliteSaver(conn))
    config = {"configurable": {"thread_id": "t"}, "recursion_limit": n * 2 + 10}

    def target() -> None:
        out = graph.invoke({"x": 0}, config, durability="sync")
        assert out["x"] == n

    return target, conn.close


def run_langgraph_chain(n: int) -> float:
    return timed(prepare_langgraph_chain(n))


def prepare_sqlite_floor(n: int, synchronous: str = "FULL") -> Prepared:
    """One committed insert per node, WAL, the given ``synchronous`` (the storage floor)."""
    conn = sqlite3.connect(tmp_db("floor"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")

    def target() -> None:
        for i in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (id, v) VALUES (?, ?)", (i, b"\x01"))
            conn.execute("COMMIT")

    return target, conn.close


def run_sqlite_floor(n: int, synchronous: str = "FULL") -> float:
    return timed(prepare_sqlite_floor(n, synchronous))


def prepare_plain_python(n: int) -> Prepared:
    fns = [lambda x: x + 1 for _ in range(n)]

    def target() -> None:
        x = 0
        for f in fns:
            x = f(x)
        assert x == n

    return target, lambda: None


def run_plain_python(n: int) -> float:
    return timed(prepare_plain_python(n))


def have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def w1(n: int, rounds: int, extra: dict[str, Callable[[], float]] | None = None) -> list[dict]:
    """W1: a chain of ``n`` no-op durable nodes; µs per node, ratio to resumeflow ``sync``."""
    systems: dict[str, Callable[[], float]] = {
        "resumeflow sync": lambda: run_resumeflow_chain(n, "sync"),
        "resumeflow batched": lambda: run_resumeflow_chain(n, "batched"),
        "sqlite3 floor (FULL)": lambda: run_sqlite_floor(n, "FULL"),
        "sqlite3 floor (NORMAL)": lambda: run_sqlite_floor(n, "NORMAL"),
        "plain python": lambda: run_plain_python(n),
    }
    if have("langgraph.checkpoint.sqlite"):
        systems["langgraph sync"] = lambda: run_langgraph_chain(n)
    systems.update(extra or {})
    med = measure(systems, rounds)
    base = med["resumeflow sync"]
    return [
        {"id": "W1", "workload": f"W1 chain {n}", "system": name, "us_per_node": s / n * 1e6,
         "ratio_to_resumeflow_sync": s / base}
        for name, s in med.items()
    ]


# --- W2: fan-out / fan-in -------------------------------------------------------------------


def rf_fanout_workflow(width: int) -> rf.Workflow:
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
    return wf


def prepare_rf_fanout(width: int, durability: str, max_concurrency: int | None = None) -> Prepared:
    wf = rf_fanout_workflow(width)
    wf.validate()
    engine = rf.Engine(tmp_db("rf2"), durability=durability, max_concurrency=max_concurrency)

    def target() -> None:
        state = engine.run(wf)
        assert state.values["join"] == 2 * width

    return target, engine.close


def run_resumeflow_fanout(width: int, durability: str, max_concurrency: int | None = None) -> float:
    return timed(prepare_rf_fanout(width, durability, max_concurrency))


def prepare_langgraph_fanout(width: int) -> Prepared:
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
    conn = sqlite3.connect(tmp_db("lg2"), check_same_thread=False)
    graph = g.compile(checkpointer=SqliteSaver(conn))

    def target() -> None:
        out = graph.invoke({"x": 0}, {"configurable": {"thread_id": "t"}}, durability="sync")
        assert out["x"] == 1 + width

    return target, conn.close


def run_langgraph_fanout(width: int) -> float:
    return timed(prepare_langgraph_fanout(width))


def w2(width: int, rounds: int, extra: dict[str, Callable[[], float]] | None = None) -> list[dict]:
    """W2: 1 -> ``width`` parallel no-op nodes -> 1; µs per node, ratio to resumeflow ``sync``."""
    systems: dict[str, Callable[[], float]] = {
        "resumeflow sync": lambda: run_resumeflow_fanout(width, "sync"),
        "resumeflow batched": lambda: run_resumeflow_fanout(width, "batched"),
    }
    if have("langgraph.checkpoint.sqlite"):
        systems["langgraph sync"] = lambda: run_langgraph_fanout(width)
    systems.update(extra or {})
    med = measure(systems, rounds)
    base = med["resumeflow sync"]
    return [
        {"id": "W2", "workload": f"W2 fan-out {width}", "system": name,
         "us_per_node": s / (width + 2) * 1e6, "ratio_to_resumeflow_sync": s / base}
        for name, s in med.items()
    ]


# --- W3: recovery latency -------------------------------------------------------------------
#
# The crashed run: a chain n0 .. n{k-1} -> last. Phase 1 (this process, durability "off": one
# write when the run pauses) runs n0 .. n{k-1}. Phase 2 (a child process, durability "sync")
# resumes the run; `last` starts (its NodeStarted is committed before it runs), prints a line
# and blocks; the parent SIGKILLs the child. The store now holds a run left `running` by a dead
# owner, with k completed nodes. Each round resumes a byte copy of that store in this process:
# the clock runs from `engine.resume(...)` until `last` (attempt 2) starts executing.

_W3_BLOCK_ENV = "RFBENCH_W3_BLOCK"
_w3_started: list[float] = []
_w3_chain_calls = [0]


def _w3_step(prev: int) -> int:
    _w3_chain_calls[0] += 1
    return prev + 1


def _w3_last(prev: int) -> int:
    if os.environ.get(_W3_BLOCK_ENV) == "1":
        print("W3-BLOCKING", flush=True)
        time.sleep(3600)
    _w3_started.append(time.perf_counter())
    return prev + 1


def w3_workflow(k: int) -> rf.Workflow:
    wf = rf.Workflow(f"w3chain{k}")
    wf.node(lambda: _w3_step(0), name="n0", retry=False)
    for i in range(1, k):
        wf.node(_w3_step, name=f"n{i}", inputs={"prev": f"n{i - 1}"}, retry=False)
    wf.node(_w3_last, name="last", inputs={"prev": f"n{k - 1}"}, retry=False)
    return wf


def _w3_child(db: str, k: int) -> None:
    """Phase 2 (in a child): resume the paused run; `last` starts and blocks until killed."""
    wf = w3_workflow(k)
    with rf.Engine(db, durability="sync") as engine:
        engine.resume("w3", wf).wait()
    raise SystemExit("W3 child: the blocking node returned")


def w3_build_crashed(k: int, wf: rf.Workflow | None = None) -> dict:
    """Writes a store holding run ``w3`` crashed with ``k`` completed nodes; returns its facts."""
    wf = wf or w3_workflow(k)
    db = tmp_db("w3master")
    t0 = time.perf_counter()
    with rf.Engine(db, durability="off") as engine:
        paused = engine.execute_until(wf, f"n{k - 1}", run_id="w3")
    assert paused.status == "paused" and len(paused.completed) == k, paused.status
    child = _child(
        f"workloads._w3_child({db!r}, {k})", env_extra={_W3_BLOCK_ENV: "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        line = ""
        while time.monotonic() < deadline and "W3-BLOCKING" not in line:
            ready, _, _ = select.select([child.stdout], [], [], 1.0)
            if ready:
                line = child.stdout.readline()
                if not line and child.poll() is not None:
                    break
        if "W3-BLOCKING" not in line:
            err = child.stderr.read()[-2000:]
            raise RuntimeError(f"W3 child never reached the blocking node: {err}")
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    build_s = time.perf_counter() - t0
    with rf.Engine(db) as engine:
        state = engine.get_current_state("w3")
        events = len(engine.events("w3"))
    assert state.status == "running", state.status
    assert len(state.completed) == k, (len(state.completed), k)
    assert state.nodes["last"].status == "running" and state.nodes["last"].attempt == 1
    return {"db": db, "k": k, "events": events, "build_s": build_s}


def w3_copy_store(master_db: str) -> str:
    """A byte copy of the crashed store (no process has it open) in a fresh directory."""
    db = os.path.join(scratch_dir("w3round"), "store.db")
    for suffix in ("", "-wal"):
        if os.path.exists(master_db + suffix):
            shutil.copyfile(master_db + suffix, db + suffix)
    return db


def w3_resume_once(master_db: str, wf: rf.Workflow, k: int) -> tuple[float, float]:
    """Resumes a copy of the crashed store; returns (ms resume -> `last` starts, ms incl. opening
    the Engine)."""
    db = w3_copy_store(master_db)
    d = os.path.dirname(db)
    wf.validate()  # cached: the clock measures the engine, not graph construction
    _w3_started.clear()
    calls_before = _w3_chain_calls[0]
    try:
        t_open = time.perf_counter()
        with rf.Engine(db) as engine:
            t0 = time.perf_counter()
            run = engine.resume("w3", wf)
            state = run.wait(timeout=600)
        assert state.status == "completed", state.status
        assert _w3_chain_calls[0] == calls_before, "resume re-executed completed nodes"
        assert state.nodes["last"].attempt == 2, state.nodes["last"].attempt
        assert len(_w3_started) == 1
        return (_w3_started[0] - t0) * 1e3, (_w3_started[0] - t_open) * 1e3
    finally:
        shutil.rmtree(d, ignore_errors=True)


def prepare_w3_resume(master_db: str, wf: rf.Workflow) -> Prepared:
    """pytest-benchmark form: ``target()`` resumes a fresh copy of the crashed run to its end."""
    db = w3_copy_store(master_db)
    wf.validate()
    engine = rf.Engine(db)

    def target() -> None:
        state = engine.resume("w3", wf).wait(timeout=600)
        assert state.status == "completed" and state.nodes["last"].attempt == 2

    def close() -> None:
        engine.close()
        shutil.rmtree(os.path.dirname(db), ignore_errors=True)

    return target, close


def w3(event_counts: list[int], rounds: int) -> list[dict]:
    """W3: resume latency of a crashed run at several event counts (k ≈ events / 2 nodes)."""
    rows = []
    first = None
    for target in event_counts:
        k = max(2, target // 2)
        wf = w3_workflow(k)
        wf.validate()
        built = w3_build_crashed(k, wf)
        samples = [w3_resume_once(built["db"], wf, k) for _ in range(rounds)]
        ms = statistics.median(s[0] for s in samples)
        ms_open = statistics.median(s[1] for s in samples)
        first = first or (built["events"], ms)
        rows.append({
            "id": "W3", "workload": "W3 resume a crashed run -> next node starts",
            "system": "resumeflow", "completed_nodes": k, "events": built["events"],
            "resume_ms": ms, "open_and_resume_ms": ms_open,
            "growth_vs_smallest": ms / first[1],
        })
        shutil.rmtree(os.path.dirname(built["db"]), ignore_errors=True)
    return rows


# --- W4: partial state save / load ----------------------------------------------------------


def tensor_state(nbytes: int) -> dict:
    """A dict of four float32 tensors holding ``nbytes`` bytes of data in all."""
    import torch

    per = max(1, nbytes // 16)
    g = torch.Generator().manual_seed(0)
    return {f"t{i}": torch.rand(per, generator=g) for i in range(4)}


def state_nbytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def raw_write_fsync(path: str, buffers: list[memoryview]) -> float:
    """open, write every buffer, fsync, close — the physical floor for persisting the bytes."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for buf in buffers:
            view = buf
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def raw_overwrite_fdatasync(path: str, buffers: list[memoryview]) -> float:
    """Write the bytes in place over an existing file of the same size and ``fdatasync`` it: no
    size or allocation change, so no file-system journal commit — the pattern of SQLite's
    reused WAL (and the lower floor when the file system is busy)."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for buf in buffers:
            view = buf
            while view:
                view = view[os.write(fd, view):]
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def raw_read(path: str, nbytes: int) -> float:
    """Read the file back into a fresh buffer."""
    t0 = time.perf_counter()
    buf = bytearray(nbytes)
    with open(path, "rb", buffering=0) as f:
        got = f.readinto(buf)
    elapsed = time.perf_counter() - t0
    assert got == nbytes, (got, nbytes)
    return elapsed


def torch_save_fsync(path: str, obj: Any) -> float:
    import torch

    t0 = time.perf_counter()
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def torch_load(path: str) -> tuple[float, Any]:
    import torch

    t0 = time.perf_counter()
    obj = torch.load(path)
    return time.perf_counter() - t0, obj


def _buffers(state: dict) -> list[memoryview]:
    return [memoryview(t.numpy()).cast("B") for t in state.values()]


def _w4_workflow() -> rf.Workflow:
    wf = rf.Workflow("w4")
    wf.node(lambda: 1, name="a", retry=False)
    wf.node(lambda a: a, name="holder", retry=False)
    return wf


class W4Store:
    """A paused run whose pending node ``holder`` gets partial states (durability ``sync``)."""

    def __init__(self) -> None:
        self.dir = scratch_dir("w4")
        self.engine = rf.Engine(os.path.join(self.dir, "store.db"))
        self.engine.execute_until(_w4_workflow(), "a", run_id="w4")

    def save(self, state: Any) -> float:
        t0 = time.perf_counter()
        self.engine.save_partial_state("w4", "holder", state)
        return time.perf_counter() - t0

    def load(self) -> tuple[float, Any]:
        t0 = time.perf_counter()
        got = self.engine.get_partial_state("w4", "holder")
        return time.perf_counter() - t0, got

    def close(self) -> None:
        self.engine.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def size_label(n: int) -> str:
    for unit, size in (("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def w4(sizes: list[int], reps: dict[int, int]) -> list[dict]:
    """W4: save/load p50/p95 of a dict of tensors; MB/s against raw write+fsync and torch.save."""
    import torch

    rows = []
    for size in sizes:
        state = tensor_state(size)
        nbytes = state_nbytes(state)
        store = W4Store()
        d = scratch_dir("w4files")
        raw_path, pt_path = os.path.join(d, "raw.bin"), os.path.join(d, "state.pt")
        over_path = os.path.join(d, "overwrite.bin")
        raw_overwrite_fdatasync(over_path, _buffers(state))  # the file exists at full size
        systems = ("resumeflow", "raw write+fsync", "raw overwrite+fdatasync", "torch.save+fsync")
        samples: dict[str, dict[str, list[float]]] = {s: {"save": [], "load": []} for s in systems}
        try:
            for i in range(reps[size]):
                state["t0"][0] = float(i)  # new content every time: no dedup by content hash
                samples["resumeflow"]["save"].append(store.save(state))
                raw_s = raw_write_fsync(raw_path, _buffers(state))
                samples["raw write+fsync"]["save"].append(raw_s)
                over_s = raw_overwrite_fdatasync(over_path, _buffers(state))
                samples["raw overwrite+fdatasync"]["save"].append(over_s)
                samples["torch.save+fsync"]["save"].append(torch_save_fsync(pt_path, state))
                dt, got = store.load()
                samples["resumeflow"]["load"].append(dt)
                samples["raw write+fsync"]["load"].append(raw_read(raw_path, nbytes))
                samples["raw overwrite+fdatasync"]["load"].append(raw_read(over_path, nbytes))
                dt_pt, got_pt = torch_load(pt_path)
                samples["torch.save+fsync"]["load"].append(dt_pt)
                if i == 0:
                    assert all(torch.equal(got[k], state[k]) for k in state)
                    assert all(torch.equal(got_pt[k], state[k]) for k in state)
        finally:
            store.close()
            shutil.rmtree(d, ignore_errors=True)
        raw_save_mbps = nbytes / statistics.median(samples["raw write+fsync"]["save"]) / 1e6
        raw_load_mbps = nbytes / statistics.median(samples["raw write+fsync"]["load"]) / 1e6
        for system, s in samples.items():
            save_mbps = nbytes / statistics.median(s["save"]) / 1e6
            load_mbps = nbytes / statistics.median(s["load"]) / 1e6
            rows.append({
                "id": "W4", "workload": f"W4 state {size_label(size)}", "system": system,
                "reps": reps[size],
                "save_p50_ms": statistics.median(s["save"]) * 1e3,
                "save_p95_ms": percentile(s["save"], 95) * 1e3,
                "save_MB_per_s": save_mbps, "save_vs_raw": save_mbps / raw_save_mbps,
                "load_p50_ms": statistics.median(s["load"]) * 1e3,
                "load_p95_ms": percentile(s["load"], 95) * 1e3,
                "load_MB_per_s": load_mbps, "load_vs_raw": load_mbps / raw_load_mbps,
            })
    return rows


# --- W5: a node returning a large tensor ----------------------------------------------------


def big_tensor(nbytes: int):
    import torch

    return torch.rand(nbytes // 4, generator=torch.Generator().manual_seed(1))


def _w5_store(tensor, noop: bool) -> tuple[rf.Workflow, str, rf.Engine]:
    wf = rf.Workflow("w5")
    wf.node((lambda: None) if noop else (lambda: tensor), name="big", retry=False)
    wf.validate()
    d = scratch_dir("w5rf")
    return wf, d, rf.Engine(os.path.join(d, "store.db"))


def prepare_w5_run(tensor, noop: bool = False) -> Prepared:
    """pytest-benchmark form: ``target()`` is one durable (``sync``) run returning ``tensor``."""
    wf, d, engine = _w5_store(tensor, noop)

    def target() -> None:
        assert engine.run(wf, run_id="w5").status == "completed"

    def close() -> None:
        engine.close()
        shutil.rmtree(d, ignore_errors=True)

    return target, close


def w5_rf_once(tensor, *, noop: bool = False) -> tuple[float, float]:
    """One run (durability ``sync``, fresh store) of a node returning ``tensor`` (or None);
    returns (run seconds, seconds to load the output back with ``get_partial_results``)."""
    import torch

    wf, d, engine = _w5_store(tensor, noop)
    try:
        with engine:
            t0 = time.perf_counter()
            engine.run(wf, run_id="w5")
            run_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = engine.get_partial_results("w5")["big"]
            load_s = time.perf_counter() - t0
        if noop:
            assert out is None
        else:
            assert out.shape == tensor.shape and torch.equal(out[:1024], tensor[:1024])
            assert torch.equal(out[-1024:], tensor[-1024:])
        return run_s, load_s
    finally:
        shutil.rmtree(d, ignore_errors=True)


def w5_file_once(tensor, how: str) -> tuple[float, float]:
    """Persist ``tensor`` to a file + fsync (``torch.save`` or raw bytes), then load it back."""
    import torch

    d = scratch_dir("w5file")
    path = os.path.join(d, "t.bin")
    nbytes = tensor.numel() * tensor.element_size()
    try:
        if how == "torch":
            save_s = torch_save_fsync(path, tensor)
            load_s, out = torch_load(path)
            assert torch.equal(out[:1024], tensor[:1024])
        else:
            save_s = raw_write_fsync(path, [memoryview(tensor.numpy()).cast("B")])
            t0 = time.perf_counter()
            buf = bytearray(nbytes)
            with open(path, "rb", buffering=0) as f:
                f.readinto(buf)
            out = torch.frombuffer(buf, dtype=tensor.dtype)
            load_s = time.perf_counter() - t0
            assert torch.equal(out[:1024], tensor[:1024])
        return save_s, load_s
    finally:
        shutil.rmtree(d, ignore_errors=True)


def w5(nbytes: int, rounds: int) -> list[dict]:
    """W5: persisted GB/s of a node's tensor output (run time minus a no-op run), vs files."""
    tensor = big_tensor(nbytes)
    s: dict[str, list[float]] = {k: [] for k in (
        "rf_run", "rf_noop", "rf_load", "torch_save", "torch_load", "raw_save", "raw_load")}
    def rf_round() -> None:
        run_s, load_s = w5_rf_once(tensor)
        s["rf_run"].append(run_s)
        s["rf_load"].append(load_s)
        s["rf_noop"].append(w5_rf_once(tensor, noop=True)[0])

    def file_round(how: str) -> None:
        save_s, load_s = w5_file_once(tensor, how)
        s[f"{how}_save"].append(save_s)
        s[f"{how}_load"].append(load_s)

    systems = [rf_round, lambda: file_round("torch"), lambda: file_round("raw")]
    for r in range(rounds):
        tensor[0] = float(r)
        # The order rotates every round: a write right after another one's large write (and
        # its file's deletion) pays for that one's writeback, so no system always goes first.
        for i in range(len(systems)):
            systems[(i + r) % len(systems)]()
    med = {k: statistics.median(v) for k, v in s.items()}
    persist = {
        "resumeflow (run - no-op run)": max(med["rf_run"] - med["rf_noop"], 1e-9),
        "torch.save + fsync": med["torch_save"],
        "raw write + fsync": med["raw_save"],
    }
    load = {
        "resumeflow (run - no-op run)": med["rf_load"],
        "torch.save + fsync": med["torch_load"],
        "raw write + fsync": med["raw_load"],
    }
    raw_gbps = nbytes / persist["raw write + fsync"] / 1e9
    raw_load_gbps = nbytes / load["raw write + fsync"] / 1e9
    rows = []
    for system, sec in persist.items():
        gbps = nbytes / sec / 1e9
        rows.append({
            "id": "W5", "workload": f"W5 node returns {size_label(nbytes)} tensor",
            "system": system, "persist_s": sec, "persist_GB_per_s": gbps,
            "persist_vs_raw": gbps / raw_gbps, "load_s": load[system],
            "load_GB_per_s": nbytes / load[system] / 1e9,
            "load_vs_raw": nbytes / load[system] / 1e9 / raw_load_gbps,
        })
    rows[0]["noop_run_s"] = med["rf_noop"]
    return rows


# --- W6: many concurrent runs in one process -------------------------------------------------


def _maxrss_mib() -> float:
    """This process's peak RSS in MiB.

    ``VmHWM`` (the high-water mark of this address space) where /proc has it: a child started
    with fork/vfork + exec inherits the *parent's* peak in ``getrusage().ru_maxrss`` (Linux
    folds the pre-exec address space into it), which would report the benchmark driver's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def prepare_w6(runs: int, nodes: int = 10, durability: str = "sync") -> Prepared:
    """``target()`` starts ``runs`` runs of a ``nodes``-node chain at once in one Engine (in the
    background), then waits for all; it fails unless every run completed."""
    wf = rf_chain_workflow(nodes, name=f"w6chain{nodes}")
    wf.validate()
    d = scratch_dir("w6")
    engine = rf.Engine(os.path.join(d, "store.db"), durability=durability)

    def target() -> int:
        started = [engine.start(wf, run_id=f"r{i}") for i in range(runs)]
        states = [r.wait(timeout=600) for r in started]
        bad = [s.run_id for s in states
               if s.status != "completed" or s.values[f"s{nodes - 1}"] != nodes]
        assert not bad, f"{len(bad)} runs did not complete: {bad[:5]}"
        return len(states)

    def close() -> None:
        engine.close()
        shutil.rmtree(d, ignore_errors=True)

    return target, close


def w6_in_process(runs: int, nodes: int = 10, durability: str = "sync") -> dict:
    target, close = prepare_w6(runs, nodes, durability)
    try:
        baseline = _maxrss_mib()
        t0 = time.perf_counter()
        completed = target()
        elapsed = time.perf_counter() - t0
    finally:
        close()
    return {"runs": runs, "completed": completed, "seconds": elapsed,
            "baseline_rss_mib": baseline, "peak_rss_mib": _maxrss_mib()}


def _w6_child(runs: int, nodes: int) -> None:
    print("W6-RESULT " + json.dumps(w6_in_process(runs, nodes)), flush=True)


def w6_subprocess(runs: int, nodes: int = 10) -> dict:
    """W6 in a fresh interpreter, so that its peak RSS is its own."""
    out = _run_child(f"workloads._w6_child({runs}, {nodes})")
    line = next(ln for ln in out.splitlines() if ln.startswith("W6-RESULT "))
    return json.loads(line[len("W6-RESULT "):])


def w6(runs: int, rounds: int, nodes: int = 10) -> list[dict]:
    """W6: ``runs`` concurrent ``nodes``-node chains in one process: runs/s and peak RSS."""
    results = [w6_subprocess(runs, nodes) for _ in range(rounds)]
    sec = statistics.median(r["seconds"] for r in results)
    return [{
        "id": "W6", "workload": f"W6 {runs} concurrent runs x {nodes} nodes",
        "system": "resumeflow sync", "rounds": rounds,
        "completed": min(r["completed"] for r in results), "seconds": sec,
        "runs_per_s": runs / sec, "nodes_per_s": runs * nodes / sec,
        "peak_rss_MiB": max(r["peak_rss_mib"] for r in results),
        "rss_before_runs_MiB": max(r["baseline_rss_mib"] for r in results),
    }]


# --- W7: two CPU-heavy torch nodes in parallel -----------------------------------------------

_W7_N = 1024


def _w7_work(a, reps: int) -> float:
    import torch

    torch.set_num_threads(1)  # one core per node (per calling thread for OpenMP)
    c = a
    for _ in range(reps):
        c = torch.mm(a, a)
    return float(c[0, 0])


def w7_setup(seconds_per_node: float):
    """A matrix and a repetition count so that ``_w7_work`` takes about ``seconds_per_node``."""
    import torch

    a = torch.rand(_W7_N, _W7_N, generator=torch.Generator().manual_seed(2)) / _W7_N
    prev = torch.get_num_threads()
    try:
        _w7_work(a, 1)  # warm up
        t0 = time.perf_counter()
        _w7_work(a, 3)
        per = (time.perf_counter() - t0) / 3
    finally:
        torch.set_num_threads(prev)
    return a, max(1, round(seconds_per_node / per))


def prepare_w7_rf(a, reps: int, parallel: bool) -> Prepared:
    """Nodes ``a`` and ``b`` each run ``_w7_work``: independent (``parallel``) or a -> b."""
    wf = rf.Workflow("w7par" if parallel else "w7ser")
    wf.node(lambda: _w7_work(a, reps), name="a", retry=False)
    if parallel:
        wf.node(lambda: _w7_work(a, reps), name="b", retry=False)
    else:
        wf.node(lambda prev: _w7_work(a, reps), name="b", inputs={"prev": "a"}, retry=False)
    wf.validate()
    engine = rf.Engine(tmp_db("w7"), max_concurrency=2)

    def target() -> None:
        assert engine.run(wf).status == "completed"

    return target, engine.close


def w7_rf_once(a, reps: int, parallel: bool) -> float:
    return timed(prepare_w7_rf(a, reps, parallel))


def w7_plain_once(a, reps: int, parallel: bool) -> float:
    t0 = time.perf_counter()
    if parallel:
        threads = [threading.Thread(target=_w7_work, args=(a, reps)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        _w7_work(a, reps)
        _w7_work(a, reps)
    return time.perf_counter() - t0


def w7(seconds_per_node: float, rounds: int) -> list[dict]:
    """W7: two ~``seconds_per_node`` torch nodes, parallel (max_concurrency=2) vs a chain; the
    same two calls in two plain threads vs serially is this machine's ceiling."""
    import torch

    prev = torch.get_num_threads()
    try:
        a, reps = w7_setup(seconds_per_node)
        med = measure({
            "rf parallel": lambda: w7_rf_once(a, reps, True),
            "rf serial": lambda: w7_rf_once(a, reps, False),
            "plain threads": lambda: w7_plain_once(a, reps, True),
            "plain serial": lambda: w7_plain_once(a, reps, False),
        }, rounds)
    finally:
        torch.set_num_threads(prev)
    label = f"W7 2 torch nodes ({reps} x mm {_W7_N}^2 each)"
    return [
        {"id": "W7", "workload": label, "system": "resumeflow a || b (max_concurrency=2)",
         "seconds": med["rf parallel"],
         "speedup_over_serial": med["rf serial"] / med["rf parallel"]},
        {"id": "W7", "workload": label, "system": "resumeflow a -> b (serial)",
         "seconds": med["rf serial"], "speedup_over_serial": 1.0},
        {"id": "W7", "workload": label, "system": "plain python, 2 threads",
         "seconds": med["plain threads"],
         "speedup_over_serial": med["plain serial"] / med["plain threads"]},
        {"id": "W7", "workload": label, "system": "plain python, serial",
         "seconds": med["plain serial"], "speedup_over_serial": 1.0},
    ]


# --- W8: cleanup ----------------------------------------------------------------------------


def _vacuum_child(db: str) -> None:
    conn = sqlite3.connect(db)
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def w8_build(runs: int, nodes: int) -> tuple[str, int, float]:
    """``runs`` completed chains of ``nodes`` nodes (durability ``batched``); returns the store
    path, the number of checkpoints it holds and the build time."""
    wf = rf_chain_workflow(nodes, name=f"w8chain{nodes}")
    wf.validate()
    db = tmp_db("w8")
    t0 = time.perf_counter()
    with rf.Engine(db, durability="batched") as engine:
        started = [engine.start(wf, run_id=f"r{i}") for i in range(runs)]
        states = [r.wait(timeout=600) for r in started]
        assert all(s.status == "completed" for s in states)
        build_s = time.perf_counter() - t0
        checkpoints = sum(len(engine.history(f"r{i}")) for i in range(runs))
    return db, checkpoints, build_s


def prepare_w8_cleanup(runs: int, nodes: int) -> Prepared:
    """pytest-benchmark form: ``target()`` is ``cleanup(keep_last=1)`` over a fresh store."""
    db, checkpoints, _ = w8_build(runs, nodes)
    engine = rf.Engine(db)

    def target() -> None:
        assert engine.cleanup(keep_last=1) == checkpoints - runs

    def close() -> None:
        engine.close()
        shutil.rmtree(os.path.dirname(db), ignore_errors=True)

    return target, close


def w8(runs: int, nodes: int) -> list[dict]:
    """W8: ``engine.cleanup(keep_last=1)`` over ``runs`` runs; sizes before, after, vacuumed."""
    db, checkpoints, build_s = w8_build(runs, nodes)
    size_before = store_bytes(db)
    with rf.Engine(db) as engine:
        t0 = time.perf_counter()
        deleted = engine.cleanup(keep_last=1)
        cleanup_s = time.perf_counter() - t0
        left = [len(engine.history(f"r{i}")) for i in (0, runs // 2, runs - 1)]
    assert left == [1, 1, 1], left
    assert deleted == checkpoints - runs, (deleted, checkpoints, runs)
    size_after = store_bytes(db)
    # VACUUM with the sqlite3 module, in another process, with no Engine open on the file.
    t0 = time.perf_counter()
    _run_child(f"workloads._vacuum_child({db!r})")
    vacuum_s = time.perf_counter() - t0
    size_vacuumed = store_bytes(db)
    with rf.Engine(db) as engine:
        assert engine.check_integrity() == "ok"
        assert engine.get_current_state(f"r{runs - 1}").values[f"s{nodes - 1}"] == nodes
    shutil.rmtree(os.path.dirname(db), ignore_errors=True)
    return [{
        "id": "W8", "workload": f"W8 cleanup {runs} runs x {nodes} nodes", "system": "resumeflow",
        "checkpoints": checkpoints, "deleted": deleted, "build_s": build_s,
        "cleanup_s": cleanup_s, "us_per_deleted": cleanup_s / max(deleted, 1) * 1e6,
        "MiB_before": size_before / MiB, "MiB_after": size_after / MiB,
        "MiB_vacuumed": size_vacuumed / MiB, "vacuum_s": vacuum_s,
    }]
