"""Run a TensorRT engine with pycuda: the :class:`TensorRTRunner`, GPU-only timing (CUDA events, optional CUDA
graph) and the small protocol of the TensorRT objects it uses. TensorRT and pycuda are imported lazily.

Contracts, read in the sources (github.com/NVIDIA/TensorRT python/src/infer/pyCore.cpp, v10.3.0 and v11.1;
github.com/inducer/pycuda src/cpp/cuda.hpp and doc/driver.rst):

- ``ICudaEngine.create_execution_context`` is bound straight to ``createExecutionContext``, which returns
  nullptr (Python ``None``) when it fails, e.g. out of device memory.
- ``IExecutionContext.set_input_shape``, ``set_tensor_address`` and ``execute_async_v3`` return the C++ ``bool``
  (``lambdas::setInputShape`` / ``set_tensor_address`` / ``execute_async_v3``): ``False`` on failure, no exception.
- ``IRuntime.DLA_core`` must be set before ``deserialize_cuda_engine`` for a DLA engine, and
  ``IRuntime.engine_host_code_allowed`` (default False) for a version-compatible engine, which embeds the lean
  runtime (host code).
- pycuda: ``Device.retain_primary_context()`` returns a context that is *not* current; ``Context.pop()`` pops the
  top of pycuda's thread-local stack. ``Context.detach()`` on a primary context that is not current pushes it and
  calls ``cuDevicePrimaryCtxRelease``, which -- unlike ``cuCtxDetach`` -- pops nothing, leaving a stale entry on
  the driver's stack (cuda.hpp, ``context::detach`` / ``primary_context::detach_internal``); detaching while
  current drops pycuda's entry but leaves the driver's. So the primary context is retained once per process
  and never detached, as pycuda/autoprimaryctx.py does, and each use pushes and pops it. Allocation failures raise ``pycuda.driver.MemoryError``
  (wrap_cudadrv.cpp ``translate_cuda_error``: CUDA_ERROR_OUT_OF_MEMORY). ``Event.record(stream)``,
  ``Event.synchronize()`` and ``end.time_since(start)`` (milliseconds) per doc/driver.rst.
- CUDA graphs: pycuda has no graph API, so the driver API is called through ctypes, in the order trtexec uses
  (samples/common/sampleInference.cpp: enqueue once *before* capture "to avoid capturing initialization calls";
  a capture whose enqueue returns False is abandoned and the engine runs without a graph; sampleDevice.h:
  ``cudaStreamCaptureModeThreadLocal``).
Longer than 500 lines because the runner, its GPU-only timing and CUDA-graph replay share one CUDA context and one set of device buffers.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edge_unlearn.errors import DependencyError, ModelFileError, UsageError

from ..runner import Runner
from ..sidecar import EngineSidecar, check_compatible, read_sidecar, sidecar_path
from .logger import make_logger
from .probe import current_environment, import_pycuda, import_tensorrt

OUT_OF_MEMORY_HINT = (
    "close other GPU programs, or rebuild with a smaller --max-batch / --batch-size (on a Jetson the GPU "
    "shares the 8-64 GB of system memory: check `tegrastats`)"
)


# ------------------------------------------------------------------------------------ the protocol we depend on


@runtime_checkable
class ExecutionContextAPI(Protocol):
    """The subset of ``tensorrt.IExecutionContext`` the runner uses (bool returns: False = failed)."""

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool: ...

    def set_tensor_address(self, name: str, memory: int) -> bool: ...

    def get_tensor_shape(self, name: str) -> Sequence[int]: ...

    def execute_async_v3(self, stream_handle: int) -> bool: ...


@runtime_checkable
class EngineAPI(Protocol):
    """The subset of ``tensorrt.ICudaEngine`` the runner uses."""

    @property
    def num_io_tensors(self) -> int: ...

    def get_tensor_name(self, index: int) -> str: ...

    def get_tensor_mode(self, name: str) -> Any: ...

    def get_tensor_shape(self, name: str) -> Sequence[int]: ...

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> Sequence[Sequence[int]]: ...

    def create_execution_context(self) -> ExecutionContextAPI | None: ...


@dataclass(frozen=True)
class EngineLayout:
    """One input, the logits output and the batch range, read from an engine."""

    input_name: str
    output_name: str
    outputs: tuple[str, ...]
    input_shape: tuple[int, ...]  # with -1 for a dynamic batch
    min_batch: int
    max_batch: int

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.input_shape[1:]


def read_layout(engine: EngineAPI, input_mode: Any, wanted_output: str, where: str) -> EngineLayout:
    """The engine's I/O as :class:`EngineLayout`; :class:`ModelFileError` for anything that is not our engine."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == input_mode]
    outputs = [n for n in names if n not in inputs]
    if len(inputs) != 1 or not outputs:
        raise ModelFileError(
            f"{where} has inputs {inputs} and outputs {outputs}; edge-unlearn engines have one "
            "input and a logits output"
        )
    in_name = inputs[0]
    out_name = wanted_output if wanted_output in outputs else outputs[0]
    in_shape = tuple(int(d) for d in engine.get_tensor_shape(in_name))
    if len(in_shape) < 2 or any(d < 0 for d in in_shape[1:]):
        raise ModelFileError(f"{where}: input {in_name} has dynamic non-batch axes {in_shape}; rebuild it")
    if in_shape[0] < 0:
        lo, _opt, hi = engine.get_tensor_profile_shape(in_name, 0)
        min_batch, max_batch = int(lo[0]), int(hi[0])
    else:  # a static batch (e.g. a DLA engine built with --batch-size N)
        min_batch = max_batch = in_shape[0]
    return EngineLayout(in_name, out_name, tuple(outputs), in_shape, min_batch, max_batch)


