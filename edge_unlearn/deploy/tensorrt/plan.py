"""Pure build decisions for TensorRT: version dispatch, the optimisation profile (dynamic or static batch), DLA
plan validation, compatibility modes, the timing-cache outcome, the DLA placement verdict and the equivalent
``trtexec`` command line. No TensorRT, no pycuda: everything here is tested without the library.

Contracts used below, read in the TensorRT sources (github.com/NVIDIA/TensorRT, tags v10.3.0 and v11.1):

- ``BuilderFlag.FP16`` / ``INT8`` exist in 10.x (python/src/infer/pyCore.cpp v10.3.0, ``.value("FP16", ...)``)
  and are absent from 11.x (pyCore.cpp v11.1 binds no FP16/INT8 builder flag): 11.x networks are always
  strongly typed, the precision is the ONNX's own.
- ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists in both; trtexec 11 documents ``--stronglyTyped`` as
  "[Deprecated] Strongly typed network is now enabled by default" (samples/common/sampleOptions.cpp, main).
- ``HardwareCompatibilityLevel.AMPERE_PLUS`` exists from 10.0; ``SAME_COMPUTE_CAPABILITY`` from 10.9
  (pyCore.cpp v10.9.0). ``BuilderFlag.VERSION_COMPATIBLE`` in both; version-compatible engines run on later
  runtimes of the same major, and a TensorRT 10 one on a TensorRT 11 runtime (TensorRT 11.4.1 support matrix,
  "Engine Portability").
- trtexec flags (``--onnx --saveEngine --minShapes/--optShapes/--maxShapes --shapes --memPoolSize=workspace:N
  --fp16 --int8 --stronglyTyped --useDLACore --allowGPUFallback --timingCacheFile --builderOptimizationLevel
  --hardwareCompatibilityLevel=none|ampere+|sameComputeCapability --versionCompatible
  --profilingVerbosity=detailed --exportLayerInfo --verbose``) from samples/common/sampleOptions.cpp (v10.3.0
  and main).
Longer than 500 lines because every pure TensorRT decision (version dispatch, profiles, DLA, timing cache, inspector summary, trtexec line), tested without TensorRT; the builder and the runner read one plan.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn.core.formats import PRECISIONS
from edge_unlearn.errors import DependencyError, ModelFileError, UsageError

from ..onnx_hazards import DEFAULT_RANGE_LIMIT

DEFAULT_MIN_BATCH = 1
DEFAULT_OPT_BATCH = 8
DEFAULT_MAX_BATCH = 32
DEFAULT_WORKSPACE_MIB = 1024
#: TensorRT's own default (``IBuilderConfig.builder_optimization_level`` docstring; trtexec "default is 3")
DEFAULT_OPTIMIZATION_LEVEL = 3
MAX_OPTIMIZATION_LEVEL = 5
ENGINE_SUFFIXES = (".plan", ".engine")
#: our name -> (TensorRT enum member, first TensorRT version that has it, trtexec spelling)
HARDWARE_COMPAT = {
    "ampere-plus": ("AMPERE_PLUS", (10, 0, 0), "ampere+"),
    "same-compute-capability": ("SAME_COMPUTE_CAPABILITY", (10, 9, 0), "sameComputeCapability"),
}
#: The ONNX metadata key saying for which runtime ``quantize`` laid the file out (docs/design.md §5; set by quantize)
QUANT_TARGET_KEY = "edge_unlearn_quant_target"

INSTALL_TENSORRT = (
    "install TensorRT on the device: `pip install edge-unlearn[tensorrt]` on a server, or use "
    "JetPack's TensorRT on a Jetson (`sudo apt install python3-libnvinfer`); see docs/jetson.md"
)


# ------------------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class BuildConfig:
    """How to build an engine; ``None`` means the default. Version 2 of this config.

    ``precision``: ``None`` = what the ONNX carries (fp32, the FP16 ONNX, the Q/DQ INT8 ONNX). ``fp16`` on an FP32
    ONNX asks TensorRT 10 for the FP16 builder flag (TensorRT 11 refuses: build from the FP16 ONNX).
    ``batch``: a static batch (min = opt = max = batch), what DLA needs; excludes min/opt/max_batch.
    ``int8_calibration``: a .npy/.npz of preprocessed float32 inputs for *implicit* INT8 calibration of an FP32
    ONNX -- TensorRT 10 only, deprecated there; prefer the Q/DQ ONNX.
    ``strongly_typed``: ``None`` = automatic (always on TensorRT 11; on 10.12+ for the FP16 / Q/DQ ONNX, where the
    precision flags are deprecated; otherwise off on 10).
    ``hardware_compatibility``: ``None`` or a key of :data:`HARDWARE_COMPAT` (discrete GPUs only).
    ``detailed_profiling``: build with ``ProfilingVerbosity.DETAILED`` so the engine inspector reports each
    layer's precision and tactic (on by default, as trtexec's ``--profilingVerbosity=detailed``).
    """

    precision: str | None = None
    batch: int | None = None
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    workspace_mib: int | None = None
    timing_cache: str | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    int8_calibration: str | None = None
    calibration_batch: int = 8
    strongly_typed: bool | None = None
    optimization_level: int | None = None
    version_compatible: bool = False
    hardware_compatibility: str | None = None
    detailed_profiling: bool = True
    range_limit: float = DEFAULT_RANGE_LIMIT
    verbose: bool = False
    config_version: int = 2

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
    optimization_level: int | None = None
    hardware_compatibility: str | None = None  # the TensorRT enum member name, e.g. "AMPERE_PLUS"
    #: builder flags to clear (``IBuilderConfig.clear_flag``): TF32 for FP32 engines, see :func:`flags_to_clear`
    cleared_flags: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------ version dispatch


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
        raise DependencyError(
            f"TensorRT {version} is too old: edge-unlearn needs TensorRT 10 or 11 "
            "(JetPack 6.1 or newer on a Jetson); " + INSTALL_TENSORRT
        )
    return 10 if major == 10 else 11


#: JetPack 6's TensorRT 10.3 Python bindings (python3-libnvinfer) were built against NumPy 1.x; see docs/jetson.md
NUMPY1_TENSORRT_BELOW = (10, 4, 0)


def numpy_tensorrt_problem(numpy_version: str, tensorrt_version: str | None, error: str = "") -> str | None:
    """Why TensorRT's bindings and this NumPy may not work together, or None. NumPy 2 changed its C ABI; bindings
    compiled against NumPy 1.x fail to import ("compiled using NumPy 1.x cannot be run in NumPy 2", "_ARRAY_API not
    found", "numpy.core.multiarray failed to import"). JetPack 6's TensorRT 10.3 is such a build, so the tensorrt
    extra pins numpy<2 on aarch64 (pyproject.toml) and this names the fix when the pin was bypassed."""
    try:
        numpy_major = int(str(numpy_version).split(".")[0])
    except ValueError:
        return None
    if numpy_major < 2:
        return None
    text = error.lower()
    abi_error = "numpy" in text and ("1.x" in text or "_array_api" in text or "multiarray" in text)
    try:
        old_bindings = tensorrt_version is not None and parse_version(tensorrt_version) < NUMPY1_TENSORRT_BELOW
    except ValueError:
        old_bindings = False
    if not (abi_error or old_bindings):
        return None
    return (
        f"numpy {numpy_version} is installed beside TensorRT {tensorrt_version or '(its bindings)'}, whose Python "
        "bindings were built against NumPy 1.x (JetPack 6): `pip install 'numpy<2'` in this environment "
        "(see docs/jetson.md)"
    )


def precision_flags_deprecated(version: str) -> bool:
    """``BuilderFlag.FP16``/``INT8`` are deprecated from TensorRT 10.12 (strong typing supersedes them)."""
    return parse_version(version) >= (10, 12, 0)


def hazard_target(onnx_prec: str, config: BuildConfig) -> str:
    """The precision the engine will compute in, for the ONNX hazard check (stricter for FP16)."""
    if config.precision == "fp16" or onnx_prec == "fp16":
        return "fp16"
    if onnx_prec == "int8" or config.precision == "int8":
        return "int8"
    return "fp32"


def _check_common(version: str, config: BuildConfig) -> None:
    if config.dla_core is not None and config.dla_core < 0:
        raise UsageError(f"--dla-core must be 0 or more, got {config.dla_core}")
    level = config.optimization_level
    if level is not None and not 0 <= level <= MAX_OPTIMIZATION_LEVEL:
        raise UsageError(f"--builder-optimization-level must be 0..{MAX_OPTIMIZATION_LEVEL}, got {level}")
    hw = config.hardware_compatibility
    if hw is not None:
        if hw not in HARDWARE_COMPAT:
            raise UsageError(f"unknown hardware compatibility {hw!r}; choose one of {', '.join(HARDWARE_COMPAT)}")
        first = HARDWARE_COMPAT[hw][1]
        if parse_version(version) < first:
            raise UsageError(
                f"--hardware-compatibility {hw} needs TensorRT {'.'.join(map(str, first))} or newer "
                f"(this is {version}); use ampere-plus or drop the option"
            )
    if config.dla_core is not None and (hw is not None or config.version_compatible):
        raise UsageError(
            "DLA engines cannot be version- or hardware-compatible (the DLA loadable is tied to this "
            "device's DLA compiler): drop --version-compatible / --hardware-compatibility"
        )


def plan_build(version: str, onnx_prec: str, config: BuildConfig) -> BuildPlan:
    """Decide network flags, builder flags and calibration for TensorRT ``version`` and an ONNX of ``onnx_prec``.

    Raises :class:`UsageError` for combinations a TensorRT version cannot build, naming what to do instead.
    DLA (``config.dla_core``): FP16 or INT8 only; on TensorRT 10 FP16 only, because 10.x DLA does not run
    explicit (Q/DQ) INT8 and would silently put every layer on the GPU; a static batch (:func:`compute_profile`).
    """
    if onnx_prec not in PRECISIONS:
        raise ValueError(f"onnx precision must be one of {PRECISIONS}, got {onnx_prec!r}")
    want = config.precision
    if want is not None and want not in PRECISIONS:
        raise UsageError(f"unknown precision {want!r}; choose one of {', '.join(PRECISIONS)}")
    gen = api_generation(version)
    _check_common(version, config)
    notes: list[str] = []
    calibrate = config.int8_calibration is not None
    dla = config.dla_core is not None
    extra_flags: list[str] = []
    if config.version_compatible:
        extra_flags.append("VERSION_COMPATIBLE")
    if config.detailed_profiling:
        notes.append("detailed profiling verbosity: the engine inspector reports per-layer precision and device")
    hw = HARDWARE_COMPAT[config.hardware_compatibility][0] if config.hardware_compatibility else None
    common = dict(optimization_level=config.optimization_level, hardware_compatibility=hw)
    if gen >= 11:
        if config.strongly_typed is False:
            raise UsageError(f"TensorRT {version} builds strongly typed networks only; drop --weakly-typed")
        if calibrate:
            raise UsageError(
                f"implicit INT8 calibration was removed in TensorRT {version}; build from the Q/DQ "
                "INT8 ONNX (`edge-unlearn quantize --precision int8 --target tensorrt`) instead"
            )
        if want is not None and want != onnx_prec:
            raise UsageError(
                f"TensorRT {version} takes the precision from the ONNX, and this ONNX is {onnx_prec}, not {want}: "
                f"build from the {want.upper()} ONNX (`edge-unlearn quantize --precision {want}`), or drop --precision"
            )
        precision = onnx_prec
        if dla and precision == "fp32":
            raise UsageError(
                "DLA runs FP16 or INT8 only; build from the FP16 ONNX (`edge-unlearn quantize "
                "--precision fp16`) or the Q/DQ INT8 ONNX"
            )
        notes.append("strongly typed: precision comes from the ONNX")
        flags = dla_fallback_flags(dla, config.gpu_fallback) + extra_flags
        # STRONGLY_TYPED is the default and deprecated in 11.x: pass no network flag
        return BuildPlan(
            gen,
            precision,
            True,
            (),
            tuple(flags),
            False,
            config.dla_core,
            tuple(notes + tf32_note(precision)),
            cleared_flags=flags_to_clear(precision),
            **common,
        )

    # TensorRT 10.x. From 10.12, where the FP16/INT8 flags are deprecated, an ONNX that carries its own reduced
    # precision (FP16, Q/DQ INT8) is built strongly typed unless --weakly-typed says otherwise (not for DLA).
    if config.strongly_typed is None:
        strongly = (
            precision_flags_deprecated(version)
            and onnx_prec in ("fp16", "int8")
            and not calibrate
            and not dla
            and want in (None, onnx_prec)
        )
    else:
        strongly = bool(config.strongly_typed)
    builder: list[str] = []
    if calibrate:
        if onnx_prec != "fp32":
            raise UsageError(
                f"implicit INT8 calibration needs the FP32 ONNX, and this one is {onnx_prec}; "
                "the Q/DQ INT8 ONNX already carries its scales: drop --int8-calibration"
            )
        if want not in (None, "int8"):
            raise UsageError(f"--int8-calibration builds INT8, not {want}; drop one of the two options")
        if strongly:
            raise UsageError("implicit INT8 calibration does not work with a strongly typed network")
        if dla:
            raise UsageError(
                "on TensorRT 10 edge-unlearn builds DLA engines in FP16: drop --int8-calibration and "
                "add --precision fp16"
            )
        notes.append(
            "implicit INT8 calibration is deprecated since TensorRT 10.1 and removed in 11; prefer the Q/DQ INT8 ONNX"
        )
        builder.append("INT8")
        precision = "int8"
    elif onnx_prec == "int8":
        if want == "fp32":
            raise UsageError("a Q/DQ ONNX builds an INT8 engine; for FP32 build from the FP32 ONNX")
        if dla:
            raise UsageError(
                f"TensorRT {version}'s DLA does not run Q/DQ (explicit) INT8: every layer would fall "
                "back to the GPU. Build the DLA engine in FP16 from the FP32 ONNX (--precision fp16) "
                "or from the FP16 ONNX"
            )
        if strongly and want == "fp16":
            raise UsageError(
                "a strongly typed Q/DQ network takes its precision from the ONNX; --precision fp16 "
                "would be ignored by TensorRT 10 (and refused by 11): drop --precision or "
                "--strongly-typed"
            )
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
            raise UsageError("INT8 needs the Q/DQ ONNX (`edge-unlearn quantize --precision int8 --target tensorrt`)")
        precision = "fp16"
        if not strongly:
            builder.append("FP16")
    else:  # fp32 ONNX
        if want == "int8":
            raise UsageError(
                "INT8 needs the Q/DQ ONNX (`edge-unlearn quantize --precision int8 --target tensorrt`), "
                "or the deprecated implicit calibration (--int8-calibration INPUTS.npz, TensorRT 10 only)"
            )
        precision = want or "fp32"
        if precision == "fp16":
            if strongly:
                raise UsageError(
                    "a strongly typed network takes its precision from the ONNX: build from the "
                    "FP16 ONNX, or drop --strongly-typed to use the FP16 builder flag"
                )
            builder.append("FP16")
    if dla:
        if precision == "fp32":
            raise UsageError("DLA runs FP16 or INT8 only; add --precision fp16 (TensorRT 10 builds DLA in FP16)")
        builder += dla_fallback_flags(dla, config.gpu_fallback)
    if ("FP16" in builder or "INT8" in builder) and precision_flags_deprecated(version):
        notes.append(
            f"BuilderFlag.FP16/INT8 are deprecated in TensorRT {version}; the strongly typed FP16/Q/DQ "
            "ONNX with --strongly-typed is the lasting path"
        )
    network = ("STRONGLY_TYPED",) if strongly else ()
    if strongly:
        notes.append("strongly typed: precision comes from the ONNX")
    return BuildPlan(
        gen,
        precision,
        strongly,
        network,
        tuple(builder + extra_flags),
        calibrate,
        config.dla_core,
        tuple(notes + tf32_note(precision)),
        cleared_flags=flags_to_clear(precision),
        **common,
    )


def dla_fallback_flags(dla: bool, gpu_fallback: bool) -> list[str]:
    """trtexec's DLA set-up (samples/common/sampleEngines.cpp, ``setupNetworkAndConfig``): ``GPU_FALLBACK`` with
    ``--allowGPUFallback``; without it ``DIRECT_IO`` ("Reformatting runs on GPU, so avoid I/O reformatting"), so
    no reformat layer lands on the GPU either. Whether the network can run without fallback at all is decided
    before the build (:func:`refuse_no_gpu_fallback`, :meth:`PlacementReport.require_no_fallback`)."""
    if not dla:
        return []
    return ["GPU_FALLBACK"] if gpu_fallback else ["DIRECT_IO"]


def flags_to_clear(precision: str) -> tuple[str, ...]:
    """``BuilderFlag.TF32`` is *set* by default (pyCoreDoc.h: "TF32 ... Enabled by default"): on Ampere and Orin
    an FP32 engine may then compute its convolutions and matrix products with 10-bit mantissas, about 1e-3
    relative error, which is exactly the device tests' FP32 parity tolerance. An FP32 engine is asked for FP32
    arithmetic, so TF32 is cleared (trtexec ``--noTF32``); FP16/INT8 engines keep the default."""
    return ("TF32",) if precision == "fp32" else ()


def tf32_note(precision: str) -> list[str]:
    return ["FP32 engine: TF32 disabled (FP32 arithmetic, parity with onnxruntime FP32 at 1e-3)"] * (
        precision == "fp32"
    )


# ------------------------------------------------------------------------------------ shapes


def onnx_input_shape(model: Any) -> tuple[str, tuple[int | str | None, ...]]:
    """Name and shape of the single graph input (dims: int, a symbolic name, or None)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelFileError(
            f"the ONNX model has {len(inputs)} inputs; edge-unlearn engines take exactly one "
            "(the image batch); export with `edge-unlearn export`"
        )
    dims: list[int | str | None] = []
    for d in inputs[0].type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return inputs[0].name, tuple(dims)


Shape = tuple[int, ...]


def compute_profile(
    shape: Sequence[int | str | None],
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    batch: int | None = None,
    require_static: bool = False,
) -> tuple[Shape, Shape, Shape]:
    """(min, opt, max) input shapes of the optimisation profile over the batch axis (axis 0).

    ``batch`` asks for a static shape (min = opt = max), like trtexec's ``--shapes``; ``require_static`` (DLA)
    refuses a dynamic profile. Otherwise unset batches default to 1 / 8 / 32, with ``opt`` clamped into
    [min, max]. A fixed batch in the ONNX allows only that batch; every other axis must be fixed."""
    if not shape:
        raise ModelFileError("the ONNX input has no shape; re-export it with `edge-unlearn export`")
    rest: list[int] = []
    for axis, dim in enumerate(shape[1:], start=1):
        if not isinstance(dim, int) or dim <= 0:
            raise ModelFileError(
                f"input axis {axis} is dynamic ({dim!r}); only the batch axis may be: re-export with a fixed image size"
            )
        rest.append(dim)
    for flag, value in (
        ("--batch-size", batch),
        ("--min-batch", min_batch),
        ("--opt-batch", opt_batch),
        ("--max-batch", max_batch),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"{flag} must be a positive integer, got {value!r}")
    if batch is not None and any(v is not None for v in (min_batch, opt_batch, max_batch)):
        raise UsageError("--batch-size builds a static shape; drop --min-batch / --opt-batch / --max-batch")
    fixed = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    if fixed is not None:
        asked = {v for v in (batch, min_batch, opt_batch, max_batch) if v is not None}
        if asked - {fixed}:
            raise UsageError(
                f"the ONNX has a fixed batch of {fixed}, so the profile cannot be "
                f"{sorted(asked)}; re-export with a dynamic batch axis (`edge-unlearn export` does)"
            )
        lo = opt = hi = fixed
    elif batch is not None:
        lo = opt = hi = batch
    else:
        if require_static:
            raise UsageError(
                "DLA needs a static input shape: add --batch-size N (e.g. --batch-size 1 for a camera stream)"
            )
        lo = min_batch if min_batch is not None else DEFAULT_MIN_BATCH
        hi = max_batch if max_batch is not None else max(DEFAULT_MAX_BATCH, lo)
        opt = opt_batch if opt_batch is not None else min(max(DEFAULT_OPT_BATCH, lo), hi)
        if not lo <= opt <= hi:
            raise UsageError(
                f"the batch profile must satisfy min <= opt <= max, got {lo} / {opt} / {hi}; "
                "fix --min-batch / --opt-batch / --max-batch"
            )
    return (lo, *rest), (opt, *rest), (hi, *rest)


def check_dla_batch(batch: int, max_dla_batch: int) -> None:
    """``Builder.max_DLA_batch_size`` is "the maximum batch size DLA can support" (pyCoreDoc.h, BuilderDoc)."""
    if max_dla_batch > 0 and batch > max_dla_batch:
        raise UsageError(
            f"--batch-size {batch} exceeds the DLA's maximum batch of {max_dla_batch}; use --batch-size {max_dla_batch} or less"
        )


def dla_input_shape(network_shape: Sequence[int], profile: tuple[Shape, Shape, Shape]) -> Shape:
    """The static input shape a DLA build sets on the network input (``ITensor.shape``) *before* asking
    ``IBuilderConfig.can_run_on_DLA``: the ONNX parser leaves the batch axis at -1, and the DLA refuses any
    dynamic dimension, so every layer would be judged "cannot run on DLA". The profile must be static (DLA
    builds are: :func:`compute_profile` with ``require_static``) and agree with the parsed non-batch axes."""
    lo, _opt, hi = profile
    if lo != hi:
        raise UsageError("DLA needs a static input shape: add --batch-size N (e.g. --batch-size 1 for a camera stream)")
    dims = tuple(int(d) for d in network_shape)
    if len(dims) != len(lo) or any(d not in (-1, want) for d, want in zip(dims, lo)):
        raise ModelFileError(
            f"the parsed network input {list(dims)} does not match the profile {list(lo)}; re-export the ONNX "
            "with a fixed image size"
        )
    return tuple(int(d) for d in lo)


def needs_optimization_profile(network_shape: Sequence[int]) -> bool:
    """A profile is needed (and only valid) while the network input has a dynamic (-1) dimension."""
    return any(int(d) < 0 for d in network_shape)


def clip_batches(batches: Sequence[int], min_batch: int, max_batch: int) -> tuple[tuple[int, ...], str | None]:
    """Bench batches clipped into an engine's profile ``min_batch..max_batch`` (a static or DLA engine: one batch),
    duplicates dropped, with the one line that says so (None when nothing changed). GPU-only timing can only run
    batches the profile takes; the default sweep 1, 8, 64 exceeds the default profile maximum of 32."""
    if min_batch < 1 or max_batch < min_batch:
        raise ModelFileError(f"the engine reports a batch range {min_batch}..{max_batch}; rebuild it")
    asked = tuple(int(b) for b in batches)
    clipped = tuple(dict.fromkeys(min(max(b, min_batch), max_batch) for b in asked))
    if clipped == asked:
        return clipped, None
    allowed = f"batch {min_batch}" if min_batch == max_batch else f"batches {min_batch}..{max_batch}"
    return clipped, (
        f"the engine's profile takes {allowed}: benching batch {', '.join(map(str, clipped))} instead of "
        f"{', '.join(map(str, asked))} (rebuild with --max-batch to bench larger batches)"
    )


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
        raise UsageError(
            f"calibration inputs must be float [N, {', '.join(map(str, input_shape))}] preprocessed "
            f"like the model's input, got {data.dtype} {tuple(data.shape)}"
        )
    return np.ascontiguousarray(data, dtype=np.float32)


def default_engine_path(onnx_path: str | os.PathLike) -> Path:
    """model.int8.onnx -> model.int8.plan."""
    return Path(onnx_path).with_suffix(".plan")


def is_engine_path(path: str | os.PathLike) -> bool:
    """True for ``.plan`` / ``.engine`` files (what ``open_runner`` dispatches to the TensorRT runner)."""
    return Path(path).suffix.lower() in ENGINE_SUFFIXES


# ------------------------------------------------------------------------------------ ONNX layout


def refuse_cpu_layout(metadata: dict[str, str], path: str) -> None:
    """Refuse an ONNX that ``quantize`` laid out for onnxruntime on the CPU (U8S8, reduce-range, QOperator...):
    TensorRT needs the symmetric S8S8 Q/DQ layout. An absent key (older files, FP32 exports) is accepted."""
    target = metadata.get(QUANT_TARGET_KEY)
    if target == "cpu":
        raise UsageError(
            f"{path} was quantized for the CPU (onnxruntime), not TensorRT: re-quantize it with "
            "`edge-unlearn quantize MODEL.onnx --target tensorrt`"
        )


# ------------------------------------------------------------------------------------ timing cache


@dataclass(frozen=True)
class TimingCacheOutcome:
    """What happened to a ``--timing-cache`` file: ``loaded``, ``new`` (no file yet) or ``stale`` (from another
    TensorRT version or GPU: ignored, replaced after the build)."""

    state: str
    message: str


def timing_cache_outcome(path: str, had_blob: bool, cache_created: bool, attached: bool) -> TimingCacheOutcome:
    """Interpret ``IBuilderConfig.create_timing_cache`` (None on a blob it cannot read) and ``set_timing_cache``,
    which "returns a BOOL indicating whether the operation is done successfully"; with ``ignore_mismatch=False``
    "a failure will be reported if the CUDA device property in the provided cache is different"
    (python/docstrings/infer/pyCoreDoc.h, IBuilderConfigDoc::set_timing_cache, v10.3.0 and v11.1)."""
    if not had_blob:
        if not (cache_created and attached):
            raise DependencyError("TensorRT could not attach even an empty timing cache; drop --timing-cache")
        return TimingCacheOutcome("new", f"timing cache {path}: new (written after the build)")
    if cache_created and attached:
        return TimingCacheOutcome("loaded", f"timing cache {path}: loaded")
    return TimingCacheOutcome(
        "stale",
        f"timing cache {path}: made by another TensorRT version or GPU, ignored; "
        "a fresh one replaces it after the build",
    )


# ------------------------------------------------------------------------------------ DLA placement


@dataclass(frozen=True)
class LayerPlacement:
    """Where one network layer runs, from ``IBuilderConfig.can_run_on_DLA``/``get_device_type``."""

    name: str
    layer_type: str
    device: str  # "DLA" or "GPU"


@dataclass(frozen=True)
class PlacementReport:
    layers: tuple[LayerPlacement, ...]

    @property
    def on_dla(self) -> list[LayerPlacement]:
        return [layer for layer in self.layers if layer.device == "DLA"]

    @property
    def on_gpu(self) -> list[LayerPlacement]:
        return [layer for layer in self.layers if layer.device != "DLA"]

    def summary(self) -> str:
        gpu = self.on_gpu
        names = ", ".join(f"{layer.name} ({layer.layer_type})" for layer in gpu[:6])
        more = f" +{len(gpu) - 6} more" if len(gpu) > 6 else ""
        return f"DLA placement: {len(self.on_dla)} of {len(self.layers)} layers on the DLA" + (
            f"; on the GPU: {names}{more}" if gpu else ""
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dla_layers": len(self.on_dla),
            "gpu_layers": len(self.on_gpu),
            "layers": [asdict(layer) for layer in self.layers],
        }

    def require_no_fallback(self, dla_core: int) -> None:
        """Without GPU fallback every layer must run on the DLA (``can_run_on_DLA`` on the static-shape network)."""
        gpu = self.on_gpu
        if gpu:
            names = ", ".join(f"{layer.name} ({layer.layer_type})" for layer in gpu[:4])
            more = f" +{len(gpu) - 4} more" if len(gpu) > 4 else ""
            raise UsageError(
                f"--dla-core {dla_core} --no-gpu-fallback: the DLA cannot run {names}{more}; drop --no-gpu-fallback"
            )

    def require_dla(self, dla_core: int) -> None:
        """Fail when nothing runs on the DLA (GPU fallback would otherwise hide it behind ``dla_core=N``)."""
        if self.layers and not self.on_dla:
            raise UsageError(
                f"--dla-core {dla_core}: no layer of this network can run on the DLA, every one would "
                "fall back to the GPU; build without --dla-core (on TensorRT 10 use --precision fp16 "
                "from the FP32 ONNX)"
            )


#: ONNX operators TensorRT's DLA cannot run (its supported layers: convolution, deconvolution, fully connected,
#: activation, pooling, LRN, scale, element-wise, concatenation, resize, unary, shuffle, 4-D slice, softmax, reduce,
#: comparison -- TensorRT developer guide, "DLA Supported Layers and Restrictions"): the class mask's Gather and
#: its constant-fill Pad (parsed as a fill-mode slice), and the selection and indexing operators
DLA_UNSUPPORTED_OPS = frozenset(
    {
        "Gather",
        "GatherElements",
        "GatherND",
        "ScatterND",
        "ScatterElements",
        "Where",
        "Pad",
        "NonZero",
        "TopK",
        "ArgMax",
        "ArgMin",
        "Cast",
        "Range",
        "Expand",
    }
)


def refuse_no_gpu_fallback(nodes: Iterable[tuple[str, str]], config: BuildConfig) -> None:
    """``--no-gpu-fallback`` (``DIRECT_IO`` instead of ``GPU_FALLBACK``) builds only when every layer runs on the
    DLA; ``nodes`` are the ONNX (name, op_type) pairs. Our class mask always needs the GPU, so the refusal says
    so before TensorRT is touched."""
    if config.dla_core is None or config.gpu_fallback:
        return
    blocking = [f"{name or '?'} ({op})" for name, op in nodes if op in DLA_UNSUPPORTED_OPS]
    if blocking:
        more = f" +{len(blocking) - 4} more" if len(blocking) > 4 else ""
        raise UsageError(
            f"--no-gpu-fallback: the DLA cannot run {', '.join(blocking[:4])}{more} (the class mask needs the GPU); "
            "drop --no-gpu-fallback so these layers fall back to the GPU"
        )


# ------------------------------------------------------------------------------------ trtexec


def trtexec_command(
    onnx_path: str,
    engine_path: str,
    plan: BuildPlan,
    input_name: str,
    profile: tuple[Shape, Shape, Shape],
    workspace_mib: int,
    config: BuildConfig,
) -> list[str]:
    """The ``trtexec`` command line that builds the same engine (printed by ``build-engine --verbose``), so a
    device user can reproduce or profile the build with NVIDIA's own tool."""
    lo, opt, hi = profile

    def dims(shape: Shape) -> str:
        return f"{input_name}:{'x'.join(map(str, shape))}"

    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if lo == opt == hi:
        cmd.append(f"--shapes={dims(lo)}")
    else:
        cmd += [f"--minShapes={dims(lo)}", f"--optShapes={dims(opt)}", f"--maxShapes={dims(hi)}"]
    cmd.append(f"--memPoolSize=workspace:{workspace_mib}M")
    if "FP16" in plan.builder_flags:
        cmd.append("--fp16")
    if "INT8" in plan.builder_flags:
        cmd.append("--int8")
    if "STRONGLY_TYPED" in plan.network_flags:
        cmd.append("--stronglyTyped")
    if plan.dla_core is not None:
        cmd.append(f"--useDLACore={plan.dla_core}")
        if "GPU_FALLBACK" in plan.builder_flags:
            cmd.append("--allowGPUFallback")
        if "DIRECT_IO" in plan.builder_flags:
            cmd.append("--directIO")
    if "TF32" in plan.cleared_flags:
        cmd.append("--noTF32")
    if plan.optimization_level is not None:
        cmd.append(f"--builderOptimizationLevel={plan.optimization_level}")
    if config.hardware_compatibility:
        cmd.append(f"--hardwareCompatibilityLevel={HARDWARE_COMPAT[config.hardware_compatibility][2]}")
    if "VERSION_COMPATIBLE" in plan.builder_flags:
        cmd.append("--versionCompatible")
    if config.timing_cache:
        cmd.append(f"--timingCacheFile={config.timing_cache}")
    if config.detailed_profiling:
        cmd += ["--profilingVerbosity=detailed", f"--exportLayerInfo={engine_path}.layers.json"]
    if config.verbose:
        cmd.append("--verbose")
    return cmd


def format_command(cmd: Iterable[str]) -> str:
    """The command shell-quoted, ready to paste."""
    return shlex.join(list(cmd))


# ------------------------------------------------------------------------------------ implicit INT8 and the mask


def mask_layers_to_pin(layer_names: Iterable[str]) -> list[str]:
    """The network layers of our class mask (ONNX nodes ``edge_unlearn_mask/...``; the ONNX parser names each
    layer after its node). With implicit INT8 calibration TensorRT may pick INT8 for them and let the -1e4 mask
    value set an INT8 range -- the hazard the ONNX checker guards against in Q/DQ files -- so the build pins
    them to FP32 (``ILayer.precision`` + ``set_output_type`` with ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``)."""
    from ..onnx_meta import MASK_NODE_PREFIX

    return [name for name in layer_names if MASK_NODE_PREFIX in name]


# ------------------------------------------------------------------------------------ engine inspection


_PRECISION_WORDS = (
    ("int8", "int8"),
    ("fp8", "fp8"),
    ("bfloat16", "bf16"),
    ("bf16", "bf16"),
    ("half", "fp16"),
    ("fp16", "fp16"),
    ("float", "fp32"),
    ("fp32", "fp32"),
    ("int32", "int32"),
    ("int64", "int64"),
    ("bool", "bool"),
)


def _tensor_precision(tensor: Any) -> str | None:
    if not isinstance(tensor, dict):
        return None
    text = str(tensor.get("Format/Datatype") or tensor.get("Datatype") or "").lower()
    for word, name in _PRECISION_WORDS:
        if word in text:
            return name
    return None


#: the name TensorRT gives a subgraph it hands to another compiler: the DLA's loadable, or Myelin on the GPU
FOREIGN_NODE_PREFIX = "{ForeignNode["
#: the layers that move a DLA subgraph's inputs and outputs to and from its memory ("input to nvm",
#: "logits from nvm", "... copy finish"): present only in engines with a DLA subgraph
_NVM_SUFFIXES = (" to nvm", " from nvm")


def layer_device(layer: Any, names_only_dla: bool = False) -> str:
    """ "DLA" for a layer the DLA runs, else "GPU". TensorRT folds each DLA subgraph into one layer named
    ``{ForeignNode[first...last]}``; with detailed verbosity its ``LayerType`` (or ``TacticName`` / ``Origin``) says
    DLA, whereas a Myelin subgraph on the GPU carries the same kind of name with ``LayerType`` "Myelin". With
    names only, a foreign node is the DLA's when the engine has the DLA's nvm transfer layers
    (``names_only_dla``)."""
    if isinstance(layer, str):
        return "DLA" if names_only_dla and layer.startswith(FOREIGN_NODE_PREFIX) else "GPU"
    if not isinstance(layer, dict) or not str(layer.get("Name", "")).startswith(FOREIGN_NODE_PREFIX):
        return "GPU"
    runner = " ".join(str(layer.get(key, "")) for key in ("LayerType", "TacticName", "Origin")).upper()
    return "DLA" if "DLA" in runner and "MYELIN" not in runner else "GPU"


def summarize_engine_information(text: str) -> dict[str, Any]:
    """Per-layer type, output precision and device from ``IEngineInspector.get_engine_information(JSON)``.

    With ``ProfilingVerbosity.DETAILED`` each layer is an object with ``Name``, ``LayerType``, ``Inputs`` /
    ``Outputs`` (tensors with ``Format/Datatype``) and ``TacticName``; with the default LAYER_NAMES_ONLY only
    names (pyCoreDoc.h RuntimeInspectorDoc; the field names as trtexec's ``--exportLayerInfo`` writes them). The
    device of each layer is :func:`layer_device`; ``dla_decidable`` is False when names alone cannot tell a DLA
    foreign node from a Myelin one."""
    import json

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"the engine inspector returned unreadable JSON ({exc})") from exc
    layers = data.get("Layers", []) if isinstance(data, dict) else data
    layers = layers if isinstance(layers, list) else []
    names = [layer if isinstance(layer, str) else str(layer.get("Name", "")) for layer in layers if layer]
    has_nvm = any(name.endswith(_NVM_SUFFIXES) for name in names)
    rows: list[dict[str, Any]] = []
    detailed = False
    ambiguous = False
    for layer in layers:
        if isinstance(layer, str):
            ambiguous |= layer.startswith(FOREIGN_NODE_PREFIX) and not has_nvm
            rows.append({"name": layer, "type": None, "precision": None, "device": layer_device(layer, has_nvm)})
            continue
        if not isinstance(layer, dict):
            continue
        detailed = True
        kind = str(layer.get("LayerType", ""))
        tactic = str(layer.get("TacticName", ""))
        outputs = layer.get("Outputs") if isinstance(layer.get("Outputs"), list) else []
        precisions = [p for p in (_tensor_precision(t) for t in outputs) if p]
        rows.append(
            {
                "name": str(layer.get("Name", "")),
                "type": kind or None,
                "precision": precisions[0] if precisions else None,
                "device": layer_device(layer),
                "tactic": tactic or None,
            }
        )
    counts: dict[str, int] = {}
    for row in rows:
        if row["precision"]:
            counts[row["precision"]] = counts.get(row["precision"], 0) + 1
    return {
        "detailed": detailed,
        "num_layers": len(rows),
        "precision_counts": counts,
        "dla_layers": sum(1 for r in rows if r["device"] == "DLA"),
        "dla_decidable": not ambiguous,
        "layers": rows,
    }


def require_dla_engine(summary: dict[str, Any], dla_core: int | None) -> None:
    """A ``--dla-core`` engine whose inspector shows no DLA subgraph runs entirely on the GPU: fail (it used to
    warn), and fail as well when the inspector cannot tell (names only, no nvm transfer layer)."""
    if dla_core is None:
        return
    if not summary.get("dla_decidable", True):
        raise ModelFileError(
            f"--dla-core {dla_core}: the engine inspector lists only layer names, which cannot tell a DLA subgraph "
            "from a GPU one; build with detailed profiling verbosity (the default) to check the placement"
        )
    if not summary.get("dla_layers"):
        raise ModelFileError(
            f"--dla-core {dla_core}: the built engine has no DLA subgraph, so it would run entirely on the GPU; "
            "nothing written. Build the DLA engine in FP16 (TensorRT 10: --precision fp16) with --batch-size N, "
            "or build without --dla-core"
        )
