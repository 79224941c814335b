"""MCP: the tools of docs/mcp.md, driven by the SDK's own ClientSession over
stdio (spawning ``python -m resumeflow mcp ...``) and over streamable HTTP against a real
``resumeflow serve`` (tests/server_harness.py). Side effects land in the fsynced ledger of
tests/rf_server_workflows.py, so "a node did not run again" is checked on what ran.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx_sse
import pytest
from conftest import TESTS, wait_for
from rf_server_workflows import executions, ledger_lines
from server_harness import (  # noqa: F401 (servers_fixture: a fixture used by name)
    RUN_KEYS,
    Server,
    child_env,
    new_id,
    no_leak,
    servers_fixture,
)

mcp = pytest.importorskip("mcp", reason="the MCP SDK (resumeflow[mcp]) is not installed")

from mcp.client.session import ClientSession  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: E402

CONTRACT_TOOLS = {
    "list_workflows": set(),
    "invoke_async": {"workflow", "inputs", "run_id"},
    "invoke_status": {"run_id"},
    "invoke_stream": {"run_id"},
    "invoke_resume": {"run_id", "from_node", "skip", "checkpoint_id"},
    "invoke_cancel": {"run_id"},
    "get_results": {"run_id"},
    "workflow_monitor": {"status"},
    "invoke": {"workflow", "inputs"},
}
SERVED = ("rf_server_workflows:quick", "rf_server_workflows:slow",
          "rf_mcp_workflows:flaky", "rf_mcp_workflows:steps")
STREAM_URL = "http://127.0.0.1:9"  # nothing listens: stdio only names the URL

Session = ClientSession

# -- sessions --------------------------------------------------------------------------------


@asynccontextmanager
async def stdio_session(db: str, ledger: Path, *, workflows: tuple[str, ...] = SERVED) -> AsyncIterator[Session]:
    """A ClientSession on ``python -m resumeflow mcp WORKFLOWS --db DB`` (its stderr in a log)."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "resumeflow", "mcp", *workflows, "--db", db, "--server-url", STREAM_URL],
        env=child_env({"RF_LEDGER": str(ledger)}),
        cwd=str(TESTS),
    )
    with open(Path(db).parent / "mcp-stderr.log", "a") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