def new_execution_context(engine: EngineAPI, where: str) -> ExecutionContextAPI:
    """``engine.create_execution_context()``, refusing its ``None`` (it allocates the activation memory)."""
    context = engine.create_execution_context()
    if context is None:
        raise DependencyError(
            f"TensorRT could not create an execution context for {where} (usually out of GPU "
            f"memory); {OUT_OF_MEMORY_HINT}"
        )
    return context


def apply_input_shape(context: ExecutionContextAPI, layout: EngineLayout, shape: Sequence[int]) -> None:
    """``set_input_shape`` returns False for a shape outside the profile: say which shapes the engine takes."""
    if not context.set_input_shape(layout.input_name, tuple(int(d) for d in shape)):
        batches = (
            f"batch {layout.min_batch}"
            if layout.min_batch == layout.max_batch
            else f"batches {layout.min_batch}..{layout.max_batch}"
        )
        raise UsageError(
            f"the engine refused input shape {tuple(shape)} for {layout.input_name}; it was built for "
            f"{batches} of {list(layout.sample_shape)}: rebuild with a matching --batch-size/--max-batch"
        )


def bind_addresses(context: ExecutionContextAPI, addresses: dict[str, int]) -> None:
    """``set_tensor_address`` for every I/O tensor; False (unknown name, misaligned pointer) is an error."""
    for name, address in addresses.items():
        if not context.set_tensor_address(name, int(address)):
            raise ModelFileError(
                f"TensorRT refused the device buffer for tensor {name!r}; the engine does not "
                "match its sidecar: rebuild it with `edge-unlearn build-engine`"
            )


def resolved_shape(context: ExecutionContextAPI, name: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in context.get_tensor_shape(name))
    if any(d < 0 for d in shape):
        raise ModelFileError(f"cannot size tensor {name} {shape} after setting the input shape; rebuild the engine")
    return shape


def enqueue(context: ExecutionContextAPI, stream_handle: int, where: str, batch: int) -> None:
    if not context.execute_async_v3(int(stream_handle)):
        raise ModelFileError(
            f"TensorRT failed to run {where} on a batch of {batch}; rerun with verbose logging "
            "(`--verbose`) to see TensorRT's reason on stderr"
        )


def chunk_plan(n: int, min_batch: int, max_batch: int) -> list[tuple[int, int, int]]:
    """Split ``n`` samples into engine runs: (start, stop, run_batch), ``run_batch`` >= ``min_batch`` (a static or
    min-bounded profile pads the last chunk with zeros; the padded rows are dropped)."""
    if min_batch < 1 or max_batch < min_batch:
        raise ValueError(f"bad batch range {min_batch}..{max_batch}")
    out = []
    for start in range(0, n, max_batch):
        stop = min(n, start + max_batch)
        out.append((start, stop, max(stop - start, min_batch)))
    return out


# ------------------------------------------------------------------------------------ pycuda helpers


@contextlib.contextmanager
def cuda_errors(cuda: Any, what: str) -> Iterator[None]:
    """Turn pycuda's out-of-memory (and other driver) errors into one-line :class:`DependencyError`."""
    try:
        yield
    except cuda.MemoryError as exc:
        raise DependencyError(f"out of GPU memory while {what} ({exc}); {OUT_OF_MEMORY_HINT}") from exc
    except cuda.Error as exc:
        raise DependencyError(
            f"CUDA failed while {what} ({exc}); check the device with `nvidia-smi` (`tegrastats` on a Jetson)"
        ) from exc


