"""Large outputs: blob files beside the database, every tensor dtype through them, dedup,
orphans left by a crash between a blob write and its commit, storage that does not grow with
the step count, streaming nodes (one compressed entry, live subscribers, cursor resumption),
GPU tensors, and a 1 GiB tensor."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
import resumeflow as rf
import torch
from conftest import python

MiB = 1 << 20


def blob_files(db: str) -> list[Path]:
    root = Path(db + ".blobs")
    return sorted(p for p in root.glob("*/*") if not p.name.startswith(".tmp"))


def store_bytes(db: str) -> int:
    files = [Path(db), Path(db + "-wal")] + blob_files(db)
    return sum(p.stat().st_size for p in files if p.exists())


DTYPES = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8,
    torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64,
    torch.float8_e4m3fn, torch.float8_e5m2,
]


def _sample(dtype: torch.dtype, n: int) -> torch.Tensor:
    base = torch.arange(n, dtype=torch.float32) % 97
    if dtype == torch.bool:
        return base > 40
    if dtype == torch.complex64:
        return torch.complex(base, -base)
    return base.to(dtype)


def test_every_dtype_round_trips_through_a_blob_file(db):
    tensors = {str(d): _sample(d, 300_000).reshape(300, 1000) for d in DTYPES}
    wf = rf.Workflow("dtypes")
    for name, t in tensors.items():
        wf.node(lambda t=t: t, name=name.replace("torch.", "t_"), retry=False)
    with rf.Engine(db, blob_file_threshold=64 << 10) as engine:
        state = engine.run(wf)
        got = engine.get_partial_results(state.run_id)
    assert len(blob_files(db)) == len(DTYPES)
    for name, t in tensors.items():
        out = got[name.replace("torch.", "t_")]
        assert out.dtype == t.dtype and out.shape == t.shape
        assert torch.equal(out.view(torch.uint8), t.view(torch.uint8)), name


def test_a_non_contiguous_tensor_and_a_state_dict_round_trip(db):
    wf = rf.Workflow("layouts")
    base = torch.randn(512, 512)

    @wf.node
    def transposed():
        return base.t()

    @wf.node
    def weights():
        return {"w": base, "b": torch.arange(1000, dtype=torch.float64)}

    with rf.Engine(db, blob_file_threshold=64 << 10) as engine:
        state = engine.run(wf)
        got = engine.get_partial_results(state.run_id)
    assert torch.equal(got["transposed"], base.t())
    assert torch.equal(got["weights"]["w"], base) and got["weights"]["b"][999] == 999


def test_the_same_tensor_returned_by_two_nodes_is_stored_once(db):
    wf = rf.Workflow("dedup")
    t = torch.randn(4 * MiB // 4)

    @wf.node
    def a():
        return t

    @wf.node
    def b():
        return t.clone()

    with rf.Engine(db, blob_file_threshold=MiB) as engine:
        state = engine.run(wf)
        got = engine.get_partial_results(state.run_id)
    assert torch.equal(got["a"], got["b"])
    files = blob_files(db)
    assert len(files) == 1
    assert files[0].stat().st_size >= 4 * MiB


def test_a_tensor_passed_along_100_steps_does_not_grow_the_store(db):
    wf = rf.Workflow("pass-along")
    wf.node(lambda: torch.ones(8 * MiB // 4), name="s0", retry=False)
    for i in range(1, 100):
        wf.node(lambda prev: prev, name=f"s{i}", inputs={"prev": f"s{i - 1}"}, retry=False)
    with rf.Engine(db, blob_file_threshold=MiB) as engine:
        state = engine.run(wf)
    assert state.status == "completed"
    assert len(blob_files(db)) == 1
    assert store_bytes(db) < 8 * MiB + 4 * MiB, store_bytes(db)  # one copy, not 100


CRASHING_CHILD = r"""
import torch, resumeflow as rf
wf = rf.Workflow("orphan")
@wf.node
def big():
    return torch.full((2 << 20,), 3.0)
with rf.Engine({db!r}, blob_file_threshold=1 << 20) as engine:
    engine.run(wf, run_id="r1")
