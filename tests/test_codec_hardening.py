"""Codec hardening: registered codecs for subclasses of built-ins, numpy scalars, the value a
dependant gets in process (equal to what a resume gives, its own copy), deep nesting, and the
copies a large ``bytes`` output costs."""

from __future__ import annotations

import enum
import json
import os
import typing

import msgpack
import numpy as np
import pytest
import resumeflow as rf
from conftest import python
from resumeflow import _codec


class Point(typing.NamedTuple):
    x: int
    y: int


class Config(dict):
    pass


class Color(enum.IntEnum):
    RED = 1


class Tag(str):
    pass


class Celsius(float):
    pass


class Fahrenheit(Celsius):
    """Registered through its base class only."""


rf.register_codec(Point, "test.hardening.point", lambda p: json.dumps(list(p)).encode(),
                  lambda b: Point(*json.loads(b)))
rf.register_codec(Config, "test.hardening.config", lambda c: json.dumps(c).encode(),
                  lambda b: Config(json.loads(b)))
rf.register_codec(Color, "test.hardening.color", lambda c: str(int(c)).encode(), lambda b: Color(int(b)))
rf.register_codec(Tag, "test.hardening.tag", lambda t: t.encode(), lambda b: Tag(b.decode()))
rf.register_codec(Celsius, "test.hardening.celsius", lambda c: repr(float(c)).encode(),
                  lambda b: Celsius(float(b)))

CUSTOM = {"p": Point(1, 2), "c": Config(a=1), "col": Color.RED, "t": Tag("hi"), "deg": Fahrenheit(3.5)}
EXPECTED_TYPES = {"p": Point, "c": Config, "col": Color, "t": Tag, "deg": Celsius}

NUMPY_SCALARS = [
    np.float32(0.1), np.float64(0.1), np.float16(1.5), np.longdouble(2.5), np.int8(-3),
    np.int64(2**62), np.uint64(2**64 - 1), np.bool_(True), np.complex64(1 + 2j),
    np.datetime64("2024-01-02T03:04:05"), np.timedelta64(7, "ms"), np.str_("héllo"), np.bytes_(b"ab"),
]


# --- item 3: registered codecs win, numpy scalars keep their dtype ---------------------------


def test_registered_codecs_win_over_the_builtin_encoding_of_subclasses(db):
    for key, value in CUSTOM.items():
        back = _codec.decode(_codec.encode(value))
        assert type(back) is EXPECTED_TYPES[key] and back == value, key

    wf = rf.Workflow("codec_subclasses")

    @wf.node
    def out():
        return dict(CUSTOM)

    @wf.node
    def types(out):
        return {k: type(v).__name__ for k, v in out.items()}

    with rf.Engine(db) as engine:
        state = engine.run(wf, run_id="c1")
        stored = engine.get_current_state("c1").values["out"]
        rerun = engine.resume("c1", wf, rerun=["types"]).wait()
    names = {k: t.__name__ for k, t in EXPECTED_TYPES.items()}
    assert {k: type(v).__name__ for k, v in stored.items()} == names
    assert state.values["types"] == names, "in process"
    assert rerun.values["types"] == names, "after a resume"


def test_an_exact_codec_beats_a_base_class_codec_and_natives_stay_fast():
    class Kelvin(Celsius):
        pass

    rf.register_codec(Kelvin, "test.hardening.kelvin", lambda k: b"K" + repr(float(k)).encode(),
                      lambda b: Kelvin(float(b[1:])))
    assert type(_codec.decode(_codec.encode(Kelvin(1.0)))) is Kelvin
    assert type(_codec.decode(_codec.encode(Fahrenheit(1.0)))) is Celsius
    # Plain built-ins are encoded exactly as msgpack encodes them (the fast path).
    plain = [1, -2, 2**64 - 1, 1.5, "s", b"b", None, True, {"k": [1, {"n": None}]}]
    assert _codec.encode(plain) == msgpack.packb(plain, use_bin_type=True)
    with pytest.raises(ValueError, match="int"):
        rf.register_codec(int, "test.hardening.int", lambda i: b"", lambda b: 0)


