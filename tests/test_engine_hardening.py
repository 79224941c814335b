"""Regression tests for defects a demanding user hit in the engine: timeouts with partial
state, timed-out attempts overlapping their retry, a full store, a missing blob file, blob
directory permissions, huge error texts and the cost of streaming checkpoints."""

from __future__ import annotations

import asyncio
import glob
import os
import stat
import threading
import time

import pytest
import resumeflow as rf


def test_timed_out_attempt_saving_partial_state_is_refused_alone_and_the_retry_resumes(db):
    """Item 1: the stale attempt's save is refused inside that attempt only; attempt 2 starts
    from the last accepted partial state and the run completes."""
    refusals: list[str] = []
    starts: list[tuple[int, object]] = []
    wf = rf.Workflow("timeout_partial")

    @wf.node(timeout=0.3, retry=rf.RetryPolicy(max_attempts=3, initial_interval=0.01))
    def slow(ctx: rf.NodeContext):
        start = ctx.load_partial_state() or 0
        starts.append((ctx.attempt, start))
        for i in range(start, 6):
            time.sleep(0.1 if ctx.attempt == 1 else 0.01)
            try:
                ctx.save_partial_state(i + 1)
            except rf.Cancelled as exc:
                refusals.append(str(exc))
                raise
        return "done"

    with rf.Engine(db) as engine:
        state = engine.start(wf, run_id="L").wait(timeout=20)
        assert state.status == "completed", state.error
        assert state.values["slow"] == "done"
        assert state.nodes["slow"].attempt == 2
        assert starts[0] == (1, 0)
        assert starts[1][0] == 2 and 1 <= starts[1][1] <= 4, starts  # resumed, not from 0
        assert refusals and "slow" in refusals[0]
        # The engine holds no lease on the run: a resume-style call is not RunLocked.
        assert engine.get_current_state("L").status == "completed"
        assert engine.recover([wf]) == []


def test_timed_out_sync_attempt_never_overlaps_its_retry_and_sees_cancelled(db):
    """Item 2 (sync): attempt 2 starts only after attempt 1 returned; attempt 1 sees
    ctx.cancelled and its heartbeat raises rf.Cancelled; nothing runs after the run ended."""
    log: list[tuple[float, str]] = []
    lock = threading.Lock()
    seen: dict[int, object] = {}
    wf = rf.Workflow("timeout_overlap")

    def note(msg: str) -> None:
        with lock:
            log.append((time.monotonic(), msg))

    @wf.node(timeout=0.3, retry=rf.RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=False))
    def slow(ctx: rf.NodeContext):
        note(f"start {ctx.attempt}")
        time.sleep(0.6)
        seen[ctx.attempt] = ctx.cancelled
        try:
            ctx.heartbeat()
        except rf.Cancelled:
            seen[ctx.attempt] = "cancelled"
        note(f"end {ctx.attempt}")
        return ctx.attempt

    with rf.Engine(db) as engine:
        state = engine.start(wf, run_id="t2").wait(timeout=20)
        ended = time.monotonic()
    assert state.status == "failed"
    assert "TimeoutError" in state.nodes["slow"].error
    assert state.nodes["slow"].attempt == 2
    order = [m for _, m in log]
    assert order == ["start 1", "end 1", "start 2", "end 2"], order
    assert seen == {1: "cancelled", 2: "cancelled"}
    assert all(t <= ended for t, _ in log), "no attempt ran after the run ended"


def test_timed_out_async_attempt_is_cancelled_before_its_retry(db):
    """Item 2 (async): a timed-out `async def` node gets CancelledError at its await."""
    log: list[str] = []
    wf = rf.Workflow("async_timeout")

    @wf.node(timeout=0.3, retry=rf.RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=False))
    async def an(ctx: rf.NodeContext):
        log.append(f"start {ctx.attempt}")
        try:
            await asyncio.sleep(0.2 if ctx.attempt == 2 else 5.0)
        except asyncio.CancelledError:
            log.append(f"cancelled {ctx.attempt}")
            raise
        log.append(f"end {ctx.attempt}")
        return ctx.attempt

    with rf.Engine(db) as engine:
        t0 = time.monotonic()
        state = engine.start(wf).wait(timeout=20)
        took = time.monotonic() - t0
    assert state.status == "completed" and state.values["an"] == 2
    assert log == ["start 1", "cancelled 1", "start 2", "end 2"], log
    assert took < 4.0, "attempt 1 was cancelled, not waited for"


def _cap_workflow() -> rf.Workflow:
    wf = rf.Workflow("cap")

    @wf.node
    def small():
        return 1

    @wf.node
    def big(small):
        return os.urandom(3_000_000)

    @wf.node
    def after(big):
        return len(big)

    return wf


def test_full_store_fails_the_run_cleanly_naming_the_cap(db):
    """Item 5: the write past max_store_bytes raises a StoreError naming the cap, the run
    ends failed with its lease released, nothing earlier is lost, and a resume without the
    cap completes it."""
    wf = _cap_workflow()
    cap = 2 << 20
    with rf.Engine(db, max_store_bytes=cap) as engine:
        with pytest.raises(rf.StoreError) as err:
            engine.start(wf, run_id="c1").wait(timeout=30)
        assert "max_store_bytes=2097152" in str(err.value)
        assert "c1" not in str(err.value) or "refused" in str(err.value)
        state = engine.get_current_state("c1")
        assert state.status == "failed"
        assert "max_store_bytes" in (state.error or "")
        assert state.nodes["small"].status == "completed"
        # Still usable for small writes, and no RunLocked for the failed run.
        tiny = rf.Workflow("tiny")

        @tiny.node
        def t():
            return 1

        assert engine.run(tiny).status == "completed"
    with rf.Engine(db) as engine:
        resumed = engine.resume("c1", wf).wait(timeout=30)
        assert resumed.status == "completed"
        assert resumed.values["after"] == 3_000_000
        assert resumed.nodes["small"].attempt == 1, "small did not run again"
        assert engine.check_integrity() == "ok"


