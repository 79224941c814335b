"""pytest-benchmark suite for the workloads of docs/benchmarks.md, at small sizes.

    pytest benches/ --benchmark-only [--benchmark-group-by=group]

Each test times the same target as benches/compare.py (benches/workloads.py ``prepare_*``):
the store is opened and the graph built in ``setup``, outside the clock, and closed in
``teardown``; a fresh store per round. Tests of one workload share a benchmark group, so the
table compares resumeflow with its floors/peers side by side. No test asserts a timing.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads as wl  # noqa: E402

N = 100  # W1 chain length
WIDTH = 50  # W2 fan-out width
ROUNDS = 5


def bench_prepared(benchmark, prepare, *, rounds: int = ROUNDS, warmup: int = 1, per_unit=None):
    """Times ``target()`` of a fresh ``prepare()`` per round; returns the last target's result."""

    def setup():
        target, close = prepare()
        return (target, close), {}

    result = benchmark.pedantic(
        lambda target, close: target(), setup=setup, teardown=lambda target, close: close(),
        rounds=rounds, warmup_rounds=warmup,
    )
    stats = getattr(benchmark, "stats", None)
    if per_unit and stats is not None:
        unit, count = per_unit
        benchmark.extra_info[unit] = stats.stats.median / count * 1e6
    return result


# --- W1 -------------------------------------------------------------------------------------

W1_SYSTEMS = {
    "resumeflow-sync": lambda: wl.prepare_rf_chain(N, "sync"),
    "resumeflow-batched": lambda: wl.prepare_rf_chain(N, "batched"),
    "sqlite3-floor-FULL": lambda: wl.prepare_sqlite_floor(N, "FULL"),
    "sqlite3-floor-NORMAL": lambda: wl.prepare_sqlite_floor(N, "NORMAL"),
    "langgraph-sync": lambda: wl.prepare_langgraph_chain(N),
}


@pytest.mark.parametrize("system", list(W1_SYSTEMS))
def test_w1_chain(benchmark, system):
    if system.startswith("langgraph") and not wl.have("langgraph.checkpoint.sqlite"):
        pytest.skip("langgraph-checkpoint-sqlite not installed")
    benchmark.group = f"W1 chain {N}"
    bench_prepared(benchmark, W1_SYSTEMS[system], per_unit=("us_per_node", N))


# --- W2 -------------------------------------------------------------------------------------

W2_SYSTEMS = {
    "resumeflow-sync": lambda: wl.prepare_rf_fanout(WIDTH, "sync"),
    "resumeflow-batched": lambda: wl.prepare_rf_fanout(WIDTH, "batched"),
    "resumeflow-sync-max_concurrency-1": lambda: wl.prepare_rf_fanout(WIDTH, "sync", 1),
    "langgraph-sync": lambda: wl.prepare_langgraph_fanout(WIDTH),
}


@pytest.mark.parametrize("system", list(W2_SYSTEMS))
def test_w2_fanout(benchmark, system):
    if system.startswith("langgraph") and not wl.have("langgraph.checkpoint.sqlite"):
        pytest.skip("langgraph-checkpoint-sqlite not installed")
    benchmark.group = f"W2 fan-out {WIDTH}"
    bench_prepared(benchmark, W2_SYSTEMS[system], per_unit=("us_per_node", WIDTH + 2))


# --- W3 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def w3_crashed():
    k = 500  # ~1,000 events
    wf = wl.w3_workflow(k)
    wf.validate()
    built = wl.w3_build_crashed(k, wf)
    yield wf, built
    shutil.rmtree(os.path.dirname(built["db"]), ignore_errors=True)


def test_w3_resume_crashed_run(benchmark, w3_crashed):
    """``resume`` of a SIGKILLed run with 500 completed nodes, to the end of its one node left."""
    wf, built = w3_crashed
    benchmark.group = "W3 recovery"
    benchmark.extra_info["events"] = built["events"]
    bench_prepared(benchmark, lambda: wl.prepare_w3_resume(built["db"], wf))


# --- W4 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def w4_store():
    store = wl.W4Store()
    yield store
    store.close()