@pytest.mark.parametrize("scalar", NUMPY_SCALARS, ids=lambda s: f"{type(s).__name__}")
def test_numpy_scalars_round_trip_as_numpy_scalars_of_their_dtype(scalar):
    back = _codec.decode(_codec.encode({"s": scalar}))["s"]
    assert type(back) is type(scalar) and back.dtype == scalar.dtype
    assert back == scalar


def test_numpy_scalars_keep_their_dtype_through_a_run_and_a_resume(db):
    wf = rf.Workflow("np_scalars")

    @wf.node
    def make():
        return [np.float32(0.1), np.int64(5), np.bool_(False)]

    @wf.node
    def describe(make):
        return [str(v.dtype) for v in make]

    with rf.Engine(db) as engine:
        state = engine.run(wf, run_id="s1")
        again = engine.resume("s1", wf, rerun=["describe"]).wait()
        stored = engine.get_current_state("s1").values["make"]
    assert state.values["describe"] == again.values["describe"] == ["float32", "int64", "bool"]
    assert type(stored[0]) is np.float32 and stored[0] == np.float32(0.1)


# --- item 4: what dependants get in process is what a resume gives, and their own copy -------


def _live_workflow(name: str) -> rf.Workflow:
    wf = rf.Workflow(name)

    @wf.node
    def src():
        return {"xs": [1, 2, 3], "lr": np.float32(0.1), "p": Point(1, 2)}

    @wf.node
    def mutate(src):
        src["xs"].append(99)
        return len(src["xs"])

    @wf.node
    def reader(mutate, src):
        return [len(src["xs"]), type(src["lr"]).__name__, type(src["p"]).__name__]

    return wf


def test_a_dependant_cannot_change_what_its_siblings_and_the_state_see(db):
    wf = _live_workflow("live_copy")
    with rf.Engine(db) as engine:
        state = engine.run(wf, run_id="L")
        stored = engine.get_current_state("L").values
        resumed = engine.resume("L", wf, rerun=["reader"]).wait()
    assert state.values["reader"] == [3, "float32", "Point"]
    assert resumed.values["reader"] == state.values["reader"], "a resume gives what a live run gave"
    assert state.values["src"]["xs"] == [1, 2, 3] == stored["src"]["xs"]
    assert type(state.values["src"]["lr"]) is np.float32 and type(state.values["src"]["p"]) is Point


def test_each_wait_gets_its_own_copy_of_a_mutable_output(db):
    wf = rf.Workflow("live_wait")

    @wf.node
    def rows():
        return [[1], [2]]

    with rf.Engine(db) as engine:
        run = engine.start(wf)
        first = run.wait()
        first.values["rows"][0].append("changed")
        assert run.wait().values["rows"] == [[1], [2]]


def test_tensors_and_arrays_inside_an_output_are_still_handed_over_without_a_copy(db):
    torch = pytest.importorskip("torch")
    wf = rf.Workflow("live_zero_copy")
    made: dict[str, typing.Any] = {}

    @wf.node
    def produce():
        made["w"] = torch.ones(1000)
        made["a"] = np.zeros(100_000)
        return {"model": {"w": made["w"]}, "arrays": [made["a"]], "steps": [1, 2]}

    @wf.node
    def consume(produce):
        produce["steps"].append(3)  # its own list
        return [produce["model"]["w"] is made["w"], produce["arrays"][0] is made["a"]]

    @wf.node
    def sibling(consume, produce):
        return produce["steps"]

    with rf.Engine(db) as engine:
        state = engine.run(wf)
    assert state.values["consume"] == [True, True]
    assert state.values["sibling"] == [1, 2]