@pytest.mark.parametrize("cap", [0, 1, 4096])
def test_unworkable_store_caps_are_refused(db, cap):
    with pytest.raises(ValueError, match="max_store_bytes"):
        rf.Engine(db, max_store_bytes=cap)
    with pytest.raises(ValueError, match="max_store_bytes"):
        rf.Engine(db, max_store_bytes=-5)


def test_missing_blob_file_reads_as_undecodable_and_rerun_regenerates_it(db):
    """Item 6: one deleted blob file affects only its value."""
    wf = rf.Workflow("blobs")

    @wf.node
    def big():
        return b"\x07" * (2 << 20)

    @wf.node
    def size(big):
        return len(big)

    other = rf.Workflow("other")

    @other.node
    def fine():
        return "fine"

    with rf.Engine(db, blob_file_threshold=1 << 20) as engine:
        engine.run(wf, run_id="b1")
        engine.run(other, run_id="o1")
    [path] = [p for p in glob.glob(db + ".blobs/*/*") if not p.endswith("tmp")]
    os.remove(path)
    with rf.Engine(db, blob_file_threshold=1 << 20) as engine:
        runs = {s.run_id: s for s in engine.list_runs()}
        assert runs["o1"].values == {"fine": "fine"}
        state = engine.get_current_state("b1")
        assert isinstance(state.values["big"], rf.Undecodable)
        assert "missing" in str(state.values["big"]) or "blob" in str(state.values["big"])
        assert state.values["size"] == 2 << 20
        report = engine.check_integrity()
        assert report != "ok" and "missing" in report
        fixed = engine.resume("b1", wf, rerun=["big"]).wait(timeout=30)
        assert fixed.status == "completed"
        assert engine.get_current_state("b1").values["big"] == b"\x07" * (2 << 20)
        assert engine.check_integrity() == "ok"


def test_blob_directories_are_private_whatever_the_umask(db):
    """Item 8: 0700 directories, 0600 files under <db>.blobs/."""
    wf = rf.Workflow("perm")

    @wf.node
    def a():
        return os.urandom(2 << 20)

    old = os.umask(0)
    try:
        with rf.Engine(db, blob_file_threshold=1 << 20) as engine:
            engine.run(wf)
    finally:
        os.umask(old)
    seen = 0
    for root, _dirs, files in os.walk(db + ".blobs"):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, root
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o600, name
            seen += 1
    assert seen == 1


def test_huge_error_text_is_capped_keeping_head_and_tail(db):
    """Item 12: a 20 MB exception message is not stored in full."""
    wf = rf.Workflow("hugemsg")

    @wf.node(retry=False)
    def hm():
        raise ValueError("head" + "x" * 20_000_000 + "tail")

    with rf.Engine(db) as engine:
        state = engine.start(wf, run_id="h").wait(timeout=60)
        error = state.nodes["hm"].error
        assert state.status == "failed"
        assert len(error) < 64 * 1024
        assert error.startswith("ValueError: head") and error.endswith("tail")
        assert "omitted" in error
        assert os.path.getsize(db) < 4 << 20


class Row:
    """A stream item whose encodings are counted (registered codec below)."""

    encoded = 0

    def __init__(self, i: int) -> None:
        self.i = i

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Row) and other.i == self.i


def _encode_row(row: Row) -> bytes:
    Row.encoded += 1
    return row.i.to_bytes(4, "little")


rf.register_codec(Row, "test-row", _encode_row, lambda b: Row(int.from_bytes(b, "little")))


def test_streaming_checkpoints_store_only_what_they_add(db):
    """Item 13: each save appends the items yielded since the last one (before, every save
    re-stored every item so far: quadratic); a retried stream continues from its cursor and
    its output is still the whole stream."""
    n, every = 40_000, 2_000
    fail_at = {"left": 1}
    wf = rf.Workflow("stream_cost")

    @wf.node(retry=rf.RetryPolicy(max_attempts=2, initial_interval=0.01))
    def rows(ctx: rf.NodeContext):
        start = ctx.load_partial_state() or 0
        for i in range(start, n):
            if i % every == 0 and i > start:
                ctx.save_partial_state(i)
            if i == 30_100 and fail_at["left"]:
                fail_at["left"] = 0
                raise ConnectionError("dropped")
            yield Row(i)

    Row.encoded = 0
    with rf.Engine(db) as engine:
        state = engine.run(wf, run_id="s")
        assert state.nodes["rows"].attempt == 2
        saves = [e for e in engine.events("s") if e[2] == "PartialStateSaved"]
        assert len(saves) == 15 + 4  # 2k..30k on attempt 1, 32k..38k on attempt 2
        assert engine.get_current_state("s").values["rows"] == [Row(i) for i in range(n)]
    # Each item is encoded once in a segment and once in the final bundle (re-storing every
    # item so far at each save encoded ~16x as many).
    assert Row.encoded <= 2 * n + 2 * every, Row.encoded
