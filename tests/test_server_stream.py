"""``resumeflow serve``: the durable SSE event stream (seq ids, terminal events, reconnecting
with ``Last-Event-ID``), 50 clients on one run, a run a ``resumeflow worker`` executes, 100
runs at once, two servers on one store, and a server killed with SIGKILL or stopped with
SIGTERM mid-run while the next one on the same store finishes the run.

Every node execution lands in an fsynced ledger (tests/rf_server_workflows.py), so "no
completed node ran again" is checked on the side effects, not on what the server says.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import httpx_sse
import pytest
from conftest import TESTS
from rf_server_workflows import executions, ledger_lines
from server_harness import (  # noqa: F401 (the *_fixture names: fixtures used by name)
    NODE_EVENTS,
    Event,
    Server,
    api_fixture,
    check_events,
    child_env,
    full_replay,
    get_run,
    new_id,
    server_fixture,
    servers_fixture,
    start_run,
    stream,
    wait_started,
    wait_status,
)


def _worker(db: str, ledger: Path, workflow: str = "rf_server_workflows:remote") -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "resumeflow", "worker", workflow, "--db", db],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=TESTS,
        env=child_env({"RF_LEDGER": str(ledger)}), start_new_session=True,
    )


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the worker hands its runs back), SIGKILL if it does not exit in 30 s."""
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def _submit(db: str, run_id: str, delay: float) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "resumeflow", "submit", "rf_server_workflows:remote", "--db", db,
         "--run-id", run_id, "--input", f"delay={delay}", "--json"],
        capture_output=True, text=True, cwd=TESTS, env=child_env(), timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_interrupt_and_cancel_reach_a_run_a_worker_executes(servers):
    """The server does not serve `remote`: a `resumeflow worker` executes it; interrupt and
    cancel through HTTP still reach it, and the event stream follows it."""
    srv = servers()
    worker = _worker(srv.db, srv.ledger)
    try:
        with srv.client() as api:
            cancelled = new_id("remote-cancel")
            _submit(srv.db, cancelled, 60)
            wait_started(srv.ledger, cancelled, "held")
            began = time.monotonic()
            assert api.post(f"/api/v1/runs/{cancelled}/cancel").status_code == 202
            wait_status(api, cancelled, "cancelled", timeout=5)
            assert time.monotonic() - began < 5.5

            paused = new_id("remote-interrupt")
            _submit(srv.db, paused, 1.5)
            wait_started(srv.ledger, paused, "held")
            live: list[list[Event]] = []
            reader = threading.Thread(
                target=lambda: live.append(stream(srv.base, paused, srv.headers)[0]), daemon=True)
            reader.start()
            assert api.post(f"/api/v1/runs/{paused}/interrupt").status_code == 202
            state = wait_status(api, paused, "paused", "completed", timeout=30)
            assert state["status"] == "paused", state
            reader.join(timeout=30)
            assert live and live[0][-1].type == "workflow_paused", live
            check_events(live[0], paused)
            assert executions(srv.ledger, paused) == {"first": 1, "held": 1}
    finally:
        _stop_worker(worker)


def test_items_of_a_streaming_node_another_process_executes_reach_the_stream(servers):
    """A `resumeflow worker` executes the streaming node; the server's stream reads the items
    it saves with its cursor (durable segments) and sends them as `chunk` messages, in order,
    before the run's end."""
    srv = servers()
    run_id = new_id("remote-chunks")
    worker = _worker(srv.db, srv.ledger, "rf_server_workflows:remote_stream")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "resumeflow", "submit", "rf_server_workflows:remote_stream", "--db", srv.db,
             "--run-id", run_id, "--json"],
            capture_output=True, text=True, cwd=TESTS, env=child_env(), timeout=60,
        )
        assert done.returncode == 0, done.stderr
        wait_started(srv.ledger, run_id, "saved_tokens")
        kinds: list[str] = []
        items: list[str] = []
        with httpx.Client(timeout=httpx.Timeout(30, read=40)) as client:
            with httpx_sse.connect_sse(client, "GET", f"{srv.base}/api/v1/runs/{run_id}/events",
                                       headers=srv.headers) as source:
                for sse in source.iter_sse():
                    if not sse.data:
                        continue
                    kinds.append(sse.event)
                    if sse.event == "chunk":
                        items.append(json.loads(sse.data)["item"])
                    if sse.event.startswith("workflow_"):
                        break
        assert kinds[-1] == "workflow_complete", kinds
        assert items == [f"tok{i}" for i in range(6)], (items, kinds)
        assert kinds.index("chunk") < kinds.index("step_complete")
    finally:
        _stop_worker(worker)


