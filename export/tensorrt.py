"""TensorRT engines: build from our ONNX files, run with pycuda. The ONE module that imports tensorrt / pycuda.

Both are imported lazily, inside functions, so ``import edge_unlearn.export.tensorrt`` works on a machine without them (our
development and CI machines: TensorRT cannot be installed there) and everything that is not a TensorRT call --
version dispatch, the optimisation profile, the ONNX hazard check, the sidecar check -- is a pure function
tested without TensorRT. Written against the official TensorRT 10 and 11 Python API documentation:

- TensorRT 10.x: weakly typed by default. FP16 by ``BuilderFlag.FP16``; INT8 from the explicit Q/DQ ONNX
  (``BuilderFlag.INT8`` lets the Q/DQ layers run in INT8); implicit INT8 calibration (deprecated since 10.1)
  only when explicitly asked for, with an ``IInt8EntropyCalibrator2`` over preprocessed inputs.
- TensorRT 11.x: every network is strongly typed; the precision flags and calibrators are gone, so the
  precision is the ONNX's own (the FP16 ONNX, the Q/DQ INT8 ONNX). DLA is not offered by every 11.x release;
  the builder's ``num_DLA_cores`` decides.
- Both: ``builder.build_serialized_network``; one optimisation profile over the batch axis; workspace limit by
  ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)``; a timing cache; inference by name-based I/O
  (``num_io_tensors``, ``get_tensor_name/mode/dtype``), ``set_input_shape``, ``set_tensor_address`` and
  ``execute_async_v3`` on one pycuda stream with page-locked host buffers.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edge_unlearn.core.formats import PRECISIONS
from edge_unlearn.errors import DependencyError, ModelFileError, UsageError
from edge_unlearn.fileio import atomic_output, sha256_file

from .onnx_hazards import DEFAULT_RANGE_LIMIT, check_model, load_onnx, onnx_precision
from .runner import Runner
from .sidecar import EngineSidecar, check_compatible, read_sidecar, sidecar_path, write_sidecar

DEFAULT_MIN_BATCH = 1
DEFAULT_OPT_BATCH = 8
DEFAULT_MAX_BATCH = 32
DEFAULT_WORKSPACE_MIB = 1024
ENGINE_SUFFIXES = (".plan", ".engine")

INSTALL_TENSORRT = ("install TensorRT on the device: `pip install edge-unlearn[tensorrt]` on a server, or use "
                    "JetPack's TensorRT on a Jetson (`sudo apt install python3-libnvinfer`); see docs/jetson.md")
INSTALL_PYCUDA = ("install pycuda on the device: `pip install pycuda` (it compiles against CUDA: put nvcc on PATH "
                  "and set CUDA_HOME=/usr/local/cuda); see docs/jetson.md")


# ------------------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class BuildConfig:
    """How to build an engine; ``None`` means the default.

    ``precision``: ``None`` = what the ONNX carries (fp32, the FP16 ONNX, the Q/DQ INT8 ONNX). ``fp16`` on an FP32
    ONNX asks TensorRT 10 for the FP16 builder flag (TensorRT 11 refuses: build from the FP16 ONNX).
    ``int8_calibration``: a .npy/.npz of preprocessed float32 inputs for *implicit* INT8 calibration of an FP32
    ONNX -- TensorRT 10 only, deprecated there; prefer the Q/DQ ONNX.
    ``strongly_typed``: ``None`` = automatic (always on TensorRT 11, off on 10).
    """

    precision: str | None = None
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    workspace_mib: int | None = None
    timing_cache: str | None = None
    dla_core: int | None = None
    int8_calibration: str | None = None
    calibration_batch: int = 8
    strongly_typed: bool | None = None
    range_limit: float = DEFAULT_RANGE_LIMIT
    verbose: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BuildPlan:
    """What :func:`plan_build` decided for one TensorRT version and one ONNX: pure data, tested without TensorRT."""

    tensorrt_major: int
    precision: str
    strongly_typed: bool
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    calibrate: bool
    dla_core: int | None
    notes: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------ pure helpers


def parse_version(version: str) -> tuple[int, int, int]:
    """'10.3.0.26' -> (10, 3, 0); '11.4.1' -> (11, 4, 1); '10.0' -> (10, 0, 0). ValueError for anything else."""
    parts: list[int] = []
    for piece in str(version).strip().split(".")[:3]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    if not parts:
        raise ValueError(f"not a TensorRT version: {version!r}")
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def api_generation(version: str) -> int:
    """10 (weakly typed; precision flags; calibrators deprecated) or 11 (strongly typed only).

    Anything older than 10 is refused (the name-based I/O API and ``execute_async_v3`` need 10); a future major
    is treated as 11 (strong typing is the direction of travel)."""
    try:
        major = parse_version(version)[0]
    except ValueError as exc:
        raise DependencyError(f"cannot read the TensorRT version {version!r}; {INSTALL_TENSORRT}") from exc
    if major < 10:
        raise DependencyError(f"TensorRT {version} is too old: edge-unlearn needs TensorRT 10 or 11 "
                              "(JetPack 6 or newer on a Jetson); " + INSTALL_TENSORRT)
    return 10 if major == 10 else 11


def hazard_target(onnx_prec: str, config: BuildConfig) -> str:
    """The precision the engine will compute in, for the ONNX hazard check (stricter for FP16)."""
    if config.precision == "fp16" or onnx_prec == "fp16":
        return "fp16"
    if onnx_prec == "int8" or config.precision == "int8":
        return "int8"
    return "fp32"


def plan_build(version: str, onnx_prec: str, config: BuildConfig) -> BuildPlan:
    """Decide network flags, builder flags and calibration for TensorRT ``version`` and an ONNX of ``onnx_prec``.

    Raises :class:`UsageError` for combinations a TensorRT version cannot build, naming what to do instead."""
    if onnx_prec not in PRECISIONS:
        raise ValueError(f"onnx precision must be one of {PRECISIONS}, got {onnx_prec!r}")
    want = config.precision
    if want is not None and want not in PRECISIONS:
        raise UsageError(f"unknown precision {want!r}; choose one of {', '.join(PRECISIONS)}")
    gen = api_generation(version)
    notes: list[str] = []
    if config.dla_core is not None and config.dla_core < 0:
        raise UsageError(f"--dla-core must be 0 or more, got {config.dla_core}")
    calibrate = config.int8_calibration is not None
    if gen >= 11:
        if config.strongly_typed is False:
            raise UsageError(f"TensorRT {version} builds strongly typed networks only; drop --weakly-typed")
        if calibrate:
            raise UsageError(f"implicit INT8 calibration was removed in TensorRT {version}; build from the Q/DQ "
                             "INT8 ONNX (`edge-unlearn quantize --precision int8`) instead")
        if want is not None and want != onnx_prec:
            raise UsageError(
                f"TensorRT {version} takes the precision from the ONNX, and this ONNX is {onnx_prec}, not {want}: "
                f"build from the {want.upper()} ONNX (`edge-unlearn quantize --precision {want}`), or drop --precision")
        precision = onnx_prec
        if config.dla_core is not None and precision == "fp32":
            raise UsageError("DLA runs FP16 or INT8 only; build from the FP16 or the Q/DQ INT8 ONNX")
        notes.append("strongly typed: precision comes from the ONNX")
        flags = ("GPU_FALLBACK",) if config.dla_core is not None else ()
        # STRONGLY_TYPED is deprecated and ignored in 11.x (always on): pass no network flag
        return BuildPlan(gen, precision, True, (), flags, False, config.dla_core, tuple(notes))

    # TensorRT 10.x
    strongly = bool(config.strongly_typed)
    builder: list[str] = []
    if calibrate:
        if onnx_prec != "fp32":
            raise UsageError(f"implicit INT8 calibration needs the FP32 ONNX, and this one is {onnx_prec}; "
                             "the Q/DQ INT8 ONNX already carries its scales: drop --int8-calibration")
        if want not in (None, "int8"):
            raise UsageError(f"--int8-calibration builds INT8, not {want}; drop one of the two options")
        if strongly:
            raise UsageError("implicit INT8 calibration does not work with a strongly typed network")
        notes.append("implicit INT8 calibration is deprecated since TensorRT 10.1 and removed in 11; "
                     "prefer the Q/DQ INT8 ONNX")
        builder.append("INT8")
        precision = "int8"
    elif onnx_prec == "int8":
        if want == "fp32":
            raise UsageError("a Q/DQ ONNX builds an INT8 engine; for FP32 build from the FP32 ONNX")
        precision = "int8"
        if not strongly:
            builder.append("INT8")
            if want == "fp16":
                builder.append("FP16")
                notes.append("layers outside the Q/DQ pairs may run in FP16")
        notes.append("explicit quantization from the Q/DQ nodes")
    elif onnx_prec == "fp16":
        if want == "fp32":
            raise UsageError("this ONNX is FP16; for an FP32 engine build from the FP32 ONNX")
        if want == "int8":
            raise UsageError("INT8 needs the Q/DQ ONNX (`edge-unlearn quantize --precision int8`)")
        precision = "fp16"
        if not strongly:
            builder.append("FP16")
    else:  # fp32 ONNX
        if want == "int8":
            raise UsageError("INT8 needs the Q/DQ ONNX (`edge-unlearn quantize --precision int8`), or the "
                             "deprecated implicit calibration (--int8-calibration INPUTS.npz, TensorRT 10 only)")
        precision = want or "fp32"
        if precision == "fp16":
            if strongly:
                raise UsageError("a strongly typed network takes its precision from the ONNX: build from the "
                                 "FP16 ONNX, or drop --strongly-typed to use the FP16 builder flag")
            builder.append("FP16")
    if config.dla_core is not None:
        if precision == "fp32":
            raise UsageError("DLA runs FP16 or INT8 only; add --precision fp16 or build from the Q/DQ INT8 ONNX")
        builder.append("GPU_FALLBACK")
    network = ("STRONGLY_TYPED",) if strongly else ()
    if strongly:
        notes.append("strongly typed: precision comes from the ONNX")
    return BuildPlan(gen, precision, strongly, network, tuple(builder), calibrate, config.dla_core, tuple(notes))


def onnx_input_shape(model: Any) -> tuple[str, tuple[int | str | None, ...]]:
    """Name and shape of the single graph input (dims: int, a symbolic name, or None)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelFileError(f"the ONNX model has {len(inputs)} inputs; edge-unlearn engines take exactly one "
                             "(the image batch); export with `edge-unlearn export`")
    dims: list[int | str | None] = []
    for d in inputs[0].type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return inputs[0].name, tuple(dims)


