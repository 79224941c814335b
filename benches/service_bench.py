"""W10: the service. Runs started per second through HTTP, and the SSE latency from a node's
end to its event reaching stream clients (1 and 50 clients), resumeflow against LangGraph's
own HTTP server, on identical 3-node graphs, measured in one run.

    python benches/service_bench.py [--runs N] [--rounds R] [--quick] [--json OUT]
                                    [--langgraph-venv DIR]

Systems (each a server subprocess on a loopback port, this process the only client):
  resumeflow  ``resumeflow serve service_workflows:noop3 service_workflows:timed3`` on a fresh
              SQLite store, durability "sync" (each node's result fsynced before the next runs),
              the server's own worker executing up to 8 runs at a time.
  langgraph   ``langgraph dev --no-reload --n-jobs-per-worker 8`` (langgraph-api and
              langgraph-runtime-inmem from PyPI, in memory: nothing reaches a disk, so no
              run survives the server) serving ``service_peer_langgraph.py``'s graphs, from the
              venv ``--langgraph-venv`` (default ~/.cache/resumeflow/bench-lg-venv; create it with
              ``python -m venv DIR && DIR/bin/pip install 'langgraph-cli[inmem]'``). Skipped,
              and said so, when that venv is absent.

Throughput: N runs of ``noop3`` (a -> b -> c, no-ops), started by 16 concurrent HTTP clients
(resumeflow ``POST /api/v1/runs``; LangGraph ``POST /runs``, a background stateless run whose
thread is kept). "accepted/s" = N / time until every start request was answered;
"completed/s" = N / time until every run was seen completed (polled every 0.1 s: resumeflow
``GET /api/v1/runs?status=completed``; LangGraph ``POST /threads/search`` on the final values).

SSE latency: a run of ``timed3`` (node a sleeps 1 s, b and c 0.2 s; each returns the time it
ended) with K clients following its stream (resumeflow ``GET /api/v1/runs/ID/events``;
LangGraph ``GET /threads/T/runs/R/stream`` joined to a run created with ``stream_mode``
``updates``); every client notes when each node's completion reached it (resumeflow
``step_complete``; LangGraph the node's ``updates`` message). Latency = that moment - the
node's end time (from the results afterwards / the update itself). For resumeflow it includes
the fsynced commit of the node's result, which happens before the event exists. p50/p95 over
every client, node and round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
STARTERS = 16  # concurrent HTTP clients starting runs
POLL_S = 0.1
PAGE = 1000  # the most either server lists at once
LG_VENV = os.path.expanduser("~/.cache/resumeflow/bench-lg-venv")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Server:
    """A server subprocess; ``base`` its URL once ready."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, ready_path: str) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="rfbench-service-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.ready_path = ready_path
        self.base = ""

    def wait_ready(self, port: int, timeout: float = 120.0) -> None:
        import httpx

        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); log: {self.log.name}")
            try:
                if httpx.get(base + self.ready_path, timeout=2).status_code == 200:
                    self.base = base
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready; log: {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        os.unlink(self.log.name)


#: Polls a server answered with a 5xx (LangGraph's in-memory thread search sometimes fails
#: while runs are changing); such a poll counts as "not yet" and is retried.
POLL_ERRORS: dict[str, int] = {}


async def _count_pages(page: Any, name: str) -> int:
    import httpx

    total = 0
    while True:
        try:
            n = await page(total)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code < 500:
                raise
            POLL_ERRORS[name] = POLL_ERRORS.get(name, 0) + 1
            return -1
        total += n
        if n < PAGE:
            return total


# --- the two systems ------------------------------------------------------------------------


class _Served:
    """A system under test: a server subprocess and its scratch directory."""

    server: Server
    tmp: str
    base: str

    def _serve(self, argv: list[str], env: dict[str, str], ready_path: str, port: int) -> None:
        self.server = Server(argv, env, self.tmp, ready_path)
        self.server.wait_ready(port)
        self.base = self.server.base

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Resumeflow(_Served):
    name = "resumeflow"

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="rfbench-service-")
        port = _free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
        env.pop("RESUMEFLOW_TOKEN", None)
        argv = [sys.executable, "-m", "resumeflow", "serve", "service_workflows:noop3",
                "service_workflows:timed3", "--db", os.path.join(self.tmp, "runs.db"),
                "--port", str(port)]
        self._serve(argv, env, "/healthz", port)

    async def start(self, client: Any, workflow: str, stream: bool = False) -> dict[str, Any]:
        resp = await client.post(f"{self.base}/api/v1/runs", json={"workflow": workflow})
        resp.raise_for_status()
        return {"run_id": resp.json()["run_id"]}

    async def completed(self, client: Any) -> int:
        async def page(offset: int) -> int:
            resp = await client.get(f"{self.base}/api/v1/runs", params={
                "status": "completed", "workflow": "noop3", "limit": PAGE, "offset": offset})
            resp.raise_for_status()
            return len(resp.json()["runs"])

        return await _count_pages(page, self.name)

    async def follow(self, client: Any, run: dict[str, Any], seen: dict[str, float]) -> None:
        from httpx_sse import aconnect_sse

        url = f"{self.base}/api/v1/runs/{run['run_id']}/events"
        async with aconnect_sse(client, "GET", url, timeout=None) as source:
            async for sse in source.aiter_sse():
                if sse.event == "step_complete":
                    seen[json.loads(sse.data)["node"]] = time.time()
                if sse.event.startswith("workflow_"):
                    return

    async def node_ends(self, client: Any, run: dict[str, Any]) -> dict[str, float]:
        resp = await client.get(f"{self.base}/api/v1/runs/{run['run_id']}/results")
        return {k: float(v) for k, v in resp.json()["values"].items()}