"""


def test_a_crash_between_blob_write_and_commit_leaves_an_orphan_that_cleanup_removes(db):
    child = python(
        CRASHING_CHILD.format(db=db), env_extra={"RESUMEFLOW_FAILPOINT": "after_blob_write"}
    )
    assert child.returncode != 0
    orphans = blob_files(db)
    assert len(orphans) == 1, "the file was written (and fsynced) before the process died"
    wf = rf.Workflow("orphan")

    @wf.node
    def big():
        return torch.full((2 << 20,), 4.0)  # a different value: the old file stays orphaned

    with rf.Engine(db, blob_file_threshold=1 << 20, lease_seconds=0.5) as engine:
        assert engine.get_current_state("r1").nodes["big"].status != "completed"
        time.sleep(0.6)
        state = engine.resume("r1", wf).wait()
        assert state.status == "completed"
        assert engine.get_partial_results("r1")["big"][0] == 4.0
        engine.cleanup()
        assert orphans[0].exists(), "young orphans are kept (a commit may still be in flight)"
        old = time.time() - 2 * 3600
        os.utime(orphans[0], (old, old))
        engine.cleanup()
        assert not orphans[0].exists()
        assert len(blob_files(db)) == 1, "the committed value's file stays"
        assert engine.get_partial_results("r1")["big"][0] == 4.0
        assert engine.check_integrity() == "ok"


def test_cleanup_removes_blob_files_no_checkpoint_keeps(db):
    wf = rf.Workflow("gc")
    generation = [1.0]

    @wf.node
    def big():
        return torch.full((MiB // 2,), generation[0])

    with rf.Engine(db, blob_file_threshold=MiB) as engine:
        state = engine.run(wf)
        generation[0] = 2.0
        engine.resume(state.run_id, wf, rerun=["big"]).wait()
        assert len(blob_files(db)) == 2
        engine.cleanup(state.run_id, keep_last=1)
        assert len(blob_files(db)) == 1
        assert engine.get_partial_results(state.run_id)["big"][0] == 2.0


# -- streaming nodes -------------------------------------------------------------------------


def test_a_stream_of_100k_chunks_commits_one_compressed_entry(db):
    wf = rf.Workflow("stream")

    @wf.node
    def tokens():
        for i in range(100_000):
            yield {"i": i, "text": "token"}

    with rf.Engine(db) as engine:
        state = engine.run(wf)
        kinds = [kind for _, _, kind, node in engine.events(state.run_id) if node == "tokens"]
        out = engine.get_partial_results(state.run_id)["tokens"]
    assert kinds.count("NodeCompleted") == 1 and len(kinds) <= 3, kinds
    assert len(out) == 100_000 and out[-1] == {"i": 99_999, "text": "token"}
    # 100k dicts encode to ~1.7 MB; the bundle is compressed.
    assert store_bytes(db) < 1 * MiB, store_bytes(db)


def test_subscribers_get_chunks_while_the_node_runs(db):
    wf = rf.Workflow("live")

    @wf.node
    def ticks():
        for i in range(5):
            time.sleep(0.05)
            yield i

    with rf.Engine(db) as engine:
        run = engine.start(wf)
        seen = []
        for node, item in run.chunks():
            seen.append((node, item, run.done()))
        state = run.wait()
    assert [item for _, item, _ in seen] == [0, 1, 2, 3, 4]
    assert not seen[0][2], "the first chunk arrived before the run finished"
    assert state.values["ticks"] == [0, 1, 2, 3, 4]


STREAM_CHILD = r"""
import os, resumeflow as rf
LEDGER = os.environ["LEDGER"]
wf = rf.Workflow("cursor")
@wf.node
def rows(ctx):
    start = ctx.load_partial_state() or 0
    with open(LEDGER, "a") as f:
        f.write(f"start {{start}}\n")
    for i in range(start, 10_000):
        if i % 1000 == 0 and i > start:
            ctx.save_partial_state(i)  # the items before i are checkpointed with the cursor
        if i == 5_500 and os.environ.get("CRASH") == "1":
            os._exit(3)
        yield i * 2
with rf.Engine({db!r}, lease_seconds=0.5) as engine:
    if os.environ.get("CRASH") == "1":
        engine.run(wf, run_id="s1")
    else:
        import time; time.sleep(0.6)
        state = engine.resume("s1", wf).wait()
        out = state.values["rows"]
        print(len(out), out == [i * 2 for i in range(10_000)])
