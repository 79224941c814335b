"""The kill -9 campaign in CI mode: at least 200 SIGKILLs at random instants, zero violations,
on SQLite and on PostgreSQL (there with the server restarted under a running child, twice).

The long mode (5,000 kills, for docs/reliability.md) is `python tests/chaos/driver.py --long`
(`--db postgresql://...?schema=NAME --max-delay 0.3` for PostgreSQL).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "chaos"))

import driver  # noqa: E402


def check_campaign(report: driver.Report) -> None:
    print(
        f"kills={report.kills} mid_run={report.kills_mid_run} child_exits={report.child_exits} "
        f"batches={report.batches} runs_completed={report.runs_completed} "
        f"nodes_executed={report.nodes_executed} integrity_checks={report.integrity_checks} "
        f"disruptions={report.disruptions} disrupted_exits={report.disrupted_exits} "
        f"seconds={report.seconds:.0f}"
    )
    assert report.violations == [], report.violations[:20]
    assert report.kills >= 200
    assert report.kills_mid_run >= 100, "most kills must land while work is unfinished"
    assert report.re_executions_of_completed == 0
    assert report.runs_completed >= report.batches, "every batch left completed runs"


def test_a_ledger_record_torn_by_a_kill_is_skipped_and_the_next_stays_whole(tmp_path, monkeypatch):
    """A child SIGKILLed inside ``os.write`` once left ``b24`` of a record at the ledger's end;
    the next child's record ran into it (``b24b24-0|c1|2``), a run id no store holds."""
    import chaos_workflows

    ledger = tmp_path / "ledger.txt"
    ledger.write_text("\nb24-4|tokens|1\n\nb24")
    monkeypatch.setenv("RF_LEDGER", str(ledger))

    class Ctx:
        run_id, node_id, attempt = "b24-0", "c1", 2

    chaos_workflows.record(Ctx())
    assert driver._ledger(ledger) == [("b24-4", "tokens", 1), ("b24-0", "c1", 2)]


def test_kill_9_campaign_ci_mode():
    check_campaign(driver.campaign(200, seed=20261122, log=print))


#: Kill counts at which the PostgreSQL campaign restarts the server under the running child.
PG_RESTARTS_AT = (60, 140)


@pytest.mark.timeout(600)  # 4-5 min measured on a loaded 2-core machine (load 15-19)
def test_kill_9_campaign_ci_mode_on_postgresql(pg_url, pg_server):
    """The same campaign on a PostgreSQL schema; at two kill counts, ``pg_ctl restart -m fast``
    while a child runs (it may exit with a StoreError: its runs are recovered like a killed
    child's). Children live up to 0.3 s after "ready", not 0.15 s: a first 2 MiB value's commit
    takes longer here than a blob file on SQLite, and a batch must be able to finish."""
    restarts: list[int] = []

    def restart_server(kills: int) -> bool:
        if len(restarts) < len(PG_RESTARTS_AT) and kills >= PG_RESTARTS_AT[len(restarts)]:
            pg_server.restart()
            restarts.append(kills)
            print(f"  server restarted at kill {kills}")
            return True
        return False

    report = driver.campaign(200, seed=20261207, db=pg_url, max_delay=0.3, disrupt=restart_server, log=print)
    check_campaign(report)
    assert report.disruptions == len(PG_RESTARTS_AT), restarts


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