# -- the event stream ------------------------------------------------------------------------


def test_stream_ids_are_increasing_seqs_and_it_ends_after_workflow_complete(server: Server, api):
    run_id = new_id("stream")
    start_run(api, "slow", {"delay": 0.5}, run_id=run_id)
    live, ended = stream(server.base, run_id, server.headers)
    assert ended, "the server closes the stream after the terminal event"
    check_events(live, run_id)
    assert live[-1].type == "workflow_complete"
    assert [e.type for e in live].count("workflow_complete") == 1
    steps = [(e.type, e.data["node"], e.data["attempt"]) for e in live if e.type in NODE_EVENTS]
    assert steps == [
        ("step_start", "prepare", 1), ("step_complete", "prepare", 1),
        ("step_start", "nap", 1), ("step_complete", "nap", 1),
        ("step_start", "finish", 1), ("step_complete", "finish", 1),
    ]
    assert get_run(api, run_id)["status"] == "completed"
    # A replay of the ended run is the same stream.
    assert full_replay(server, run_id) == live


def test_stream_reconnect_with_last_event_id_gets_the_rest_exactly_once(server: Server, api):
    run_id = new_id("reconnect")
    start_run(api, "slow", {"delay": 1.5}, run_id=run_id)
    first, ended = stream(server.base, run_id, server.headers,
                          stop=lambda e: e.type == "step_start" and e.data["node"] == "nap")
    assert not ended and first[-1].type == "step_start"
    rest, ended = stream(server.base, run_id, server.headers, last_id=first[-1].id)
    assert ended and rest and rest[-1].type == "workflow_complete"
    assert all(e.id > first[-1].id for e in rest)

    full = full_replay(server, run_id)
    assert first + rest == full, "every event exactly once, in order"
    # ?after=SEQ is the same cursor.
    by_query, _ = stream(server.base, run_id, server.headers, after=first[-1].id)
    assert by_query == rest
    # From the middle of a replay of the ended run.
    middle = full[len(full) // 2]
    tail, ended = stream(server.base, run_id, server.headers, last_id=middle.id)
    assert ended and tail == [e for e in full if e.id > middle.id]


def test_items_of_a_streaming_node_are_chunk_messages_without_an_id(server: Server, api):
    run_id = new_id("chunks")
    start_run(api, "streamy", {"items": 8, "gap": 0.2}, run_id=run_id)
    messages: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    with httpx.Client(timeout=httpx.Timeout(30, read=40)) as client:
        with client.stream("GET", f"{server.base}/api/v1/runs/{run_id}/events",
                           headers=server.headers) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():  # raw lines: httpx-sse would carry the last id over
                if line.startswith(":"):
                    continue
                if line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                    continue
                if fields:
                    messages.append(fields)
                    fields = {}
    types = [m.get("event") for m in messages]
    assert types[-1] == "workflow_complete", types
    chunks = [m for m in messages if m.get("event") == "chunk"]
    assert chunks, f"no chunk message reached a client following the run live: {types}"
    for chunk in chunks:
        assert "id" not in chunk, chunk
        json.loads(chunk["data"])
    assert types.index("chunk") > types.index("step_start")
    assert len(chunks) <= 8
    for m in messages:
        if m.get("event") != "chunk":
            assert int(m["id"]) == json.loads(m["data"])["seq"], m
    values = api.get(f"/api/v1/runs/{run_id}/results").json()["values"]
    assert values["tokens"] == [f"tok{i}" for i in range(8)]


@pytest.mark.timeout(60)
def test_stream_after_the_terminal_event_ends_at_once(server: Server, api):
    run = start_run(api, "quick", {"count": 1})
    wait_status(api, run["run_id"], "completed")
    full = full_replay(server, run["run_id"])
    began = time.monotonic()
    rest, ended = stream(server.base, run["run_id"], server.headers, last_id=full[-1].id)
    assert ended and rest == []
    assert time.monotonic() - began < 10


def test_fifty_sse_clients_on_one_run_all_get_the_full_stream(server: Server, api):
    run_id = new_id("fanout")
    start_run(api, "slow", {"delay": 2}, run_id=run_id)
    with ThreadPoolExecutor(max_workers=50) as pool:
        seen = list(pool.map(lambda _: stream(server.base, run_id, server.headers), range(50)))
    full = full_replay(server, run_id)
    assert full[-1].type == "workflow_complete"
    for events, ended in seen:
        assert ended and events == full


# -- many runs, two servers, a killed server -------------------------------------------------


@pytest.mark.timeout(240)
def test_a_hundred_runs_started_at_once_all_complete(api: httpx.Client):
    ids = [new_id("burst") for _ in range(100)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda i: start_run(api, "quick", {"count": i[0]}, run_id=i[1]),
                      enumerate(ids)))
    for i, run_id in enumerate(ids):
        assert wait_status(api, run_id, "completed", "failed", timeout=120)["status"] == "completed"
        assert api.get(f"/api/v1/runs/{run_id}/results").json()["values"]["c"] == (i + 1) * 2


