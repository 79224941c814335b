"""Transient network failures are retried and final ones are not: real clients (httpx sync and
async, requests, aiohttp, grpcio) against real flaky servers on loopback, and the openai and
anthropic SDKs' exceptions built from real responses. A 429's ``Retry-After`` sets the wait
before the next attempt, read from the engine's own event timestamps."""

from __future__ import annotations

import email.utils
import functools
import http.server
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent import futures

import pytest
import resumeflow as rf
from resumeflow import _network
from resumeflow.server import stream

httpx = pytest.importorskip("httpx")
requests = pytest.importorskip("requests")
aiohttp = pytest.importorskip("aiohttp")

#: Quick retries; a max_interval that a ``Retry-After: 1`` fits under.
POLICY = rf.RetryPolicy(max_attempts=4, initial_interval=0.01, max_interval=5.0, jitter=False)
CLIENT_TIMEOUT_S = 0.5


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    """``GET /<scenario>/<key>``: each key counts its own requests (see :meth:`do_GET`)."""

    protocol_version = "HTTP/1.1"
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def _partial_body(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b'{"items": [' + b"1, " * 30)
        self.wfile.flush()
        self.close_connection = True

    def do_GET(self) -> None:
        _, scenario, key = self.path.split("/")
        with self.lock:
            self.counts[self.path] += 1
            n = self.counts[self.path]
        if scenario == "flaky" and n <= 2:
            return self._send(503, {"error": "busy"})
        if scenario == "ratelimit" and n == 1:
            return self._send(429, {"error": "slow down"}, {"Retry-After": "1"})
        if scenario == "conflict" and n == 1:
            return self._send(409, {"error": "conflict"})
        if scenario == "bad":
            return self._send(400, {"error": "bad request"})
        if scenario == "truncated" and n == 1:
            return self._partial_body()  # then a clean close (FIN) short of Content-Length
        if scenario == "reset" and n == 1:
            self._partial_body()
            time.sleep(0.1)  # the client is reading the body when the RST comes
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # Closed here, before the server's own shutdown() could send a FIN: an RST.
            self.connection.close()
            self.rfile.close()
            return None
        if scenario == "hang" and n == 1:
            self.stop.wait(30)  # never answers while the client waits
            self.close_connection = True
            return None
        return self._send(200, {"scenario": scenario, "key": key, "requests": n})


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # broken connections are what these tests make


