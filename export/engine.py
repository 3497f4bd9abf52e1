"""Build a TensorRT engine from our ONNX (and inspect one). TensorRT/pycuda are imported lazily, inside functions.

API contracts used here, read in github.com/NVIDIA/TensorRT (python/src/infer/pyCore.cpp and pyGraph.cpp,
python/docstrings/infer/pyCoreDoc.h; tags v10.3.0 and v11.1):

- ``Builder.build_serialized_network`` returns None when the build fails; ``OnnxParser.parse_from_file`` False.
- ``IBuilderConfig.create_timing_cache(b"")`` makes a new cache; ``set_timing_cache(cache, ignore_mismatch)``
  returns a bool, False when the cache was made on another device/version (see plan.timing_cache_outcome).
  The file is locked while it is read, used and rewritten, as Polygraphy does
  (tools/Polygraphy/polygraphy/backend/trt/config.py ``load_timing_cache``: "the file will be locked").
- ``IBuilderConfig.profiling_verbosity = ProfilingVerbosity.DETAILED`` makes the engine inspector report layer
  parameters; ``ICudaEngine.create_engine_inspector().get_engine_information(LayerInformationFormat.JSON)``.
- ``IBuilderConfig.builder_optimization_level`` (0..5, default 3), ``hardware_compatibility_level``
  (``HardwareCompatibilityLevel``), ``BuilderFlag.VERSION_COMPATIBLE``.
- DLA: ``IBuilderConfig.default_device_type = DeviceType.DLA``, ``DLA_core``, ``can_run_on_DLA(layer)``;
  ``Builder.num_DLA_cores`` and ``max_DLA_batch_size``.
- ``ILayer.precision`` / ``set_output_type`` with ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS`` (10.x).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn.deploy.onnx_hazards import check_model, load_onnx, onnx_precision
from edge_unlearn.deploy.sidecar import EngineSidecar, read_sidecar, sidecar_path, write_sidecar
from edge_unlearn.deploy.tensorrt.logger import make_logger
from edge_unlearn.deploy.tensorrt.plan import (
    DEFAULT_WORKSPACE_MIB,
    BuildConfig,
    BuildPlan,
    LayerPlacement,
    PlacementReport,
    check_dla_batch,
    compute_profile,
    dla_input_shape,
    format_command,
    hazard_target,
    load_calibration_inputs,
    mask_layers_to_pin,
    needs_optimization_profile,
    onnx_input_shape,
    plan_build,
    refuse_cpu_layout,
    refuse_no_gpu_fallback,
    require_dla_engine,
    summarize_engine_information,
    timing_cache_outcome,
    trtexec_command,
)
from edge_unlearn.deploy.tensorrt.preflight import check_onnx_loads
from edge_unlearn.deploy.tensorrt.probe import current_environment, import_pycuda, import_tensorrt
from edge_unlearn.deploy.tensorrt.runner import PrimaryContext, cuda_errors
from edge_unlearn.errors import DependencyError, ModelFileError, UsageError
from edge_unlearn.fileio import atomic_output, sha256_file


def _flag(enum: Any, name: str, version: str) -> Any:
    try:
        return getattr(enum, name)
    except AttributeError as exc:
        raise DependencyError(
            f"TensorRT {version} has no {enum.__name__}.{name}; this build needs another TensorRT "
            "(see `edge-unlearn doctor`)"
        ) from exc


@contextlib.contextmanager
def locked_file(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock on ``<path>.lock`` for the block (two builds sharing one timing cache must not
    interleave read-modify-write). POSIX ``fcntl.flock``; a no-op where fcntl does not exist."""
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
    except ImportError:
        yield
        return
    lock_path = Path(str(path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _make_calibrator(trt: Any, cuda: Any, data: np.ndarray, batch: int) -> Any:
    """An IInt8EntropyCalibrator2 over ``data`` (TensorRT 10 only; the class is gone in 11). Its device buffer
    is freed by :meth:`free` before the CUDA context is released."""
    base = trt.IInt8EntropyCalibrator2

    class _Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.data, self.batch, self.index = data, batch, 0
            with cuda_errors(cuda, "allocating the calibration batch"):
                self.device_input = cuda.mem_alloc(int(data[:batch].nbytes))

        def get_batch_size(self) -> int:
            return self.batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index + self.batch > len(self.data):
                return None
            chunk = np.ascontiguousarray(self.data[self.index : self.index + self.batch])
            cuda.memcpy_htod(self.device_input, chunk)
            self.index += self.batch
            return [int(self.device_input)]

        def read_calibration_cache(self) -> None:
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            return None

        def free(self) -> None:
            if self.device_input is not None:
                self.device_input.free()
                self.device_input = None

    return _Calibrator()


def dla_placement(network: Any, builder_config: Any) -> PlacementReport:
    """Which network layers the DLA can take (``IBuilderConfig.can_run_on_DLA``); the rest fall back to the GPU.
    Asked after the network input has its static shape (:func:`plan.dla_input_shape`)."""
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        on_dla = bool(builder_config.can_run_on_DLA(layer))
        layers.append(LayerPlacement(str(layer.name), str(layer.type).split(".")[-1], "DLA" if on_dla else "GPU"))
    return PlacementReport(tuple(layers))


def read_onnx_for_build(onnx_path: Path, config: BuildConfig) -> dict[str, Any]:
    """Everything the build needs from the ONNX, checked before TensorRT is touched: the CPU-layout refusal, the
    hazard report, our metadata, the input and its profile."""
    from edge_unlearn.deploy.onnx_meta import OnnxMeta

    check_onnx_loads(onnx_path)
    model = load_onnx(onnx_path)
    props = {p.key: p.value for p in model.metadata_props}
    refuse_cpu_layout(props, str(onnx_path))
    onnx_prec = onnx_precision(model)
    report = check_model(
        model, path=str(onnx_path), target_precision=hazard_target(onnx_prec, config), range_limit=config.range_limit
    )
    report.raise_for_errors()
    refuse_no_gpu_fallback(((n.name, n.op_type) for n in model.graph.node), config)
    meta = OnnxMeta.from_props(props, str(onnx_path))
    input_name, shape = onnx_input_shape(model)
    profile = compute_profile(
        shape,
        config.min_batch,
        config.opt_batch,
        config.max_batch,
        batch=config.batch,
        require_static=config.dla_core is not None,
    )
    return {
        "precision": onnx_prec,
        "report": report,
        "meta": meta,
        "input_name": input_name,
        "shape": shape,
        "profile": profile,
    }


def build_engine(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    config: BuildConfig = BuildConfig(),
    echo: Callable[[str], None] | None = None,
) -> EngineSidecar:
    """Check the ONNX for deployment hazards, build a TensorRT engine for this device, write it and its sidecar.

    Order: ONNX loads, is not a CPU layout, carries edge-unlearn metadata -> hazard check (refuses on any error)
    -> TensorRT and the GPU are present -> version-dispatched build -> DLA placement check -> engine and
    ``<engine>.json`` written atomically. Messages go to ``echo`` (the CLI sends them to stderr with --json);
    TensorRT's own log goes to stderr."""
    say = echo or (lambda _msg: None)
    onnx_path = Path(onnx_path)
    out_path = Path(out_path)
    src = read_onnx_for_build(onnx_path, config)
    for warning in src["report"].warnings:
        say(f"warning: {warning.line()}")
    lo, opt, hi = src["profile"]
    workspace = config.workspace_mib if config.workspace_mib is not None else DEFAULT_WORKSPACE_MIB
    if workspace < 1:
        raise UsageError(f"--workspace-mib must be at least 1, got {workspace}")
    calib_inputs = (
        load_calibration_inputs(config.int8_calibration, src["shape"][1:])  # type: ignore[arg-type]
        if config.int8_calibration
        else None
    )

    trt = import_tensorrt()
    version = str(trt.__version__)
    plan = plan_build(version, src["precision"], config)
    env = current_environment()
    if config.hardware_compatibility and env.get("jetson"):
        raise UsageError(
            "hardware-compatible engines are for discrete Ampere+ GPUs, not Jetson: drop --hardware-compatibility"
        )
    for note in plan.notes:
        say(f"TensorRT {version}: {note}")
    if config.verbose:
        cmd = trtexec_command(str(onnx_path), str(out_path), plan, src["input_name"], (lo, opt, hi), workspace, config)
        say("equivalent trtexec command: " + format_command(cmd))
    batch_text = f"static batch {lo[0]}" if lo == hi else f"batch {lo[0]}/{opt[0]}/{hi[0]}"
    say(
        f"building {plan.precision} engine for {env['gpu_name']} (compute capability {env['compute_capability']}), "
        f"{batch_text}" + (f", DLA core {plan.dla_core}" if plan.dla_core is not None else "")
    )

    logger = make_logger(trt, config.verbose)
    cuda = import_pycuda() if plan.calibrate else None
    primary = PrimaryContext(cuda, 0) if cuda is not None else None
    cache_lock = locked_file(config.timing_cache) if config.timing_cache else contextlib.nullcontext()
    with contextlib.ExitStack() as stack:
        if primary is not None:
            stack.callback(primary.release)
            stack.enter_context(primary.active())
        stack.enter_context(cache_lock)
        serialized, placement = _build(
            trt, logger, onnx_path, plan, config, src, workspace, calib_inputs, cuda, stack, say
        )
        blob = memoryview(serialized).cast("B")
        engine_sha = hashlib.sha256(blob).hexdigest()
        with atomic_output(out_path) as tmp:
            tmp.write_bytes(blob.tobytes())
            # the inspector reads the engine as written (deserialised from the file), and a DLA engine with no DLA
            # subgraph fails here, before the file is moved into place
            layer_info = (
                _engine_information(trt, logger, tmp.read_bytes(), plan.dla_core, config.version_compatible)
                if config.detailed_profiling
                else None
            )
            inspected = _inspect_built(layer_info, plan.dla_core, say)

    from edge_unlearn import __version__

    meta = src["meta"]
    sidecar = EngineSidecar(
        tensorrt_version=version,
        gpu_name=env["gpu_name"],
        compute_capability=env["compute_capability"],
        precision=plan.precision,
        source_onnx=str(onnx_path),
        source_onnx_sha256=sha256_file(onnx_path),
        engine_sha256=engine_sha,
        forgotten_classes=tuple(meta.forgotten_classes),
        num_classes=meta.num_classes,
        source_checkpoint_sha256=meta.source_sha256,
        input_name=src["input_name"],
        output_name=meta.output_name,
        input_shape=tuple(src["shape"][1:]),
        profile={"min": list(lo), "opt": list(opt), "max": list(hi)},
        strongly_typed=plan.strongly_typed,
        builder_flags=plan.builder_flags,
        dla_core=plan.dla_core,
        workspace_mib=int(workspace),
        jetson=env.get("jetson"),
        power_mode=env.get("power_mode"),
        version_compatible=config.version_compatible,
        hardware_compatibility=config.hardware_compatibility,
        optimization_level=config.optimization_level,
        dla_placement=(
            {**placement.to_dict(), "inspector_dla_layers": inspected["dla_layers"] if inspected else None}
            if placement is not None
            else None
        ),
        gpu_sm_count=env.get("gpu_sm_count"),
        gpu_memory_mib=env.get("gpu_memory_mib"),
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        edge_unlearn_version=__version__,
    )
    write_sidecar(out_path, sidecar)
    if layer_info is not None:
        with atomic_output(Path(str(out_path) + ".layers.json")) as tmp:
            tmp.write_text(layer_info, encoding="utf-8")
    say(f"wrote {out_path} ({len(blob) / 1e6:.1f} MB) and {sidecar_path(out_path).name}")
    return sidecar


def _build(
    trt: Any,
    logger: Any,
    onnx_path: Path,
    plan: BuildPlan,
    config: BuildConfig,
    src: dict[str, Any],
    workspace: int,
    calib_inputs: np.ndarray | None,
    cuda: Any,
    stack: contextlib.ExitStack,
    say: Callable[[str], None],
) -> tuple[Any, PlacementReport | None]:
    version = str(trt.__version__)
    lo, opt, hi = src["profile"]
    builder = trt.Builder(logger)
    network_flags = 0
    for name in plan.network_flags:
        network_flags |= 1 << int(_flag(trt.NetworkDefinitionCreationFlag, name, version))
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        first = errors[0].splitlines()[0] if errors else "no error reported"
        raise ModelFileError(
            f"TensorRT {version}'s ONNX parser rejected {onnx_path}: {first}"
            + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")
            + "; run `edge-unlearn build-engine --check-only` and re-export"
        )
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace) << 20)
    for name in plan.builder_flags:
        builder_config.set_flag(_flag(trt.BuilderFlag, name, version))
    if config.detailed_profiling:
        builder_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if plan.optimization_level is not None:
        builder_config.builder_optimization_level = int(plan.optimization_level)
    if plan.hardware_compatibility is not None:
        builder_config.hardware_compatibility_level = _flag(
            trt.HardwareCompatibilityLevel, plan.hardware_compatibility, version
        )
    for name in plan.cleared_flags:  # TF32 for FP32 engines (plan.flags_to_clear); absent flags need no clearing
        if hasattr(trt.BuilderFlag, name):
            builder_config.clear_flag(getattr(trt.BuilderFlag, name))
    network_input = network.get_input(0)
    if plan.dla_core is not None:  # before can_run_on_DLA: the parser leaves the batch at -1, which DLA refuses
        network_input.shape = dla_input_shape(tuple(network_input.shape), src["profile"])
    if needs_optimization_profile(tuple(network_input.shape)):
        profile = builder.create_optimization_profile()
        profile.set_shape(src["input_name"], lo, opt, hi)
        builder_config.add_optimization_profile(profile)

    cache = None
    if config.timing_cache:
        cache_path = Path(config.timing_cache)
        old = cache_path.read_bytes() if cache_path.is_file() else b""
        try:
            cache = builder_config.create_timing_cache(old)
        except Exception:  # noqa: BLE001 - an unreadable blob: some versions raise instead of returning None
            cache = None
        attached = cache is not None and bool(builder_config.set_timing_cache(cache, False))
        outcome = timing_cache_outcome(str(cache_path), bool(old), cache is not None, attached)
        if outcome.state == "stale":
            cache = builder_config.create_timing_cache(b"")
            if cache is None or not builder_config.set_timing_cache(cache, False):
                raise DependencyError("TensorRT could not attach a fresh timing cache; drop --timing-cache")
        say(outcome.message)

    placement = None
    if plan.dla_core is not None:
        cores = int(getattr(builder, "num_DLA_cores", 0))
        if cores == 0:
            raise DependencyError(
                f"this device has no DLA core usable by TensorRT {version} (DLA is on Jetson AGX "
                "Orin and Orin NX, not Orin Nano, and not in every TensorRT 11 release); "
                "drop --dla-core"
            )
        if plan.dla_core >= cores:
            raise UsageError(f"--dla-core {plan.dla_core} does not exist; this device has {cores} (0..{cores - 1})")
        check_dla_batch(hi[0], int(getattr(builder, "max_DLA_batch_size", 0)))
        builder_config.default_device_type = trt.DeviceType.DLA
        builder_config.DLA_core = plan.dla_core
        placement = dla_placement(network, builder_config)
        say(placement.summary())
        placement.require_dla(plan.dla_core)
        if not config.gpu_fallback:
            placement.require_no_fallback(plan.dla_core)

    if plan.calibrate:
        pinned = mask_layers_to_pin(network.get_layer(i).name for i in range(network.num_layers))
        if pinned:
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                if layer.name in pinned:
                    layer.precision = trt.float32
                    for k in range(layer.num_outputs):
                        layer.set_output_type(k, trt.float32)
            builder_config.set_flag(_flag(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", version))
            say(f"implicit INT8: the class-mask layers stay FP32 ({', '.join(pinned)})")
        else:
            say("warning: no edge_unlearn_mask/ layers found; implicit INT8 may quantize the mask value")
        batch = max(1, min(config.calibration_batch, hi[0], len(calib_inputs)))  # type: ignore[arg-type]
        calibrator = _make_calibrator(trt, cuda, calib_inputs, batch)  # type: ignore[arg-type]
        stack.callback(calibrator.free)
        builder_config.int8_calibrator = calibrator
        if hasattr(builder_config, "set_calibration_profile"):
            calib_profile = builder.create_optimization_profile()
            calib_shape = (batch, *lo[1:])
            calib_profile.set_shape(src["input_name"], calib_shape, calib_shape, calib_shape)
            builder_config.set_calibration_profile(calib_profile)
        say(f"calibrating INT8 implicitly on {len(calib_inputs)} inputs (deprecated; prefer the Q/DQ ONNX)")  # type: ignore[arg-type]

    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        reason = logger.sink.last_error() or "see TensorRT's log above (rerun with --verbose)"
        raise ModelFileError(
            f"TensorRT {version} could not build an engine from {onnx_path}: {reason} (often: too "
            "little workspace, raise --workspace-mib)"
        )
    if cache is not None and config.timing_cache:
        cache_blob = memoryview(builder_config.get_timing_cache().serialize()).cast("B").tobytes()
        with atomic_output(config.timing_cache) as tmp:
            tmp.write_bytes(cache_blob)
    return serialized, placement


def _inspect_built(layer_info: str | None, dla_core: int | None, say: Callable[[str], None]) -> dict[str, Any] | None:
    """Summarise the written engine's inspector JSON and say it in one line; a DLA build whose engine has no DLA
    subgraph (or none the inspector can show) fails (:func:`plan.require_dla_engine`). For a GPU engine an
    unreadable JSON is only a warning: the engine itself is fine."""
    if layer_info is None:
        if dla_core is not None:
            raise ModelFileError(
                f"--dla-core {dla_core}: the engine inspector could not read the built engine, so its DLA placement "
                "cannot be checked; nothing written"
            )
        return None
    try:
        inspected = summarize_engine_information(layer_info)
    except ModelFileError as exc:
        if dla_core is not None:
            raise
        say(f"warning: {exc}; the layer report is left out")
        return None
    if inspected["detailed"]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(inspected["precision_counts"].items())) or "unknown"
        say(
            f"engine inspector: {inspected['num_layers']} layers, output precision {counts}"
            + (f", {inspected['dla_layers']} DLA subgraph(s)" if dla_core is not None else "")
        )
    require_dla_engine(inspected, dla_core)
    return inspected


def _engine_information(
    trt: Any, logger: Any, serialized: Any, dla_core: int | None, version_compatible: bool
) -> str | None:
    """The engine inspector's JSON for a freshly built plan (None if it cannot be deserialised here)."""
    runtime = trt.Runtime(logger)
    if dla_core is not None:
        runtime.DLA_core = int(dla_core)
    if version_compatible:
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        return None
    inspector = engine.create_engine_inspector()
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def inspect_engine(engine_path: str | os.PathLike, verbose: bool = False) -> dict[str, Any]:
    """Per-layer type, precision and device of a built engine (engine inspector; detailed only when the engine
    was built with detailed profiling verbosity, our default). Reads the sidecar for DLA core and
    version compatibility; does not check it against this device."""
    path = Path(engine_path)
    if not path.is_file():
        raise ModelFileError(f"engine {path} not found; build one with `edge-unlearn build-engine`")
    sidecar = read_sidecar(path) if sidecar_path(path).is_file() else None
    trt = import_tensorrt()
    cuda = import_pycuda()
    primary = PrimaryContext(cuda, 0)
    try:
        with primary.active():
            logger = make_logger(trt, verbose)
            text = _engine_information(
                trt,
                logger,
                path.read_bytes(),
                sidecar.dla_core if sidecar else None,
                bool(sidecar and sidecar.version_compatible),
            )
    finally:
        primary.release()
    if text is None:
        raise ModelFileError(f"TensorRT {trt.__version__} could not deserialise {path}; rebuild it on this device")
    summary = summarize_engine_information(text)
    summary["engine"] = str(path)
    return summary
