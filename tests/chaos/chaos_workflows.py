"""Workflows the chaos driver runs and kills: chains, fan-out/fan-in, retries, partial-state
nodes, streaming nodes, and large values stored as blob files (engines here use
``BLOB_FILE_THRESHOLD``). Results are deterministic whatever happens to the process, and
every node execution is appended (fsynced) to the side-effect ledger named by RF_LEDGER as
``run_id|node|attempt``, one per line. Each record starts with a newline of its own: a
child killed inside ``os.write`` can leave part of a record (seen once in 200 kills), and
the next record must not run into it; readers skip such fragments (``driver._ledger``)."""

from __future__ import annotations

import os
import random
import time

import resumeflow as rf

RETRY = rf.RetryPolicy(max_attempts=5, initial_interval=0.001, max_interval=0.01)
#: Values from 1 MiB up are blob files in the chaos stores (every engine opens with it).
BLOB_FILE_THRESHOLD = 1 << 20


def record(ctx: rf.NodeContext) -> None:
    fd = os.open(os.environ["RF_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"\n{ctx.run_id}|{ctx.node_id}|{ctx.attempt}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def jitter() -> None:
    time.sleep(random.random() * float(os.environ.get("RF_NODE_MAX_S", "0.01")))


def chain_wf() -> rf.Workflow:
    wf = rf.Workflow("chaos_chain")
    for i in range(6):
        def step(ctx: rf.NodeContext, prev=None, _i=i):
            record(ctx)
            jitter()
            return (prev or 0) * 3 + _i + 1

        wf.node(step, name=f"c{i}", retry=RETRY, inputs={"prev": f"c{i - 1}"} if i else {})
    return wf


def fan_wf() -> rf.Workflow:
    wf = rf.Workflow("chaos_fan")

    @wf.node(retry=RETRY)
    def src(ctx: rf.NodeContext, seed: int = 1):
        record(ctx)
        jitter()
        return seed

    for i in range(6):
        def worker(ctx: rf.NodeContext, src, _i=i):
            record(ctx)
            jitter()
            return src * 10 + _i

        wf.node(worker, name=f"w{i}", retry=RETRY, inputs={"src": "src"})

    def join(ctx: rf.NodeContext, **parts):
        record(ctx)
        return sum(parts.values())

    import inspect

    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=rf.NodeContext)]
    params += [inspect.Parameter(f"w{i}", inspect.Parameter.KEYWORD_ONLY) for i in range(6)]
    join.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wf.node(join, name="join", retry=RETRY)
    return wf


def retry_wf() -> rf.Workflow:
    wf = rf.Workflow("chaos_retry")

    @wf.node(retry=RETRY)
    def flaky(ctx: rf.NodeContext):
        record(ctx)
        jitter()
        if ctx.attempt % 2 == 1:
            raise ConnectionError(f"transient failure on attempt {ctx.attempt}")
        return 7

    @wf.node(retry=RETRY)
    def after(ctx: rf.NodeContext, flaky):
        record(ctx)
        jitter()
        return flaky + 1

    return wf


def partial_wf() -> rf.Workflow:
    wf = rf.Workflow("chaos_partial")

    @wf.node(retry=RETRY)
    def epochs(ctx: rf.NodeContext, n: int = 8):
        record(ctx)
        state = ctx.load_partial_state() or {"epoch": 0, "total": 0}
        for e in range(state["epoch"], n):
            jitter()
            state = {"epoch": e + 1, "total": state["total"] + e * e}
            ctx.save_partial_state(state)
        return state["total"]

    @wf.node(retry=RETRY)
    def report(ctx: rf.NodeContext, epochs):
        record(ctx)
        return {"total": epochs}

    return wf


def stream_wf() -> rf.Workflow:
    wf = rf.Workflow("chaos_stream")

    @wf.node(retry=RETRY)
    def tokens(ctx: rf.NodeContext, count: int = 40):
        record(ctx)
        for i in range(count):
            if i % 10 == 0:
                jitter()
            yield f"t{i}"

    @wf.node(retry=RETRY)
    def joined(ctx: rf.NodeContext, tokens):
        record(ctx)
        return "".join(tokens)

    return wf


def tensor_wf() -> rf.Workflow:
    """Blob files both ways: an array written by its node's thread (buffer protocol), and
    bytes written by the store when the batch is submitted; the same content in every run
    (dedup across runs and processes)."""
    import numpy as np

    wf = rf.Workflow("chaos_tensor")

    @wf.node(retry=RETRY)
    def array(ctx: rf.NodeContext):
        record(ctx)
        jitter()
        return np.arange(1 << 18, dtype=np.float64)  # 2 MiB

    @wf.node(retry=RETRY)
    def blob(ctx: rf.NodeContext, array):
        record(ctx)
        return (array[: 3 << 17] % 251).astype(np.uint8).tobytes() * 4  # 1.5 MiB

    @wf.node(retry=RETRY)
    def total(ctx: rf.NodeContext, array, blob):
        record(ctx)
        return int(array.sum()) + len(blob)

    return wf


def same(value, expected) -> bool:
    """Equality that also compares numpy arrays."""
    import numpy as np

    if isinstance(expected, np.ndarray):
        return isinstance(value, np.ndarray) and np.array_equal(value, expected)
    if isinstance(expected, dict):
        return (isinstance(value, dict) and value.keys() == expected.keys()
                and all(same(value[k], expected[k]) for k in expected))
    return bool(value == expected)


WORKFLOWS = {
    wf.name: wf
    for wf in (chain_wf(), fan_wf(), retry_wf(), partial_wf(), stream_wf(), tensor_wf())
}

EXPECTED = {
    "chaos_chain": None,  # filled below
    "chaos_fan": {"src": 1, **{f"w{i}": 10 + i for i in range(6)}, "join": sum(10 + i for i in range(6))},
    "chaos_retry": {"flaky": 7, "after": 8},
    "chaos_partial": {"epochs": sum(e * e for e in range(8)), "report": {"total": sum(e * e for e in range(8))}},
    "chaos_stream": {"tokens": [f"t{i}" for i in range(40)], "joined": "".join(f"t{i}" for i in range(40))},
}
def _expected_tensor() -> dict:
    import numpy as np

    array = np.arange(1 << 18, dtype=np.float64)
    blob = (array[: 3 << 17] % 251).astype(np.uint8).tobytes() * 4
    return {"array": array, "blob": blob, "total": int(array.sum()) + len(blob)}


EXPECTED["chaos_tensor"] = _expected_tensor()
_v = 0
_chain = {}
for _i in range(6):
    _v = _v * 3 + _i + 1
    _chain[f"c{_i}"] = _v
EXPECTED["chaos_chain"] = _chain
