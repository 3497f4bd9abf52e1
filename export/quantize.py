"""INT8 (static QDQ, S8S8, per-channel) and FP16 versions of an exported model, with the mask intact.

INT8: ``quant_pre_process`` first, then ``quantize_static`` in QDQ format with signed symmetric activations
and weights (zero point 0, what TensorRT wants), per-channel weights, the first layer kept in float, calibrated on *retained-class samples
only* (the forgotten data may be legally gone). The two mask nodes (Pad + Gather after the compact head) are
excluded from quantization, so the forgotten classes' fill value never enters a quantization range.
FP16: onnxruntime's maintained converter (``onnxruntime.transformers.float16``) with float32 inputs/outputs.

Imports no torch itself; loading a calibration dataset by spec goes through ``edge_unlearn.data`` (host side).
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_unlearn.errors import ModelFileError, UsageError
from edge_unlearn.fileio import atomic_output, sha256_file

from .onnx_meta import (OnnxMeta, check_output_path, graph_hazards, load_onnx, mask_node_names, read_meta,
                        topological_sort, write_meta)

QUANT_PRECISIONS = ("int8", "fp16")
CALIB_METHODS = ("minmax", "entropy", "percentile", "distribution")


@dataclass(frozen=True)
class QuantizeConfig:
    """``calib_samples`` retained-class training images, drawn with ``seed``.

    Activations are symmetric (zero point 0, what TensorRT requires) by default: with the first layer in float
    they cost nothing measurable against asymmetric ones (docs/deployment.md), so one INT8 file serves
    onnxruntime and TensorRT."""

    precision: str = "int8"
    calib_method: str = "minmax"
    calib_samples: int = 256
    per_channel: bool = True
    symmetric_activations: bool = True
    #: keep the node(s) reading the graph input (the first conv) in float: the biggest INT8 error source
    #: measured (resnet18/fashion agreement 0.969 -> 0.996, lenet/digits 0.992 -> 1.0; docs/deployment.md)
    float_first_layer: bool = True
    #: int32 bias + DequantizeLinear is what onnxruntime does by default, but TensorRT accepts only float inputs
    #: to DequantizeLinear (export.onnx_hazards ``qdq-int32-input``): biases stay float unless asked
    quantize_bias: bool = False
    seed: int = 0
    #: measurement switches for docs/deployment.md (the CLI never changes them): keep the mask nodes in float,
    #: refuse graphs with hazards. ``ort_defaults`` = quantize_static's defaults (per-tensor, nothing excluded).
    exclude_mask_nodes: bool = True
    strict: bool = True
    ort_defaults: bool = False

    def __post_init__(self) -> None:
        if self.precision not in QUANT_PRECISIONS:
            raise UsageError(f"unsupported precision {self.precision!r}; choose one of {', '.join(QUANT_PRECISIONS)}")
        if self.calib_method not in CALIB_METHODS:
            raise UsageError(f"unknown calibration method {self.calib_method!r}; choose one of {', '.join(CALIB_METHODS)}")
        if self.calib_samples < 1:
            raise UsageError(f"--calib-samples must be at least 1, got {self.calib_samples}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    sha256: str
    meta: OnnxMeta
    excluded_nodes: tuple[str, ...]
    calib_classes: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "precision": self.meta.precision,
                "quantization": self.meta.quantization, "excluded_nodes": list(self.excluded_nodes)}


def normalize(images_uint8: np.ndarray, normalization: dict[str, list[float]]) -> np.ndarray:
    """uint8 [N, C, H, W] -> float32 model input (numpy twin of ``edge_unlearn.data.preprocess``)."""
    x = images_uint8.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(normalization["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(normalization["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    return (x - mean) / std


def calibration_inputs(spec: str, meta: OnnxMeta, samples: int, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Preprocessed retained-class training images of dataset ``spec`` (forgotten classes dropped)."""
    from edge_unlearn.data import load_dataset

    if samples < 1:
        raise UsageError(f"--calib-samples must be at least 1, got {samples}")
    data = load_dataset(spec)
    if data.num_classes > meta.num_classes:
        raise UsageError(f"calibration set {spec} has {data.num_classes} classes but the model has "
                         f"{meta.num_classes}; calibrate with the dataset the model was trained on")
    if tuple(data.input_shape) != tuple(meta.input_shape):
        raise UsageError(f"calibration images are {tuple(data.input_shape)} but the model takes "
                         f"{tuple(meta.input_shape)}; calibrate with the dataset the model was trained on")
    labels = data.y_train.numpy()
    keep = np.isin(labels, meta.retained_classes)
    if not keep.any():
        raise UsageError(f"calibration set {spec} holds only forgotten classes {list(meta.forgotten_classes)}; "
                         "calibrate on samples of the retained classes")
    idx = np.nonzero(keep)[0]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(idx)[:samples])
    images = data.x_train.numpy()[idx]
    return normalize(images, meta.normalization), sorted(set(int(c) for c in labels[idx]))


