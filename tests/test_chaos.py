"""The kill -9 campaign in CI mode: at least 200 SIGKILLs at random instants, zero violations.

The long mode (5,000 kills, for docs/reliability.md) is `python tests/chaos/driver.py --long`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "chaos"))

import driver  # noqa: E402


def test_kill_9_campaign_ci_mode():
    report = driver.campaign(200, seed=20261122, log=print)
    print(
        f"kills={report.kills} mid_run={report.kills_mid_run} child_exits={report.child_exits} "
        f"batches={report.batches} runs_completed={report.runs_completed} "
        f"nodes_executed={report.nodes_executed} integrity_checks={report.integrity_checks} "
        f"seconds={report.seconds:.0f}"
    )
    assert report.violations == [], report.violations[:20]
    assert report.kills >= 200
    assert report.kills_mid_run >= 100, "most kills must land while work is unfinished"
    assert report.re_executions_of_completed == 0
    assert report.runs_completed >= report.batches, "every batch left completed runs"


def test_queue_workers_killed_while_claiming_ci_mode():
    """Workers claiming from one queue, SIGKILLed at random: no completed node re-runs, no
    run held by two live workers at once, integrity ok (`python tests/chaos/queue_driver.py`)."""
    import queue_driver

    report = queue_driver.queue_campaign(60, workers=3, seed=20261201, log=print)
    print({k: v for k, v in vars(report).items() if k != "violations"})
    assert report.violations == [], report.violations[:20]
    assert report.kills >= 60
    assert report.runs_completed == report.runs_submitted
    assert report.re_executions_of_completed == 0 and report.claimed_twice_at_once == 0
    assert report.claims > report.runs_submitted, "killed workers' runs were claimed again"
