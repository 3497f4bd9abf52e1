"""INT8 (static or dynamic) and FP16 versions of an exported model, with the mask intact, laid out for a target.

The INT8 *layout* depends on where the model runs (``--target``):

- ``tensorrt``: static QDQ, signed symmetric activations and weights (S8S8, zero point 0), float biases --
  what TensorRT and the hazard checker accept. onnxruntime on an x86 CPU without VNNI runs it *slower* than FP32.
- ``cpu``: the layout onnxruntime's CPU kernels run fastest on *this* CPU (:func:`choose_layout`, from the
  feature flags of :func:`read_cpu_features`): x86 without VNNI -> U8S8 QDQ with ``reduce_range`` (7-bit
  weights: VPMADDUBSW saturates on full-range ones); x86 with VNNI -> U8S8 QDQ; ARM64 -> S8S8 QDQ (onnxruntime's
  own guidance for each). Biases are int32, so the DQ-Conv-Q groups fuse into QLinearConv.
- ``auto`` (the CLI default): ``cpu`` unless TensorRT is *named*, i.e. ``--target tensorrt``, or an output file
  name with a ``trt`` / ``tensorrt`` part (``model.trt.onnx``): a file meant for ``build-engine``.

``quant_pre_process`` first, then ``quantize_static`` (per-channel weights, calibrated on *retained-class samples
only*: the forgotten data may be legally gone) or ``quantize_dynamic`` (weights only, no calibration). The two
mask nodes (Pad + Gather after the compact head) stay in float in every layout, so the forgotten classes' fill
value never enters a quantization range; the first layer stays in float for tensorrt (symmetric activations lose
accuracy there) and is quantized for the cpu layouts (uint8 activations keep it accurate, and it is faster). The layout, its target and the reason for it are recorded
in the ONNX metadata (``edge_unlearn_quant_layout`` / ``_target`` / ``_reason``).
FP16: onnxruntime's maintained converter (``onnxruntime.transformers.float16``) with float32 inputs/outputs; the
layout line says whether this CPU has native FP16 arithmetic (without it onnxruntime's CPU kernels do not gain).

Imports no torch itself; loading a calibration dataset by spec goes through ``edge_unlearn.data`` (host side).
Longer than 500 lines because static and dynamic INT8 and FP16 share the calibration readers, the onnxruntime step and the self-check.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn.deploy.onnx_meta import (
    OnnxMeta,
    check_output_path,
    graph_hazards,
    load_onnx,
    mask_node_names,
    read_meta,
    topological_sort,
    write_meta,
)
from edge_unlearn.deploy.tensorrt.preflight import check_onnx_loads
from edge_unlearn.errors import EdgeUnlearnError, ModelFileError, UsageError
from edge_unlearn.fileio import atomic_output, sha256_file

from .quant_layout import (
    INT8_MODES,
    QUANT_TARGETS,
    CpuFeatures,
    QuantLayout,
    choose_layout,
    read_cpu_features,
    resolve_target,
    write_layout_meta,
)

QUANT_PRECISIONS = ("int8", "fp16")
CALIB_METHODS = ("minmax", "entropy", "percentile", "distribution")


@dataclass(frozen=True)
class QuantizeConfig:
    """``calib_samples`` retained-class training images, drawn with ``seed``.

    ``target`` picks the layout (module docstring); the library default is ``tensorrt`` (symmetric S8S8 Q/DQ,
    the one file that also runs everywhere), the CLI's is ``auto``. ``symmetric_activations`` and
    ``quantize_bias`` apply to the tensorrt layout only: the cpu layouts fix their own."""

    precision: str = "int8"
    target: str = "tensorrt"
    #: INT8 only: "static" (calibrated Q/DQ) or "dynamic" (weights only; cpu target; no calibration data)
    mode: str = "static"
    calib_method: str = "minmax"
    calib_samples: int = 256
    per_channel: bool = True
    symmetric_activations: bool = True
    #: keep the node(s) reading the graph input (the first conv) in float. None: the layout decides
    #: (:attr:`QuantLayout.float_first_layer`). With symmetric activations (tensorrt) the first layer is the
    #: biggest INT8 error source measured (resnet18/fashion agreement 0.969 -> 0.996, lenet/digits 0.992 -> 1.0;
    #: docs/deployment.md); the cpu layouts' asymmetric uint8 activations quantize it well, and keeping it in
    #: float there costs a full-resolution QuantizeLinear (lenet/mnist INT8 1.4x slower than FP32 instead of 0.8x)
    float_first_layer: bool | None = None
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
            raise UsageError(
                f"unknown calibration method {self.calib_method!r}; choose one of {', '.join(CALIB_METHODS)}"
            )
        if self.target not in QUANT_TARGETS:
            raise UsageError(f"unknown target {self.target!r}; choose one of {', '.join(QUANT_TARGETS)}")
        if self.mode not in INT8_MODES:
            raise UsageError(f"unknown INT8 mode {self.mode!r}; choose one of {', '.join(INT8_MODES)}")
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
    layout: QuantLayout | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "precision": self.meta.precision,
            "layout": self.layout.name if self.layout else None,
            "target": self.layout.target if self.layout else None,
            "layout_reason": self.layout.reason if self.layout else None,
            "quantization": self.meta.quantization,
            "excluded_nodes": list(self.excluded_nodes),
        }


def normalize(images_uint8: np.ndarray, normalization: dict[str, list[float]]) -> np.ndarray:
    """uint8 [N, C, H, W] -> float32 model input (numpy twin of ``edge_unlearn.data.preprocess``)."""
    x = images_uint8.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(normalization["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(normalization["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    return (x - mean) / std


def calibration_inputs(
    spec: str, meta: OnnxMeta, samples: int, seed: int = 0, data_dir: str | None = None, download: bool = False
) -> tuple[np.ndarray, list[int]]:
    """Preprocessed retained-class training images of dataset ``spec`` (forgotten classes dropped); ``data_dir`` /
    ``download``: where a torchvision dataset is read from."""
    (images,), classes = retained_draws(spec, meta, (samples,), seed, data_dir=data_dir, download=download)
    return images, classes


def retained_draws(
    spec: str,
    meta: OnnxMeta,
    counts: tuple[int, ...],
    seed: int = 0,
    data_dir: str | None = None,
    download: bool = False,
) -> tuple[list[np.ndarray], list[int]]:
    """Disjoint draws of preprocessed retained-class training images of ``spec``, ``counts[i]`` images in the i-th
    (fewer when the split runs out), and the classes of the first draw. The first draw is
    :func:`calibration_inputs`'s own (one shuffle by ``seed``, cut in order); a later one (e.g. the validation
    images of accuracy-controlled INT8) never shares an image with it."""
    from edge_unlearn.data import Normalization, Preprocessing, load_dataset, load_dataset_at

    if counts[0] < 1:
        raise UsageError(f"--calib-samples must be at least 1, got {counts[0]}")
    # a folder of any sizes is brought to the model's input; only the drawn images are decoded
    if meta.preprocessing:  # the record brings raw images of any size/channels to the input, as the host does
        data = load_dataset(
            spec, data_dir=data_dir, download=download, preprocessing=Preprocessing.from_json(meta.preprocessing)
        )
    else:
        folder = spec.strip().startswith("folder:")
        norm = Normalization.from_json(meta.normalization) if folder else None
        data = load_dataset_at(spec, meta.input_shape, norm, data_dir=data_dir, download=download)
    # fewer classes is fine for a subset of the model's own dataset (class count inferred from its labels), not
    # for another dataset: the names it has must be the model's first ones
    another = data.num_classes < meta.num_classes and tuple(data.class_names) != tuple(
        meta.class_names[: data.num_classes]
    )
    if data.num_classes > meta.num_classes or another:
        raise UsageError(
            f"calibration set {spec} has {data.num_classes} classes but the model has "
            f"{meta.num_classes}; calibrate with the dataset the model was trained on"
        )
    # the model's preprocessing record (ONNX metadata) takes raw images of another size/channel count to the
    # input, as the host does; a file exported before the record existed takes images of its input size only
    if not meta.preprocessing and tuple(data.input_shape) != tuple(meta.input_shape):
        raise UsageError(
            f"calibration images are {tuple(data.input_shape)} but the model takes "
            f"{tuple(meta.input_shape)}; calibrate with the dataset the model was trained on"
        )
    labels = data.y_train.numpy()
    keep = np.isin(labels, meta.retained_classes)
    if not keep.any():
        raise UsageError(
            f"calibration set {spec} holds only forgotten classes {list(meta.forgotten_classes)}; "
            "calibrate on samples of the retained classes"
        )
    order = np.random.default_rng(seed).permutation(np.nonzero(keep)[0])
    ends = np.cumsum(counts)
    draws = [np.sort(order[end - count : end]) for count, end in zip(counts, ends)]
    # already at the model's input (geometry of its record, on the host)
    images = [normalize(data.x_train[idx].numpy(), meta.normalization) for idx in draws]
    return images, sorted(set(int(c) for c in labels[draws[0]]))


def calibration_batch(images_uint8: np.ndarray, meta: OnnxMeta) -> np.ndarray:
    """Raw uint8 images [N, C, H, W] -> the model's float32 input through its preprocessing record (channel
    conversion, resize, centre crop, normalisation; bit-identical to the host's ``Preprocessing``): the
    torch-free path for a device that prepares its own images."""
    return meta.prep(images_uint8)


class _Reader:
    """onnxruntime CalibrationDataReader over an in-memory array, in batches of one size (at most ``batch``, a
    divisor of the sample count): onnxruntime's histogram calibrators (percentile, distribution) stack the
    batches' outputs and fail on a shorter last batch."""

    def __init__(self, name: str, inputs: np.ndarray, batch: int = 32) -> None:
        even = max(d for d in range(1, max(1, min(batch, len(inputs))) + 1) if len(inputs) % d == 0)
        self.name, self.inputs, self.batch, self.pos = name, inputs, even, 0

    def get_next(self):
        if self.pos >= len(self.inputs):
            return None
        x = self.inputs[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return {self.name: x}

    def rewind(self) -> None:
        self.pos = 0


def _calibrate_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "distribution": CalibrationMethod.Distribution,
    }
    if name not in table:
        raise UsageError(f"unknown calibration method {name!r}; choose one of {', '.join(CALIB_METHODS)}")
    return table[name]