@pytest.mark.parametrize("size", [wl.KiB, wl.MiB], ids=["1KiB", "1MiB"])
@pytest.mark.parametrize(
    "system", ["resumeflow", "raw-write-fsync", "raw-overwrite-fdatasync", "torch-save-fsync"]
)
def test_w4_save(benchmark, w4_store, tmp_path, size, system):
    state = wl.tensor_state(size)
    counter = [0]
    path = str(tmp_path / "state.bin")

    def save():
        counter[0] += 1
        state["t0"][0] = float(counter[0])  # new bytes every call: no dedup by content
        if system == "resumeflow":
            w4_store.engine.save_partial_state("w4", "holder", state)
        elif system == "raw-write-fsync":
            wl.raw_write_fsync(path, wl._buffers(state))
        elif system == "raw-overwrite-fdatasync":
            wl.raw_overwrite_fdatasync(path, wl._buffers(state))
        else:
            wl.torch_save_fsync(path, state)

    benchmark.group = f"W4 save {wl.size_label(size)}"
    benchmark(save)


@pytest.mark.parametrize("size", [wl.KiB, wl.MiB], ids=["1KiB", "1MiB"])
@pytest.mark.parametrize("system", ["resumeflow", "raw-read", "torch-load"])
def test_w4_load(benchmark, w4_store, tmp_path, size, system):
    import torch

    state = wl.tensor_state(size)
    nbytes = wl.state_nbytes(state)
    path = str(tmp_path / "state.bin")
    if system == "resumeflow":
        w4_store.engine.save_partial_state("w4", "holder", state)
        load = lambda: w4_store.engine.get_partial_state("w4", "holder")  # noqa: E731
    elif system == "raw-read":
        wl.raw_write_fsync(path, wl._buffers(state))
        load = lambda: wl.raw_read(path, nbytes)  # noqa: E731
    else:
        wl.torch_save_fsync(path, state)
        load = lambda: torch.load(path)  # noqa: E731
    benchmark.group = f"W4 load {wl.size_label(size)}"
    got = benchmark(load)
    if system != "raw-read":
        assert all(torch.equal(got[k], state[k]) for k in state)


# --- W5 -------------------------------------------------------------------------------------

W5_BYTES = 16 * wl.MiB


@pytest.fixture(scope="module")
def w5_tensor():
    return wl.big_tensor(W5_BYTES)


@pytest.mark.parametrize("system", ["resumeflow", "resumeflow-noop", "torch-save-fsync",
                                    "raw-write-fsync"])
def test_w5_large_output(benchmark, w5_tensor, tmp_path, system):
    benchmark.group = f"W5 node returns {W5_BYTES // wl.MiB} MiB"
    if system.startswith("resumeflow"):
        noop = system.endswith("noop")
        bench_prepared(benchmark, lambda: wl.prepare_w5_run(w5_tensor, noop=noop), rounds=3)
        return
    path = str(tmp_path / "t.bin")
    if system == "torch-save-fsync":
        benchmark.pedantic(wl.torch_save_fsync, args=(path, w5_tensor), rounds=3, warmup_rounds=1)
    else:
        buffers = [memoryview(w5_tensor.numpy()).cast("B")]
        benchmark.pedantic(wl.raw_write_fsync, args=(path, buffers), rounds=3, warmup_rounds=1)


# --- W6 -------------------------------------------------------------------------------------

W6_RUNS = 50


def test_w6_concurrent_runs(benchmark):
    benchmark.group = "W6 concurrent runs"
    completed = bench_prepared(benchmark, lambda: wl.prepare_w6(W6_RUNS, 10), rounds=3,
                               per_unit=("us_per_run", W6_RUNS))
    assert completed == W6_RUNS


# --- W7 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def w7_matrix():
    import torch

    prev = torch.get_num_threads()
    yield wl.w7_setup(0.15)
    torch.set_num_threads(prev)


@pytest.mark.parametrize("mode", ["parallel", "serial"])
def test_w7_parallel_torch_nodes(benchmark, w7_matrix, mode):
    a, reps = w7_matrix
    benchmark.group = "W7 two torch nodes"
    bench_prepared(benchmark, lambda: wl.prepare_w7_rf(a, reps, mode == "parallel"), rounds=3)


# --- W8 -------------------------------------------------------------------------------------


def test_w8_cleanup(benchmark):
    benchmark.group = "W8 cleanup"
    bench_prepared(benchmark, lambda: wl.prepare_w8_cleanup(20, 10), rounds=3, warmup=0)
