"""``resumeflow demo``: a small torch pipeline that is killed mid-training and resumed.

prepare_data -> train (saves its progress every epoch) -> evaluate -> export.
The demo runs the pipeline in a child process, SIGKILLs it part-way through training,
then recovers the run in this process: finished nodes are skipped and training continues
from its last saved epoch.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import resumeflow as rf
from resumeflow._store_url import is_url, redact

EPOCHS = 8
#: How the demo hands a store URL to its child process.
CHILD_DB_VARIABLE = "RESUMEFLOW_DEMO_DB"
KILL_AFTER_EPOCH = 3

workflow = rf.Workflow("demo")


@workflow.node
def prepare_data(n_samples: int = 4096, seed: int = 0) -> dict[str, Any]:
    """A synthetic two-class problem: points around two centres in 16 dimensions."""
    import torch

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n_samples,), generator=g)
    centres = torch.randn(2, 16, generator=g) * 0.3
    x = centres[y] + torch.randn(n_samples, 16, generator=g)
    split = int(n_samples * 0.8)
    return {"x_train": x[:split], "y_train": y[:split], "x_test": x[split:], "y_test": y[split:]}


def _model() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))


@workflow.node
def train(ctx: rf.NodeContext, prepare_data, epochs: int = EPOCHS, epoch_seconds: float = 0.4):
    """Trains over epochs; saves model and optimizer state after each one."""
    import torch

    torch.set_num_threads(1)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    saved = ctx.load_partial_state()
    start = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start = saved["epoch"]
    x, y = prepare_data["x_train"], prepare_data["y_train"]
    for epoch in range(start, epochs):
        began = time.monotonic()
        for i in range(0, len(x), 128):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 128]), y[i : i + 128])
            loss.backward()
            opt.step()
        # A real epoch takes longer; keep the demo's kill window wide enough to hit.
        time.sleep(max(0.0, epoch_seconds - (time.monotonic() - began)))
        ctx.save_partial_state(
            {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "loss": loss.item()}
        )
    return {"state_dict": model.state_dict(), "started_at_epoch": start}


@workflow.node
def evaluate(prepare_data, train) -> dict[str, float]:
    import torch

    model = _model()
    model.load_state_dict(train["state_dict"])
    with torch.no_grad():
        pred = model(prepare_data["x_test"]).argmax(dim=1)
    return {"accuracy": float((pred == prepare_data["y_test"]).float().mean())}


@workflow.node
def export(train, evaluate, out_dir: str = "") -> str:
    import torch

    path = os.path.join(out_dir or tempfile.gettempdir(), "demo_model.pt")
    torch.save(train["state_dict"], path)
    return path


def _child(db: str, run_id: str, out_dir: str) -> None:
    with rf.Engine(db) as engine:
        engine.run(workflow, {"out_dir": out_dir}, run_id=run_id)


def run_demo(db: str | None = None, out=print) -> dict[str, Any]:
    """Runs the demo; returns what it measured (also printed through ``out``)."""
    import torch  # noqa: F401 - loaded now so that polling the child's progress is prompt

    work = tempfile.mkdtemp(prefix="resumeflow-demo-")
    db = db or os.path.join(work, "demo.db")
    run_id = f"demo-{int(time.time())}-{os.getpid()}"
    out(f"resumeflow demo: store {redact(db)}, run {run_id}")
    out(f"[1/3] training in a child process: {' -> '.join(workflow.nodes)}")
    # A store URL (it may hold a password) goes to the child in its environment, not its
    # command line, which any user of the machine can read.
    where = [] if is_url(db) else ["--db", db]
    child = subprocess.Popen(
        [sys.executable, "-m", "resumeflow.demo", "--child", *where, "--run-id", run_id, "--out-dir", work],
        env={**os.environ, CHILD_DB_VARIABLE: db} if is_url(db) else None,
    )
    with rf.Engine(db) as engine:
        epoch = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            try:
                saved = engine.get_partial_state(run_id, "train")
            except rf.RunNotFound:
                saved = None
            epoch = saved["epoch"] if saved else 0
            if epoch >= KILL_AFTER_EPOCH:
                break
            time.sleep(0.02)
        if child.poll() is not None:
            raise RuntimeError(f"the training process exited ({child.returncode}) before the demo could kill it")
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        killed_at = time.monotonic()
        before = engine.get_current_state(run_id)
        saved_epoch = engine.get_partial_state(run_id, "train")["epoch"]
        out(f"[2/3] killed the training process (pid {child.pid}, SIGKILL) after epoch {saved_epoch} of {EPOCHS}; "
            f"run is {before.status!r}, train is {before.nodes['train'].status!r} on attempt {before.nodes['train'].attempt}")
        out("[3/3] recovering in this process")
        t0 = time.monotonic()
        runs = engine.recover([workflow])
        takeover_s = time.monotonic() - t0
        if [r.id for r in runs] != [run_id]:
            raise RuntimeError(f"recover() resumed {[r.id for r in runs]}, expected {run_id}")
        final = runs[0].wait()
        recovery_s = time.monotonic() - t0
        skipped = [n for n in before.completed]
        resumed_from = final.values["train"]["started_at_epoch"]
        accuracy = final.values["evaluate"]["accuracy"]
        out(f"  skipped on resume (already completed): {', '.join(skipped) or 'none'}")
        out(f"  train resumed from epoch {resumed_from} (attempt {final.nodes['train'].attempt}); "
            f"epochs 1-{resumed_from} were not repeated")
        out(f"  final metric: test accuracy {accuracy:.3f}")
        out(f"  exported state_dict: {final.values['export']}")
        out(f"  recovery took {takeover_s * 1000:.1f} ms to take over the crashed run; "
            f"the remaining work took {recovery_s - takeover_s:.2f} s "
            f"({time.monotonic() - killed_at:.2f} s from the kill to a completed run)")
        out(f"  run {run_id} is {final.status!r}; checkpoints: {len(engine.history(run_id))}")
        return {
            "run_id": run_id,
            "db": redact(db),
            "skipped": skipped,
            "resumed_from_epoch": resumed_from,
            "accuracy": accuracy,
            "recovery_s": recovery_s,
            "takeover_ms": takeover_s * 1000,
            "status": final.status,
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resumeflow.demo")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--db")
    parser.add_argument("--run-id")
    parser.add_argument("--out-dir", default="")
    args = parser.parse_args(argv)
    if args.child:
        _child(args.db or os.environ[CHILD_DB_VARIABLE], args.run_id, args.out_dir)
    else:
        run_demo(args.db)


if __name__ == "__main__":
    main()
