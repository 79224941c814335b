"""W9: queued runs per second with 1, 2 and 4 worker processes on one SQLite store, resumeflow
against DBOS Transact's queue on SQLite, on identical work, interleaved in one run.

    python benches/queue_throughput.py [--runs N] [--quick] [--workers 1,2,4] [--rounds R]
                                       [--dbos-poll S] [--json OUT]

Work: N runs of a 10-node no-op chain (each node adds 1 to its input), every node's result
committed (fsynced) before the next runs: resumeflow durability "sync" (WAL +
synchronous=FULL); DBOS with ``benches/peer_dbos.py``'s system-database engine (WAL +
synchronous=FULL, otherwise DBOS's own SQLite engine settings).

One measurement, for each system and each number K of worker processes:
  1. K worker processes start on a fresh store and report ready (not timed): resumeflow
     processes open ``rf.Engine(db)`` and then call ``engine.work([wf], idle_timeout=...)``;
     DBOS processes ``DBOS.launch()`` with a unique ``executor_id`` each (DBOS recovers the
     PENDING workflows of its own executor id at launch, so processes sharing one must not
     share an id), register the queue and listen on it. The first DBOS process launches alone
     (it creates the schema), then the others.
  2. The clock starts; this process submits the N runs, one committed submit each
     (``engine.submit``; DBOS: ``DBOSClient.enqueue``), while the workers already claim them.
  3. The clock stops at the last run's completion as the store recorded it (resumeflow:
     ``RunState.updated_at``; DBOS: ``workflow_status.updated_at``). Every run must have
     completed, each by one worker (resumeflow: the workers' ``finished`` counts add up to N).
  runs/s = N / (last completion - start). Producer and consumers share the machine, as they
  would on one host.

Fairness knobs (printed with the results): each worker executes up to 8 runs at a time
(``--runs-at-once``: resumeflow ``max_concurrency``, which is also ``Engine.work``'s default of 8
runs; DBOS ``worker_concurrency``). DBOS workers find queued
work by polling (``polling_interval_sec``, 1 s by default, which would cap a worker at 8 runs
a second); this benchmark gives DBOS ``--dbos-poll`` (0.05 s) instead. resumeflow workers sleep
in the core between commits and are woken by them (``PRAGMA data_version``).

DBOS does support several processes on one SQLite system database: its dequeue is one write
transaction (``BEGIN IMMEDIATE``) that flips ENQUEUED rows to PENDING with ``RETURNING``, so a
row goes to exactly one executor (dbos 3.4.0, ``_sys_db.start_queued_workflows``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import resumeflow as rf  # noqa: E402

CHAIN_LENGTH = 10
RUNS_AT_ONCE = 8  # per worker, both systems (--runs-at-once)
DBOS_QUEUE = "rf_qbench"
DBOS_WORKFLOW = "rf_qbench_chain"
DBOS_APP = "rf-qbench"
#: A worker stops once nothing was queued for this long (after the last run, so never timed).
IDLE_S = 2.0
READY_TIMEOUT_S = 120.0


def chain_workflow() -> rf.Workflow:
    """``s0 -> s1 -> ... -> s9``, each adding 1 (the result is 10)."""
    wf = rf.Workflow("qbench_chain")
    for i in range(CHAIN_LENGTH):
        def step(prev: int = 0) -> int:
            return prev + 1

        wf.node(step, name=f"s{i}", inputs={} if i == 0 else {"prev": f"s{i - 1}"})
    return wf


# --- worker processes --------------------------------------------------------------------------


def _wait_for_file(path: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.002)


def _touch(path: str) -> None:
    with open(path, "w"):
        pass


def rf_worker(db: str, ready: str, go: str, runs_at_once: int) -> None:
    wf = chain_workflow()
    with rf.Engine(db, durability="sync", max_concurrency=runs_at_once) as engine:
        _touch(ready)
        _wait_for_file(go)
        finished = engine.work([wf], idle_timeout=IDLE_S)
    print(json.dumps({"finished": finished}), flush=True)


def _dbos_config(url: str, executor_id: str) -> dict[str, Any]:
    import peer_dbos

    return {
        "name": DBOS_APP,
        "system_database_url": url,
        "system_database_engine": peer_dbos._engine(url),  # WAL + synchronous=FULL
        "executor_id": executor_id,
        "application_version": "1",
        "log_level": "WARNING",
    }


def dbos_worker(url: str, ready: str, stop: str, executor_id: str, poll: float,
                runs_at_once: int) -> None:
    from dbos import DBOS

    config = _dbos_config(url, executor_id)

    @DBOS.step()
    def add1(x: int) -> int:
        return x + 1

    @DBOS.workflow(name=DBOS_WORKFLOW)
    def chain(n: int) -> int:
        x = 0
        for _ in range(n):
            x = add1(x)
        return x

    DBOS(config=config)  # type: ignore[arg-type]
    DBOS.launch()
    DBOS.register_queue(DBOS_QUEUE, worker_concurrency=runs_at_once, polling_interval_sec=poll,
                        on_conflict="never_update")
    _touch(ready)
    _wait_for_file(stop)
    DBOS.destroy(workflow_completion_timeout_sec=0)
    config["system_database_engine"].dispose()


# --- one measurement ---------------------------------------------------------------------------


def _spawn(role: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), f"--_{role}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _await_ready(children: list[subprocess.Popen[str]], ready: list[str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not all(os.path.exists(r) for r in ready):
        for c in children:
            if c.poll() is not None:
                out, err = c.communicate()
                raise RuntimeError(f"a worker exited before it was ready ({c.returncode}): {err[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError("workers never became ready")
        time.sleep(0.01)


def _reap(children: list[subprocess.Popen[str]], timeout: float = 600.0) -> list[str]:
    outs = []
    for c in children:
        try:
            out, err = c.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            c.kill()
            out, err = c.communicate()
        if c.returncode != 0:
            raise RuntimeError(f"a worker failed ({c.returncode}): {err[-2000:]}")
        outs.append(out)
    return outs


def measure_resumeflow(n: int, workers: int, runs_at_once: int) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="rfbench-queue-")
    try:
        db = os.path.join(tmp, "runs.db")
        go = os.path.join(tmp, "go")
        wf = chain_workflow()
        with rf.Engine(db, durability="sync") as engine:  # the producer; creates the store
            ready = [os.path.join(tmp, f"ready{i}") for i in range(workers)]
            children = [_spawn("rf-worker", db, ready[i], go, str(runs_at_once))
                        for i in range(workers)]
            try:
                _await_ready(children, ready)
                t0 = time.time()
                _touch(go)
                for i in range(n):
                    engine.submit(wf, run_id=f"r{i}")
                submitted = time.time() - t0
                outs = _reap(children)
            except BaseException:
                for c in children:
                    c.kill()
                raise
            finished = sum(json.loads(o.strip().splitlines()[-1])["finished"] for o in outs)
            runs = engine.list_runs()
            completed = [r for r in runs if r.status == "completed"]
            assert len(runs) == n and len(completed) == n, f"{len(completed)}/{n} completed"
            assert all(r.values[f"s{CHAIN_LENGTH - 1}"] == CHAIN_LENGTH for r in completed[:5])
            assert finished == n, f"workers finished {finished} runs, {n} were submitted"
            last = max(r.updated_at for r in completed)
        return {"seconds": last - t0, "submit_s": submitted}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure_dbos(n: int, workers: int, poll: float, runs_at_once: int) -> dict[str, Any]:
    import peer_dbos
    import sqlalchemy as sa
    from dbos import DBOSClient

    tmp = tempfile.mkdtemp(prefix="rfbench-queue-dbos-")
    children: list[subprocess.Popen[str]] = []
    stop = os.path.join(tmp, "stop")
    try:
        url = "sqlite:///" + os.path.join(tmp, "dbos_sys.sqlite")
        ready = [os.path.join(tmp, f"ready{i}") for i in range(workers)]
        # The first worker creates the schema alone; then the others launch together.
        conf = (str(poll), str(runs_at_once))
        children.append(_spawn("dbos-worker", url, ready[0], stop, "qbench-0", *conf))
        _await_ready(children, ready[:1])
        for i in range(1, workers):
            children.append(_spawn("dbos-worker", url, ready[i], stop, f"qbench-{i}", *conf))
        _await_ready(children, ready)
        engine = peer_dbos._engine(url)
        client = DBOSClient(system_database_engine=engine, application_name=DBOS_APP)
        try:
            t0 = time.time()
            for i in range(n):
                client.enqueue({"queue_name": DBOS_QUEUE, "workflow_name": DBOS_WORKFLOW,
                                "workflow_id": f"r{i}"}, CHAIN_LENGTH)
            submitted = time.time() - t0
            count = sa.text("SELECT count(*), max(updated_at), "
                            "count(DISTINCT executor_id) FROM workflow_status "
                            "WHERE queue_name = :q AND status = 'SUCCESS'")
            deadline = time.monotonic() + 600
            while True:
                with engine.connect() as c:
                    done, last_ms, executors = c.execute(count, {"q": DBOS_QUEUE}).one()
                if done >= n:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"DBOS completed {done}/{n} runs in 600 s")
                time.sleep(0.1)
            assert client.retrieve_workflow("r0").get_result() == CHAIN_LENGTH
        finally:
            client.destroy()
            engine.dispose()
        return {"seconds": last_ms / 1000.0 - t0, "submit_s": submitted, "executors": executors}
    finally:
        _touch(stop)
        try:
            _reap(children, timeout=60)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# --- the comparison ----------------------------------------------------------------------------


def dbos_available() -> bool:
    try:
        import dbos  # noqa: F401
        import peer_dbos  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="runs per measurement (default 300)")
    parser.add_argument("--quick", action="store_true", help="60 runs, 1 round")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts (default 1,2,4)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds, median reported (default 3)")
    parser.add_argument("--dbos-poll", type=float, default=0.05,
                        help="DBOS queue polling_interval_sec (default 0.05; DBOS's own is 1.0)")
    parser.add_argument("--runs-at-once", type=int, default=RUNS_AT_ONCE,
                        help="runs one worker executes at a time (resumeflow max_concurrency, "
                        "DBOS worker_concurrency; default 8)")
    parser.add_argument("--json", metavar="OUT", help="write the rows and the context here")
    args = parser.parse_args(argv)
    n = 60 if args.quick else args.runs
    rounds = args.rounds or (1 if args.quick else 3)
    counts = [int(k) for k in args.workers.split(",") if k.strip()]
    dbos = dbos_available()

    from compare import git_commit, machine, print_table

    info = machine()
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join([os.path.basename(sys.executable), "benches/queue_throughput.py", *given])
    print(f"machine: {info['cpu']}, nproc {info['nproc']}, python {info['python']}")
    print(f"commit {git_commit()}; command: {command}; {n} runs x {CHAIN_LENGTH} nodes, "
          f"workers {counts}, rounds {rounds} (median), {args.runs_at_once} runs at a time per "
          "worker")
    if dbos:
        from importlib.metadata import version

        print(f"DBOS {version('dbos')} on SQLite (WAL + synchronous=FULL), "
              f"queue polling_interval_sec={args.dbos_poll}, worker_concurrency={args.runs_at_once}")
    else:
        print("DBOS not installed (pip install -r benches/requirements.txt): resumeflow only")

    seconds: dict[tuple[str, int], list[float]] = {}
    extra: dict[tuple[str, int], dict[str, Any]] = {}
    t_all = time.perf_counter()
    for r in range(rounds):
        for k in counts:  # systems interleaved within each round
            got = measure_resumeflow(n, k, args.runs_at_once)
            seconds.setdefault(("resumeflow", k), []).append(got["seconds"])
            extra[("resumeflow", k)] = got
            line = f"round {r + 1}, {k} worker(s): resumeflow {n / got['seconds']:.1f} runs/s"
            if dbos:
                got = measure_dbos(n, k, args.dbos_poll, args.runs_at_once)
                seconds.setdefault(("dbos", k), []).append(got["seconds"])
                extra[("dbos", k)] = got
                line += f", dbos {n / got['seconds']:.1f} runs/s ({got['executors']} executors)"
            print(line, flush=True)

    rows = []
    for k in counts:
        rf_s = statistics.median(seconds[("resumeflow", k)])
        row: dict[str, Any] = {"workload": "W9 queue", "workers": k,
                               "resumeflow runs/s": n / rf_s}
        if dbos:
            db_s = statistics.median(seconds[("dbos", k)])
            row["dbos runs/s"] = n / db_s
            row["ratio rf/dbos"] = db_s / rf_s
        row["rf submit runs/s"] = n / extra[("resumeflow", k)]["submit_s"]
        if dbos:
            row["dbos submit runs/s"] = n / extra[("dbos", k)]["submit_s"]
        rows.append(row)
    print()
    print_table(rows)
    print(f"\ntotal {time.perf_counter() - t_all:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": command,
                       "machine": info, "runs": n, "rounds": rounds, "dbos_poll": args.dbos_poll,
                       "runs_at_once": args.runs_at_once,
                       "seconds": {f"{s}:{k}": v for (s, k), v in seconds.items()}, "rows": rows},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_rf-worker":
        db, ready, go, at_once = sys.argv[2:6]
        rf_worker(db, ready, go, int(at_once))
    elif len(sys.argv) > 1 and sys.argv[1] == "--_dbos-worker":
        url, ready, stop, executor_id, poll, at_once = sys.argv[2:8]
        dbos_worker(url, ready, stop, executor_id, float(poll), int(at_once))
    else:
        sys.exit(main())