def compute_profile(shape: Sequence[int | str | None], min_batch: int | None = None, opt_batch: int | None = None,
                    max_batch: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) input shapes of the optimisation profile over the batch axis (axis 0).

    Unset batches default to 1 / 8 / 32, with ``opt`` clamped into [min, max]. A fixed batch in the ONNX allows
    only that batch; every other axis must be fixed (our models have a fixed image size)."""
    if not shape:
        raise ModelFileError("the ONNX input has no shape; re-export it with `edge-unlearn export`")
    rest: list[int] = []
    for axis, dim in enumerate(shape[1:], start=1):
        if not isinstance(dim, int) or dim <= 0:
            raise ModelFileError(f"input axis {axis} is dynamic ({dim!r}); only the batch axis may be: re-export "
                                 "with a fixed image size")
        rest.append(dim)
    for flag, value in (("--min-batch", min_batch), ("--opt-batch", opt_batch), ("--max-batch", max_batch)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"{flag} must be a positive integer, got {value!r}")
    batch = shape[0]
    if isinstance(batch, int) and batch > 0:
        asked = {v for v in (min_batch, opt_batch, max_batch) if v is not None}
        if asked - {batch}:
            raise UsageError(f"the ONNX has a fixed batch of {batch}, so the profile cannot be "
                             f"{sorted(asked)}; re-export with a dynamic batch axis (`edge-unlearn export` does)")
        lo = opt = hi = batch
    else:
        lo = min_batch if min_batch is not None else DEFAULT_MIN_BATCH
        hi = max_batch if max_batch is not None else max(DEFAULT_MAX_BATCH, lo)
        opt = opt_batch if opt_batch is not None else min(max(DEFAULT_OPT_BATCH, lo), hi)
        if not lo <= opt <= hi:
            raise UsageError(f"the batch profile must satisfy min <= opt <= max, got {lo} / {opt} / {hi}; "
                             "fix --min-batch / --opt-batch / --max-batch")
    return (lo, *rest), (opt, *rest), (hi, *rest)


def load_calibration_inputs(path: str | os.PathLike, input_shape: Sequence[int]) -> np.ndarray:
    """Preprocessed float32 inputs [N, *input_shape] from a .npy, or from a .npz's ``x`` / ``inputs`` / only array."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"calibration inputs {p} not found; pass a .npy/.npz of preprocessed float32 images")
    try:
        loaded = np.load(p, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a .npy
            arrays = {"x": loaded}
        else:  # a .npz
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{p} is not a readable .npy/.npz ({exc})") from exc
    for key in ("x", "inputs", "images"):
        if key in arrays:
            data = arrays[key]
            break
    else:
        if len(arrays) != 1:
            raise UsageError(f"{p} holds {sorted(arrays)}; name the inputs array 'x'")
        data = next(iter(arrays.values()))
    if data.dtype.kind != "f" or tuple(data.shape[1:]) != tuple(input_shape) or len(data) == 0:
        raise UsageError(f"calibration inputs must be float [N, {', '.join(map(str, input_shape))}] preprocessed "
                         f"like the model's input, got {data.dtype} {tuple(data.shape)}")
    return np.ascontiguousarray(data, dtype=np.float32)


def default_engine_path(onnx_path: str | os.PathLike) -> Path:
    """model.int8.onnx -> model.int8.plan."""
    p = Path(onnx_path)
    return p.with_suffix(".plan")


# ------------------------------------------------------------------------------------ imports and probes


def import_tensorrt() -> Any:
    """``import tensorrt`` or :class:`DependencyError` with the install line."""
    try:
        import tensorrt  # noqa: PLC0415 - lazily, by design
    except ImportError as exc:  # also OSError-derived failures of its shared libraries surface as ImportError
        raise DependencyError(f"TensorRT is not available ({str(exc).splitlines()[0]}); {INSTALL_TENSORRT}") from exc
    if not (hasattr(tensorrt, "Builder") and hasattr(tensorrt, "Runtime") and hasattr(tensorrt, "__version__")):
        where = getattr(tensorrt, "__file__", None) or list(getattr(tensorrt, "__path__", []))
        raise DependencyError(f"the module named tensorrt at {where} is not NVIDIA TensorRT (a folder named "
                              f"'tensorrt' on sys.path shadows it?); {INSTALL_TENSORRT}")
    return tensorrt


def import_pycuda() -> Any:
    """``import pycuda.driver`` (initialised) or :class:`DependencyError` with the install line."""
    try:
        import pycuda.driver as cuda  # noqa: PLC0415
    except ImportError as exc:
        raise DependencyError(f"pycuda is not available ({str(exc).splitlines()[0]}); {INSTALL_PYCUDA}") from exc
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            raise DependencyError("pycuda sees no CUDA device; TensorRT engines need an NVIDIA GPU")
    except cuda.Error as exc:
        raise DependencyError(f"CUDA could not start ({exc}); check the NVIDIA driver with `nvidia-smi` "
                              "(on a Jetson: `sudo tegrastats`)") from exc
    return cuda


def tensorrt_status() -> dict[str, Any]:
    """For ``doctor``: is TensorRT importable, which version, which API generation. Never raises."""
    import importlib.util

    status: dict[str, Any] = {"available": False, "version": None}
    try:
        trt = import_tensorrt()
    except DependencyError as exc:
        status["error"] = str(exc)
        lean = [m for m in ("tensorrt_lean", "tensorrt_dispatch") if importlib.util.find_spec(m) is not None]
        if lean:
            status["lean_runtime_only"] = lean
        return status
    version = str(getattr(trt, "__version__", "unknown"))
    status.update(available=True, version=version)
    try:
        gen = api_generation(version)
        status["api"] = ("TensorRT 11: strongly typed, precision from the ONNX" if gen >= 11 else
                         "TensorRT 10: FP16 by builder flag, INT8 from Q/DQ (implicit calibration deprecated)")
    except DependencyError as exc:
        status["available"] = False
        status["error"] = str(exc)
    return status


def pycuda_status() -> dict[str, Any]:
    """For ``doctor``: pycuda version and the GPU it sees. Never raises."""
    status: dict[str, Any] = {"available": False, "version": None}
    try:
        import pycuda  # noqa: PLC0415
    except ImportError as exc:
        status["error"] = f"pycuda is not available ({str(exc).splitlines()[0]}); {INSTALL_PYCUDA}"
        return status
    status["version"] = getattr(pycuda, "VERSION_TEXT", None)
    try:
        status["gpu"] = _gpu_info_pycuda()
        status["available"] = True
    except DependencyError as exc:
        status["error"] = str(exc)
    return status


def _gpu_info_pycuda(device: int = 0) -> dict[str, Any]:
    cuda = import_pycuda()
    try:
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        return {"name": str(dev.name()), "compute_capability": f"{major}.{minor}",
                "total_memory_mib": int(dev.total_memory()) >> 20,
                "driver_cuda_version": _cuda_version_text(cuda.get_driver_version())}
    except cuda.Error as exc:
        raise DependencyError(f"cannot query CUDA device {device} ({exc}); check `nvidia-smi`") from exc


def _cuda_version_text(value: int) -> str:
    return f"{value // 1000}.{(value % 1000) // 10}"


def gpu_info(device: int = 0) -> dict[str, Any]:
    """Name and compute capability of CUDA device ``device``: through pycuda, else through torch if present."""
    try:
        return _gpu_info_pycuda(device)
    except DependencyError as first:
        try:
            import torch  # noqa: PLC0415 - optional fallback for build machines that have torch
        except ImportError:
            raise first from None
        if not torch.cuda.is_available():
            raise first from None
        major, minor = torch.cuda.get_device_capability(device)
        return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def current_environment(device: int = 0) -> dict[str, Any]:
    """TensorRT version, GPU name, compute capability (and Jetson release if any) of this machine."""
    from .doctor import jetson_info

    trt = import_tensorrt()
    gpu = gpu_info(device)
    return {"tensorrt_version": str(trt.__version__), "gpu_name": gpu["name"],
            "compute_capability": gpu["compute_capability"], "jetson": jetson_info()}


@contextlib.contextmanager
def _cuda_context(cuda: Any, device: int = 0) -> Iterator[Any]:
    """Push the device's primary context (the one TensorRT's runtime API uses) for the block."""
    ctx = cuda.Device(device).retain_primary_context()
    ctx.push()
    try:
        yield ctx
    finally:
        ctx.pop()
        ctx.detach()


def _trt_logger(trt: Any, verbose: bool) -> Any:
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


# ------------------------------------------------------------------------------------ build


def _flag(enum: Any, name: str, version: str) -> Any:
    try:
        return getattr(enum, name)
    except AttributeError as exc:
        raise DependencyError(f"TensorRT {version} has no {enum.__name__}.{name}; this build needs another TensorRT "
                              "(see `edge-unlearn doctor`)") from exc


def _make_calibrator(trt: Any, cuda: Any, data: np.ndarray, batch: int) -> Any:
    """An IInt8EntropyCalibrator2 over ``data`` (TensorRT 10 only; the class is gone in 11)."""
    base = trt.IInt8EntropyCalibrator2

    class _Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.data, self.batch, self.index = data, batch, 0
            self.device_input = cuda.mem_alloc(int(data[:batch].nbytes))

        def get_batch_size(self) -> int:
            return self.batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index + self.batch > len(self.data):
                return None
            chunk = np.ascontiguousarray(self.data[self.index:self.index + self.batch])
            cuda.memcpy_htod(self.device_input, chunk)
            self.index += self.batch
            return [int(self.device_input)]

        def read_calibration_cache(self) -> None:
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return _Calibrator()


def build_engine(onnx_path: str | os.PathLike, out_path: str | os.PathLike, config: BuildConfig = BuildConfig(),
                 echo: Callable[[str], None] | None = None) -> EngineSidecar:
    """Check the ONNX for deployment hazards, build a TensorRT engine for this device, write it and its sidecar.

    Order: ONNX loads and carries edge-unlearn metadata -> hazard check (refuses on any error) -> TensorRT and the
    GPU are present -> version-dispatched build -> engine and ``<engine>.json`` written atomically."""
    from .onnx_meta import OnnxMeta

    say = echo or (lambda _msg: None)
    onnx_path = Path(onnx_path)
    out_path = Path(out_path)
    model = load_onnx(onnx_path)
    onnx_prec = onnx_precision(model)
    report = check_model(model, path=str(onnx_path), target_precision=hazard_target(onnx_prec, config),
                         range_limit=config.range_limit)
    report.raise_for_errors()
    meta = OnnxMeta.from_props({p.key: p.value for p in model.metadata_props}, str(onnx_path))
    for warning in report.warnings:
        say(f"warning: {warning.line()}")
    input_name, shape = onnx_input_shape(model)
    lo, opt, hi = compute_profile(shape, config.min_batch, config.opt_batch, config.max_batch)
    workspace = config.workspace_mib if config.workspace_mib is not None else DEFAULT_WORKSPACE_MIB
    if workspace < 1:
        raise UsageError(f"--workspace-mib must be at least 1, got {workspace}")
    calib_inputs = (load_calibration_inputs(config.int8_calibration, shape[1:])  # type: ignore[arg-type]
                    if config.int8_calibration else None)

    trt = import_tensorrt()
    version = str(trt.__version__)
    plan = plan_build(version, onnx_prec, config)
    env = current_environment()
    for note in plan.notes:
        say(f"TensorRT {version}: {note}")
    say(f"building {plan.precision} engine for {env['gpu_name']} (compute capability {env['compute_capability']}), "
        f"batch {lo[0]}/{opt[0]}/{hi[0]}")
    del model  # the parser reads the file itself (external data included)

    logger = _trt_logger(trt, config.verbose)
    builder = trt.Builder(logger)
    network_flags = 0
    for name in plan.network_flags:
        network_flags |= 1 << int(_flag(trt.NetworkDefinitionCreationFlag, name, version))
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        first = errors[0].splitlines()[0] if errors else "no error reported"
        raise ModelFileError(f"TensorRT {version}'s ONNX parser rejected {onnx_path}: {first}"
                             + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")
                             + "; run `edge-unlearn build-engine --check-only` and re-export")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace) << 20)
    for name in plan.builder_flags:
        builder_config.set_flag(_flag(trt.BuilderFlag, name, version))
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, lo, opt, hi)
    builder_config.add_optimization_profile(profile)

    cache = None
    if config.timing_cache:
        cache_path = Path(config.timing_cache)
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = builder_config.create_timing_cache(blob)
        builder_config.set_timing_cache(cache, False)
        say(f"timing cache {cache_path} ({'loaded' if blob else 'new'})")

    if plan.dla_core is not None:
        cores = int(getattr(builder, "num_DLA_cores", 0))
        if cores == 0:
            raise DependencyError(f"this device has no DLA core usable by TensorRT {version} (DLA is on Jetson "
                                  "Orin/Xavier, and not in every TensorRT 11 release); drop --dla-core")
        if plan.dla_core >= cores:
            raise UsageError(f"--dla-core {plan.dla_core} does not exist; this device has {cores} (0..{cores - 1})")
        builder_config.default_device_type = trt.DeviceType.DLA
        builder_config.DLA_core = plan.dla_core

    with contextlib.ExitStack() as stack:
        if plan.calibrate:
            cuda = import_pycuda()
            stack.enter_context(_cuda_context(cuda))
            batch = max(1, min(config.calibration_batch, hi[0], len(calib_inputs)))  # type: ignore[arg-type]
            builder_config.int8_calibrator = _make_calibrator(trt, cuda, calib_inputs, batch)
            if hasattr(builder_config, "set_calibration_profile"):
                calib_profile = builder.create_optimization_profile()
                calib_shape = (batch, *lo[1:])
                calib_profile.set_shape(input_name, calib_shape, calib_shape, calib_shape)
                builder_config.set_calibration_profile(calib_profile)
            say(f"calibrating INT8 implicitly on {len(calib_inputs)} inputs (deprecated; prefer the Q/DQ ONNX)")  # type: ignore[arg-type]
        serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise ModelFileError(f"TensorRT {version} could not build an engine from {onnx_path}; rerun with --verbose "
                             "to see why (often: too little workspace, raise --workspace-mib)")
    blob = memoryview(serialized).cast("B")
    engine_sha = hashlib.sha256(blob).hexdigest()
    with atomic_output(out_path) as tmp:
        tmp.write_bytes(blob.tobytes())
    if cache is not None and config.timing_cache:
        with atomic_output(config.timing_cache) as tmp:
            tmp.write_bytes(memoryview(builder_config.get_timing_cache().serialize()).cast("B").tobytes())

    from edge_unlearn import __version__

    sidecar = EngineSidecar(
        tensorrt_version=version, gpu_name=env["gpu_name"], compute_capability=env["compute_capability"],
        precision=plan.precision, source_onnx=str(onnx_path), source_onnx_sha256=sha256_file(onnx_path),
        engine_sha256=engine_sha, forgotten_classes=tuple(meta.forgotten_classes), num_classes=meta.num_classes,
        source_checkpoint_sha256=meta.source_sha256, input_name=input_name, output_name=meta.output_name, input_shape=tuple(shape[1:]),  # type: ignore[arg-type]
        profile={"min": list(lo), "opt": list(opt), "max": list(hi)}, strongly_typed=plan.strongly_typed,
        builder_flags=plan.builder_flags, dla_core=plan.dla_core, workspace_mib=int(workspace),
        jetson=env.get("jetson"), created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        edge_unlearn_version=__version__)
    write_sidecar(out_path, sidecar)
    say(f"wrote {out_path} ({len(blob) / 1e6:.1f} MB) and {sidecar_path(out_path).name}")
    return sidecar