class LangGraph(_Served):
    name = "langgraph"

    def __init__(self, venv: str) -> None:
        self.tmp = tempfile.mkdtemp(prefix="rfbench-lg-")
        peer = os.path.join(HERE, "service_peer_langgraph.py")
        with open(os.path.join(self.tmp, "langgraph.json"), "w") as f:
            json.dump({"dependencies": [HERE], "graphs": {"noop3": f"{peer}:noop3", "timed3": f"{peer}:timed3"}}, f)
        port = _free_port()
        env = dict(os.environ, LANGGRAPH_CLI_NO_ANALYTICS="1", LANGSMITH_TRACING="false")
        argv = [os.path.join(venv, "bin", "langgraph"), "dev", "--no-browser", "--no-reload",
                "--allow-blocking", "--n-jobs-per-worker", "8", "--server-log-level", "warning",
                "--port", str(port), "--config", "langgraph.json"]
        self._serve(argv, env, "/ok", port)

    async def start(self, client: Any, workflow: str, stream: bool = False) -> dict[str, Any]:
        if not stream:
            body = {"assistant_id": workflow, "input": {"x": 0}, "on_completion": "keep"}
            resp = await client.post(f"{self.base}/runs", json=body)
            resp.raise_for_status()
            return {"run_id": resp.json()["run_id"]}
        thread = (await client.post(f"{self.base}/threads", json={})).json()["thread_id"]
        body = {"assistant_id": workflow, "input": {}, "stream_mode": ["updates"]}
        resp = await client.post(f"{self.base}/threads/{thread}/runs", json=body)
        resp.raise_for_status()
        return {"run_id": resp.json()["run_id"], "thread_id": thread}

    async def completed(self, client: Any) -> int:
        async def page(offset: int) -> int:
            resp = await client.post(f"{self.base}/threads/search", json={
                "values": {"x": 3}, "limit": PAGE, "offset": offset, "select": ["thread_id"]})
            resp.raise_for_status()
            return len(resp.json())

        return await _count_pages(page, self.name)

    async def follow(self, client: Any, run: dict[str, Any], seen: dict[str, float]) -> None:
        from httpx_sse import aconnect_sse

        self.ends = getattr(self, "ends", {})
        url = f"{self.base}/threads/{run['thread_id']}/runs/{run['run_id']}/stream"
        async with aconnect_sse(client, "GET", url, timeout=None) as source:
            async for sse in source.aiter_sse():
                if sse.event == "updates":
                    now = time.time()
                    for node, update in json.loads(sse.data).items():
                        seen[node] = now
                        self.ends[(run["run_id"], node)] = float(update[node])
                if sse.event == "end":
                    return

    async def node_ends(self, client: Any, run: dict[str, Any]) -> dict[str, float]:
        return {node: t for (rid, node), t in self.ends.items() if rid == run["run_id"]}