"""


def test_a_streaming_node_resumes_from_its_cursor(db, tmp_path):
    ledger = tmp_path / "ledger"
    env = {"LEDGER": str(ledger), "CRASH": "1"}
    first = python(STREAM_CHILD.format(db=db), env_extra=env)
    assert first.returncode == 3, first.stderr
    env["CRASH"] = "0"
    second = python(STREAM_CHILD.format(db=db), env_extra=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == ["10000", "True"]
    # The resumed attempt started at the last cursor (5000), not at 0.
    assert ledger.read_text().split("\n")[:2] == ["start 0", "start 5000"]


# -- big and GPU -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_1_gib_tensor_output_round_trips(db):
    wf = rf.Workflow("huge")

    @wf.node
    def huge():
        t = torch.empty(1 << 30, dtype=torch.uint8)
        t[:: 1 << 20] = 7
        return t

    with rf.Engine(db) as engine:
        state = engine.run(wf)
        del state
        out = engine.get_partial_results(engine.list_runs()[0].run_id)["huge"]
    assert out.numel() == 1 << 30 and int(out[1 << 20]) == 7 and int(out[1]) == 0
    assert len(blob_files(db)) == 1  # 1 GiB is above the 64 MiB default threshold
    assert Path(db).stat().st_size < 16 * MiB


@pytest.mark.cuda
def test_a_gpu_tensor_is_stored_in_a_blob_file_and_restored_to_the_gpu(db):
    wf = rf.Workflow("gpu-blob")

    @wf.node
    def activations():
        return torch.randn(64 * MiB // 4, device="cuda")

    with rf.Engine(db, blob_file_threshold=MiB) as engine:
        state = engine.run(wf)
        live = state.values["activations"]
        got = engine.get_partial_results(state.run_id)["activations"]
    assert got.device.type == "cuda"
    assert torch.equal(got, live)
    assert len(blob_files(db)) == 1



def _address(part: object) -> int | None:
    """The address of a writable buffer's first byte (None for read-only or empty ones)."""
    import ctypes

    view = memoryview(part).cast("B")  # type: ignore[arg-type]
    if view.readonly or not view.nbytes:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def test_a_large_tensor_dict_partial_state_goes_to_a_blob_file_unjoined_and_loads_exactly(tmp_path):
    # Issue 18, W4: a dict of tensors is encoded as views of the tensors' own memory (no
    # joined copy) and saved from those views into one blob file, by a node's context and by
    # the operator API; what loads back is bit-exact, writable, and not the saver's memory.
    from resumeflow import _codec

    state = {"w": torch.arange(3 * MiB // 4, dtype=torch.float32), "b": torch.ones(7, dtype=torch.int8)}
    parts = _codec.encode_parts(state)
    assert state["w"].data_ptr() in {_address(p) for p in parts}, "the tensor's memory is a part"
    assert b"".join(bytes(memoryview(p)) for p in parts) == _codec.encode(state)

    db = str(tmp_path / "s.db")
    wf = rf.Workflow("w4parts")
    seen: list[tuple[bool, bool]] = []

    @wf.node(retry=rf.RetryPolicy(max_attempts=2, initial_interval=0.01))
    def holder(ctx: rf.NodeContext) -> float:
        saved = ctx.load_partial_state()
        if saved is None:
            ctx.save_partial_state({"w": state["w"], "b": state["b"] * 2})
            raise ConnectionError("dropped: the retry resumes from the saved state")
        seen.append((torch.equal(saved["w"], state["w"]), saved["w"].data_ptr() != state["w"].data_ptr()))
        return float(saved["w"][-1]) + float(saved["b"].sum())

    with rf.Engine(db, blob_file_threshold=MiB) as engine:
        run = engine.run(wf, run_id="p")
        assert run.status == "completed", run.error
        assert seen == [(True, True)]
        engine.save_partial_state("p", "holder", state)
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT length(data), file_size FROM partial_states").fetchone()
        assert row == (0, len(_codec.encode(state))), "the state is a blob file, not a row"
        got = engine.get_partial_state("p", "holder")
        assert torch.equal(got["w"], state["w"]) and torch.equal(got["b"], state["b"])
        got["w"][0] = -1.0  # writable, and its own memory
        assert state["w"][0] == 0.0
        assert torch.equal(engine.get_partial_state("p", "holder")["w"], state["w"])
        assert engine.check_integrity() == "ok"