# ------------------------------------------------------------------------------------ run


class TensorRTRunner(Runner):
    """Runs a ``.plan``/``.engine`` with pycuda: page-locked host buffers, device buffers sized for the profile's
    largest batch, one stream, async copies, ``set_tensor_address`` + ``execute_async_v3``. No torch.

    The sidecar is checked against this device *before* the engine is deserialised (``check_sidecar=False``
    skips that, for engines built by other tools). Batches larger than the profile's maximum are split."""

    runtime = "tensorrt"

    def __init__(self, path: str, name: str | None = None, check_sidecar: bool = True, device: int = 0,
                 verbose: bool = False) -> None:
        super().__init__(path, name)
        self.check_sidecar = check_sidecar
        self.device = device
        self.verbose = verbose
        self.sidecar: EngineSidecar | None = None
        self._state: dict[str, Any] = {}

    def activate_impl(self) -> None:
        path = Path(self.path)
        if not path.is_file():
            raise ModelFileError(f"engine {path} not found; build one with `edge-unlearn build-engine MODEL.onnx "
                                 f"-o {path.name}`")
        trt = import_tensorrt()
        cuda = import_pycuda()
        env = current_environment(self.device)
        if self.check_sidecar:
            self.sidecar = check_compatible(path, env)
        elif sidecar_path(path).is_file():
            self.sidecar = read_sidecar(path)
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(_cuda_context(cuda, self.device))
            self._state = self._load(trt, cuda, path, stack)
            self._state.update(trt=trt, cuda=cuda, env=env, stack=stack)
        except BaseException:
            stack.close()
            self._state = {}
            raise

    def _load(self, trt: Any, cuda: Any, path: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
        logger = _trt_logger(trt, self.verbose)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ModelFileError(f"TensorRT {trt.__version__} could not deserialise {path}; "
                                 f"rebuild on this device with `edge-unlearn build-engine MODEL.onnx -o {path}`")
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise ModelFileError(f"{path} has inputs {inputs} and outputs {outputs}; edge-unlearn engines have one "
                                 "input and a logits output")
        in_name = inputs[0]
        wanted = self.sidecar.output_name if self.sidecar else "logits"
        out_name = wanted if wanted in outputs else outputs[0]
        in_shape = tuple(int(d) for d in engine.get_tensor_shape(in_name))
        if any(d < 0 for d in in_shape[1:]):
            raise ModelFileError(f"{path}: input {in_name} has dynamic non-batch axes {in_shape}; rebuild it")
        if in_shape[0] < 0:
            lo, _opt, hi = engine.get_tensor_profile_shape(in_name, 0)
            min_batch, max_batch = int(lo[0]), int(hi[0])
        else:
            min_batch = max_batch = in_shape[0]
        max_in = (max_batch, *in_shape[1:])
        context.set_input_shape(in_name, max_in)
        buffers: dict[str, tuple[Any, Any]] = {}
        stream = cuda.Stream()
        for name in [in_name, *outputs]:
            shape = max_in if name == in_name else tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ModelFileError(f"{path}: cannot size output {name} {shape}; rebuild the engine")
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            host = cuda.pagelocked_empty(max(1, math.prod(shape)), dtype)
            dev = cuda.mem_alloc(max(1, host.nbytes))
            buffers[name] = (host, dev)
            context.set_tensor_address(name, int(dev))
        return {"runtime": runtime, "engine": engine, "context": context, "stream": stream, "buffers": buffers,
                "in_name": in_name, "out_name": out_name, "in_shape": in_shape, "min_batch": min_batch,
                "max_batch": max_batch}

    def infer_impl(self, inputs: np.ndarray) -> np.ndarray:
        s = self._state
        expected = s["in_shape"][1:]
        if inputs.ndim != len(s["in_shape"]) or tuple(inputs.shape[1:]) != tuple(expected):
            raise UsageError(f"{self.name} takes inputs [B, {', '.join(map(str, expected))}], got {inputs.shape}")
        outs = [self._run_chunk(inputs[i:i + s["max_batch"]]) for i in range(0, len(inputs), s["max_batch"])]
        return np.concatenate(outs, axis=0) if outs else np.zeros((0,), np.float32)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        s = self._state
        cuda, context, stream = s["cuda"], s["context"], s["stream"]
        n = len(chunk)
        b = max(n, s["min_batch"])  # a profile whose minimum exceeds the chunk: pad with zeros, drop after
        host_in, dev_in = s["buffers"][s["in_name"]]
        view = host_in[: b * math.prod(s["in_shape"][1:])].reshape(b, *s["in_shape"][1:])
        view[:n] = chunk.astype(host_in.dtype, copy=False)
        view[n:] = 0
        context.set_input_shape(s["in_name"], view.shape)
        cuda.memcpy_htod_async(dev_in, view, stream)
        if not context.execute_async_v3(stream.handle):
            raise ModelFileError(f"TensorRT failed to run {self.name} on a batch of {b}; rerun with verbose logging")
        host_out, dev_out = s["buffers"][s["out_name"]]
        out_shape = tuple(int(d) for d in context.get_tensor_shape(s["out_name"]))
        out_view = host_out[: math.prod(out_shape)]
        cuda.memcpy_dtoh_async(out_view, dev_out, stream)
        stream.synchronize()
        return np.array(out_view.reshape(out_shape)[:n], dtype=np.float32)

    def deactivate_impl(self) -> None:
        s, self._state = self._state, {}
        if not s:
            return
        try:  # release in reverse order of creation while the CUDA context is still current
            for _host, dev in s.get("buffers", {}).values():
                dev.free()
            for key in ("buffers", "context", "engine", "runtime", "stream"):
                s.pop(key, None)
        finally:
            s["stack"].close()

    def describe_impl(self) -> dict[str, Any]:
        out: dict[str, Any] = {"provider": "tensorrt+pycuda"}
        if self.sidecar is not None:
            sc = self.sidecar
            out.update(precision=sc.precision, tensorrt_version=sc.tensorrt_version,
                       built_for=f"{sc.gpu_name} ({sc.compute_capability})", num_classes=sc.num_classes,
                       forgotten_classes=list(sc.forgotten_classes), source_sha256=sc.source_checkpoint_sha256,
                       source_onnx_sha256=sc.source_onnx_sha256, strongly_typed=sc.strongly_typed)
        env = self._state.get("env")
        if env:
            out.update(device=env["gpu_name"], compute_capability=env["compute_capability"],
                       tensorrt_runtime=env["tensorrt_version"])
        if "max_batch" in self._state:
            out.update(min_batch=self._state["min_batch"], max_batch=self._state["max_batch"])
        return out


def is_engine_path(path: str | os.PathLike) -> bool:
    """True for ``.plan`` / ``.engine`` files (what ``open_runner`` dispatches to :class:`TensorRTRunner`)."""
    return Path(path).suffix.lower() in ENGINE_SUFFIXES
