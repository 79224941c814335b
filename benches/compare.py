"""Compare resumeflow with its peers and physical floors on identical work, interleaved in one run.

    python benches/compare.py [--quick] [--only W1,W3,...] [--json OUT]

Workloads (docs/benchmarks.md; the measurements live in benches/workloads.py):
  W1  a chain of N no-op durable nodes (each adds 1 to its input);
  W2  fan-out/fan-in: 1 -> 500 parallel no-op nodes -> 1;
  W3  recovery: a run with k completed nodes is SIGKILLed mid-node; ms from `resume` until the
      next node starts, at ~1k, 10k, 100k events;
  W4  partial state save/load of a 1 KiB / 1 MiB / 64 MiB dict of tensors: p50/p95, MB/s vs
      raw write+fsync and torch.save+fsync of the same bytes;
  W5  a node returning a 512 MiB tensor: persisted GB/s vs torch.save / raw write + fsync;
  W6  1,000 concurrent runs x 10 nodes in one fresh process: runs/s, peak RSS;
  W7  two CPU-heavy torch nodes in parallel vs serially (and the same in plain threads);
  W8  cleanup(keep_last=1) of 1,000 runs x 100 checkpoints: time, DB size before/after/VACUUM.
Systems for W1/W2: resumeflow (durability "sync" and "batched"), LangGraph with its SQLite
checkpointer (durability "sync"; skipped if not installed), DBOS on SQLite (benches/peer_dbos.py;
skipped if absent or unavailable), raw sqlite3 with one committed insert per node under the
same pragmas (the storage floor), and plain Python calls (no durability).
Every durable system commits each node's result before its dependants run. Figures are
medians of several rounds, systems interleaved within each round; ratios compare systems
measured in the same run. The exit status is non-zero only if a workload raised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads as wl  # noqa: E402

try:
    import peer_dbos  # type: ignore[import-not-found]
except ImportError:
    peer_dbos = None

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8")

# Sizes per mode. --quick keeps the whole script under 2 minutes on 2 cores.
CONFIG = {
    "quick": {
        "rounds": 3, "n": 200, "width": 100,
        "w3_events": [1_000, 10_000],
        "w4_sizes": [wl.KiB, wl.MiB], "w4_reps": {wl.KiB: 20, wl.MiB: 20},
        "w5_bytes": 64 * wl.MiB, "w6_runs": 200, "w6_rounds": 1,
        "w7_seconds": 0.5, "w8": (100, 20),
    },
    "full": {
        "rounds": 5, "n": 1000, "width": 500,
        "w3_events": [1_000, 10_000, 100_000],
        "w4_sizes": [wl.KiB, wl.MiB, 64 * wl.MiB],
        "w4_reps": {wl.KiB: 50, wl.MiB: 50, 64 * wl.MiB: 5},
        "w5_bytes": 512 * wl.MiB, "w6_runs": 1000, "w6_rounds": 3,
        "w7_seconds": 1.5, "w8": (1000, 100),
    },
}


def dbos_available() -> bool:
    if peer_dbos is None:
        return False
    try:
        return bool(peer_dbos.available())
    except Exception:  # a broken peer must not stop the comparison
        traceback.print_exc()
        return False


def workload_plan(cfg: dict, dbos: bool) -> dict[str, Callable[[], list[dict]]]:
    rounds = cfg["rounds"]
    n, width = cfg["n"], cfg["width"]
    w1_extra = {"dbos sqlite": lambda: peer_dbos.run_dbos_chain(n)} if dbos else {}
    w2_extra = {"dbos sqlite": lambda: peer_dbos.run_dbos_fanout(width)} if dbos else {}
    return {
        "W1": lambda: wl.w1(n, rounds, w1_extra),
        "W2": lambda: wl.w2(width, rounds, w2_extra),
        "W3": lambda: wl.w3(cfg["w3_events"], rounds),
        "W4": lambda: wl.w4(cfg["w4_sizes"], cfg["w4_reps"]),
        "W5": lambda: wl.w5(cfg["w5_bytes"], min(rounds, 6)),
        "W6": lambda: wl.w6(cfg["w6_runs"], cfg["w6_rounds"]),
        "W7": lambda: wl.w7(cfg["w7_seconds"], rounds),
        "W8": lambda: wl.w8(*cfg["w8"]),
    }


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count() or 0
    info = {"nproc": nproc, "cpu": model, "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=here, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=here, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def fmt(v: object) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if v != v:  # NaN
        return "nan"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def print_table(rows: list[dict]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k != "id" and k not in cols]
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    text_cols = {"workload", "system"}
    print("  ".join(c.ljust(w) if c in text_cols else c.rjust(w)
                    for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) if c in text_cols else v.rjust(w)
                        for c, v, w in zip(cols, row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under 2 minutes)")
    parser.add_argument("--json", metavar="OUT", help="write every row (and the context) here")
    parser.add_argument("--only", metavar="W1,W3,...",
                        help=f"comma-separated subset of {','.join(WORKLOADS)}")
    args = parser.parse_args(argv)
    selected = list(WORKLOADS)
    if args.only:
        selected = [w.strip().upper() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in selected if w not in WORKLOADS]
        if unknown:
            parser.error(f"unknown workload(s) {unknown}; choose from {','.join(WORKLOADS)}")
    cfg = CONFIG["quick" if args.quick else "full"]
    dbos = dbos_available() if {"W1", "W2"} & set(selected) else False
    plan = workload_plan(cfg, dbos)

    info = machine()
    commit = git_commit()
    args_given = sys.argv[1:] if argv is None else argv
    command = shlex.join([os.path.basename(sys.executable), "benches/compare.py", *args_given])
    print(f"machine: {info['cpu']}, nproc {info['nproc']}, python {info['python']}, "
          f"torch {info.get('torch', '-')}")
    print(f"commit {commit}; command: {command}; rounds {cfg['rounds']} (median), "
          f"mode {'quick' if args.quick else 'full'}")
    if {"W1", "W2"} & set(selected):
        peers = ["langgraph" if wl.have("langgraph.checkpoint.sqlite") else "no langgraph",
                 "dbos" if dbos else "no dbos (benches/peer_dbos.py absent or unavailable)"]
        print(f"W1/W2 peers: {', '.join(peers)}")

    rows: list[dict] = []
    failed: dict[str, str] = {}
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    for wid in selected:
        t0 = time.perf_counter()
        try:
            got = plan[wid]()
        except Exception:
            failed[wid] = traceback.format_exc()
            print(f"\n== {wid} FAILED ==\n{failed[wid]}", file=sys.stderr, flush=True)
            continue
        finally:
            timings[wid] = time.perf_counter() - t0
        rows += got
        print(f"\n== {wid} ({timings[wid]:.1f} s) ==")
        print_table(got)
        sys.stdout.flush()
    total = time.perf_counter() - t_all
    print(f"\ntotal {total:.1f} s")
    if "W1" in selected and not wl.have("langgraph.checkpoint.sqlite"):
        print("(langgraph not installed: pip install -r benches/requirements.txt to compare)")
    if failed:
        print(f"FAILED workloads: {', '.join(failed)}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "commit": commit,
                "command": command, "machine": info, "mode": "quick" if args.quick else "full",
                "config": {k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()})
                           for k, v in cfg.items()},
                "seconds": timings, "failed": failed, "rows": rows,
            }, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
