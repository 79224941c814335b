"""A chaos worker process: starts a batch of runs, or recovers whatever crashed, and waits.

    python chaos_child.py start DB RUN_PREFIX COUNT
    python chaos_child.py recover DB
Prints "ready" once its engine is open (the driver kills it at a random instant after that).
"""

from __future__ import annotations

import sys

import resumeflow as rf
from chaos_workflows import BLOB_FILE_THRESHOLD, WORKFLOWS


def main() -> None:
    mode, db = sys.argv[1], sys.argv[2]
    names = sorted(WORKFLOWS)
    with rf.Engine(db, lease_seconds=30.0, blob_file_threshold=BLOB_FILE_THRESHOLD) as engine:
        print("ready", flush=True)
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
