"""The value codec and failure classification, one form at a time."""

from __future__ import annotations

import math

import pytest
import resumeflow as rf
from resumeflow import _codec


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -1, 2**63 - 1, 2**64 - 1, 2**200, -(2**100), 1.5, math.inf, "", "héllo", b"\x00\xff",
     [], [1, [2, [3]]], (1, (2, "x")), {"a": {"b": [1, (2,)]}}, {1: "int keys"}],
    ids=repr,
)
def test_plain_values_round_trip(value):
    assert _codec.decode(_codec.encode(value)) == value
    assert type(_codec.decode(_codec.encode(value))) is type(value)


def test_nan_round_trips():
    assert math.isnan(_codec.decode(_codec.encode(float("nan"))))


def test_numpy_arrays_round_trip_any_layout():
    np = pytest.importorskip("numpy")
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    for arr in (a, a.T, a[:, ::2], np.array(5, dtype=np.int16), np.zeros((0, 3), dtype=np.uint8),
                np.array([1 + 2j], dtype=np.complex128), a.astype(">f4")):
        got = _codec.decode(_codec.encode(arr))
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
        assert got.flags.writeable
    assert _codec.decode(_codec.encode(np.float32(1.5))) == 1.5


def test_unencodable_values_name_node_key_and_type():
    class Opaque:
        pass

    with pytest.raises(rf.SerializationError) as info:
        _codec.encode({"metrics": {"acc": Opaque()}}, node="evaluate")
    text = str(info.value)
    assert "'evaluate'" in text and "['metrics']['acc']" in text and "Opaque" in text
    with pytest.raises(rf.SerializationError, match="set"):
        _codec.encode({1, 2}, node="n")
    with pytest.raises(rf.SerializationError, match="dict keys"):
        _codec.encode({(1, 2): "tuple key"}, node="n")


def test_unencodable_output_fails_the_node_without_retry(db):
    wf = rf.Workflow("bad_output")

    @wf.node
    def fine():
        return 1

    @wf.node
    def broken(fine):
        return {"handle": open}  # a builtin function

    with rf.Engine(db) as engine:
        with pytest.raises(rf.RunFailed) as info:
            engine.run(wf)
    node = info.value.state.nodes["broken"]
    assert node.status == "failed" and node.attempt == 1 and node.retryable is False
    assert "SerializationError" in node.error and "'broken'" in node.error and "['handle']" in node.error
    assert info.value.state.values == {"fine": 1}


def test_registered_codec_and_pickle_opt_in():
    import fractions

    rf.register_codec(fractions.Fraction, "test.fraction", lambda f: str(f).encode(),
                      lambda b: fractions.Fraction(b.decode()))
    assert _codec.decode(_codec.encode(fractions.Fraction(2, 7))) == fractions.Fraction(2, 7)

    class Point:
        def __init__(self, x):
            self.x = x

    with pytest.raises(rf.SerializationError):
        _codec.encode(Point(1))
    rf.enable_pickle(True)
    try:
        raw = _codec.encode(ValueError("pickled"))
        assert str(_codec.decode(raw)) == "pickled"
    finally:
        rf.enable_pickle(False)
    with pytest.raises(rf.SerializationError, match="enable_pickle"):
        _codec.decode(raw)


def test_corrupt_bytes_raise_serialization_error():
    with pytest.raises(rf.SerializationError):
        _codec.decode(b"\xc1\xc1\xc1")


OOM_FORMS = [
    "CUDA out of memory. Tried to allocate 20.00 MiB",
    "CUDA error: out of memory",
    "XPU out of memory. Tried to allocate 1 GiB",
    "MPS backend out of memory (MPS allocated: 1 GB)",
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a non-contiguous input.",
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes",
    "Allocation on device would exceed allowed memory. (out of memory)",
]


@pytest.mark.parametrize("message", OOM_FORMS)
def test_every_oom_message_form_is_retryable(message):
    exc = RuntimeError(message)
    assert rf.is_oom(exc)
    assert rf.is_retryable(exc) is True


def test_torch_oom_classes_are_retryable():
    torch = pytest.importorskip("torch")
    assert rf.is_retryable(torch.cuda.OutOfMemoryError("anything"))
    if hasattr(torch, "OutOfMemoryError"):
        assert rf.is_retryable(torch.OutOfMemoryError("x"))
    accel = getattr(torch, "AcceleratorError", None)
    if isinstance(accel, type):
        try:
            err = accel("CUDA error: out of memory")
        except TypeError:
            err = None
        if err is not None:
            assert rf.is_oom(err)


@pytest.mark.parametrize(
    "exc,expected",
    [
        (TimeoutError("slow"), True),
        (ConnectionResetError("reset"), True),
        (ConnectionRefusedError("refused"), True),
        (rf.Retryable("again"), True),
        (rf.NonRetryable(ConnectionError("wrapped")), False),
        (ValueError("bad"), False),
        (KeyError("k"), False),
        (RuntimeError("shape mismatch"), False),
        (OSError(11, "Resource temporarily unavailable"), True),
        (OSError(2, "No such file"), False),
    ],
    ids=repr,
)
def test_default_classifier(exc, expected):
    assert rf.is_retryable(exc) is expected


def test_retry_on_replaces_the_default_classifier():
    by_class = rf.RetryPolicy(retry_on=ValueError)
    assert by_class.classify(ValueError()) and not by_class.classify(TimeoutError())
    by_tuple = rf.RetryPolicy(retry_on=(KeyError, TimeoutError))
    assert by_tuple.classify(KeyError()) and not by_tuple.classify(ValueError())
    by_predicate = rf.RetryPolicy(retry_on=lambda e: "flaky" in str(e))
    assert by_predicate.classify(RuntimeError("flaky disk")) and not by_predicate.classify(RuntimeError("x"))
    with pytest.raises(ValueError):
        rf.RetryPolicy(max_attempts=0)


def test_review_regressions_structured_masked_bigkey_meta_and_odd_tensor_dicts():
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    structured = np.zeros(3, dtype=[("x", "<f4"), ("y", "<i8", (2,))])
    structured["x"] = [1, 2, 3]
    got = _codec.decode(_codec.encode(structured))
    assert got.dtype == structured.dtype and list(got["x"]) == [1, 2, 3]
    with pytest.raises(rf.SerializationError, match="subclass"):
        _codec.encode(np.ma.masked_array([1, 2], mask=[0, 1]), node="n")
    with pytest.raises(rf.SerializationError, match="64 bits"):
        _codec.encode({2**70: 1}, node="n")
    with pytest.raises(rf.SerializationError, match="'n'"):
        _codec.encode(torch.empty(3, device="meta"), node="n")
    odd = {"c": torch.ones(2, dtype=torch.complex128), "__metadata__": torch.zeros(1)}
    back = _codec.decode(_codec.encode(odd))
    assert back["c"].dtype == torch.complex128 and set(back) == {"c", "__metadata__"}