@asynccontextmanager
async def http_session(server: Server) -> AsyncIterator[Session]:
    """A ClientSession on ``SERVER/mcp`` over streamable HTTP, with the server's token."""
    async with create_mcp_http_client(headers=server.headers) as http:
        async with streamable_http_client(f"{server.base}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def run(test: Callable[[], Awaitable[None]]) -> None:
    anyio.run(test)


async def call(session: Session, tool: str, arguments: dict[str, Any] | None = None, **kwargs) -> Any:
    """A successful tool call's structured result (a list tool's ``result`` unwrapped)."""
    result = await session.call_tool(tool, arguments or {}, **kwargs)
    text = "".join(getattr(c, "text", "") for c in result.content)
    assert not result.is_error, f"{tool}({arguments}) failed: {text}"
    no_leak(text)
    content = result.structured_content
    assert content is not None, text
    return content["result"] if set(content) == {"result"} else content


async def tool_error(session: Session, tool: str, arguments: dict[str, Any], *mentions: str) -> str:
    """The call is an MCP tool error (isError) whose text names every one of ``mentions``."""
    result = await session.call_tool(tool, arguments)
    text = "".join(getattr(c, "text", "") for c in result.content)
    assert result.is_error, f"{tool}({arguments}) did not fail: {text}"
    no_leak(text)
    for word in mentions:
        assert word in text, f"the error of {tool}({arguments}) does not name {word!r}: {text}"
    return text


async def wait_run(session: Session, run_id: str, *statuses: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = await call(session, "invoke_status", {"run_id": run_id})
        if status["status"] in statuses:
            return status
        assert time.monotonic() < deadline, f"{run_id} still {status['status']}, not {statuses}"
        await anyio.sleep(0.1)


def assert_status_shape(status: dict) -> None:
    assert RUN_KEYS <= set(status), sorted(status)
    assert "values" not in status
    assert set(status["progress"]) == {"completed", "total"}, status["progress"]
    assert isinstance(status["current_steps"], list)


@pytest.fixture(name="ledger_path")
def ledger_fixture(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.txt"
    path.touch()
    return path


# -- stdio -----------------------------------------------------------------------------------


def test_stdio_lists_the_contract_tools_with_schemas_and_descriptions(tmp_path, ledger_path):
    async def test() -> None:
        async with stdio_session(str(tmp_path / "runs.db"), ledger_path) as session:
            tools = {t.name: t for t in (await session.list_tools()).tools}
            assert set(CONTRACT_TOOLS) <= set(tools), sorted(tools)
            for name, arguments in CONTRACT_TOOLS.items():
                tool = tools[name]
                assert tool.description and len(tool.description) > 40, name
                assert set(tool.input_schema.get("properties", {})) == arguments, (name, tool.input_schema)
                for prop in tool.input_schema.get("properties", {}).values():
                    assert prop.get("description"), (name, prop)
            assert tools["invoke_async"].input_schema["required"] == ["workflow"]
            assert tools["invoke_resume"].input_schema["required"] == ["run_id"]
            described = await call(session, "list_workflows")
            assert [w["name"] for w in described] == ["flaky", "quick", "slow", "steps"]
            quick = next(w for w in described if w["name"] == "quick")
            assert [n["id"] for n in quick["nodes"]] == ["a", "b", "c"]
            assert quick["run_inputs"] == [{"name": "count", "required": True, "nodes": ["a"]}]

    run(test)


def test_stdio_invoke_async_then_status_until_completed_then_results(tmp_path, ledger_path):
    async def test() -> None:
        async with stdio_session(str(tmp_path / "runs.db"), ledger_path) as session:
            run_id = new_id("mcp")
            began = time.monotonic()
            started = await call(session, "invoke_async", {"workflow": "quick", "inputs": {"count": 4}, "run_id": run_id})
            assert time.monotonic() - began < 10, "invoke_async returns at once"
            assert set(started) == {"run_id", "status", "estimated_duration_s", "stream_url"}, started
            assert started["run_id"] == run_id and started["status"] in ("queued", "running", "completed")
            assert started["estimated_duration_s"] is None, "no completed run of quick yet"
            assert started["stream_url"] == f"{STREAM_URL}/api/v1/runs/{run_id}/events"

            done = await wait_run(session, run_id, "completed", "failed")
            assert done["status"] == "completed", done
            assert_status_shape(done)
            assert done["progress"] == {"completed": 3, "total": 3} and done["current_steps"] == []
            results = await call(session, "get_results", {"run_id": run_id})
            assert results == {"run_id": run_id, "values": {"a": 4, "b": 5, "c": 10}}
            assert executions(ledger_path, run_id) == {"a": 1, "b": 1, "c": 1}

            again = await call(session, "invoke_async", {"workflow": "quick", "inputs": {"count": 1}})
            assert isinstance(again["estimated_duration_s"], (int, float)) and again["estimated_duration_s"] >= 0
            assert again["run_id"] != run_id
            stream = await call(session, "invoke_stream", {"run_id": run_id})
            assert stream["url"] == started["stream_url"]
            assert {"step_start", "step_complete", "workflow_complete", "workflow_failed"} <= set(stream["event_types"])
            assert isinstance(stream["headers"], dict)
            await wait_run(session, again["run_id"], "completed")

    run(test)


def test_stdio_failed_node_resumed_with_skip_then_with_from_node_after_the_fix(tmp_path, ledger_path):
    gate = tmp_path / "gate"

    async def test() -> None:
        async with stdio_session(str(tmp_path / "runs.db"), ledger_path) as session:
            skipped = new_id("skip")
            await call(session, "invoke_async", {"workflow": "flaky", "run_id": skipped,
                                                 "inputs": {"n": 3, "gate": str(gate)}})
            failed = await wait_run(session, skipped, "failed", "completed")
            assert failed["status"] == "failed" and failed["nodes"]["check"]["status"] == "failed", failed
            assert "gate file is missing" in failed["nodes"]["check"]["error"]
            monitor = await call(session, "workflow_monitor", {"status": "failed"})
            entry = next(r for r in monitor["failed"] if r["run_id"] == skipped)
            assert entry["failed_node"] == "check" and "gate file is missing" in entry["error"], entry

            resumed = await call(session, "invoke_resume", {"run_id": skipped, "skip": {"check": 42}})
            assert_status_shape(resumed)
            assert (await wait_run(session, skipped, "completed", "failed"))["status"] == "completed"
            values = (await call(session, "get_results", {"run_id": skipped}))["values"]
            assert values == {"fetch": 3, "check": 42, "report": {"total": 42}}
            assert executions(ledger_path, skipped) == {"fetch": 1, "check": 1, "report": 1}, \
                "check was skipped, not run; fetch did not run again"
            monitor = await call(session, "workflow_monitor")
            assert skipped not in [r["run_id"] for r in monitor["failed"]]

            fixed = new_id("fix")
            await call(session, "invoke_async", {"workflow": "flaky", "run_id": fixed,
                                                 "inputs": {"n": 5, "gate": str(gate)}})
            assert (await wait_run(session, fixed, "failed", "completed"))["status"] == "failed"
            gate.touch()  # the fix
            await call(session, "invoke_resume", {"run_id": fixed, "from_node": "check"})
            assert (await wait_run(session, fixed, "completed", "failed"))["status"] == "completed"
            values = (await call(session, "get_results", {"run_id": fixed}))["values"]
            assert values == {"fetch": 5, "check": 10, "report": {"total": 10}}
            assert executions(ledger_path, fixed) == {"fetch": 1, "check": 2, "report": 1}

    run(test)


def test_stdio_invoke_sends_progress_notifications(tmp_path, ledger_path):
    async def test() -> None:
        async with stdio_session(str(tmp_path / "runs.db"), ledger_path) as session:
            seen: list[tuple[float, float | None, str | None]] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append((progress, total, message))

            final = await call(session, "invoke", {"workflow": "steps", "inputs": {"pause": 0.3}},
                               progress_callback=on_progress)
            assert final["status"] == "completed" and final["values"] == {"s1": 1, "s2": 2, "s3": 3, "s4": 4}
            assert_status_shape({k: v for k, v in final.items() if k != "values"})
            assert len(seen) >= 3, seen
            assert all(total == 4 for _, total, _ in seen), seen
            done = [p for p, _, _ in seen]
            assert done == sorted(done) and done[-1] == 4, seen
            assert all(message for _, _, message in seen), seen

    run(test)


def test_stdio_bad_arguments_are_tool_errors_and_the_server_keeps_serving(tmp_path, ledger_path):
    async def test() -> None:
        async with stdio_session(str(tmp_path / "runs.db"), ledger_path) as session:
            await tool_error(session, "invoke_async", {"workflow": "no_such_flow"}, "no_such_flow")
            await tool_error(session, "invoke", {"workflow": "no_such_flow"}, "no_such_flow")
            await tool_error(session, "invoke_async", {"workflow": "quick", "inputs": {"cout": 1}}, "cout")
            await tool_error(session, "invoke_async", {"workflow": "quick", "inputs": "count=1"}, "inputs")
            await tool_error(session, "invoke_async", {"workflow": 7}, "workflow")
            await tool_error(session, "invoke_async", {}, "workflow")
            for tool in ("invoke_status", "invoke_stream", "invoke_resume", "invoke_cancel", "get_results"):
                await tool_error(session, tool, {"run_id": "ghost-run"}, "ghost-run")
                await tool_error(session, tool, {"run_id": 123}, "run_id")
            await tool_error(session, "invoke_status", {"run_id": "bad id/with slash"}, "run_id")
            await tool_error(session, "workflow_monitor", {"status": "bogus"}, "status", "bogus")

            run_id = new_id("bad")
            await call(session, "invoke_async", {"workflow": "quick", "inputs": {"count": 1}, "run_id": run_id})
            await tool_error(session, "invoke_async", {"workflow": "quick", "inputs": {"count": 1}, "run_id": run_id},
                             run_id)
            await wait_run(session, run_id, "completed")
            await tool_error(session, "invoke_resume", {"run_id": run_id, "from_node": "zzz"}, "from_node", "zzz")
            await tool_error(session, "invoke_resume", {"run_id": run_id, "skip": {"zzz": 1}}, "skip", "zzz")
            await tool_error(session, "invoke_resume", {"run_id": run_id, "skip": [1]}, "skip")
            await tool_error(session, "invoke_resume", {"run_id": run_id, "checkpoint_id": 0}, "checkpoint_id")
            await tool_error(session, "invoke_resume", {"run_id": run_id, "checkpoint_id": 999}, "999")
            await tool_error(session, "invoke_resume", {"run_id": run_id, "checkpoint_id": "one"}, "checkpoint_id")
            # Still serving, and the run is intact.
            assert len(await call(session, "list_workflows")) == 4
            assert (await call(session, "get_results", {"run_id": run_id}))["values"]["c"] == 4

    run(test)


def _worker(db: str, ledger: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "resumeflow", "worker", "rf_server_workflows:remote", "--db", db],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=TESTS,
        env=child_env({"RF_LEDGER": str(ledger)}), start_new_session=True,
    )


def _kill9(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.timeout(180)
def test_stdio_monitor_shows_a_run_whose_worker_was_killed_as_stuck_until_it_is_recovered(tmp_path, ledger_path):
    """A `resumeflow worker` (the MCP server does not serve `remote`, so it cannot recover the
    run itself) is SIGKILLed mid-node: the run stays `running` under a dead owner's lease, and
    workflow_monitor says so; a new worker recovers it, and the run is active again."""
    db = str(tmp_path / "runs.db")
    run_id = new_id("stuck")
    first = _worker(db, ledger_path)
    second = None
    try:
        submitted = subprocess.run(
            [sys.executable, "-m", "resumeflow", "submit", "rf_server_workflows:remote", "--db", db,
             "--run-id", run_id, "--input", "delay=60"],
            capture_output=True, text=True, cwd=TESTS, env=child_env(), timeout=60,
        )
        assert submitted.returncode == 0, submitted.stderr
        wait_for(lambda: (f"{run_id}/held", 1) in ledger_lines(ledger_path))
        _kill9(first)

        async def test() -> None:
            nonlocal second
            async with stdio_session(db, ledger_path, workflows=("rf_server_workflows:quick",)) as session:
                monitor = await call(session, "workflow_monitor")
                stuck = {r["run_id"]: r for r in monitor["stuck"]}
                assert run_id in stuck, monitor
                assert run_id not in [r["run_id"] for r in monitor["active"]]
                entry = stuck[run_id]
                assert entry["status"] == "running" and "gone" in entry["reason"], entry
                assert entry["current_steps"][0]["node"] == "held", entry
                only = await call(session, "workflow_monitor", {"status": "stuck"})
                assert [r["run_id"] for r in only["stuck"]] == [run_id] and only["active"] == [] == only["failed"]

                second = _worker(db, ledger_path)  # recovers the run: its owner is gone
                deadline = time.monotonic() + 60
                while (f"{run_id}/held", 2) not in ledger_lines(ledger_path):
                    assert time.monotonic() < deadline, "the new worker did not recover the run"
                    await anyio.sleep(0.1)
                monitor = await call(session, "workflow_monitor")
                assert run_id not in [r["run_id"] for r in monitor["stuck"]], monitor
                assert run_id in [r["run_id"] for r in monitor["active"]], monitor

                cancelled = await call(session, "invoke_cancel", {"run_id": run_id})
                assert_status_shape(cancelled)
                assert (await wait_run(session, run_id, "cancelled", timeout=30))["status"] == "cancelled"

        run(test)
    finally:
        _kill9(first)
        if second is not None:
            second.send_signal(signal.SIGTERM)
            try:
                second.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _kill9(second)
    assert executions(ledger_path, run_id) == {"first": 1, "held": 2}


_HOLDER = """
import sys
import resumeflow as rf
import rf_server_workflows as w
with rf.Engine(sys.argv[1], lease_seconds=1.0) as engine:
    engine.run(w.remote, {"delay": 60}, run_id=sys.argv[2])
"""


@pytest.mark.timeout(120)
def test_a_live_worker_that_stopped_renewing_its_lease_is_stuck_with_an_expired_lease(tmp_path, ledger_path):
    """The other stuck case: the lease holder's process still exists (here: SIGSTOPped, as a
    hung host would be) but its lease ran out; the lease is read from the store."""
    import resumeflow as rf
    from resumeflow.server import insight

    db = str(tmp_path / "runs.db")
    run_id = new_id("expired")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, db, run_id], cwd=TESTS,
                              env=child_env({"RF_LEDGER": str(ledger_path)}), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (f"{run_id}/held", 1) in ledger_lines(ledger_path))
        os.killpg(holder.pid, signal.SIGSTOP)
        with rf.Engine(db) as engine:
            def stuck() -> dict[str, Any] | None:
                found = {r["run_id"]: r for r in insight.overview(engine, "stuck")["stuck"]}
                return found.get(run_id)

            wait_for(lambda: stuck() is not None, timeout=30)
            entry = stuck()
            assert entry is not None and "lease expired" in entry["reason"], entry
            assert entry["lease_owner"] and f":{holder.pid}:" in entry["lease_owner"], entry
    finally:
        _kill9(holder)


# -- streamable HTTP on `resumeflow serve` ---------------------------------------------------

HTTP_SERVED = ("rf_server_workflows:quick", "rf_server_workflows:slow", "rf_mcp_workflows:steps")


def test_http_mcp_needs_the_token(servers):
    srv = servers(workflows=HTTP_SERVED)
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                        "clientInfo": {"name": "t", "version": "0"}}}
    accept = {"Accept": "application/json, text/event-stream"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": srv.token or ""}):
        resp = httpx.post(f"{srv.base}/mcp", json=hello, headers={**accept, **headers}, timeout=30)
        assert resp.status_code == 401, (headers, resp.status_code, resp.text[:300])
        no_leak(resp.text)
    resp = httpx.post(f"{srv.base}/mcp", json=hello, headers={**accept, **srv.headers}, timeout=30)
    assert resp.status_code == 200, resp.text[:300]

    async def test() -> None:
        async with http_session(srv) as session:
            assert set(CONTRACT_TOOLS) <= {t.name for t in (await session.list_tools()).tools}

    run(test)


@pytest.mark.timeout(180)
def test_http_invoke_async_status_results_stream_progress_and_errors(servers):
    srv = servers(workflows=HTTP_SERVED)

    async def test() -> None:
        async with http_session(srv) as session:
            run_id = new_id("http")
            started = await call(session, "invoke_async", {"workflow": "slow", "run_id": run_id,
                                                           "inputs": {"delay": 0.5}})
            assert started["stream_url"] == f"{srv.base}/api/v1/runs/{run_id}/events", started
            stream = await call(session, "invoke_stream", {"run_id": run_id})
            assert stream["url"] == started["stream_url"]
            assert stream["headers"].get("Authorization") == f"Bearer {srv.token}"
            # The stream it names is the server's SSE stream, read with the headers it gives.
            types = await anyio.to_thread.run_sync(lambda: _read_stream(stream["url"], stream["headers"]))
            assert types[-1] == "workflow_complete" and set(types) <= set(stream["event_types"]), types
            done = await wait_run(session, run_id, "completed")
            assert_status_shape(done)
            assert done["progress"] == {"completed": 3, "total": 3}
            assert (await call(session, "get_results", {"run_id": run_id}))["values"]["finish"] == "x!?"

            seen: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(progress)

            final = await call(session, "invoke", {"workflow": "steps", "inputs": {"pause": 0.2}},
                               progress_callback=on_progress)
            assert final["status"] == "completed" and seen and seen[-1] == 4, seen

            cancel_id = new_id("http-cancel")
            await call(session, "invoke_async", {"workflow": "slow", "run_id": cancel_id, "inputs": {"delay": 60}})
            deadline = time.monotonic() + 30
            while (await call(session, "invoke_status", {"run_id": cancel_id}))["current_steps"] == []:
                assert time.monotonic() < deadline
                await anyio.sleep(0.1)
            await call(session, "invoke_cancel", {"run_id": cancel_id})
            assert (await wait_run(session, cancel_id, "cancelled", timeout=30))["status"] == "cancelled"

            await tool_error(session, "invoke_async", {"workflow": "flaky"}, "flaky")  # not served here
            await tool_error(session, "invoke_status", {"run_id": "ghost"}, "ghost")
            await tool_error(session, "get_results", {"run_id": ["x"]}, "run_id")
        assert httpx.get(f"{srv.base}/healthz", timeout=10).status_code == 200

    run(test)


def _read_stream(url: str, headers: dict[str, str]) -> list[str]:
    types = []
    with httpx.Client(timeout=httpx.Timeout(30, read=40)) as client:
        with httpx_sse.connect_sse(client, "GET", url, headers=headers) as source:
            assert source.response.status_code == 200
            for sse in source.iter_sse():
                if sse.data and sse.event != "chunk":
                    types.append(sse.event)
                    json.loads(sse.data)
    return types