@pytest.mark.cuda
def test_a_cuda_tensor_inside_a_dict_is_handed_over_on_its_device(db):
    torch = pytest.importorskip("torch")
    wf = rf.Workflow("cuda_handover")
    made: dict[str, typing.Any] = {}

    @wf.node
    def produce():
        made["w"] = torch.ones(1 << 20, device="cuda")
        return {"w": made["w"], "step": 1}

    @wf.node
    def consume(produce):
        return [produce["w"] is made["w"], produce["w"].device.type]

    with rf.Engine(db) as engine:
        state = engine.run(wf, run_id="g")
        stored = engine.get_current_state("g").values["produce"]
    assert state.values["consume"] == [True, "cuda"]
    assert stored["w"].device.type == "cuda" and torch.equal(stored["w"], made["w"])


def test_live_handover_hands_immutables_over_and_copies_containers():
    value = {"xs": [1, 2], "t": (1, "a")}
    parts = _codec.encode_parts(value)
    live = _codec.live_handover(value, parts)
    first, second = _codec.from_handover(live), _codec.from_handover(live)
    assert first == second == value and first is not second and first["xs"] is not second["xs"]
    for immutable in (None, 1, 2.5, "s", b"b", (1, ("x", None))):
        assert _codec.live_handover(immutable, _codec.encode_parts(immutable)) is immutable
    assert _codec.from_handover(_codec.live_handover([1], _codec.encode([1]))) == [1]


# --- item 15: deep nesting -----------------------------------------------------------------

#: The documented nesting limit of lists, tuples and dicts.
LIMIT = 512


def _nested(kind: str, depth: int) -> typing.Any:
    value: typing.Any = 0
    for _ in range(depth):
        value = [value] if kind == "list" else ({"k": value} if kind == "dict" else (value,))
    return value


@pytest.mark.parametrize("kind", ["list", "dict", "tuple"])
def test_nesting_up_to_the_documented_limit_round_trips(kind):
    assert _codec.MAX_DEPTH == LIMIT
    value = _nested(kind, LIMIT)
    assert _codec.decode(_codec.encode(value)) == value


@pytest.mark.parametrize("kind", ["list", "dict", "tuple"])
@pytest.mark.parametrize("depth", [LIMIT + 1, 900, 5000])
def test_deeper_nesting_is_a_serialization_error_naming_node_and_depth(kind, depth):
    with pytest.raises(rf.SerializationError) as info:
        _codec.encode(_nested(kind, depth), node="deep")
    text = str(info.value)
    assert "'deep'" in text and f"nested deeper than {LIMIT} levels" in text
    assert "output[0][0]" in text or "output['k']['k']" in text
    assert "Recursion" not in text


def test_a_node_returning_a_too_deep_value_fails_cleanly(db):
    wf = rf.Workflow("deep_node")

    @wf.node
    def deep():
        return _nested("list", 900)

    with rf.Engine(db) as engine:
        with pytest.raises(rf.RunFailed) as info:
            engine.run(wf)
    node = info.value.state.nodes["deep"]
    assert node.retryable is False and "SerializationError" in node.error
    assert f"nested deeper than {LIMIT} levels" in node.error and "Recursion" not in node.error


def test_a_node_may_return_values_nested_to_the_limit(db):
    wf = rf.Workflow("deep_ok")
    for kind in ("list", "dict", "tuple"):
        wf.node(lambda kind=kind: _nested(kind, LIMIT), name=f"deep_{kind}")

    @wf.node
    def depth(deep_list, deep_dict, deep_tuple):
        return deep_list == _nested("list", LIMIT) and deep_tuple == _nested("tuple", LIMIT)

    with rf.Engine(db) as engine:
        state = engine.run(wf, run_id="d")
        stored = engine.get_current_state("d").values
    assert state.values["depth"] is True
    for kind in ("list", "dict", "tuple"):
        assert stored[f"deep_{kind}"] == _nested(kind, LIMIT)


