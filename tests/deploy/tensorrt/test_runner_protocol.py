"""The runner's handling of TensorRT's return values, through the small protocol it depends on.

``HostLinearEngine`` below is a minimal *real* implementation of that protocol (not a stand-in ``tensorrt``
module): a linear classifier on host memory with an optimisation profile, a memory budget and tensor addresses,
returning False / None exactly where TensorRT's bindings do (set_input_shape outside the profile, an unknown
tensor name, execute without bound addresses, a context that does not fit in memory)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_unlearn.deploy.tensorrt.runner import (
    EngineAPI,
    ExecutionContextAPI,
    apply_input_shape,
    bind_addresses,
    chunk_plan,
    enqueue,
    new_execution_context,
    read_layout,
    resolved_shape,
)
from edge_unlearn.errors import DependencyError, ModelFileError, UsageError

INPUT, OUTPUT = "INPUT", "OUTPUT"  # tensor modes


class HostMemory:
    """Addresses -> numpy arrays (what device pointers are to TensorRT)."""

    def __init__(self) -> None:
        self.arrays: dict[int, np.ndarray] = {}

    def alloc(self, n: int) -> int:
        address = 4096 * (len(self.arrays) + 1)
        self.arrays[address] = np.zeros(n, np.float32)
        return address


class HostLinearContext:
    def __init__(self, engine: HostLinearEngine) -> None:
        self.engine = engine
        self.batch: int | None = None
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape) -> bool:
        lo, hi = self.engine.profile
        shape = tuple(shape)
        if name != "input" or len(shape) != 2 or shape[1] != self.engine.features or not lo <= shape[0] <= hi:
            return False
        self.batch = shape[0]
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name not in ("input", "logits") or memory % 256:
            return False
        self.addresses[name] = memory
        return True

    def get_tensor_shape(self, name: str):
        b = -1 if self.batch is None else self.batch
        return (b, self.engine.features) if name == "input" else (b, self.engine.classes)

    def execute_async_v3(self, stream_handle: int) -> bool:
        if self.batch is None or set(self.addresses) != {"input", "logits"}:
            return False
        mem = self.engine.memory.arrays
        x = mem[self.addresses["input"]][: self.batch * self.engine.features].reshape(self.batch, -1)
        mem[self.addresses["logits"]][: self.batch * self.engine.classes] = (x @ self.engine.weight.T).ravel()
        return True


class HostLinearEngine:
    def __init__(
        self,
        features: int = 4,
        classes: int = 3,
        profile=(1, 8),
        static: bool = False,
        memory_budget: int = 1 << 20,
        seed: int = 0,
    ) -> None:
        self.features, self.classes, self.profile, self.static = features, classes, profile, static
        self.weight = np.random.default_rng(seed).standard_normal((classes, features)).astype(np.float32)
        self.memory = HostMemory()
        self.memory_budget = memory_budget
        self.names = ["input", "logits"]

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str):
        return INPUT if name == "input" else OUTPUT

    def get_tensor_shape(self, name: str):
        batch = self.profile[1] if self.static else -1
        return (batch, self.features) if name == "input" else (batch, self.classes)

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        lo, hi = self.profile
        return [(lo, self.features), (hi, self.features), (hi, self.features)]

    def create_execution_context(self) -> HostLinearContext | None:
        needed = 4 * self.profile[1] * (self.features + self.classes)
        return HostLinearContext(self) if needed <= self.memory_budget else None


def _ready(engine: HostLinearEngine):
    layout = read_layout(engine, INPUT, "logits", "m.plan")
    context = new_execution_context(engine, "m.plan")
    return layout, context


def test_the_host_engine_satisfies_the_protocol():
    engine = HostLinearEngine()
    assert isinstance(engine, EngineAPI)
    assert isinstance(engine.create_execution_context(), ExecutionContextAPI)


def test_layout_dynamic_and_static():
    layout = read_layout(HostLinearEngine(profile=(2, 16)), INPUT, "logits", "m.plan")
    assert (layout.input_name, layout.output_name, layout.min_batch, layout.max_batch) == ("input", "logits", 2, 16)
    static = read_layout(HostLinearEngine(profile=(4, 4), static=True), INPUT, "logits", "m.plan")
    assert (static.min_batch, static.max_batch, static.sample_shape) == (4, 4, (4,))


def test_layout_refuses_a_foreign_engine():
    engine = HostLinearEngine()
    engine.names = ["a", "b", "logits"]
    engine.get_tensor_mode = lambda name: INPUT if name in ("a", "b") else OUTPUT  # type: ignore[method-assign]
    with pytest.raises(ModelFileError, match="inputs \\['a', 'b'\\].*one input"):
        read_layout(engine, INPUT, "logits", "m.plan")


def test_context_none_is_out_of_memory():
    with pytest.raises(DependencyError, match="could not create an execution context.*out of GPU memory"):
        new_execution_context(HostLinearEngine(memory_budget=8), "m.plan")


def test_shape_outside_the_profile_names_the_profile():
    layout, context = _ready(HostLinearEngine(profile=(1, 8)))
    with pytest.raises(UsageError, match="refused input shape \\(9, 4\\).*batches 1..8"):
        apply_input_shape(context, layout, (9, 4))
    static_layout, static_context = _ready(HostLinearEngine(profile=(4, 4), static=True))
    with pytest.raises(UsageError, match="built for batch 4 of \\[4\\]"):
        apply_input_shape(static_context, static_layout, (3, 4))


def test_refused_address_is_an_error():
    _layout, context = _ready(HostLinearEngine())
    with pytest.raises(ModelFileError, match="refused the device buffer for tensor 'probs'"):
        bind_addresses(context, {"probs": 4096})
    with pytest.raises(ModelFileError, match="tensor 'input'"):
        bind_addresses(context, {"input": 4097})  # misaligned


def test_failed_enqueue_is_an_error():
    layout, context = _ready(HostLinearEngine())
    apply_input_shape(context, layout, (2, 4))
    with pytest.raises(ModelFileError, match="failed to run m.plan on a batch of 2"):
        enqueue(context, 0, "m.plan", 2)  # no addresses bound


def test_full_sequence_computes_the_logits():
    engine = HostLinearEngine(profile=(1, 8))
    layout, context = _ready(engine)
    x_addr = engine.memory.alloc(8 * 4)
    y_addr = engine.memory.alloc(8 * 3)
    bind_addresses(context, {"input": x_addr, "logits": y_addr})
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    engine.memory.arrays[x_addr][:12] = x.ravel()
    apply_input_shape(context, layout, x.shape)
    enqueue(context, 0, "m.plan", 3)
    out_shape = resolved_shape(context, "logits")
    assert out_shape == (3, 3)
    out = engine.memory.arrays[y_addr][:9].reshape(out_shape)
    np.testing.assert_allclose(out, x @ engine.weight.T, rtol=1e-6)


def test_unresolved_output_shape_is_an_error():
    _layout, context = _ready(HostLinearEngine())
    with pytest.raises(ModelFileError, match="cannot size tensor logits"):
        resolved_shape(context, "logits")


@pytest.mark.parametrize(
    "n, lo, hi, expected",
    [
        (40, 1, 16, [(0, 16, 16), (16, 32, 16), (32, 40, 8)]),
        (5, 8, 8, [(0, 5, 8)]),  # static batch 8: pad 5 -> 8
        (9, 4, 4, [(0, 4, 4), (4, 8, 4), (8, 9, 4)]),
        (0, 1, 8, []),
    ],
)
def test_chunk_plan(n, lo, hi, expected):
    assert chunk_plan(n, lo, hi) == expected


def test_chunk_plan_rejects_a_bad_range():
    with pytest.raises(ValueError):
        chunk_plan(3, 4, 2)