def check_quantizable(proto, meta: OnnxMeta, path: Path) -> None:
    """What the quantizers assume and do not check: one graph input, the image input the metadata names (a second
    input has no calibration data), and finite float weights (a NaN weight breaks the scale computation)."""
    from onnx import numpy_helper

    weights = {t.name for t in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in weights]
    if inputs != [meta.input_name]:
        raise ModelFileError(
            f"{path} has graph inputs {inputs}; edge-unlearn models take one, the image batch {meta.input_name!r}: "
            "re-export it with `edge-unlearn export`"
        )
    for tensor in proto.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise ModelFileError(
                f"{path}: weight {tensor.name!r} holds NaN/Inf; nothing can be quantized from it: re-export the "
                "model from a finite checkpoint"
            )


@contextlib.contextmanager
def onnxruntime_step(model_path: Path, precision: str) -> Iterator[None]:
    """Run onnxruntime's quantizer or converter inside a temporary working folder (its symbolic shape inference
    writes ``sym_shape_infer_temp.onnx`` and ``<uuid>.data`` to the working folder when it fails, and its
    calibrator ``augmented_model.onnx`` to the temporary folder), deleted afterwards, success or failure; its
    exceptions become one line (exit 2). Paths given to it must be absolute."""
    from edge_unlearn.deploy.tensorrt.preflight import error_line

    with tempfile.TemporaryDirectory(prefix="edge-unlearn-quantize.") as folder:
        before = tempfile.tempdir
        tempfile.tempdir = folder
        try:
            with contextlib.chdir(folder):
                yield
        except EdgeUnlearnError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime/onnx raise bare Exception, AssertionError, Fail...
            raise ModelFileError(
                f"onnxruntime could not make the {precision} model from {model_path}: {error_line(exc)}; "
                "check the graph with `edge-unlearn build-engine --check-only` and re-export it"
            ) from exc
        finally:
            tempfile.tempdir = before


