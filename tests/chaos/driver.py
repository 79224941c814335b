"""The kill -9 chaos driver.

Runs batches of workflows (chains, fan-out/fan-in, retries, partial-state and streaming nodes)
in child processes and SIGKILLs them at random instants — mid-node, mid-commit, mid-startup —
then recovers with ``engine.recover`` from fresh processes, over and over until every run
completes. After every kill it checks: the store's integrity check (``PRAGMA integrity_check``
on SQLite) is ``ok``; nothing that had completed is lost. At the end: final values equal an
uninterrupted run's; no completed node ran again (the fsynced side-effect ledger proves it);
attempts per node strictly increase; each completed node's recorded attempt is its last ledger
attempt.

``db`` is a SQLite path or a ``postgresql://`` URL. ``disrupt`` (optional) is called while a
child runs, e.g. to restart the PostgreSQL server under it: the child may then exit with a
``StoreError`` (its runs are recovered like a killed child's), and the driver's own engine
reconnects before it looks again. A batch that never completes is a violation, not a hang.

    python tests/chaos/driver.py [--kills N | --long] [--seed S] [--db PATH_OR_URL] [--max-delay S]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class Report:
    kills: int = 0
    kills_mid_run: int = 0
    child_exits: int = 0
    batches: int = 0
    runs_completed: int = 0
    nodes_executed: int = 0
    re_executions_of_completed: int = 0
    integrity_checks: int = 0
    #: Children during which ``disrupt`` disrupted the store, and how many of them then
    #: exited with a StoreError (not a violation).
    disruptions: int = 0
    disrupted_exits: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _env(ledger: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["RF_LEDGER"] = str(ledger)
    return env


def _ledger(path: Path) -> list[tuple[str, str, int]]:
    """The ledger's records; blank lines and the fragment a kill inside ``os.write`` may
    leave (a node killed while recording its start, before it could complete) are skipped."""
    out = []
    for line in path.read_text().splitlines():
        fields = line.split("|")
        if len(fields) == 3 and fields[0] and fields[1] and fields[2].isdigit():
            out.append((fields[0], fields[1], int(fields[2])))
    return out


def _settle(engine, timeout: float = 60.0) -> None:
    """After a disruption: retries until the engine reads and writes again (each pooled
    connection the server dropped fails once before it is replaced)."""
    import resumeflow as rf

    deadline = time.monotonic() + timeout
    ok = 0
    while ok < 3:
        try:
            engine.list_runs()
            engine.check_integrity()
            engine.cleanup()
            ok += 1
        except rf.StoreError:
            if time.monotonic() > deadline:
                raise
            ok = 0
            time.sleep(0.1)


def campaign(kills_target: int, *, seed: int = 0, db: str | None = None, runs_per_batch: int = 10,
             max_delay: float = 0.15, disrupt: Callable[[int], bool] | None = None,
             max_children_per_batch: int = 300, log=lambda *a: print(*a, flush=True)) -> Report:
    """``disrupt(kills)`` runs while each child runs (after its "ready", before the driver
    waits on it) and returns True if it disrupted the store; ``max_children_per_batch``
    children without the batch completing is a violation that ends the campaign."""
    import resumeflow as rf

    sys.path.insert(0, str(HERE))
    from chaos_workflows import BLOB_FILE_THRESHOLD, EXPECTED, same

    work = Path(tempfile.mkdtemp(prefix="rf-chaos-"))
    db = db or str(work / "chaos.db")
    ledger = work / "ledger.txt"
    ledger.touch()
    env = _env(ledger)
    env.setdefault("RF_NODE_MAX_S", "0.03")
    rng = random.Random(seed)
    report = Report()
    completed_at: dict[tuple[str, str], int] = {}
    t0 = time.monotonic()
    rf.Engine(db).close()  # create the store up front

    def batch_states(engine: rf.Engine, prefix: str) -> list[rf.RunState]:
        states = []
        for i in range(runs_per_batch):
            try:
                states.append(engine.get_current_state(f"{prefix}-{i}"))
            except rf.RunNotFound:  # the starter was killed before creating it
                pass
        return states

    def observe(engine: rf.Engine, prefix: str) -> bool:
        """Checks the store after a kill or an exit; True when the batch's runs completed.

        Earlier batches are complete and nothing resumes completed runs, so only the current
        batch is read (the final check reads every run once).
        """
        report.integrity_checks += 1
        # Through the engine: a second SQLite library in this process (the sqlite3 module)
        # would release the engine's POSIX locks on close and break WAL for everyone.
        status = engine.check_integrity()
        if status != "ok":
            report.violations.append(f"integrity_check: {status}")
        seen = len(_ledger(ledger))
        all_done = True
        for state in batch_states(engine, prefix):
            for node, ns in state.nodes.items():
                key = (state.run_id, node)
                if ns.status == "completed":
                    completed_at.setdefault(key, seen)
                elif key in completed_at:
                    report.violations.append(f"{key} was completed and is now {ns.status}")
            all_done &= state.status == "completed"
        return all_done

    last_logged = 0
    with rf.Engine(db, blob_file_threshold=BLOB_FILE_THRESHOLD) as engine:
        stuck = False
        while report.kills < kills_target and not stuck:
            prefix = f"b{report.batches}"
            report.batches += 1
            args = ["start", db, prefix, str(runs_per_batch)]
            children = 0
            while True:
                children += 1
                if children > max_children_per_batch:
                    states = {s.run_id: s.status for s in batch_states(engine, prefix)}
                    report.violations.append(f"batch {prefix} not completed after {max_children_per_batch} children: {states}")
                    stuck = True
                    break
                child = subprocess.Popen(
                    [sys.executable, str(HERE / "chaos_child.py"), *args],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                )
                ready = child.stdout.readline().strip() == "ready"
                disrupted = bool(ready and disrupt is not None and disrupt(report.kills))
                if disrupted:
                    report.disruptions += 1
                    _settle(engine)
                try:
                    child.wait(timeout=rng.uniform(0, max_delay) if ready else 60)
                    report.child_exits += 1
                    if child.returncode != 0:
                        err = child.stderr.read()
                        if disrupted and "resumeflow.StoreError" in err:
                            report.disrupted_exits += 1
                        else:
                            report.violations.append(f"child exited {child.returncode}: {err[-2000:]}")
                except subprocess.TimeoutExpired:
                    child.send_signal(signal.SIGKILL)
                    child.wait()
                    report.kills += 1
                    unfinished = [s for s in batch_states(engine, prefix) if s.status != "completed"]
                    # A kill that left work unfinished (not one during interpreter exit).
                    report.kills_mid_run += bool(unfinished) or not ready
                child.stdout.close()
                child.stderr.close()
                if observe(engine, prefix):
                    break
                if rng.random() < 0.2:
                    # Garbage collection races the next child's blob writes and commits.
                    engine.cleanup()
                args = ["recover", db]
            if report.kills // 50 > last_logged:
                last_logged = report.kills // 50
                log(f"  {report.kills} kills, {report.batches} batches, {time.monotonic() - t0:.0f}s")
        # Final checks.
        runs = engine.list_runs()
        for state in runs:
            expected = EXPECTED[state.workflow]
            if state.status != "completed":
                report.violations.append(f"run {state.run_id} ended {state.status}")
            elif not same(state.values, expected):
                report.violations.append(f"run {state.run_id}: values {state.values} != {expected}")
            else:
                report.runs_completed += 1
        entries = _ledger(ledger)
        report.nodes_executed = len(entries)
        last_attempt: dict[tuple[str, str], int] = {}
        for index, (run, node, attempt) in enumerate(entries):
            key = (run, node)
            if key in last_attempt and attempt <= last_attempt[key]:
                report.violations.append(f"{key}: attempt {attempt} after {last_attempt[key]}")
            last_attempt[key] = attempt
            if key in completed_at and index >= completed_at[key]:
                report.re_executions_of_completed += 1
                report.violations.append(f"{key} ran again (attempt {attempt}) after it had completed")
        by_id = {s.run_id: s for s in runs}
        for (run, node), attempt in last_attempt.items():
            ns = by_id[run].nodes[node]
            if ns.status == "completed" and ns.attempt != attempt:
                report.violations.append(f"{(run, node)}: store says attempt {ns.attempt}, ledger {attempt}")
    report.seconds = time.monotonic() - t0
    if not report.violations:
        shutil.rmtree(work, ignore_errors=True)  # the ledger (and an own store) are kept on failure
    else:
        log(f"kept {work} for inspection")
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--long", action="store_true", help="5,000 kills")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", help="a SQLite path or a postgresql:// URL (default: a new SQLite file)")
    parser.add_argument("--max-delay", type=float, default=0.15, help="longest a child lives after ready (s)")
    args = parser.parse_args()
    report = campaign(5000 if args.long else args.kills, seed=args.seed, db=args.db, max_delay=args.max_delay)
    print(json.dumps({k: v for k, v in vars(report).items() if k != "violations"}, indent=2), flush=True)
    for v in report.violations[:50]:
        print("VIOLATION:", v)
    sys.exit(1 if report.violations else 0)


if __name__ == "__main__":
    main()