class _Reader:
    """onnxruntime CalibrationDataReader over an in-memory array, in batches."""

    def __init__(self, name: str, inputs: np.ndarray, batch: int = 32) -> None:
        self.name, self.inputs, self.batch, self.pos = name, inputs, batch, 0

    def get_next(self):
        if self.pos >= len(self.inputs):
            return None
        x = self.inputs[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return {self.name: x}

    def rewind(self) -> None:
        self.pos = 0


def _calibrate_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
    if name not in table:
        raise UsageError(f"unknown calibration method {name!r}; choose one of {', '.join(CALIB_METHODS)}")
    return table[name]


def quantize_int8_proto(src: Path, dst: Path, inputs: np.ndarray, input_name: str, config: QuantizeConfig,
                        exclude: list[str]) -> None:
    """pre-process + static QDQ S8S8 of ``src`` into ``dst`` (no metadata handling)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        if config.ort_defaults:
            quantize_static(str(pre), str(dst), _Reader(input_name, inputs), quant_format=QuantFormat.QDQ)
            return
        quantize_static(
            str(pre), str(dst), _Reader(input_name, inputs), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=config.per_channel,
            calibrate_method=_calibrate_method(config.calib_method), nodes_to_exclude=exclude,
            extra_options={"ActivationSymmetric": config.symmetric_activations, "WeightSymmetric": True,
                           "QuantizeBias": config.quantize_bias})


def _self_check(path: Path, meta: OnnxMeta, inputs: np.ndarray) -> None:
    """Run a few inputs; the forgotten columns must be the mask value and everything finite."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/NotImplemented types
        if "NOT_IMPLEMENTED" in str(exc) or "Could not find an implementation" in str(exc):
            return  # e.g. FP16 kernels missing on this CPU: the validator on the target decides
        raise ModelFileError(f"onnxruntime cannot load the {meta.precision} model: {str(exc).splitlines()[0]}") from exc
    out = session.run([meta.output_name], {meta.input_name: inputs[:8]})[0]
    forgotten = list(meta.forgotten_classes)
    if not np.all(np.isfinite(out)):
        raise ModelFileError(f"the {meta.precision} model produces NaN/Inf; nothing written")
    if forgotten and not np.all(out[:, forgotten] == np.float32(meta.mask_value)):
        raise ModelFileError(f"the {meta.precision} model changed the forgotten classes' fill value; nothing written")


def quantize_model(model_path: str | Path, output: str | Path, config: QuantizeConfig = QuantizeConfig(),
                   calib: str | None = None, echo: Callable[[str], None] | None = None,
                   calib_inputs: np.ndarray | None = None) -> QuantizeResult:
    """Write an INT8 or FP16 version of an edge-unlearn FP32 ONNX model. ``calib`` is a dataset spec
    (INT8 only); ``calib_inputs`` (preprocessed float32, retained classes only) overrides it."""
    import onnx

    if config.precision not in QUANT_PRECISIONS:
        raise UsageError(f"unsupported precision {config.precision!r}; choose one of {', '.join(QUANT_PRECISIONS)}")
    model_path = Path(model_path)
    check_output_path(output, [model_path])
    proto = load_onnx(model_path)
    meta = read_meta(proto)
    if meta.precision != "fp32":
        raise UsageError(f"{model_path} is already {meta.precision}; quantize the FP32 model from `edge-unlearn export`")
    exclude = mask_node_names(proto) if config.exclude_mask_nodes and not config.ort_defaults else []
    if config.float_first_layer and not config.ort_defaults:
        exclude += [n.name for n in proto.graph.node if meta.input_name in n.input and n.name not in exclude]
    calib_classes: tuple[int, ...] = ()
    info: dict[str, Any] = {"precision": config.precision, "source_sha256": sha256_file(model_path)}
    if config.precision == "int8":
        if calib_inputs is None:
            if not calib:
                raise UsageError("INT8 needs calibration data: pass --calib with a dataset spec "
                                 "(e.g. npz:data.npz); only its retained classes are used")
            inputs, classes = calibration_inputs(calib, meta, config.calib_samples, config.seed)
            calib_classes = tuple(classes)
        else:
            inputs = np.ascontiguousarray(calib_inputs, dtype=np.float32)
        info.update(config.to_json(), calib=calib or "(inputs)", calib_count=int(len(inputs)),
                    calib_classes=list(calib_classes), excluded_nodes=exclude)
        if echo:
            echo(f"calibrating INT8 ({config.calib_method}) on {len(inputs)} retained-class samples; "
                 f"kept in float: {', '.join(exclude)}")
    else:
        rng = np.random.default_rng(config.seed)
        inputs = rng.standard_normal((8, *meta.input_shape)).astype(np.float32)
        info.update(converter="onnxruntime.transformers.float16", keep_io_types=True)
    new_meta = replace(meta, precision=config.precision, quantization=info)
    output = Path(output)
    with atomic_output(output) as tmp:
        if config.precision == "int8":
            quantize_int8_proto(model_path, tmp, inputs, meta.input_name, config, exclude)
            out_proto = onnx.load(str(tmp))
        else:
            from onnxruntime.transformers.float16 import convert_float_to_float16

            out_proto = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=False)
            topological_sort(out_proto)
        write_meta(out_proto, new_meta)
        hazards = graph_hazards(out_proto)
        if hazards and config.strict:
            raise ModelFileError(f"the {config.precision} graph has a deployment hazard: {hazards[0]}")
        onnx.save(out_proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        if config.strict:
            _self_check(tmp, new_meta, inputs)
        digest = sha256_file(tmp)
    return QuantizeResult(output, digest, new_meta, tuple(exclude), calib_classes)


def fp16_plain_cast(proto):
    """FP16 conversion *without* the converter's clamping to ±1e4 (what a plain ``.half()`` does): a -1e9
    constant becomes -inf. For measuring the hazard of DESIGN.md §3 only; never used for deployment."""
    from onnx import TensorProto, numpy_helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    original = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == TensorProto.FLOAT}
    out = convert_float_to_float16(proto, keep_io_types=True)
    for i, init in enumerate(out.graph.initializer):
        if init.data_type == TensorProto.FLOAT16 and init.name in original:
            with np.errstate(over="ignore"):
                out.graph.initializer[i].CopyFrom(numpy_helper.from_array(original[init.name].astype(np.float16), init.name))
    topological_sort(out)
    return out