@pytest.fixture(scope="module")
def server():
    srv = QuietServer(("127.0.0.1", 0), FlakyHandler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    FlakyHandler.stop.set()
    srv.shutdown()
    srv.server_close()


def get_httpx(url: str):
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        response = client.get(url)
        response.raise_for_status()
        return response.json()


async def get_httpx_async(url: str):
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        response = await client.get(url)
        response.raise_for_status()
        return response.json()


def get_requests(url: str):
    response = requests.get(url, timeout=CLIENT_TIMEOUT_S)
    response.raise_for_status()
    return response.json()


async def get_aiohttp(url: str):
    timeout = aiohttp.ClientTimeout(total=10, sock_read=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(url) as response:
            response.raise_for_status()
            return await response.json()


CLIENTS = {"httpx": get_httpx, "httpx_async": get_httpx_async, "requests": get_requests, "aiohttp": get_aiohttp}
#: The package whose exception each client raises.
PACKAGES = {"httpx": ("httpx",), "httpx_async": ("httpx",), "requests": ("requests",), "aiohttp": ("aiohttp",)}


def fetching_workflow(client: str, url: str, raised: list[type], policy=POLICY) -> rf.Workflow:
    """One node that GETs ``url`` with ``client``, noting each exception's type."""
    wf = rf.Workflow(f"net_{client}")
    get = CLIENTS[client]
    if client.endswith(("_async", "aiohttp")):

        @wf.node(name="fetch", retry=policy)
        async def fetch_async():
            try:
                return await get(url)
            except Exception as exc:
                raised.append(type(exc))
                raise

    else:

        @wf.node(name="fetch", retry=policy)
        def fetch():
            try:
                return get(url)
            except Exception as exc:
                raised.append(type(exc))
                raise

    return wf


def node_events(engine: rf.Engine, run_id: str) -> list[dict]:
    return [e for e in engine.events(run_id, after_seq=0, limit=1000) if e["node"] == "fetch"]


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize(
    ("scenario", "attempts"),
    [("flaky", 3), ("ratelimit", 2), ("truncated", 2), ("reset", 2), ("hang", 2)],
)
def test_transient_failures_are_retried_until_the_node_completes(db, server, client, scenario, attempts):
    raised: list[type] = []
    url = f"{server}/{scenario}/{client}"
    with rf.Engine(db) as engine:
        state = engine.run(fetching_workflow(client, url, raised), run_id="r")
        events = node_events(engine, "r")
    assert state.values["fetch"] == {"scenario": scenario, "key": client, "requests": attempts}
    assert state.nodes["fetch"].attempt == attempts
    assert [e["kind"] for e in events].count("NodeRetryScheduled") == attempts - 1
    # Each failure was the client's own exception, classified by its class hierarchy.
    assert len(raised) == attempts - 1
    for exc_type in raised:
        assert exc_type.__module__.partition(".")[0] in PACKAGES[client], exc_type


@pytest.mark.parametrize("client", list(CLIENTS))
def test_retry_after_sets_the_wait_and_the_reason(db, server, client):
    url = f"{server}/ratelimit/after-{client}"
    with rf.Engine(db) as engine:
        state = engine.run(fetching_workflow(client, url, []), run_id="r")
        events = node_events(engine, "r")
    assert state.nodes["fetch"].attempt == 2
    failed = next(e for e in events if e["kind"] == "NodeFailed")
    retry = next(e for e in events if e["kind"] == "NodeRetryScheduled")
    second = [e for e in events if e["kind"] == "NodeStarted"][1]
    # The backoff alone is 10 ms: the server's Retry-After decided the wait.
    assert second["at"] - failed["at"] >= 1.0, (failed, second)
    assert retry["data"]["delay_ms"] >= 1000
    assert retry["data"]["reason"] == "HTTP 429 Retry-After: 1"
    msg = stream.message("r", retry, {"fetch": 1})
    assert msg is not None and msg["event"] == "step_retrying"
    assert json.loads(msg["data"])["reason"] == "HTTP 429 Retry-After: 1"


@pytest.mark.parametrize("client", list(CLIENTS))
def test_a_400_fails_at_once(db, server, client):
    raised: list[type] = []
    with rf.Engine(db) as engine:
        with pytest.raises(rf.RunFailed) as info:
            engine.run(fetching_workflow(client, f"{server}/bad/{client}", raised), run_id="r")
        events = node_events(engine, "r")
    node = info.value.state.nodes["fetch"]
    assert node.attempt == 1 and node.retryable is False
    assert "NodeRetryScheduled" not in [e["kind"] for e in events]
    assert len(raised) == 1
    assert _network.status_of(_raise_again(client, f"{server}/bad/again-{client}")) == 400


def _raise_again(client: str, url: str) -> BaseException:
    """The exception ``client`` raises for ``url`` (run outside any workflow)."""
    import asyncio
    import inspect

    get = CLIENTS[client]
    try:
        result = get(url)
        if inspect.iscoroutine(result):
            asyncio.run(result)
    except Exception as exc:
        return exc
    raise AssertionError(f"{url} did not fail")


def test_retry_on_status_chooses_the_statuses(db, server):
    # 409 is final by default ...
    with rf.Engine(db) as engine:
        with pytest.raises(rf.RunFailed):
            engine.run(fetching_workflow("httpx", f"{server}/conflict/default", []), run_id="d")
        # ... and retried when the policy names it.
        policy = rf.RetryPolicy(max_attempts=3, initial_interval=0.01, retry_on=rf.retry_on_status(409))
        wf = fetching_workflow("httpx", f"{server}/conflict/named", [], policy=policy)
        assert engine.run(wf, run_id="n").nodes["fetch"].attempt == 2
    rule = rf.retry_on_status(429)
    assert rule(_raise_again("requests", f"{server}/flaky/rule")) is False, "503 not named"
    assert rule(_raise_again("httpx", f"{server}/bad/rule")) is False
    assert rule(httpx.ConnectError("refused")) is True, "no status: the default classifier"
    assert rule(ValueError()) is False
    with pytest.raises(ValueError, match="status"):
        rf.retry_on_status(99)
    with pytest.raises(ValueError):
        rf.retry_on_status()


def test_urllib3_errors_and_max_retry_reasons(server):
    urllib3 = pytest.importorskip("urllib3")
    port = _closed_port()
    pool = urllib3.PoolManager(retries=False)
    with pytest.raises(urllib3.exceptions.NewConnectionError) as refused:
        pool.request("GET", f"http://127.0.0.1:{port}/")
    assert rf.is_retryable(refused.value)
    with pytest.raises(urllib3.exceptions.MaxRetryError) as exhausted:
        urllib3.PoolManager(retries=urllib3.Retry(total=0)).request("GET", f"http://127.0.0.1:{port}/")
    assert isinstance(exhausted.value.reason, urllib3.exceptions.NewConnectionError)
    assert rf.is_retryable(exhausted.value)
    with pytest.raises(urllib3.exceptions.ReadTimeoutError) as slow:
        pool.request("GET", f"{server}/hang/urllib3", timeout=0.2)
    assert rf.is_retryable(slow.value)
    with pytest.raises(urllib3.exceptions.ProtocolError) as cut:
        pool.request("GET", f"{server}/truncated/urllib3")
    assert rf.is_retryable(cut.value)
    final = urllib3.exceptions.MaxRetryError(None, "/", reason=urllib3.exceptions.LocationParseError("x"))
    assert rf.is_retryable(final) is False


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the openai and anthropic SDKs: exceptions from real responses, no network -----------------


def _sdk_http(sdk):
    """The httpx flavour the SDK builds its responses with (httpx, or its fork httpx2)."""
    return getattr(sdk._exceptions, "httpx2", None) or getattr(sdk._exceptions, "httpx", httpx)


def _response(sdk, status: int, headers: dict[str, str] | None = None):
    http_ = _sdk_http(sdk)
    request = http_.Request("POST", "https://api.example.invalid/v1/messages")
    return http_.Response(status, headers=headers or {}, request=request, json={"error": {"message": "x"}})


def _status_error(sdk, status: int, headers: dict[str, str] | None = None):
    """The exception the SDK's own client raises for a response of ``status``."""
    return _sdk_client(sdk)._make_status_error_from_response(_response(sdk, status, headers))


@functools.cache
def _sdk_client(sdk):
    return (sdk.OpenAI if sdk.__name__ == "openai" else sdk.Anthropic)(api_key="test-key")


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_llm_sdk_errors_follow_the_table(name):
    sdk = pytest.importorskip(name)
    request = _sdk_http(sdk).Request("POST", "https://api.example.invalid/v1")
    expected = {429: ("RateLimitError", True), 500: ("InternalServerError", True),
                503: ("InternalServerError", True), 529: ("InternalServerError", True),
                400: ("BadRequestError", False), 401: ("AuthenticationError", False),
                403: ("PermissionDeniedError", False), 404: ("NotFoundError", False),
                422: ("UnprocessableEntityError", False)}
    for status, (base, retryable) in expected.items():
        exc = _status_error(sdk, status)
        assert isinstance(exc, getattr(sdk, base)), (status, type(exc))
        assert rf.is_retryable(exc) is retryable, (status, type(exc))
        assert _network.status_of(exc) == status
    assert rf.is_retryable(sdk.APIConnectionError(request=request))
    assert rf.is_retryable(sdk.APITimeoutError(request=request))
    assert rf.is_retryable(sdk.RateLimitError("slow", response=_response(sdk, 429), body=None))
    if name == "anthropic":
        overloaded = _status_error(sdk, 529)
        assert type(overloaded).__name__ == "OverloadedError" and rf.is_retryable(overloaded)


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_llm_sdk_retry_after_headers(name):
    sdk = pytest.importorskip(name)
    exc = _status_error(sdk, 429, {"retry-after-ms": "1500", "retry-after": "2"})
    assert _network.retry_after(exc) == (1.5, "HTTP 429 retry-after-ms: 1500")
    assert _network.retry_after(_status_error(sdk, 529, {"retry-after": "20"})) == (20.0, "HTTP 529 Retry-After: 20")
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds, reason = _network.retry_after(_status_error(sdk, 503, {"Retry-After": date}))
    assert 25 < seconds <= 30 and reason == f"HTTP 503 Retry-After: {date}"
    assert _network.retry_after(_status_error(sdk, 503, {"retry-after": "soon"})) is None
    # An error re-raised by the node keeps the hint of the one it came from.
    try:
        try:
            raise _status_error(sdk, 429, {"retry-after": "3"})
        except Exception as inner:
            raise rf.Retryable("upstream busy") from inner
    except rf.Retryable as outer:
        assert _network.retry_after(outer) == (3.0, "HTTP 429 Retry-After: 3")


# --- grpc: a real grpcio server on loopback ------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_target():
    grpc = pytest.importorskip("grpc")
    counts: Counter[bytes] = Counter()
    lock = threading.Lock()

    def call(request: bytes, context) -> bytes:
        with lock:
            counts[request] += 1
            n = counts[request]
        kind = request.split(b":")[0]
        if kind == b"slow":
            time.sleep(1.0)
        codes = {b"unavailable": grpc.StatusCode.UNAVAILABLE, b"exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
                 b"invalid": grpc.StatusCode.INVALID_ARGUMENT, b"denied": grpc.StatusCode.PERMISSION_DENIED}
        if kind in codes and (n == 1 or not request.endswith(b":once")):
            context.abort(codes[kind], kind.decode())
        return b"ok %d" % n

    handler = grpc.method_handlers_generic_handler("rf.Test", {"Call": grpc.unary_unary_rpc_method_handler(call)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def _grpc_call(target: str, payload: bytes, timeout: float = 5.0) -> bytes:
    import grpc

    with grpc.insecure_channel(target) as channel:
        return channel.unary_unary("/rf.Test/Call")(payload, timeout=timeout)


def _grpc_error(target: str, payload: bytes, timeout: float = 5.0):
    import grpc

    with pytest.raises(grpc.RpcError) as info:
        _grpc_call(target, payload, timeout)
    return info.value


def test_grpc_status_codes_follow_the_table(grpc_target):
    import grpc

    cases = [(b"unavailable", 5.0, True), (b"exhausted", 5.0, True), (b"slow", 0.2, True),
             (b"invalid", 5.0, False), (b"denied", 5.0, False)]
    for payload, timeout, retryable in cases:
        exc = _grpc_error(grpc_target, payload, timeout)
        assert rf.is_retryable(exc) is retryable, (payload, exc.code())
    assert _grpc_error(grpc_target, b"slow", 0.2).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Nobody listening: the channel's own UNAVAILABLE.
    refused = _grpc_error(f"127.0.0.1:{_closed_port()}", b"x", 2.0)
    assert refused.code() == grpc.StatusCode.UNAVAILABLE and rf.is_retryable(refused)


def test_grpc_node_is_retried_through_unavailable(db, grpc_target):
    wf = rf.Workflow("net_grpc")

    @wf.node(retry=POLICY)
    def fetch():
        return _grpc_call(grpc_target, b"unavailable:node:once")

    with rf.Engine(db) as engine:
        state = engine.run(wf, run_id="g")
    assert state.values["fetch"] == b"ok 2" and state.nodes["fetch"].attempt == 2


def test_import_resumeflow_imports_no_network_client():
    clients = ("httpx", "httpx2", "requests", "urllib3", "aiohttp", "grpc", "openai", "anthropic")
    code = f"import sys, resumeflow; print(sorted(m for m in {clients!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
