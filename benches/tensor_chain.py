"""Store size of a run that passes one large tensor along every step (issue: large outputs).

    python benches/tensor_chain.py [--steps 100] [--mib 100]

A chain of ``--steps`` nodes: the first returns a ``--mib`` MiB tensor, every other node returns
its input unchanged. Values are content-addressed, so the store (database, WAL and blob files)
should hold the tensor once: its size must not grow with the step count. Prints the size after
10 steps and after ``--steps`` steps, and the time per step (each step still encodes, hashes and
writes the tensor once before finding it stored already), durability ``sync``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import resumeflow as rf


def store_bytes(db: str) -> int:
    paths = [Path(db), Path(db + "-wal")] + list(Path(db + ".blobs").rglob("*"))
    return sum(p.stat().st_size for p in paths if p.is_file())


def chain(steps: int, mib: int) -> tuple[int, float]:
    import torch

    wf = rf.Workflow(f"tensor-chain-{steps}")
    wf.node(lambda: torch.rand(mib * (1 << 20) // 4), name="s0", retry=False)
    for i in range(1, steps):
        wf.node(lambda prev: prev, name=f"s{i}", inputs={"prev": f"s{i - 1}"}, retry=False)
    d = tempfile.mkdtemp(prefix="rf-tensor-chain-")
    db = os.path.join(d, "store.db")
    try:
        with rf.Engine(db) as engine:
            t0 = time.perf_counter()
            state = engine.run(wf)
            elapsed = time.perf_counter() - t0
            assert state.status == "completed"
        return store_bytes(db), elapsed / steps
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--mib", type=int, default=100)
    args = parser.parse_args()
    for steps in (10, args.steps):
        size, per_step = chain(steps, args.mib)
        print(f"{steps:>4} steps x {args.mib} MiB tensor: store {size / (1 << 20):8.1f} MiB, "
              f"{per_step * 1e3:7.1f} ms/step")


if __name__ == "__main__":
    main()