_PRIMARY_LOCK = threading.Lock()
_PRIMARY_CONTEXTS: dict[int, Any] = {}


def _retained_primary(cuda: Any, device: int) -> Any:
    """The device's primary context, retained once per process and never detached (pycuda.autoprimaryctx does the
    same: it pushes once and only pops at exit). Detaching per use is what leaked: ``detach()`` of a
    primary context pushes it and releases it without popping (see the module docstring)."""
    with _PRIMARY_LOCK:
        if device not in _PRIMARY_CONTEXTS:
            with cuda_errors(cuda, f"retaining CUDA device {device}'s primary context"):
                _PRIMARY_CONTEXTS[device] = cuda.Device(device).retain_primary_context()
        return _PRIMARY_CONTEXTS[device]


class PrimaryContext:
    """The device's primary context (the one TensorRT's runtime API uses), current only inside :meth:`active`.

    Pushed and popped around each use, symmetrically, so any thread may use the runner (one at a time: the lock)
    and no entry is left on the context stack; the context itself stays retained for the process."""

    def __init__(self, cuda: Any, device: int) -> None:
        self.cuda = cuda
        self.lock = threading.RLock()
        self.context: Any = _retained_primary(cuda, device)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self.lock:
            if self.context is None:
                raise RuntimeError("the CUDA context of this runner was released")
            self.context.push()
            try:
                yield
            finally:
                self.cuda.Context.pop()

    def release(self) -> None:
        """This user is done (nothing to free: the primary context is shared and stays retained)."""
        with self.lock:
            self.context = None


class _CudaGraph:
    """A captured ``execute_async_v3`` replayed with ``cuGraphLaunch`` (CUDA driver API through ctypes)."""

    CAPTURE_MODE_THREAD_LOCAL = 1  # CUstreamCaptureMode

    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise DependencyError(f"CUDA graphs need the CUDA driver library libcuda.so.1 ({exc})") from exc
        self.graph = ctypes.c_void_p()
        self.exec = ctypes.c_void_p()

    def _call(self, name: str, *args: Any) -> int:
        return int(getattr(self.lib, name)(*args))

    def capture(self, stream_handle: int, run: Callable[[], bool]) -> bool:
        """Capture ``run()`` on the stream; False (and nothing kept) when the engine cannot be captured."""
        stream = ctypes.c_void_p(stream_handle)
        if self._call("cuStreamBeginCapture_v2", stream, ctypes.c_int(self.CAPTURE_MODE_THREAD_LOCAL)) != 0:
            return False
        try:
            ok = run()
        finally:  # never leave the stream capturing, whatever ``run`` did
            ended = self._call("cuStreamEndCapture", stream, ctypes.byref(self.graph))
        if not ok or ended != 0:
            self.close()
            return False
        if self._call("cuGraphInstantiateWithFlags", ctypes.byref(self.exec), self.graph, ctypes.c_ulonglong(0)) != 0:
            self.close()
            return False
        return True

    def launch(self, stream_handle: int) -> None:
        if self._call("cuGraphLaunch", self.exec, ctypes.c_void_p(stream_handle)) != 0:
            raise DependencyError("cuGraphLaunch failed; rerun the bench without --cuda-graph")

    def close(self) -> None:
        if self.exec:
            self._call("cuGraphExecDestroy", self.exec)
            self.exec = ctypes.c_void_p()
        if self.graph:
            self._call("cuGraphDestroy", self.graph)
            self.graph = ctypes.c_void_p()


# ------------------------------------------------------------------------------------ the runner


