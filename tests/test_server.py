"""``resumeflow serve``: every endpoint of the HTTP API with its success and its documented
errors, resume/interrupt/cancel through HTTP, auth, hostile input and metrics — against a real
server (``python -m resumeflow serve`` subprocess on a loopback port) and a real HTTP client.

The contract is docs/service.md and docs/http-api.md; the harness is
tests/server_harness.py. Event streams, killed servers and many runs: tests/test_server_stream.py.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from conftest import TESTS, wait_for
from rf_server_workflows import executions
from server_harness import (  # noqa: F401 (the *_fixture names: fixtures used by name)
    CHECKPOINT_KEYS,
    METRICS,
    TOKEN,
    MiB,
    Server,
    api_fixture,
    assert_error,
    assert_run,
    child_env,
    free_port,
    full_replay,
    get_run,
    new_id,
    no_leak,
    server_fixture,
    servers_fixture,
    start_run,
    wait_started,
    wait_status,
)

# -- health, workflows, the OpenAPI document -------------------------------------------------


def test_healthz_and_metrics_need_no_token(server: Server):
    health = httpx.get(f"{server.base}/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    metrics = httpx.get(f"{server.base}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")


def test_workflows_lists_the_served_workflows_with_their_wiring(api: httpx.Client):
    resp = api.get("/api/v1/workflows")
    assert resp.status_code == 200
    listed = {w["name"]: w for w in resp.json()}
    assert set(listed) == {"quick", "slow", "odd", "streamy"}
    assert listed["quick"]["nodes"] == [
        {"id": "a", "inputs": {}},
        {"id": "b", "inputs": {"a": "a"}},
        {"id": "c", "inputs": {"b": "b"}},
    ]
    assert [n["id"] for n in listed["slow"]["nodes"]] == ["prepare", "nap", "finish"]
    assert listed["slow"]["nodes"][1]["inputs"] == {"prepare": "prepare"}


def test_openapi_document_lists_every_api_path(server: Server):
    resp = httpx.get(f"{server.base}/openapi.json", headers=server.headers, timeout=10)
    assert resp.status_code == 200
    doc = resp.json()
    assert str(doc["openapi"]).startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    paths = {re.sub(r"\{[^}]+\}", "{id}", p): ops for p, ops in doc["paths"].items()}
    expected = {
        "/api/v1/workflows": {"get"},
        "/api/v1/runs": {"get", "post"},
        "/api/v1/runs/{id}": {"get"},
        "/api/v1/runs/{id}/results": {"get"},
        "/api/v1/runs/{id}/history": {"get"},
        "/api/v1/runs/{id}/resume": {"post"},
        "/api/v1/runs/{id}/interrupt": {"post"},
        "/api/v1/runs/{id}/cancel": {"post"},
        "/api/v1/runs/{id}/events": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, f"{path} missing from /openapi.json: {sorted(paths)}"
        assert methods <= set(paths[path]), (path, sorted(paths[path]))
        for method in methods:
            assert paths[path][method].get("responses"), (path, method)
    # The POST /api/v1/runs body is described (the same model that validates it).
    post = doc["paths"][next(p for p in doc["paths"] if p.rstrip("/") == "/api/v1/runs")]["post"]
    assert "requestBody" in post


# -- starting runs, reading them -------------------------------------------------------------


def test_post_run_answers_202_with_location_and_the_run_completes_by_itself(server: Server, api):
    run_id = new_id("quick")
    run = start_run(api, "quick", {"count": 3}, run_id=run_id, labels={"team": "ml"})
    assert run["run_id"] == run_id and run["workflow"] == "quick"
    assert run["status"] in {"queued", "running", "completed"}
    assert run["labels"].get("team") == "ml"

    done = wait_status(api, run_id, "completed", "failed")
    assert done["status"] == "completed", done
    assert done["completed"] == ["a", "b", "c"] and done["pending"] == []
    assert done["error"] is None
    assert set(done["nodes"]) == {"a", "b", "c"}
    assert all(n["status"] == "completed" and n["attempt"] == 1 for n in done["nodes"].values())
    assert done["updated_at"] >= done["created_at"]

    results = api.get(f"/api/v1/runs/{run_id}/results")
    assert results.status_code == 200
    assert results.json() == {"run_id": run_id, "values": {"a": 3, "b": 4, "c": 8}}

    history = api.get(f"/api/v1/runs/{run_id}/history")
    assert history.status_code == 200
    checkpoints = history.json()
    assert isinstance(checkpoints, list) and checkpoints
    for cp in checkpoints:
        assert CHECKPOINT_KEYS <= set(cp), cp
        assert cp["run_id"] == run_id
    ids = [cp["checkpoint_id"] for cp in checkpoints]
    assert ids == sorted(ids, reverse=True), "history is newest first"
    assert sorted(checkpoints[0]["completed"]) == ["a", "b", "c"]
    assert done["checkpoint_id"] == checkpoints[0]["checkpoint_id"]
    assert executions(server.ledger, run_id) == {"a": 1, "b": 1, "c": 1}


def test_post_run_without_run_id_gets_one(api: httpx.Client):
    run = start_run(api, "quick", {"count": 0})
    assert run["run_id"]
    assert wait_status(api, run["run_id"], "completed", "failed")["status"] == "completed"


def test_list_runs_filters_newest_first_and_pages(api: httpx.Client):
    ids = [new_id("list") for _ in range(3)]
    for run_id in ids:
        start_run(api, "quick", {"count": 1}, run_id=run_id)
        wait_status(api, run_id, "completed", "failed")
    paused = new_id("list-paused")
    start_run(api, "quick", {"count": 1}, run_id=paused, until="a")
    wait_status(api, paused, "paused")

    resp = api.get("/api/v1/runs")
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) >= {"runs"}
    runs = body["runs"]
    for run in runs:
        assert_run(run)
    created = [r["created_at"] for r in runs]
    assert created == sorted(created, reverse=True), "newest first"
    listed = [r["run_id"] for r in runs]
    assert set(ids + [paused]) <= set(listed)

    completed = api.get("/api/v1/runs", params={"status": "completed", "workflow": "quick"}).json()["runs"]
    assert completed and all(r["status"] == "completed" and r["workflow"] == "quick" for r in completed)
    assert set(ids) <= {r["run_id"] for r in completed}
    assert paused not in {r["run_id"] for r in completed}
    only_paused = api.get("/api/v1/runs", params={"status": "paused"}).json()["runs"]
    assert paused in {r["run_id"] for r in only_paused}
    assert all(r["status"] == "paused" for r in only_paused)
    assert api.get("/api/v1/runs", params={"workflow": "slow-no-such"}).json()["runs"] == []

    two = api.get("/api/v1/runs", params={"workflow": "quick", "limit": 2}).json()["runs"]
    assert len(two) == 2
    second = api.get("/api/v1/runs", params={"workflow": "quick", "limit": 1, "offset": 1}).json()["runs"]
    assert [r["run_id"] for r in second] == [two[1]["run_id"]]


def test_run_exists_is_409(api: httpx.Client):
    run_id = new_id("dup")
    start_run(api, "quick", {"count": 1}, run_id=run_id)
    resp = api.post("/api/v1/runs", json={"workflow": "quick", "inputs": {"count": 2}, "run_id": run_id})
    error = assert_error(resp, 409, run_id)
    assert error["type"] == "RunExists"
    wait_status(api, run_id, "completed")
    results = api.get(f"/api/v1/runs/{run_id}/results").json()
    assert results["values"]["a"] == 1, "the first run is untouched"


def test_unknown_run_is_404_on_every_run_route(api: httpx.Client):
    missing = new_id("missing")
    for method, path in [
        ("GET", f"/api/v1/runs/{missing}"),
        ("GET", f"/api/v1/runs/{missing}/results"),
        ("GET", f"/api/v1/runs/{missing}/history"),
        ("GET", f"/api/v1/runs/{missing}/events"),
        ("POST", f"/api/v1/runs/{missing}/resume"),
        ("POST", f"/api/v1/runs/{missing}/interrupt"),
        ("POST", f"/api/v1/runs/{missing}/cancel"),
    ]:
        kwargs = {"json": {}} if method == "POST" else {}
        error = assert_error(api.request(method, path, **kwargs), 404, missing)
        assert error["type"] == "RunNotFound", (method, path, error)


def test_unknown_workflow_is_404_and_nothing_is_imported(api: httpx.Client):
    # Valid workflow names no one serves: 404. Names a Workflow could not have (the engine's
    # rule is [A-Za-z0-9_.-]+) may also be refused as invalid (422).
    for name, status in [("nope", 404), ("subprocess", 404), ("os.system", 404),
                         ("os:system", (404, 422)), ("rf_workflows:chain", (404, 422))]:
        run_id = new_id("unknown-wf")
        resp = api.post("/api/v1/runs", json={"workflow": name, "inputs": {}, "run_id": run_id})
        assert_error(resp, status, "workflow" if resp.status_code == 422 else name)
        assert_error(api.get(f"/api/v1/runs/{run_id}"), 404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "workflow"),
        ({"workflow": 5}, "workflow"),
        ({"workflow": ["quick"]}, "workflow"),
        ({"workflow": "quick", "inputs": [1, 2]}, "inputs"),
        ({"workflow": "quick", "inputs": "count=1"}, "inputs"),
        ({"workflow": "quick", "inputs": {"count": 1}, "run_id": 7}, "run_id"),
        ({"workflow": "quick", "inputs": {"count": 1}, "run_id": ""}, "run_id"),
        ({"workflow": "quick", "inputs": {"count": 1}, "run_id": "x" * 201}, "run_id"),
        ({"workflow": "quick", "inputs": {"count": 1}, "run_id": "a b"}, "run_id"),
        ({"workflow": "quick", "inputs": {"count": 1}, "run_id": "../../etc/passwd"}, "run_id"),
        ({"workflow": "quick", "inputs": {"count": 1}, "run_id": "x'; DROP TABLE runs;--"}, "run_id"),
        ({"workflow": "quick", "inputs": {"count": 1}, "labels": "team=ml"}, "labels"),
        ({"workflow": "quick", "inputs": {"count": 1}, "labels": {"team": {"x": 1}}}, "labels"),
        ({"workflow": "quick", "inputs": {"count": 1}, "until": ["b"]}, "until"),
        ({"workflow": "quick", "inputs": {"count": 1}, "surprise": True}, "surprise"),
    ],
)
def test_invalid_run_bodies_are_422_naming_the_field(api: httpx.Client, body: dict, field: str):
    before = {r["run_id"] for r in api.get("/api/v1/runs", params={"limit": 500}).json()["runs"]}
    assert_error(api.post("/api/v1/runs", json=body), 422, field)
    after = {r["run_id"] for r in api.get("/api/v1/runs", params={"limit": 500}).json()["runs"]}
    assert after == before, "a refused request stores nothing"


@pytest.mark.parametrize(
    ("inputs", "until", "named"),
    [
        ({}, None, "count"),                       # a required input is missing
        ({"count": 1, "zebra": 2}, None, "zebra"),  # an input no node takes
        ({"count": 1}, "no_such_node", "no_such_node"),
    ],
)
def test_graph_errors_of_a_request_are_422(api: httpx.Client, inputs, until, named):
    run_id = new_id("graph")
    body = {"workflow": "quick", "inputs": inputs, "run_id": run_id}
    if until:
        body["until"] = until
    assert_error(api.post("/api/v1/runs", json=body), 422, named)
    assert_error(api.get(f"/api/v1/runs/{run_id}"), 404)


def test_malformed_json_bodies_are_422(api: httpx.Client):
    for content in (b"{not json", b"[1, 2, 3]", b'"quick"', b""):
        resp = api.post("/api/v1/runs", content=content, headers={"content-type": "application/json"})
        assert_error(resp, 422)


def test_invalid_queries_are_422_naming_the_parameter(api: httpx.Client):
    assert_error(api.get("/api/v1/runs", params={"limit": "ten"}), 422, "limit")
    assert_error(api.get("/api/v1/runs", params={"offset": "x"}), 422, "offset")
    run = start_run(api, "quick", {"count": 1})
    wait_status(api, run["run_id"], "completed")
    assert_error(api.get(f"/api/v1/runs/{run['run_id']}/events", params={"after": "x"}), 422, "after")


def test_results_show_values_json_cannot_hold_as_type_and_repr(api: httpx.Client):
    run = start_run(api, "odd", {})
    done = wait_status(api, run["run_id"], "completed", "failed")
    assert done["status"] == "completed", done
    resp = api.get(f"/api/v1/runs/{run['run_id']}/results")
    assert resp.status_code == 200

    def strict(constant):
        raise AssertionError(f"the results are not strict JSON: {constant}")

    values = json.loads(resp.text, parse_constant=strict)["values"]
    assert values["plain"] == {"k": [1, 2.5, "s", None, True]}
    grid = values["grid"]
    assert isinstance(grid, dict) and {"type", "repr", "dtype", "shape"} <= set(grid), grid
    assert grid["shape"] == [2, 3] and "float32" in grid["dtype"]
    raw = values["raw"]
    assert isinstance(raw, dict) and {"type", "repr"} <= set(raw), raw
    assert "bytes" in raw["type"]
    nan = values["not_a_number"]
    assert isinstance(nan, dict) and {"type", "repr"} <= set(nan), nan
    assert "nan" in nan["repr"].lower()


# -- resume, interrupt, cancel ---------------------------------------------------------------


def test_until_then_resume_and_the_resume_variants(server: Server, api: httpx.Client):
    run_id = new_id("until")
    start_run(api, "quick", {"count": 5}, run_id=run_id, until="b")
    paused = wait_status(api, run_id, "paused", "completed", "failed")
    assert paused["status"] == "paused" and sorted(paused["completed"]) == ["a", "b"]
    assert executions(server.ledger, run_id) == {"a": 1, "b": 1}

    resp = api.post(f"/api/v1/runs/{run_id}/resume", json={})
    assert resp.status_code == 202, resp.text
    assert_run(resp.json())
    assert wait_status(api, run_id, "completed", "failed")["status"] == "completed"
    assert executions(server.ledger, run_id) == {"a": 1, "b": 1, "c": 1}, "no completed node re-ran"

    # A completed run cannot be resumed as is.
    error = assert_error(api.post(f"/api/v1/runs/{run_id}/resume", json={}), 409, run_id)
    assert error["type"] == "RunNotResumable"

    # rerun: c runs again, nothing else.
    resp = api.post(f"/api/v1/runs/{run_id}/resume", json={"rerun": ["c"]})
    assert resp.status_code == 202, resp.text
    wait_for(lambda: executions(server.ledger, run_id)["c"] == 2, timeout=30)
    wait_status(api, run_id, "completed")
    assert executions(server.ledger, run_id) == {"a": 1, "b": 1, "c": 2}

    # updates: b's output replaced, its dependant c runs again with it.
    resp = api.post(f"/api/v1/runs/{run_id}/resume", json={"updates": {"b": 100}})
    assert resp.status_code == 202, resp.text
    wait_for(lambda: executions(server.ledger, run_id)["c"] == 3, timeout=30)
    wait_status(api, run_id, "completed")
    assert api.get(f"/api/v1/runs/{run_id}/results").json()["values"] == {"a": 5, "b": 100, "c": 200}

    # checkpoint_id: back to the checkpoint where only a was complete; b and c run again.
    history = api.get(f"/api/v1/runs/{run_id}/history").json()
    only_a = next(cp for cp in history if cp["completed"] == ["a"])
    resp = api.post(f"/api/v1/runs/{run_id}/resume", json={"checkpoint_id": only_a["checkpoint_id"]})
    assert resp.status_code == 202, resp.text
    wait_for(lambda: executions(server.ledger, run_id)["c"] == 4, timeout=30)
    wait_status(api, run_id, "completed")
    assert executions(server.ledger, run_id) == {"a": 1, "b": 2, "c": 4}
    assert api.get(f"/api/v1/runs/{run_id}/results").json()["values"] == {"a": 5, "b": 6, "c": 12}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rerun": "c"}, "rerun"),
        ({"rerun": [1]}, "rerun"),
        ({"checkpoint_id": "latest"}, "checkpoint_id"),
        ({"updates": [["b", 1]]}, "updates"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_resume_bodies_are_422_naming_the_field(api: httpx.Client, body, field):
    run = start_run(api, "quick", {"count": 1})
    wait_status(api, run["run_id"], "completed")
    assert_error(api.post(f"/api/v1/runs/{run['run_id']}/resume", json=body), 422, field)


def test_resume_of_a_running_run_is_409(server: Server, api: httpx.Client):
    run_id = new_id("busy")
    start_run(api, "slow", {"delay": 30}, run_id=run_id)
    wait_started(server.ledger, run_id, "nap")
    error = assert_error(api.post(f"/api/v1/runs/{run_id}/resume", json={}), 409, run_id)
    assert error["type"] in {"RunLocked", "RunNotResumable"}
    assert api.post(f"/api/v1/runs/{run_id}/cancel").status_code == 202
    wait_status(api, run_id, "cancelled", timeout=10)


def test_interrupt_through_http_then_resume(server: Server, api: httpx.Client):
    run_id = new_id("interrupt")
    start_run(api, "slow", {"delay": 1.5}, run_id=run_id)
    wait_started(server.ledger, run_id, "nap")
    resp = api.post(f"/api/v1/runs/{run_id}/interrupt")
    assert resp.status_code == 202, resp.text
    assert_run(resp.json())
    paused = wait_status(api, run_id, "paused", "completed", "failed", timeout=30)
    assert paused["status"] == "paused", paused
    assert "nap" in paused["completed"], "the in-flight node finished before the pause"
    assert "finish" not in paused["completed"]
    assert executions(server.ledger, run_id)["finish"] == 0

    assert api.post(f"/api/v1/runs/{run_id}/resume", json={}).status_code == 202
    assert wait_status(api, run_id, "completed", "failed")["status"] == "completed"
    assert executions(server.ledger, run_id) == {"prepare": 1, "nap": 1, "finish": 1}, \
        "no completed node ran again"


def test_cancel_through_http_ends_a_slow_run_within_5_s(server: Server, api: httpx.Client):
    run_id = new_id("cancel")
    start_run(api, "slow", {"delay": 60}, run_id=run_id)
    wait_started(server.ledger, run_id, "nap")
    began = time.monotonic()
    resp = api.post(f"/api/v1/runs/{run_id}/cancel")
    assert resp.status_code == 202, resp.text
    assert_run(resp.json())
    wait_status(api, run_id, "cancelled", timeout=5)
    assert time.monotonic() - began < 5.5
    events = full_replay(server, run_id)
    assert events[-1].type == "workflow_cancelled"
    assert executions(server.ledger, run_id)["finish"] == 0


def test_interrupt_and_cancel_leave_an_ended_run_as_it_is(api: httpx.Client):
    run = start_run(api, "quick", {"count": 2})
    wait_status(api, run["run_id"], "completed")
    for action in ("interrupt", "cancel"):
        resp = api.post(f"/api/v1/runs/{run['run_id']}/{action}")
        assert resp.status_code == 202, resp.text
        assert resp.json()["status"] == "completed"
    assert get_run(api, run["run_id"])["status"] == "completed"


# -- hostile input ---------------------------------------------------------------------------


def in_path(run_id: str) -> str:
    """``run_id`` as one path segment, dots included (an HTTP client would fold ``..``)."""
    return quote(run_id, safe="").replace(".", "%2E")


def test_hostile_input_gets_4xx_and_the_server_keeps_serving(server: Server, api):
    before = [r["run_id"] for r in api.get("/api/v1/runs", params={"limit": 50}).json()["runs"]]

    oversized = {"workflow": "slow", "inputs": {"label": "x" * (MiB + 1024)}, "run_id": new_id("big")}
    assert_error(api.post("/api/v1/runs", json=oversized), (413, 422))

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap must hold on a streamed body
        yield b'{"workflow": "slow", "inputs": {"label": "'
        for _ in range(2 * 64):
            yield b"y" * (16 * 1024)
        yield b'"}}'

    assert_error(api.post("/api/v1/runs", content=chunks(),
                          headers={"content-type": "application/json"}), (413, 422))
    deep = b'{"workflow": "quick", "inputs": {"count": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    resp = api.post("/api/v1/runs", content=deep, headers={"content-type": "application/json"})
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
    no_leak(resp.text)

    # (".." alone is a valid run id by the engine's rule, [A-Za-z0-9_.:@+-]{1,200}.)
    for run_id in ("../../etc/passwd", "../x", "x'; DROP TABLE runs;--", "r\x00n", "a/b", "%00"):
        resp = api.post("/api/v1/runs", json={"workflow": "quick", "inputs": {"count": 1},
                                              "run_id": run_id})
        assert_error(resp, 422, "run_id")
        for suffix in ("", "/results", "/history", "/events"):
            assert_error(api.get(f"/api/v1/runs/{in_path(run_id)}{suffix}"), (404, 422))
        for action in ("resume", "interrupt", "cancel"):
            assert_error(api.post(f"/api/v1/runs/{in_path(run_id)}/{action}", json={}), (404, 422))

    for name in ("../../etc/passwd", "os:system", "'; DROP TABLE runs;--", "__import__('os')"):
        assert_error(api.post("/api/v1/runs", json={"workflow": name, "inputs": {}}), (404, 422))
    for params in ({"workflow": "x' OR '1'='1"}, {"status": "'; DROP TABLE runs;--"},
                   {"workflow": "%", "status": "_"}):
        resp = api.get("/api/v1/runs", params=params)
        if resp.status_code == 200:
            assert resp.json()["runs"] == [], (params, resp.json())
        else:
            assert_error(resp, 422)

    # A body well under the cap is fine.
    fits = start_run(api, "slow", {"label": "z" * (MiB // 2), "delay": 0}, run_id=new_id("fits"))
    assert wait_status(api, fits["run_id"], "completed", "failed")["status"] == "completed"

    assert httpx.get(f"{server.base}/healthz", timeout=10).status_code == 200
    after = api.get("/api/v1/runs", params={"limit": 50})
    assert after.status_code == 200
    listed = [r["run_id"] for r in after.json()["runs"]]
    assert listed[0] == fits["run_id"]
    assert listed[1:] == before[: len(listed) - 1], "the store holds what it held, plus one run"
    ok = start_run(api, "quick", {"count": 9})
    assert wait_status(api, ok["run_id"], "completed")["status"] == "completed"


# -- auth ------------------------------------------------------------------------------------


def _api_routes(run_id: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", "/api/v1/workflows", None),
        ("POST", "/api/v1/runs", {"workflow": "quick", "inputs": {"count": 1}}),
        ("GET", "/api/v1/runs", None),
        ("GET", f"/api/v1/runs/{run_id}", None),
        ("GET", f"/api/v1/runs/{run_id}/results", None),
        ("GET", f"/api/v1/runs/{run_id}/history", None),
        ("POST", f"/api/v1/runs/{run_id}/resume", {"rerun": ["c"]}),
        ("POST", f"/api/v1/runs/{run_id}/interrupt", None),
        ("POST", f"/api/v1/runs/{run_id}/cancel", None),
        ("GET", f"/api/v1/runs/{run_id}/events", None),
        ("GET", "/api/v1/runs/no-such-run", None),
    ]


def test_every_api_route_needs_the_token(server: Server, api: httpx.Client):
    run = start_run(api, "quick", {"count": 1})
    wait_status(api, run["run_id"], "completed")
    before = len(api.get("/api/v1/runs", params={"limit": 500}).json()["runs"])
    wrong = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer"},
    ]
    with httpx.Client(base_url=server.base, timeout=10) as anonymous:
        for method, path, body in _api_routes(run["run_id"]):
            for headers in wrong:
                resp = anonymous.request(method, path, json=body, headers=headers)
                assert_error(resp, 401)
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/metrics").status_code == 200
    assert len(api.get("/api/v1/runs", params={"limit": 500}).json()["runs"]) == before
    assert executions(server.ledger, run["run_id"]) == {"a": 1, "b": 1, "c": 1}


def test_token_from_the_environment(servers):
    srv = servers(token="env-token-123", token_in_env=True)
    assert_error(httpx.get(f"{srv.base}/api/v1/workflows", timeout=10), 401)
    ok = httpx.get(f"{srv.base}/api/v1/workflows", headers=srv.headers, timeout=10)
    assert ok.status_code == 200


def test_without_a_token_the_api_is_open_on_loopback(servers):
    srv = servers(token=None)
    with srv.client() as api:
        run = start_run(api, "quick", {"count": 4})
        assert wait_status(api, run["run_id"], "completed")["status"] == "completed"


def test_a_non_loopback_host_without_a_token_is_refused(tmp_path: Path):
    # 192.0.2.1 (TEST-NET-1) is on no interface: even a server that failed to refuse could
    # not listen there, so this test never opens a port beyond loopback.
    done = subprocess.run(
        [sys.executable, "-m", "resumeflow", "serve", "rf_server_workflows:quick",
         "--db", str(tmp_path / "runs.db"), "--host", "192.0.2.1", "--port", str(free_port())],
        capture_output=True, text=True, cwd=TESTS, env=child_env(), timeout=60,
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "token" in done.stderr.lower(), done.stderr
    assert "Traceback" not in done.stderr


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_carry_the_documented_names_and_no_run_ids(server: Server, api: httpx.Client):
    from prometheus_client.parser import text_string_to_metric_families

    run_id = new_id("metered")
    start_run(api, "quick", {"count": 1}, run_id=run_id)
    wait_status(api, run_id, "completed")
    resp = httpx.get(f"{server.base}/metrics", timeout=10)
    assert resp.status_code == 200
    text = resp.text
    for name in METRICS:
        assert name in text, f"{name} missing from /metrics"
    assert run_id not in text, "no run ids in the metrics"
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    started = samples.get(("resumeflow_runs_started_total", (("workflow", "quick"),)))
    assert started is not None and started >= 1, sorted(k for k in samples if "started" in k[0])
    finished = [v for (name, labels), v in samples.items()
                if name == "resumeflow_runs_finished_total"
                and dict(labels).get("workflow") == "quick" and dict(labels).get("status") == "completed"]
    assert finished and finished[0] >= 1
    attempts = [v for (name, labels), v in samples.items()
                if name == "resumeflow_node_attempts_total"
                and dict(labels).get("workflow") == "quick" and dict(labels).get("node") == "a"]
    assert attempts and sum(attempts) >= 1, "node attempts are counted per workflow and node"
    durations = samples.get(("resumeflow_node_duration_seconds_count", (("node", "a"), ("workflow", "quick"))))
    inf = samples.get(("resumeflow_node_duration_seconds_bucket", (("le", "+Inf"), ("node", "a"), ("workflow", "quick"))))
    assert durations is not None and durations >= 1 and inf == durations, "completed attempts are timed"
    active = [v for (name, _), v in samples.items() if name == "resumeflow_active_runs"]
    assert active and all(v >= 0 and not math.isnan(v) for v in active)