@pytest.mark.timeout(240)
def test_two_servers_on_one_store_execute_each_node_once(servers):
    first, second = servers(), servers()
    ids = [new_id("pair") for _ in range(20)]
    with first.client() as one, second.client() as two:
        for i, run_id in enumerate(ids):
            start_run(one if i % 2 else two, "quick", {"count": i}, run_id=run_id)
        for run_id in ids:
            assert wait_status(one, run_id, "completed", "failed", timeout=120)["status"] == "completed"
            assert get_run(two, run_id)["status"] == "completed"
    counted = executions(first.ledger)
    assert counted == {f"{r}/{n}": 1 for r in ids for n in "abc"}


@pytest.mark.timeout(180)
def test_killed_server_the_next_one_finishes_the_run_and_the_stream_resumes(servers):
    first = servers()
    run_id = new_id("killed")
    with first.client() as api:
        start_run(api, "slow", {"delay": 3}, run_id=run_id)
    # The client reads up to the slow node's start and disconnects; then the server dies.
    seen, _ = stream(first.base, run_id, first.headers,
                     stop=lambda e: e.type == "step_start" and e.data["node"] == "nap")
    wait_started(first.ledger, run_id, "nap")
    first.kill9()
    assert seen and seen[-1].type == "step_start" and seen[-1].data["node"] == "nap"
    assert executions(first.ledger, run_id) == {"prepare": 1, "nap": 1}

    second = servers(first.db)
    rest, ended = stream(second.base, run_id, second.headers, last_id=seen[-1].id)
    assert ended and rest[-1].type == "workflow_complete"
    with second.client() as api:
        done = wait_status(api, run_id, "completed", "failed", timeout=60)
        assert done["status"] == "completed", done
        assert api.get(f"/api/v1/runs/{run_id}/results").json()["values"]["finish"] == "x!?"
    full = full_replay(second, run_id)
    assert seen + rest == full, "every remaining event exactly once, in order, across the restart"
    attempts = [a for key, a in ledger_lines(first.ledger) if key == f"{run_id}/nap"]
    assert attempts == [1, 2], "the killed attempt is durable: the rerun is attempt 2"
    assert executions(first.ledger, run_id) == {"prepare": 1, "nap": 2, "finish": 1}, \
        "the completed node did not run again"


@pytest.mark.timeout(180)
def test_killed_server_while_a_client_is_connected(servers):
    """The client is mid-stream when the server dies; it reconnects to the next server."""
    first = servers()
    run_id = new_id("killed-live")
    with first.client() as api:
        start_run(api, "slow", {"delay": 3}, run_id=run_id)
    wait_started(first.ledger, run_id, "nap")
    seen: list[Event] = []

    def killer(event: Event) -> None:
        if event.type == "step_start" and event.data["node"] == "nap":
            first.kill9()

    with pytest.raises((httpx.HTTPError, httpx_sse.SSEError)):
        stream(first.base, run_id, first.headers, on_event=lambda e: (seen.append(e), killer(e)))
    assert seen and seen[-1].data["node"] == "nap"

    second = servers(first.db)
    rest, ended = stream(second.base, run_id, second.headers, last_id=seen[-1].id)
    assert ended and rest[-1].type == "workflow_complete"
    assert seen + rest == full_replay(second, run_id)
    assert executions(first.ledger, run_id) == {"prepare": 1, "nap": 2, "finish": 1}


@pytest.mark.timeout(180)
def test_sigterm_finishes_the_in_flight_node_and_hands_the_run_over(servers):
    first = servers()
    run_id = new_id("term")
    with first.client() as api:
        start_run(api, "slow", {"delay": 2}, run_id=run_id)
    wait_started(first.ledger, run_id, "nap")
    assert first.stop(timeout=60) == 0, first.output()

    second = servers(first.db)
    began = time.monotonic()
    with second.client() as api:
        done = wait_status(api, run_id, "completed", "failed", timeout=60)
    assert done["status"] == "completed", done
    assert time.monotonic() - began < 20, "the lease was released: no wait for it to expire"
    assert executions(first.ledger, run_id) == {"prepare": 1, "nap": 1, "finish": 1}, \
        "the in-flight node finished under SIGTERM and did not run again"
