"""Real ``resumeflow serve`` subprocesses on loopback ports, and the HTTP and SSE helpers the
service tests (tests/test_server*.py) share: starting and stopping servers, checking error
documents and run objects, reading event streams with httpx-sse.

The contract is docs/service.md and docs/http-api.md. The servers serve the
workflows of tests/rf_server_workflows.py, whose nodes write an fsynced ledger.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import httpx_sse
import pytest
from conftest import TESTS, wait_for
from rf_server_workflows import ledger_lines

SERVED = tuple(f"rf_server_workflows:{name}" for name in ("quick", "slow", "odd", "streamy"))
TOKEN = "test-token-7f3a9c"
TERMINAL = {"workflow_paused", "workflow_complete", "workflow_failed", "workflow_cancelled"}
EVENT_TYPES = {
    "step_start", "step_complete", "step_failed", "step_retrying", "chunk", *TERMINAL,
}
NODE_EVENTS = {"step_start", "step_complete", "step_failed", "step_retrying"}
RUN_KEYS = {
    "run_id", "workflow", "status", "nodes", "completed", "pending", "checkpoint_id", "error",
    "created_at", "updated_at", "labels",
}
CHECKPOINT_KEYS = {"checkpoint_id", "parent_id", "run_id", "created_at", "completed"}
METRICS = (
    "resumeflow_runs_started_total", "resumeflow_runs_finished_total",
    "resumeflow_node_attempts_total", "resumeflow_node_duration_seconds",
    "resumeflow_oom_retries_total", "resumeflow_commit_seconds",
    "resumeflow_state_load_seconds", "resumeflow_active_runs",
)
MiB = 1 << 20


# -- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RESUMEFLOW_TOKEN", None)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.update(extra or {})
    return env


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    db: str
    ledger: Path
    log: Path
    token: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=self.headers, timeout=30, **kwargs)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill9(self) -> None:
        """SIGKILL to the server's whole process group: nothing gets to clean up."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return self.proc.returncode


def launch(
    workdir: Path,
    db: str,
    ledger: Path,
    *,
    token: str | None = TOKEN,
    workflows: tuple[str, ...] = SERVED,
    env_extra: dict[str, str] | None = None,
    token_in_env: bool = False,
) -> Server:
    """Starts ``python -m resumeflow serve`` on a free loopback port and returns once
    ``GET /healthz`` answers 200 (30 s at most)."""
    port = free_port()
    cmd = [sys.executable, "-m", "resumeflow", "serve", *workflows, "--db", db,
           "--host", "127.0.0.1", "--port", str(port)]
    extra = {"RF_LEDGER": str(ledger), **(env_extra or {})}
    if token and token_in_env:
        extra["RESUMEFLOW_TOKEN"] = token
    elif token:
        cmd += ["--token", token]
    log = workdir / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=TESTS,
                                env=child_env(extra), start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", db, ledger, log, token)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.base}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop(5)
            raise AssertionError(f"GET /healthz did not answer 200 within 30 s:\n{server.output()}")
        time.sleep(0.1)