def test_tuples_stored_by_older_versions_still_decode_and_deep_ones_do_not_crash():
    def legacy(depth: int) -> bytes:  # tuples as nested documents (extension type 1)
        inner: typing.Any = 0
        for _ in range(depth):
            inner = msgpack.ExtType(1, msgpack.packb([inner], use_bin_type=True))
        return msgpack.packb(inner, use_bin_type=True)

    assert _codec.decode(legacy(3)) == _nested("tuple", 3)
    assert _codec.decode(msgpack.packb({"t": msgpack.ExtType(1, msgpack.packb([1, "a"]))})) == {"t": (1, "a")}
    # Decoding each level recursed through msgpack's C code: ~200 levels crashed the
    # interpreter (SIGSEGV), so this runs in a child process.
    child = python(
        "import msgpack, resumeflow as rf\n"
        "from resumeflow import _codec\n"
        "inner = 0\n"
        "for _ in range(2000):\n"
        "    inner = msgpack.ExtType(1, msgpack.packb([inner]))\n"
        "try:\n"
        "    _codec.decode(msgpack.packb(inner))\n"
        "except rf.SerializationError as e:\n"
        "    print(e)\n"
    )
    assert child.returncode == 0, f"exit status {child.returncode}: {child.stderr[-500:]}"
    assert "tuples nested deeper than 100 levels" in child.stdout


def test_decoding_a_too_deep_value_names_the_depth():
    with pytest.raises(rf.SerializationError, match="nested deeper than") as info:
        _codec.decode(b"\x91" * 5000 + b"\x90", node="n", what="input 'x'")
    assert "'n'" in str(info.value) and "input 'x'" in str(info.value)


# --- item 14: a large bytes output is not copied on the Python side ------------------------


def test_large_bytes_are_a_frame_not_a_copy():
    big = b"x" * (1 << 20)
    parts = _codec.encode_parts({"payload": big})
    assert any(p is big for p in parts), "the bytes object itself is a part"
    assert _codec.decode(b"".join(parts)) == {"payload": big}
    mutable = bytearray(b"y" * (1 << 17))
    back = _codec.decode(_codec.encode([mutable, bytearray(b"small")]))
    assert back == [mutable, bytearray(b"small")] and type(back[0]) is bytearray


def test_large_bytes_round_trip_through_a_run(db):
    big = bytes(range(256)) * 4096  # 1 MiB
    wf = rf.Workflow("big_bytes_values")

    @wf.node
    def payload():
        return {"raw": big, "chunks": [big[:70_000], bytearray(big[:100_000])]}

    @wf.node
    def size(payload):
        return [len(payload["raw"]), type(payload["chunks"][1]).__name__]

    with rf.Engine(db) as engine:
        state = engine.run(wf, run_id="b")
        stored = engine.get_current_state("b").values["payload"]
    assert state.values["size"] == [len(big), "bytearray"]
    assert stored == {"raw": big, "chunks": [big[:70_000], bytearray(big[:100_000])]}


RSS_CHILD = """
import os, tempfile
import resumeflow as rf

def peak_rss():  # VmHWM: this process's own peak (ru_maxrss also counts the parent's, after fork)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))

N = {n}
wf = rf.Workflow("big_bytes")
@wf.node
def big():
    return b"x" * N
with rf.Engine(os.path.join(tempfile.mkdtemp(), "x.db")) as engine:
    before = peak_rss()
    state = engine.run(wf)
    assert len(state.values["big"]) == N
    print(peak_rss() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_a_large_bytes_output_costs_about_one_copy_of_memory():
    n = 200_000_000  # above the default blob-file threshold: written from its own buffer
    child = python(RSS_CHILD.format(n=n))
    assert child.returncode == 0, child.stderr
    growth = int(child.stdout.split()[-1])
    assert growth < 1.3 * n, f"peak RSS grew {growth / n:.2f} x the output's size"


def test_encoding_while_another_thread_is_still_importing_numpy_or_torch():
    """A node's first `import numpy` leaves a half-initialized module in sys.modules while
    another node's output is encoded: the codec must not touch classes it lacks yet."""
    import subprocess
    import sys

    code = (
        "import sys, types\n"
        "sys.modules['numpy'] = types.ModuleType('numpy')\n"
        "sys.modules['torch'] = types.ModuleType('torch')\n"
        "from resumeflow import _codec\n"
        "print(_codec.decode(_codec.encode({'a': [1, 2.5], 'b': (3,)})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'a': [1, 2.5], 'b': (3,)}"
