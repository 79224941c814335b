"""A chaos worker process: starts a batch of runs, or recovers whatever crashed, and waits.

    python chaos_child.py start DB RUN_PREFIX COUNT
    python chaos_child.py recover DB
    python chaos_child.py work DB      (a queue worker: claims submitted runs until killed)
Prints "ready" once its engine is open (the driver kills it at a random instant after that).
"""

from __future__ import annotations

import sys

import resumeflow as rf
from chaos_workflows import BLOB_FILE_THRESHOLD, WORKFLOWS


def main() -> None:
    mode, db = sys.argv[1], sys.argv[2]
    names = sorted(WORKFLOWS)
    # Queue workers use short leases: a killed worker's runs are recovered by the others.
    lease = 2.0 if mode == "work" else 30.0
    with rf.Engine(db, lease_seconds=lease, blob_file_threshold=BLOB_FILE_THRESHOLD) as engine:
        print("ready", flush=True)
        if mode == "work":
            engine.work(WORKFLOWS)
            return
        if mode == "start":
            prefix, count = sys.argv[3], int(sys.argv[4])
            runs = [
                engine.start(WORKFLOWS[names[i % len(names)]], run_id=f"{prefix}-{i}")
                for i in range(count)
            ]
        else:
            runs = engine.recover(WORKFLOWS)
        for run in runs:
            run.wait()
    print("done", flush=True)


if __name__ == "__main__":
    main()