class TensorRTRunner(Runner):
    """Runs a ``.plan``/``.engine`` with pycuda: page-locked host buffers, device buffers sized for the profile's
    largest batch, one stream, async copies, ``set_tensor_address`` + ``execute_async_v3``. No torch.

    The sidecar is checked against this device *before* the engine is deserialised (``check_sidecar=False``
    skips that, for engines built by other tools). Batches larger than the profile's maximum are split; a static
    batch engine pads. Any thread may call :meth:`infer` (calls are serialised). Capabilities beyond
    :class:`Runner`: :meth:`time_gpu` (GPU-only latency by CUDA events, optionally through a CUDA graph)."""

    runtime = "tensorrt"
    supports_gpu_timing = True

    def __init__(
        self, path: str, name: str | None = None, check_sidecar: bool = True, device: int = 0, verbose: bool = False
    ) -> None:
        super().__init__(path, name)
        self.check_sidecar = check_sidecar
        self.device = device
        self.verbose = verbose
        self.sidecar: EngineSidecar | None = None
        self._state: dict[str, Any] = {}

    def activate_impl(self) -> None:
        path = Path(self.path)
        if not path.is_file():
            raise ModelFileError(
                f"engine {path} not found; build one with `edge-unlearn build-engine MODEL.onnx -o {path.name}`"
            )
        trt = import_tensorrt()
        cuda = import_pycuda()
        env = current_environment(self.device)
        if self.check_sidecar:
            self.sidecar = check_compatible(path, env)
        elif sidecar_path(path).is_file():
            self.sidecar = read_sidecar(path)
        primary = PrimaryContext(cuda, self.device)
        self._state = {"trt": trt, "cuda": cuda, "env": env, "primary": primary}
        try:
            with primary.active():
                self._load(trt, cuda, path, self._state)
        except BaseException:
            self.deactivate_impl()  # frees whatever _load had allocated, then releases the context
            raise

    def _load(self, trt: Any, cuda: Any, path: Path, state: dict[str, Any]) -> None:
        """Fill ``state`` step by step, so that a failure half-way leaves everything allocated reachable."""
        logger = make_logger(trt, self.verbose)
        runtime = trt.Runtime(logger)
        sidecar = self.sidecar
        if sidecar is not None and sidecar.dla_core is not None:
            runtime.DLA_core = int(sidecar.dla_core)  # before deserialising: the engine runs on this DLA core
        if sidecar is not None and sidecar.version_compatible:
            runtime.engine_host_code_allowed = True  # the plan embeds the lean runtime; we built it ourselves
        state.update(logger=logger, runtime=runtime)
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            reason = logger.sink.last_error() or "no reason logged"
            raise ModelFileError(
                f"TensorRT {trt.__version__} could not deserialise {path} ({reason}); rebuild on "
                f"this device with `edge-unlearn build-engine MODEL.onnx -o {path}`"
            )
        state["engine"] = engine
        layout = read_layout(engine, trt.TensorIOMode.INPUT, sidecar.output_name if sidecar else "logits", str(path))
        context = new_execution_context(engine, str(path))
        state.update(context=context, layout=layout)
        max_in = (layout.max_batch, *layout.sample_shape)
        apply_input_shape(context, layout, max_in)
        buffers: dict[str, tuple[Any, Any]] = {}
        state["buffers"] = buffers
        with cuda_errors(cuda, f"allocating the buffers of {path.name} for a batch of {layout.max_batch}"):
            state["stream"] = cuda.Stream()
            for name in (layout.input_name, *layout.outputs):
                shape = max_in if name == layout.input_name else resolved_shape(context, name)
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                host = cuda.pagelocked_empty(max(1, math.prod(shape)), dtype)
                buffers[name] = (host, None)
                buffers[name] = (host, cuda.mem_alloc(max(1, host.nbytes)))
        bind_addresses(context, {name: int(dev) for name, (_host, dev) in buffers.items()})

    def infer_impl(self, inputs: np.ndarray) -> np.ndarray:
        layout: EngineLayout = self._state["layout"]
        if inputs.ndim != len(layout.input_shape) or tuple(inputs.shape[1:]) != layout.sample_shape:
            raise UsageError(
                f"{self.name} takes inputs [B, {', '.join(map(str, layout.sample_shape))}], got {inputs.shape}"
            )
        with self._state["primary"].active():
            outs = [
                self._run_chunk(inputs[a:b], run_batch)
                for a, b, run_batch in chunk_plan(len(inputs), layout.min_batch, layout.max_batch)
            ]
        return np.concatenate(outs, axis=0) if outs else np.zeros((0,), np.float32)

    def _run_chunk(self, chunk: np.ndarray, b: int) -> np.ndarray:
        s = self._state
        cuda, context, stream, layout = s["cuda"], s["context"], s["stream"], s["layout"]
        n = len(chunk)
        host_in, dev_in = s["buffers"][layout.input_name]
        view = host_in[: b * math.prod(layout.sample_shape)].reshape(b, *layout.sample_shape)
        view[:n] = chunk.astype(host_in.dtype, copy=False)
        view[n:] = 0
        apply_input_shape(context, layout, view.shape)
        with cuda_errors(cuda, f"running {self.name}"):
            cuda.memcpy_htod_async(dev_in, view, stream)
            enqueue(context, stream.handle, self.name, b)
            host_out, dev_out = s["buffers"][layout.output_name]
            out_shape = resolved_shape(context, layout.output_name)
            out_view = host_out[: math.prod(out_shape)]
            cuda.memcpy_dtoh_async(out_view, dev_out, stream)
            stream.synchronize()
        return np.array(out_view.reshape(out_shape)[:n], dtype=np.float32)

    def time_gpu(self, batch: int, iterations: int = 100, warmup: int = 10, cuda_graph: bool = False) -> dict[str, Any]:
        """GPU-only latency of ``batch`` inputs: CUDA events around ``execute_async_v3`` (no host copies, no
        Python in the measured span beyond the enqueue), like trtexec's "GPU Compute Time". ``cuda_graph``
        replays a captured graph instead (trtexec ``--useCudaGraph``); if the engine cannot be captured, the
        result says ``cuda_graph: false`` and the plain enqueue was timed. Returns milliseconds per iteration."""
        if not self.is_active:
            raise RuntimeError(f"runner {self.name} is not active; use it inside a `with` block")
        if iterations < 1 or warmup < 0:
            raise UsageError("iterations must be >= 1 and warmup >= 0")
        s = self._state
        cuda, context, stream, layout = s["cuda"], s["context"], s["stream"], s["layout"]
        if not layout.min_batch <= batch <= layout.max_batch:
            raise UsageError(f"batch {batch} is outside the engine's profile {layout.min_batch}..{layout.max_batch}")
        graph: _CudaGraph | None = None
        with s["primary"].active():
            apply_input_shape(context, layout, (batch, *layout.sample_shape))
            host_in, dev_in = s["buffers"][layout.input_name]
            host_in[:] = 0
            with cuda_errors(cuda, f"timing {self.name}"):
                cuda.memcpy_htod_async(dev_in, host_in, stream)
                enqueue(context, stream.handle, self.name, batch)  # flush deferred set-up before any capture
                stream.synchronize()
                if cuda_graph:
                    graph = _CudaGraph()
                    if not graph.capture(stream.handle, lambda: bool(context.execute_async_v3(stream.handle))):
                        graph = None
                run = (
                    (lambda: graph.launch(stream.handle))
                    if graph is not None
                    else (lambda: enqueue(context, stream.handle, self.name, batch))
                )
                try:
                    for _ in range(warmup):
                        run()
                    stream.synchronize()
                    start, end = cuda.Event(), cuda.Event()
                    times: list[float] = []
                    for _ in range(iterations):
                        start.record(stream)
                        run()
                        end.record(stream)
                        end.synchronize()
                        times.append(float(end.time_since(start)))
                finally:
                    if graph is not None:
                        graph.close()
        return {
            "batch": batch,
            "iterations": iterations,
            "cuda_graph": graph is not None,
            "gpu_ms": times,
            "median_ms": float(np.median(times)),
        }

    def deactivate_impl(self) -> None:
        s, self._state = self._state, {}
        primary: PrimaryContext | None = s.get("primary")
        if primary is None:
            return
        try:
            with primary.active():  # free device and pinned memory while our context is current
                for host, dev in s.get("buffers", {}).values():
                    if dev is not None:
                        dev.free()
                    base = getattr(host, "base", None)
                    if base is not None and hasattr(base, "free"):
                        base.free()  # PagelockedHostAllocation.free(): release the pinned pages now
                for key in ("buffers", "context", "engine", "stream", "runtime"):
                    s.pop(key, None)
        finally:
            primary.release()

    def describe_impl(self) -> dict[str, Any]:
        out: dict[str, Any] = {"provider": "tensorrt+pycuda", "capabilities": ["gpu_timing", "cuda_graph"]}
        if self.sidecar is not None:
            sc = self.sidecar
            out.update(
                precision=sc.precision,
                tensorrt_version=sc.tensorrt_version,
                built_for=f"{sc.gpu_name} ({sc.compute_capability})",
                num_classes=sc.num_classes,
                forgotten_classes=list(sc.forgotten_classes),
                source_sha256=sc.source_checkpoint_sha256,
                source_onnx_sha256=sc.source_onnx_sha256,
                strongly_typed=sc.strongly_typed,
                dla_core=sc.dla_core,
            )
        env = self._state.get("env")
        if env:
            out.update(
                device=env["gpu_name"],
                compute_capability=env["compute_capability"],
                tensorrt_runtime=env["tensorrt_version"],
            )
            if env.get("jetson"):
                out.update(jetson_model=env["jetson"].get("model"), power_mode=env.get("power_mode"))
        layout = self._state.get("layout")
        if layout is not None:
            out.update(min_batch=layout.min_batch, max_batch=layout.max_batch)
        return out