# --- measurements ---------------------------------------------------------------------------


async def throughput(system: Any, n: int) -> dict[str, float]:
    import httpx

    limits = httpx.Limits(max_connections=STARTERS + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        before = -1
        while before < 0:
            before = await system.completed(client)
        queue = list(range(n))
        t0 = time.perf_counter()

        async def starter() -> None:
            while queue:
                queue.pop()
                await system.start(client, "noop3")

        await asyncio.gather(*(starter() for _ in range(STARTERS)))
        accepted = time.perf_counter() - t0
        while await system.completed(client) - before < n:
            await asyncio.sleep(POLL_S)
            if time.perf_counter() - t0 > 600:
                raise TimeoutError(f"{system.name}: runs did not complete")
        done = time.perf_counter() - t0
    return {"accepted_per_s": n / accepted, "completed_per_s": n / done}


async def sse_latency(system: Any, clients: int) -> list[float]:
    import httpx

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        run = await system.start(client, "timed3", stream=True)
        seen: list[dict[str, float]] = [{} for _ in range(clients)]
        await asyncio.wait_for(asyncio.gather(*(system.follow(client, run, s) for s in seen)), 60)
        ends = await system.node_ends(client, run)
    out = []
    for per_client in seen:
        if set(per_client) != set(ends):
            raise RuntimeError(f"{system.name}: a client missed nodes: {sorted(per_client)} vs {sorted(ends)}")
        out += [per_client[node] - ends[node] for node in ends]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 30 runs, 1 round")
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--langgraph-venv", default=LG_VENV)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.rounds = 30, 1
    systems: list[Any] = [Resumeflow()]
    if os.path.exists(os.path.join(args.langgraph_venv, "bin", "langgraph")):
        systems.append(LangGraph(args.langgraph_venv))
    else:
        print(f"langgraph: skipped ({args.langgraph_venv} has no langgraph CLI)")
    results: dict[str, dict[str, Any]] = {s.name: {"tput": [], "lat1": [], "lat50": []} for s in systems}
    try:
        for _round in range(args.rounds):
            for system in systems:  # interleaved within each round
                r = results[system.name]
                r["tput"].append(asyncio.run(throughput(system, args.runs)))
                r["lat1"] += asyncio.run(sse_latency(system, 1))
                r["lat50"] += asyncio.run(sse_latency(system, 50))
    finally:
        for system in systems:
            system.close()
    print(f"# service benchmark: {args.runs} runs x {args.rounds} rounds; python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {platform.platform()}")
    print(f"{'system':<11} {'accepted/s':>11} {'completed/s':>12} {'SSE p50/p95 ms (1 client)':>27} "
          f"{'SSE p50/p95 ms (50 clients)':>28}")
    summary: dict[str, Any] = {}
    for name, r in results.items():
        acc = statistics.median(t["accepted_per_s"] for t in r["tput"])
        comp = statistics.median(t["completed_per_s"] for t in r["tput"])
        l1 = (_pct(r["lat1"], 0.5) * 1e3, _pct(r["lat1"], 0.95) * 1e3)
        l50 = (_pct(r["lat50"], 0.5) * 1e3, _pct(r["lat50"], 0.95) * 1e3)
        summary[name] = {"accepted_per_s": acc, "completed_per_s": comp, "sse_1_ms": l1, "sse_50_ms": l50}
        print(f"{name:<11} {acc:>11.1f} {comp:>12.1f} {l1[0]:>17.1f} / {l1[1]:<7.1f} {l50[0]:>18.1f} / {l50[1]:<7.1f}")
    if "langgraph" in summary:
        rf_, lg = summary["resumeflow"], summary["langgraph"]
        print(f"ratios resumeflow/langgraph: accepted {rf_['accepted_per_s'] / lg['accepted_per_s']:.2f}x, "
              f"completed {rf_['completed_per_s'] / lg['completed_per_s']:.2f}x, "
              f"SSE p50 (50 clients) {rf_['sse_50_ms'][0] / lg['sse_50_ms'][0]:.2f}x the latency")
    for name, n in POLL_ERRORS.items():
        print(f"{name}: {n} completion polls answered 5xx (retried)")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
