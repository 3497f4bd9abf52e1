"""The INT8 layout of a quantized model: which one runs fastest where the model will run, and how a file says it.

``--target tensorrt`` gets signed symmetric Q/DQ (S8S8); ``--target cpu`` the layout onnxruntime's CPU kernels run
fastest on *this* CPU (:func:`choose_layout`, from the feature flags of :func:`read_cpu_features`); ``auto`` is
``cpu`` unless TensorRT is named (:func:`resolve_target`). The choice and its reason are written into the ONNX
metadata (:func:`write_layout_meta`) and read back by ``bench`` and ``build-engine`` (:func:`read_layout`,
:func:`require_tensorrt_layout`). Quantizing itself is :mod:`edge_unlearn.export.quantize`.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_unlearn.deploy.onnx_meta import load_onnx
from edge_unlearn.errors import UsageError

#: static: weights and activations, calibrated; dynamic: weights only, activations quantized at run time
INT8_MODES = ("static", "dynamic")
#: where the quantized model will run; ``auto`` resolves to one of the other two (:func:`resolve_target`)
QUANT_TARGETS = ("tensorrt", "cpu", "auto")
#: ONNX metadata keys (outside the ``edge_unlearn.`` contract: a layout is a property of one file, not of the model)
LAYOUT_KEY, TARGET_KEY, REASON_KEY = (
    "edge_unlearn_quant_layout",
    "edge_unlearn_quant_target",
    "edge_unlearn_quant_reason",
)
#: output-name parts that name TensorRT as the target of ``--target auto``
TENSORRT_NAME_PARTS = frozenset({"trt", "tensorrt"})
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
_ARM_MACHINES = frozenset({"aarch64", "arm64", "armv8l", "armv7l"})


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU facts the layout depends on: the machine name and its feature flags as Linux spells them
    (x86 ``flags`` / ARM ``Features`` of /proc/cpuinfo)."""

    machine: str
    flags: frozenset[str] = frozenset()

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in _X86_MACHINES

    @property
    def is_arm(self) -> bool:
        return self.machine.lower() in _ARM_MACHINES

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def vnni(self) -> bool:
        """x86 8-bit dot product (AVX512-VNNI, AVX-VNNI or AMX): u8*s8 products accumulate without saturation."""
        return any(f in self.flags for f in _VNNI_FLAGS)

    @property
    def arm_dotprod(self) -> bool:
        return "asimddp" in self.flags

    @property
    def native_fp16(self) -> bool:
        """FP16 arithmetic in hardware (AVX512-FP16 on x86, the half-precision SIMD extension on ARM)."""
        return "avx512_fp16" in self.flags or "asimdhp" in self.flags

    def summary(self) -> str:
        if self.is_x86:
            isa = "AVX-512" if self.avx512 else "AVX2" if self.avx2 else "SSE"
            return f"{self.machine} {isa}, {'with' if self.vnni else 'no'} VNNI"
        if self.is_arm:
            return f"{self.machine} {'with' if self.arm_dotprod else 'no'} dot-product"
        return f"{self.machine or 'unknown machine'}{'' if self.flags else ' (no feature flags read)'}"


def read_cpu_features(cpuinfo: str | None = None, machine: str | None = None) -> CpuFeatures:
    """This CPU's features, from ``cpuinfo`` text (default: /proc/cpuinfo) and ``machine`` (default:
    ``platform.machine()``). Apple Silicon (no /proc/cpuinfo) has dot-product and FP16 on every model."""
    machine = machine if machine is not None else platform.machine()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
            break  # every core lists the same flags
    if not flags and machine.lower() == "arm64" and platform.system() == "Darwin" and cpuinfo == "":
        flags = {"asimddp", "asimdhp"}
    return CpuFeatures(machine, frozenset(flags))