@pytest.fixture(name="servers")
def servers_fixture(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """A factory for servers of this test (on ``tmp_path/runs.db`` unless told otherwise),
    all stopped at teardown."""
    started: list[Server] = []
    ledger = tmp_path / "ledger.txt"
    ledger.touch()

    def start(db: str | None = None, **kwargs) -> Server:
        server = launch(tmp_path, db or str(tmp_path / "runs.db"), ledger, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(10)


@pytest.fixture(scope="module", name="server")
def server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server (with a token) shared by the tests that need no server of their own."""
    workdir = tmp_path_factory.mktemp("server")
    ledger = workdir / "ledger.txt"
    ledger.touch()
    srv = launch(workdir, str(workdir / "runs.db"), ledger)
    yield srv
    srv.stop(10)


@pytest.fixture(scope="module", name="api")
def api_fixture(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


# -- helpers ---------------------------------------------------------------------------------


def new_id(prefix: str = "r") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def no_leak(text: str) -> None:
    """No traceback, source file or internal path in a response."""
    for needle in ("Traceback", 'File "', ".py\"", ".py:", "site-packages", "/work/", "/tmp/"):
        assert needle not in text, f"the response shows {needle!r}: {text[:500]}"


def assert_error(resp: httpx.Response, status: int | tuple[int, ...], *mentions: str) -> dict:
    """``resp`` is the documented error document with that status; its message names
    every one of ``mentions``."""
    allowed = status if isinstance(status, tuple) else (status,)
    assert resp.status_code in allowed, (resp.request.method, str(resp.request.url),
                                         resp.status_code, resp.text[:500])
    no_leak(resp.text)
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and {"type", "message"} <= set(error), body
    assert isinstance(error["type"], str) and error["type"], body
    assert isinstance(error["message"], str) and error["message"], body
    for word in mentions:
        assert word in error["message"], f"the message does not name {word!r}: {error['message']}"
    return error


def start_run(api: httpx.Client, workflow: str, inputs: dict | None = None, **fields) -> dict:
    body = {"workflow": workflow, **fields}
    if inputs is not None:
        body["inputs"] = inputs
    resp = api.post("/api/v1/runs", json=body)
    assert resp.status_code == 202, resp.text
    run = resp.json()
    assert resp.headers["location"].endswith(f"/api/v1/runs/{run['run_id']}"), resp.headers
    assert_run(run)
    return run


def assert_run(run: dict) -> None:
    assert RUN_KEYS <= set(run), sorted(run)
    assert "values" not in run, "a run in the API carries no values"
    assert isinstance(run["updated_at"], (int, float)) and run["updated_at"] > 1e9, run


def get_run(api: httpx.Client, run_id: str) -> dict:
    resp = api.get(f"/api/v1/runs/{run_id}")
    assert resp.status_code == 200, resp.text
    run = resp.json()
    assert_run(run)
    return run


def wait_status(api: httpx.Client, run_id: str, *statuses: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    run = get_run(api, run_id)
    while run["status"] not in statuses:
        assert time.monotonic() < deadline, f"{run_id} still {run['status']}, not {statuses}: {run}"
        time.sleep(0.05)
        run = get_run(api, run_id)
    return run


def wait_started(ledger: Path, run_id: str, node: str, attempt: int = 1, timeout: float = 60) -> None:
    wait_for(lambda: (f"{run_id}/{node}", attempt) in ledger_lines(ledger), timeout=timeout)


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict


def stream(
    base: str,
    run_id: str,
    headers: dict[str, str],
    *,
    last_id: int | None = None,
    after: int | None = None,
    stop: Callable[[Event], bool] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> tuple[list[Event], bool]:
    """Reads ``GET /api/v1/runs/RUN/events``; returns the events (chunks left out) and whether
    the server ended the stream (False when ``stop`` said to disconnect)."""
    sent = dict(headers)
    if last_id is not None:
        sent["Last-Event-ID"] = str(last_id)
    params = {"after": after} if after is not None else None
    events: list[Event] = []
    with httpx.Client(timeout=httpx.Timeout(30, read=40)) as client:
        with httpx_sse.connect_sse(client, "GET", f"{base}/api/v1/runs/{run_id}/events",
                                   headers=sent, params=params) as source:
            assert source.response.status_code == 200, source.response.read()
            assert source.response.headers["content-type"].startswith("text/event-stream")
            for sse in source.iter_sse():
                if not sse.data:
                    continue  # a keep-alive: httpx-sse turns comment + blank line into this
                assert sse.event in EVENT_TYPES, sse
                if sse.event == "chunk":
                    continue
                event = Event(int(sse.id), sse.event, json.loads(sse.data))
                events.append(event)
                if on_event:
                    on_event(event)
                if stop and stop(event):
                    return events, False
    return events, True


def check_events(events: list[Event], run_id: str) -> None:
    """Ids are the seq numbers, strictly increasing; data carries what the contract says."""
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)), f"ids not strictly increasing: {ids}"
    for e in events:
        assert e.type in EVENT_TYPES, e
        assert e.data["run_id"] == run_id, e
        assert e.data["seq"] == e.id, e
        assert isinstance(e.data["ts"], (int, float)), e
        if e.type in NODE_EVENTS:
            assert isinstance(e.data["node"], str) and isinstance(e.data["attempt"], int), e
        if e.type == "step_failed":
            assert "error" in e.data and "retryable" in e.data, e
        if e.type == "step_retrying":
            assert "delay_s" in e.data, e


def full_replay(server: Server, run_id: str) -> list[Event]:
    events, ended = stream(server.base, run_id, server.headers)
    assert ended
    check_events(events, run_id)
    return events
