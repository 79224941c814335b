"""Torch nodes: tensors through the store, OOM classified as retryable with a shrink rule."""

from __future__ import annotations

import pytest
import resumeflow as rf

torch = pytest.importorskip("torch")

FAST = rf.RetryPolicy(max_attempts=4, initial_interval=0.001, max_interval=0.01)

DTYPES = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16,
    torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64,
    torch.float8_e4m3fn, torch.float8_e5m2,
]


def _sample(dtype):
    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) / 7
    if dtype == torch.bool:
        return base > 1
    if dtype == torch.complex64:
        return torch.complex(base, -base)
    return base.to(dtype)


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
    if a.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    else:
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tensor_dtypes_round_trip_through_the_store(db, dtype):
    wf = rf.Workflow("tensors")

    @wf.node
    def make():
        return _sample(dtype)

    @wf.node
    def passthrough(make):
        return make

    with rf.Engine(db) as engine:
        engine.run(wf, run_id="t")
        stored = engine.get_partial_results("t")
    _same(stored["make"], _sample(dtype))
    _same(stored["passthrough"], _sample(dtype))


def test_non_contiguous_zero_dim_and_empty_tensors(db):
    wf = rf.Workflow("shapes")
    big = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)

    @wf.node
    def views():
        return {
            "transposed": big.transpose(0, 2),
            "strided": big[:, ::2, 1:],
            "scalar": torch.tensor(3.5),
            "empty": torch.empty(0, 7),
            "conj": torch.complex(big, big).conj(),
            "grad": big.clone().requires_grad_(True),
            "meta": 7,
        }

    with rf.Engine(db) as engine:
        engine.run(wf, run_id="v")
        got = engine.get_partial_results("v")["views"]
    assert torch.equal(got["transposed"], big.transpose(0, 2).contiguous())
    assert torch.equal(got["strided"], big[:, ::2, 1:].contiguous())
    assert got["scalar"].shape == () and got["scalar"].item() == 3.5
    assert got["empty"].shape == (0, 7)
    assert torch.equal(got["conj"], torch.complex(big, -big))
    assert not got["grad"].requires_grad
    assert got["meta"] == 7


def test_dependants_get_the_producers_object_in_process(db):
    wf = rf.Workflow("identity")
    made = {}

    @wf.node
    def produce():
        made["t"] = torch.ones(3)
        return made["t"]

    @wf.node
    def consume(produce):
        return produce is made["t"]

    with rf.Engine(db) as engine:
        state = engine.run(wf)
    assert state.values["consume"] is True, "no decode round trip within one process"


def test_state_dict_is_stored_in_the_safetensors_layout(db):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = torch.nn.Linear(4, 3)
    wf = rf.Workflow("sd")

    @wf.node
    def export():
        return model.state_dict()

    with rf.Engine(db) as engine:
        state = engine.run(wf, run_id="sd")
        node = engine._core.get_current_state("sd")["nodes"]["export"]
        raw = engine._core.load_value(*node["output"])
    got = state.values["export"]
    assert set(got) == {"weight", "bias"}
    # The stored bytes are msgpack with one extension frame holding a safetensors file.
    import msgpack

    frame = msgpack.unpackb(raw, ext_hook=lambda code, data: (code, data))
    code, data = frame
    loaded = safetensors_torch.load(data)
    assert torch.equal(loaded["weight"], model.weight.detach())
    assert torch.equal(loaded["bias"], model.bias.detach())


def test_cuda_oom_error_is_retried_with_a_shrunk_batch_size(db):
    wf = rf.Workflow("oom")
    seen = []

    @wf.node(retry=FAST, on_oom=rf.shrink("batch_size", factor=0.5, minimum=1))
    def train(ctx: rf.NodeContext, batch_size: int = 64):
        seen.append((ctx.attempt, batch_size))
        if batch_size > 16:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {batch_size} MiB (GPU 0; 1 GiB total)"
            )
        return batch_size

    with rf.Engine(db) as engine:
        state = engine.run(wf, run_id="oom")
    assert seen == [(1, 64), (2, 32), (3, 16)]
    assert state.values["train"] == 16
    node = state.nodes["train"]
    assert node.attempt == 3
    assert node.inputs_override == {"batch_size": 16}
    assert node.retryable is True


def test_real_cpu_allocation_failure_is_classified(db):
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as e:
        real = e
    else:  # pragma: no cover - a machine with 4 EiB of memory
        pytest.skip("the allocation unexpectedly succeeded")
    assert "DefaultCPUAllocator: can't allocate memory" in str(real)
    assert rf.is_oom(real) and rf.is_retryable(real)

    wf = rf.Workflow("cpuoom")
    sizes = []

    @wf.node(retry=FAST, on_oom=rf.shrink("n", factor=0.5))
    def allocate(n: int = 2**62):
        sizes.append(n)
        return int(torch.empty(n, dtype=torch.uint8).numel())

    with rf.Engine(db) as engine:
        with pytest.raises(rf.RunFailed) as info:
            engine.run(wf)
    node = info.value.state.nodes["allocate"]
    assert node.attempt == 4 and node.retryable is True
    assert "DefaultCPUAllocator" in node.error
    assert sizes == [2**62, 2**61, 2**60, 2**59]


@pytest.mark.cuda
def test_real_cuda_oom_is_retried_and_then_fits(db):
    # Cap this process at 5% of the device; ask for 40%, then 10%, then 2.5%.
    torch.cuda.set_per_process_memory_fraction(0.05)
    total = torch.cuda.get_device_properties(0).total_memory
    wf = rf.Workflow("cudaoom")
    seen = []

    @wf.node(retry=FAST, on_oom=rf.shrink("percent", factor=0.25))
    def allocate(percent: float):
        seen.append(percent)
        x = torch.empty(int(total * percent / 100), dtype=torch.uint8, device="cuda")
        return x.numel()

    try:
        with rf.Engine(db) as engine:
            state = engine.run(wf, {"percent": 40.0})
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert seen == [40.0, 10.0, 2.5]
    node = state.nodes["allocate"]
    assert node.attempt == 3
    assert node.inputs_override == {"percent": 2.5}
    assert node.peak_memory is not None
    assert state.values["allocate"] > 0


@pytest.mark.cuda
def test_gpu_tensor_restored_to_its_device(db):
    wf = rf.Workflow("gpu")

    @wf.node
    def make():
        return torch.arange(10, device="cuda", dtype=torch.bfloat16)

    with rf.Engine(db) as engine:
        engine.run(wf, run_id="g")
        got = engine.get_partial_results("g")["make"]
    assert got.device.type == "cuda"
    assert torch.equal(got.cpu(), torch.arange(10, dtype=torch.bfloat16))