@dataclass(frozen=True)
class QuantLayout:
    """How to quantize for one target, and why (printed, and recorded in the ONNX metadata)."""

    name: str
    target: str
    reason: str
    activation_type: str = "QInt8"
    weight_type: str = "QInt8"
    reduce_range: bool = False
    symmetric_activations: bool = False
    quantize_bias: bool = True
    dynamic: bool = False
    #: the first layer's default (QuantizeConfig.float_first_layer = None): float unless activations are uint8
    float_first_layer: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def choose_layout(
    target: str, cpu: CpuFeatures, precision: str = "int8", mode: str = "static", symmetric_activations: bool = True
) -> QuantLayout:
    """The layout for ``target`` ("tensorrt" or "cpu", after :func:`resolve_target`) on ``cpu``; pure.

    CPU rules follow onnxruntime's guidance for ``quantize_static`` and were measured on this project's x86
    AVX2 CPU (benchmarks/quantized_forgetting.py); the ARM and VNNI choices are onnxruntime's, unmeasured here."""
    if target not in ("tensorrt", "cpu"):
        raise UsageError(f"unknown target {target!r}; choose tensorrt or cpu (or auto)")
    if mode not in INT8_MODES:
        raise UsageError(f"unknown INT8 mode {mode!r}; choose one of {', '.join(INT8_MODES)}")
    if precision == "fp16":
        if target == "tensorrt":
            return QuantLayout("fp16", target, "FP16 for TensorRT (the GPU computes in FP16)")
        return QuantLayout(
            "fp16",
            target,
            f"{cpu.summary()}: "
            + (
                "native FP16 arithmetic, onnxruntime's FP16 CPU kernels can use it"
                if cpu.native_fp16
                else "no native FP16 arithmetic (no avx512_fp16 / asimdhp): onnxruntime's CPU kernels compute FP16 "
                "through float conversions, expect it no faster than FP32; half the file size only"
            ),
        )
    if target == "tensorrt":
        if mode == "dynamic":
            raise UsageError("TensorRT needs static Q/DQ INT8: drop --dynamic, or quantize with --target cpu")
        if not symmetric_activations:
            return QuantLayout(
                "s8s8-qdq-asymmetric",
                target,
                "asymmetric signed activations asked for (onnxruntime only: TensorRT needs zero points of 0)",
                symmetric_activations=False,
                quantize_bias=False,
            )
        return QuantLayout(
            "s8s8-qdq",
            target,
            "TensorRT explicit quantization: signed symmetric Q/DQ (zero point 0), float biases",
            symmetric_activations=True,
            quantize_bias=False,
        )
    saturating = cpu.is_x86 and not cpu.vnni
    if mode == "dynamic":
        # ConvInteger, onnxruntime's dynamic conv, has CPU kernels for uint8 weights only
        return QuantLayout(
            "dynamic-int8",
            target,
            f"{cpu.summary()}: weights-only INT8 (uint8 weights"
            f"{', reduce_range: no VNNI' if saturating else ''}), activations quantized at run time",
            activation_type="QUInt8",
            weight_type="QUInt8",
            reduce_range=saturating,
            dynamic=True,
        )
    if cpu.is_arm:
        return QuantLayout(
            "s8s8-qdq",
            target,
            f"{cpu.summary()}: onnxruntime's ARM64 kernels prefer signed "
            "INT8 activations and weights (S8S8 QDQ, int32 biases); no saturation, no reduce_range",
        )
    if cpu.is_x86 and cpu.vnni:
        return QuantLayout(
            "u8s8-qdq",
            target,
            f"{cpu.summary()}: VNNI accumulates u8*s8 products without saturation, so U8S8 QDQ with full-range weights",
            activation_type="QUInt8",
            float_first_layer=False,
        )
    if cpu.is_x86:
        return QuantLayout(
            "u8s8-qdq-reduce-range",
            target,
            f"{cpu.summary()}: U8S8 QDQ is onnxruntime's fast "
            "x86 path; without VNNI its VPMADDUBSW saturates on full-range weights, so 7-bit "
            "weights (reduce_range); S8S8 runs slower than FP32 here",
            activation_type="QUInt8",
            reduce_range=True,
            float_first_layer=False,
        )
    return QuantLayout(
        "u8s8-qdq-reduce-range",
        target,
        f"{cpu.summary()}: unrecognised CPU, so the layout "
        "onnxruntime runs without saturation on any CPU (U8S8 QDQ, reduce_range)",
        activation_type="QUInt8",
        reduce_range=True,
        float_first_layer=False,
    )


def resolve_target(target: str, output: str | Path | None = None) -> tuple[str, str]:
    """("tensorrt" | "cpu", why). ``auto`` is ``cpu`` unless TensorRT is named: an output file name with a
    ``trt`` / ``tensorrt`` part (``model.trt.onnx``, ``resnet.tensorrt.int8.onnx``) marks a file for build-engine."""
    if target not in QUANT_TARGETS:
        raise UsageError(f"unknown target {target!r}; choose one of {', '.join(QUANT_TARGETS)}")
    if target != "auto":
        return target, f"--target {target}"
    name = Path(output).name.lower() if output is not None else ""
    if TENSORRT_NAME_PARTS.intersection(name.split(".")[:-1]):
        return "tensorrt", f"--target auto: the output name {Path(output).name} names TensorRT"  # type: ignore[arg-type]
    return "cpu", "--target auto, no TensorRT named"


def write_layout_meta(model, layout: QuantLayout) -> None:
    """Set the ``edge_unlearn_quant_*`` metadata entries of ``model`` (others are kept)."""
    values = {LAYOUT_KEY: layout.name, TARGET_KEY: layout.target, REASON_KEY: layout.reason}
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    for key, value in keep + sorted(values.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_layout(model_or_path) -> dict[str, str]:
    """The ``edge_unlearn_quant_*`` entries of an ONNX model or file ({"layout", "target", "reason"});
    an FP32 export carries none and reads as layout "fp32"."""
    model = load_onnx(model_or_path, load_weights=False) if isinstance(model_or_path, (str, Path)) else model_or_path
    props = {p.key: p.value for p in model.metadata_props}
    if LAYOUT_KEY not in props:
        precision = props.get("edge_unlearn.precision", "fp32")
        return {"layout": precision, "target": "", "reason": ""}
    return {"layout": props[LAYOUT_KEY], "target": props.get(TARGET_KEY, ""), "reason": props.get(REASON_KEY, "")}


def require_tensorrt_layout(model_or_path, where: str = "the ONNX model") -> None:
    """For ``build-engine``: refuse an INT8 file laid out for a CPU (uint8 activations, int32 biases, or
    dynamic INT8) with the one-line fix. FP16 and FP32 files are the same for every target and pass."""
    layout = read_layout(model_or_path)
    if layout["target"] == "cpu" and layout["layout"] not in ("fp16", "fp32"):
        raise UsageError(
            f"{where} is INT8 laid out for a CPU ({layout['layout']}); TensorRT needs signed symmetric "
            "Q/DQ: re-quantize the FP32 model with `edge-unlearn quantize --target tensorrt`"
        )