def quantize_int8_proto(
    src: Path,
    dst: Path,
    inputs: np.ndarray | None,
    input_name: str,
    config: QuantizeConfig,
    exclude: list[str],
    layout: QuantLayout | None = None,
) -> None:
    """pre-process + INT8 of ``src`` into ``dst`` in ``layout`` (default: the tensorrt one; no metadata handling).
    ``inputs`` are the calibration samples (unused by a dynamic layout)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if layout is None:
        layout = choose_layout("tensorrt", read_cpu_features(), symmetric_activations=config.symmetric_activations)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        if layout.dynamic:
            quantize_dynamic(
                str(pre),
                str(dst),
                per_channel=config.per_channel,
                reduce_range=layout.reduce_range,
                weight_type=getattr(QuantType, layout.weight_type),
                nodes_to_exclude=exclude,
                extra_options={"MatMulConstBOnly": True},
            )
            return
        if config.ort_defaults:
            quantize_static(str(pre), str(dst), _Reader(input_name, inputs), quant_format=QuantFormat.QDQ)
            return
        cache = (
            _entropy_ranges(pre, _Reader(input_name, inputs), Path(tmp) / "ranges.json")
            if config.calib_method == "entropy"
            else None
        )
        quantize_static(
            str(pre),
            str(dst),
            _Reader(input_name, inputs),
            quant_format=QuantFormat.QDQ,
            **({"calibration_cache_path": str(cache)} if cache else {}),
            activation_type=getattr(QuantType, layout.activation_type),
            weight_type=getattr(QuantType, layout.weight_type),
            reduce_range=layout.reduce_range,
            per_channel=config.per_channel,
            calibrate_method=_calibrate_method(config.calib_method),
            nodes_to_exclude=exclude,
            extra_options={
                "ActivationSymmetric": layout.symmetric_activations,
                "WeightSymmetric": True,
                "QuantizeBias": layout.quantize_bias if layout.target == "cpu" else config.quantize_bias,
            },
        )


def keep_head_output_float(proto, retained_name: str) -> list[str]:
    """Drop the Q/DQ pair the quantizer put on the head's output ``retained_name``: the mask reads the head's float
    output directly. Why: OpenVINO's low-precision transformations move a DequantizeLinear that feeds the mask
    through it into the quantized domain and fail on the fill (-1e4 does not fit in u8/i8); with no
    DequantizeLinear before the mask, every runtime keeps it in float (tests/deploy/test_openvino.py compiles it).
    The head's input and weights keep their Q/DQ. Returns the removed nodes' names."""
    quantize = [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == retained_name]
    q_outputs = {o for n in quantize for o in n.output}
    dequantize = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in q_outputs]
    float_of = {n.output[0]: retained_name for n in dequantize}
    if any(o.name in q_outputs or o.name in float_of for o in proto.graph.output):
        return []  # a quantized tensor is itself an output: leave the graph as the quantizer wrote it
    for node in proto.graph.node:
        node.input[:] = [float_of.get(name, name) for name in node.input]
    removed = quantize + dequantize
    for node in removed:
        proto.graph.node.remove(node)
    params = {name for n in removed for name in n.input[1:]}  # the pair's scale and zero point
    used = {name for n in proto.graph.node for name in n.input}
    for tensor in [t for t in proto.graph.initializer if t.name in params and t.name not in used]:
        proto.graph.initializer.remove(tensor)
    return [n.name for n in removed]


#: entropy (KL) calibration histogram: TensorRT's entropy calibrator's 2048 bins searched for the best 128-bin
#: (8-bit) range. onnxruntime's default for quantize_static is 128 bins for 128 quantized bins, where the search
#: has a single candidate, the whole range: its "entropy" ranges equal MinMax's bit for bit (measured,
#: docs/byom.md), and quantize_static passes no bin count through. So the ranges are computed here.
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128


def _entropy_ranges(model: Path, reader: _Reader, cache: Path) -> Path:
    """KL-divergence activation ranges of ``model`` (2048 histogram bins) written as an onnxruntime calibration
    cache that ``quantize_static(calibration_cache_path=…)`` reads instead of calibrating with its defaults."""
    import inspect

    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator

    try:
        from onnxruntime.quantization.calibrate import save_tensors_data
    except ImportError:
        save_tensors_data = None
    if save_tensors_data is None or "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise UsageError(
            f"--calib-method entropy needs an onnxruntime with calibration caches (this is "
            f"{onnxruntime.__version__}; its own entropy ranges equal minmax): upgrade onnxruntime, "
            "or use --calib-method percentile"
        )
    calibrator = create_calibrator(
        model,
        None,
        augmented_model_path=str(cache.with_suffix(".augmented.onnx")),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
    )
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache)
    reader.rewind()
    return cache


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


def quantize_model(
    model_path: str | Path,
    output: str | Path,
    config: QuantizeConfig = QuantizeConfig(),
    calib: str | None = None,
    echo: Callable[[str], None] | None = None,
    calib_inputs: np.ndarray | None = None,
    cpu: CpuFeatures | None = None,
    data_dir: str | None = None,
    download: bool = False,
) -> QuantizeResult:
    """Write an INT8 or FP16 version of an edge-unlearn FP32 ONNX model in the layout for ``config.target``.

    ``calib`` is a dataset spec (static INT8 only); ``calib_inputs`` (preprocessed float32, retained classes
    only) overrides it; ``data_dir``/``download``: where a torchvision ``calib`` is read from. ``cpu`` (default: this machine's :func:`read_cpu_features`) decides the cpu layout."""
    import onnx

    if config.precision not in QUANT_PRECISIONS:
        raise UsageError(f"unsupported precision {config.precision!r}; choose one of {', '.join(QUANT_PRECISIONS)}")
    model_path = Path(model_path)
    check_output_path(output, [model_path])
    target, target_why = resolve_target(config.target, output)
    if config.mode == "dynamic" and config.precision != "int8":
        raise UsageError("--dynamic applies to INT8 only; drop it or use --precision int8")
    if config.mode == "dynamic" and target == "tensorrt":
        raise UsageError("TensorRT needs static Q/DQ INT8 (" + target_why + "): drop --dynamic, or use --target cpu")
    cpu = cpu if cpu is not None else read_cpu_features()
    layout = choose_layout(target, cpu, config.precision, config.mode, config.symmetric_activations)
    proto = load_onnx(model_path)
    meta = read_meta(proto)
    if meta.precision != "fp32":
        raise UsageError(
            f"{model_path} is already {meta.precision}; quantize the FP32 model from `edge-unlearn export`"
        )
    check_onnx_loads(model_path)
    check_quantizable(proto, meta, model_path)
    exclude = mask_node_names(proto) if config.exclude_mask_nodes and not config.ort_defaults else []
    float_first = layout.float_first_layer if config.float_first_layer is None else config.float_first_layer
    if float_first and not config.ort_defaults:
        exclude += [n.name for n in proto.graph.node if meta.input_name in n.input and n.name not in exclude]
    calib_classes: tuple[int, ...] = ()
    info: dict[str, Any] = {
        "precision": config.precision,
        "source_sha256": sha256_file(model_path),
        "layout": layout.to_json(),
        "cpu": cpu.summary(),
    }
    rng = np.random.default_rng(config.seed)
    if config.precision == "int8" and not layout.dynamic:
        if calib_inputs is None:
            if not calib:
                raise UsageError(
                    "INT8 needs calibration data: pass --calib with a dataset spec "
                    "(e.g. npz:data.npz); only its retained classes are used"
                )
            inputs, classes = calibration_inputs(
                calib, meta, config.calib_samples, config.seed, data_dir=data_dir, download=download
            )
            calib_classes = tuple(classes)
        else:
            inputs = np.ascontiguousarray(calib_inputs, dtype=np.float32)
        info.update(
            config.to_json(),
            calib=calib or "(inputs)",
            calib_count=int(len(inputs)),
            calib_classes=list(calib_classes),
            excluded_nodes=exclude,
        )
    elif config.precision == "int8":
        inputs = rng.standard_normal((8, *meta.input_shape)).astype(np.float32)
        info.update(config.to_json(), excluded_nodes=exclude)
    else:
        inputs = rng.standard_normal((8, *meta.input_shape)).astype(np.float32)
        info.update(converter="onnxruntime.transformers.float16", keep_io_types=True)
    if echo:  # after every input check: a refused run prints one error line and nothing else
        echo(f"layout {layout.name} (target {layout.target}; {target_why}): {layout.reason}")
        if config.precision == "int8":
            echo(
                f"calibrating INT8 ({config.calib_method}) on {len(inputs)} retained-class samples; kept in float: "
                f"{', '.join(exclude)}"
                if not layout.dynamic
                else f"dynamic INT8: weights quantized now, activations at run time; kept in float: {', '.join(exclude)}"
            )
    new_meta = replace(meta, precision=config.precision, quantization=info)
    output = Path(output)
    source = model_path.absolute()  # onnxruntime_step works in a temporary folder: every path it sees is absolute
    with atomic_output(output.absolute()) as tmp, onnxruntime_step(model_path, config.precision):
        if config.precision == "int8":
            quantize_int8_proto(source, tmp, inputs, meta.input_name, config, exclude, layout)
            out_proto = onnx.load(str(tmp))
            keep_head_output_float(out_proto, meta.retained_name)
        else:
            from onnxruntime.transformers.float16 import convert_float_to_float16

            out_proto = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=False)
            topological_sort(out_proto)
        write_meta(out_proto, new_meta)
        write_layout_meta(out_proto, layout)
        # zero/non-finite scales and overflowed constants break every runtime; the TensorRT-only rules
        # (signed symmetric Q/DQ, float DQ inputs) live in export.onnx_hazards and run at build-engine
        hazards = graph_hazards(out_proto)
        if hazards and config.strict:
            raise ModelFileError(f"the {config.precision} graph has a deployment hazard: {hazards[0]}")
        onnx.save(out_proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        if config.strict:
            _self_check(tmp, new_meta, inputs)
        digest = sha256_file(tmp)
    return QuantizeResult(output, digest, new_meta, tuple(exclude), calib_classes, layout)


def fp16_plain_cast(proto):
    """FP16 conversion *without* the converter's clamping to ±1e4 (what a plain ``.half()`` does): a -1e9
    constant becomes -inf. For measuring the hazard of docs/design.md §4 only; never used for deployment."""
    from onnx import TensorProto, numpy_helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    original = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == TensorProto.FLOAT}
    out = convert_float_to_float16(proto, keep_io_types=True)
    for i, init in enumerate(out.graph.initializer):
        if init.data_type == TensorProto.FLOAT16 and init.name in original:
            with np.errstate(over="ignore"):
                out.graph.initializer[i].CopyFrom(
                    numpy_helper.from_array(original[init.name].astype(np.float16), init.name)
                )
    topological_sort(out)
    return out
