"""The kill -9 campaign for the queue: several worker processes claim submitted runs from one
store while the driver SIGKILLs them at random instants and starts replacements.

After every kill: ``PRAGMA integrity_check`` is ``ok`` and nothing completed is lost. At the
end: every run completed with an uninterrupted run's values; no completed node ran again (the
fsynced ledger); attempts per node strictly increase; and no run was ever held by two live
workers at once — in each run's log, a new owner takes the lease only after the previous one
released it or was killed (the owner id carries its pid).

    python tests/chaos/queue_driver.py [--kills N] [--workers K] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from driver import _env, _ledger  # noqa: E402


@dataclass
class QueueReport:
    kills: int = 0
    batches: int = 0
    runs_submitted: int = 0
    runs_completed: int = 0
    nodes_executed: int = 0
    re_executions_of_completed: int = 0
    claims: int = 0
    claimed_twice_at_once: int = 0
    integrity_checks: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _owner_pid(owner: str) -> int:
    return int(owner.split(":")[-2])


def queue_campaign(kills_target: int, *, workers: int = 3, seed: int = 0, runs_per_batch: int = 12,
                   max_delay: float = 0.4, log=lambda *a: print(*a, flush=True)) -> QueueReport:
    import resumeflow as rf
    from chaos_workflows import BLOB_FILE_THRESHOLD, EXPECTED, WORKFLOWS, same

    work = Path(tempfile.mkdtemp(prefix="rf-queue-chaos-"))
    db = str(work / "queue.db")
    ledger = work / "ledger.txt"
    ledger.touch()
    env = _env(ledger)
    env.setdefault("RF_NODE_MAX_S", "0.03")
    rng = random.Random(seed)
    report = QueueReport()
    killed: set[int] = set()
    completed_at: dict[tuple[str, str], int] = {}
    names = sorted(WORKFLOWS)
    t0 = time.monotonic()

    def start_worker() -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, str(HERE / "chaos_child.py"), "work", db],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )
        child.stdout.readline()  # "ready"
        return child

    pool: list[subprocess.Popen[str]] = []
    with rf.Engine(db, blob_file_threshold=BLOB_FILE_THRESHOLD) as engine:
        pool = [start_worker() for _ in range(workers)]
        try:
            while report.kills < kills_target:
                prefix = f"q{report.batches}"
                report.batches += 1
                ids = []
                for i in range(runs_per_batch):
                    run = engine.submit(WORKFLOWS[names[i % len(names)]], run_id=f"{prefix}-{i}")
                    ids.append(run.id)
                report.runs_submitted += len(ids)
                while True:
                    time.sleep(rng.uniform(0.02, max_delay))
                    victim = rng.randrange(len(pool))
                    pool[victim].send_signal(signal.SIGKILL)
                    pool[victim].wait()
                    killed.add(pool[victim].pid)
                    report.kills += 1
                    pool[victim] = start_worker()
                    report.integrity_checks += 1
                    status = engine.check_integrity()
                    if status != "ok":
                        report.violations.append(f"integrity_check: {status}")
                    # Workers keep running while we look: read the states first, then the
                    # ledger, so an entry past `seen` was written after the node was seen
                    # completed (a real re-execution), never before its completing commit.
                    states = [engine.get_current_state(r) for r in ids]
                    seen = len(_ledger(ledger))
                    for state in states:
                        for node, ns in state.nodes.items():
                            key = (state.run_id, node)
                            if ns.status == "completed":
                                completed_at.setdefault(key, seen)
                            elif key in completed_at:
                                report.violations.append(f"{key} was completed and is now {ns.status}")
                    if all(s.status == "completed" for s in states) or report.kills >= kills_target:
                        break
                if report.kills % 20 == 0:
                    log(f"  {report.kills} kills, {report.batches} batches, {time.monotonic() - t0:.0f}s")
            # Let the pool finish what is left, then check everything.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if not engine.list_runs("queued") and not engine.list_runs("running"):
                    break
                time.sleep(0.2)
        finally:
            for child in pool:
                child.send_signal(signal.SIGKILL)
                child.wait()
                killed.add(child.pid)
        for state in engine.list_runs():
            if state.status != "completed":
                report.violations.append(f"run {state.run_id} ended {state.status}")
            elif not same(state.values, EXPECTED[state.workflow]):
                report.violations.append(f"run {state.run_id}: values {state.values} differ")
            else:
                report.runs_completed += 1
            owner, released = None, True
            for event in engine.events(state.run_id, after_seq=0, limit=1_000_000):
                if event["kind"] == "LeaseAcquired":
                    report.claims += 1
                    new = event["data"]["owner"]
                    if owner is not None and new != owner and not released and _owner_pid(owner) not in killed:
                        report.claimed_twice_at_once += 1
                        report.violations.append(f"{state.run_id}: {new} took the lease while {owner} held it")
                    owner, released = new, False
                elif event["kind"] == "LeaseReleased":
                    released = True
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
        status = engine.check_integrity()
        if status != "ok":
            report.violations.append(f"final integrity_check: {status}")
    report.seconds = time.monotonic() - t0
    if not report.violations:
        shutil.rmtree(work, ignore_errors=True)
    else:
        log(f"kept {work} for inspection")
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=60)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = queue_campaign(args.kills, workers=args.workers, seed=args.seed)
    print(json.dumps({k: v for k, v in vars(report).items() if k != "violations"}, indent=2), flush=True)
    for v in report.violations[:50]:
        print("VIOLATION:", v)
    sys.exit(1 if report.violations else 0)


if __name__ == "__main__":
    main()
