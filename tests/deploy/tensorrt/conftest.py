"""Shared set-up for the TensorRT-side tests: ONNX graphs built with onnx.helper (no torch), and the skip logic.

Real engine tests are marked ``tensorrt`` and take the :func:`trt_device` fixture, which skips them with the
reason when TensorRT, pycuda or a CUDA GPU is absent. There is no fake ``tensorrt`` module anywhere: the logic
around TensorRT is tested through pure functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_unlearn.deploy.onnx_meta import MASK_VALUE, OnnxMeta, mask_graph, mask_node_names, write_meta

NUM_CLASSES = 10
FORGOTTEN = (3, 7)
IMAGE = (1, 8, 8)
CHANNELS = 4


#: Without ``tests/__init__.py`` pytest imports this folder as the top-level package ``tensorrt``, which shadows
#: NVIDIA TensorRT for the whole session (and ``tests/export`` shadows ``export``). Tests refuse to run like that.
SHADOWS_TENSORRT = __name__.split(".")[0] == "tensorrt"
SHADOW_MESSAGE = (
    "tests/deploy/tensorrt was imported as the top-level package 'tensorrt', which shadows NVIDIA TensorRT: "
    "add an empty tests/__init__.py so it becomes tests.deploy.tensorrt"
)


def not_shadowed() -> None:
    if SHADOWS_TENSORRT:
        pytest.fail(SHADOW_MESSAGE)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tensorrt: needs TensorRT, pycuda and a CUDA GPU (skipped with a reason without them)"
    )


def has_tensorrt() -> bool:
    """The real NVIDIA TensorRT is importable (not merely some module named ``tensorrt``)."""
    from edge_unlearn.deploy.tensorrt import tensorrt_status

    return bool(tensorrt_status()["available"])


def _model(nodes, inputs, outputs, initializers, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def meta_for(precision: str = "fp32") -> OnnxMeta:
    return OnnxMeta(
        num_classes=NUM_CLASSES,
        class_names=tuple(f"c{i}" for i in range(NUM_CLASSES)),
        forgotten_classes=FORGOTTEN,
        input_shape=IMAGE,
        normalization={"mean": [0.5], "std": [0.5]},
        source_sha256="0" * 64,
        arch="tiny",
        dataset="synthetic",
        precision=precision,
        version="test",
    )


def ours_fp32(seed: int = 0) -> onnx.ModelProto:
    """The edge-unlearn deployment graph in miniature: Conv-ReLU backbone, a *compact* head (retained rows only)
    -> ``retained_logits``, then the float mask nodes Pad(+1 column = MASK_VALUE) -> Gather -> ``logits``."""
    rng = np.random.default_rng(seed)
    retained = [c for c in range(NUM_CLASSES) if c not in FORGOTTEN]
    d = CHANNELS * IMAGE[1] * IMAGE[2]
    conv_w = (rng.standard_normal((CHANNELS, IMAGE[0], 3, 3)) / 3).astype(np.float32)
    conv_b = (0.1 * rng.standard_normal(CHANNELS)).astype(np.float32)
    head_w = (rng.standard_normal((len(retained), d)) / np.sqrt(d) * 4).astype(np.float32)
    head_b = (0.5 * rng.standard_normal(len(retained))).astype(np.float32)
    mask_inits, mask_nodes = mask_graph(retained, NUM_CLASSES)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in (
            (conv_w, "conv.weight"),
            (conv_b, "conv.bias"),
            (head_w, "head.weight"),
            (head_b, "head.bias"),
        )
    ] + mask_inits
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight", "conv.bias"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
        helper.make_node("Flatten", ["relu_out"], ["features"], name="flatten", axis=1),
        helper.make_node("Gemm", ["features", "head.weight", "head.bias"], ["retained_logits"], name="head", transB=1),
        *mask_nodes,
    ]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *IMAGE])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])
    model = _model(nodes, [x], [y], inits)
    write_meta(model, meta_for("fp32"))
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


class _Reader:
    def __init__(self, name: str, data: np.ndarray, batch: int = 16) -> None:
        self.name, self.data, self.batch, self.pos = name, data, batch, 0

    def get_next(self):
        if self.pos >= len(self.data):
            return None
        chunk = self.data[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return {self.name: chunk}


def calib_inputs(n: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *IMAGE)).astype(np.float32)


def ours_int8(tmp_path: Path) -> Path:
    """Our graph quantized the way TensorRT needs it: static QDQ, signed symmetric INT8, per-channel weights, bias
    kept in float, the mask nodes excluded (what docs/design.md §4 and the issue prescribe)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    src = save(ours_fp32(), tmp_path / "ours.onnx")
    dst = tmp_path / "ours.int8.onnx"
    quantize_static(
        str(src),
        str(dst),
        _Reader("input", calib_inputs()),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=mask_node_names(onnx.load(str(src))),
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    model = onnx.load(str(dst))
    write_meta(model, meta_for("int8"))
    return save(model, dst)


def ours_fp16(tmp_path: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(ours_fp32(), keep_io_types=True)
    write_meta(model, meta_for("fp16"))
    return save(model, tmp_path / "ours.fp16.onnx")


def naive_masked_head(tmp_path: Path) -> Path:
    """docs/design.md §4's naive masked head: the full head with forgotten rows zeroed and their bias -1e4, quantized
    with onnxruntime's quantize_static defaults, per-channel S8S8 (no symmetric activations, bias quantized)."""
    from onnxruntime.quantization import QuantType, quantize_static

    rng = np.random.default_rng(0)
    d = 16
    w = rng.standard_normal((NUM_CLASSES, d)).astype(np.float32)
    b = rng.standard_normal(NUM_CLASSES).astype(np.float32)
    w[list(FORGOTTEN)] = 0.0
    b[list(FORGOTTEN)] = MASK_VALUE
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", d])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])
    model = _model(
        [helper.make_node("Gemm", ["input", "W", "b"], ["logits"], name="head", transB=1)],
        [x],
        [y],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    src = save(model, tmp_path / "naive.onnx")
    dst = tmp_path / "naive.int8.onnx"
    data = rng.standard_normal((32, d)).astype(np.float32)
    quantize_static(
        str(src),
        str(dst),
        _Reader("input", data),
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    return dst


def zero_scale_head(tmp_path: Path) -> Path:
    """A per-channel DequantizeLinear whose scale is 0 for the all-zero (masked) rows -- what per-channel INT8 of a
    zeroed row gives before any quantizer papers over it; TensorRT's parser rejects it."""
    rng = np.random.default_rng(0)
    d = 16
    wq = rng.integers(-127, 128, (NUM_CLASSES, d)).astype(np.int8)
    scale = np.full(NUM_CLASSES, 0.01, np.float32)
    wq[list(FORGOTTEN)] = 0
    scale[list(FORGOTTEN)] = 0.0
    inits = [
        numpy_helper.from_array(wq, "W_quantized"),
        numpy_helper.from_array(scale, "W_scale"),
        numpy_helper.from_array(np.zeros(NUM_CLASSES, np.int8), "W_zero_point"),
        numpy_helper.from_array(np.zeros(NUM_CLASSES, np.float32), "b"),
    ]
    nodes = [
        helper.make_node(
            "DequantizeLinear", ["W_quantized", "W_scale", "W_zero_point"], ["W"], name="W_DequantizeLinear", axis=0
        ),
        helper.make_node("Gemm", ["input", "W", "b"], ["logits"], name="head", transB=1),
    ]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", d])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])
    return save(_model(nodes, [x], [y], inits), tmp_path / "zero_scale.onnx")


def masked_add_graph(tmp_path: Path, dtype=np.float16, mask_value: float = -1e9, name: str = "fp16_mask.onnx") -> Path:
    """logits + mask, the mask a constant of ``dtype`` holding ``mask_value`` at the forgotten classes."""
    mask = np.zeros(NUM_CLASSES, dtype=dtype)
    mask[list(FORGOTTEN)] = dtype(mask_value)
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    x = helper.make_tensor_value_info("input", elem, ["batch", NUM_CLASSES])
    y = helper.make_tensor_value_info("logits", elem, ["batch", NUM_CLASSES])
    nodes = [
        helper.make_node("Add", ["input", "mask"], ["masked"], name="apply_mask"),
        helper.make_node("Softmax", ["masked"], ["logits"], name="softmax", axis=1),
    ]
    return save(_model(nodes, [x], [y], [numpy_helper.from_array(mask, "mask")]), tmp_path / name)


def qdq_graph(tmp_path: Path, zero_point: np.ndarray, name: str = "qdq.onnx") -> Path:
    """input -> QuantizeLinear -> DequantizeLinear -> Relu with the given (constant) zero point."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(zero_point, "zp")]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq"),
        helper.make_node("Relu", ["dq"], ["out"], name="relu"),
    ]
    return save(_model(nodes, [x], [y], inits), tmp_path / name)


def write_bundle(path: Path, onnx_path: Path, n_per_class: int = 4, seed: int = 2) -> Path:
    """An evaluation bundle for the tiny graph, made without torch: reference logits from onnxruntime on the FP32
    graph, labels = the reference's choice for retained samples, the forgotten class for forgotten ones."""
    import onnxruntime as ort

    from edge_unlearn.deploy.bundle import write_bundle

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_per_class * NUM_CLASSES, *IMAGE)).astype(np.float32)
    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})[0]
    labels = np.where(np.isin(np.arange(NUM_CLASSES), FORGOTTEN)[None, :], -np.inf, ref).argmax(1).astype(np.int64)
    labels[: n_per_class * len(FORGOTTEN)] = np.repeat(np.array(FORGOTTEN), n_per_class)
    info = {
        "source_sha256": "0" * 64,
        "dataset": "synthetic",
        "input_shape": list(IMAGE),
        "mask_value": MASK_VALUE,
        "provenance": {"dataset": "synthetic", "dataset_sha256": "", "split": "test", "checkpoint_sha256": "0" * 64},
    }
    arrays = {
        "inputs": x,
        "labels": labels,
        "reference_logits": ref.astype(np.float32),
        "class_names": np.asarray([f"c{i}" for i in range(NUM_CLASSES)], dtype=np.str_),
        "forgotten_classes": np.asarray(FORGOTTEN, dtype=np.int64),
        "indices": np.arange(len(x), dtype=np.int64),
    }
    with open(path, "wb") as handle:
        write_bundle(handle, arrays, info)
    return path


@pytest.fixture(scope="session")
def trt_device():
    """Skip (with the reason) unless TensorRT, pycuda and a CUDA GPU are all here; yields the tensorrt module."""
    from edge_unlearn.deploy.tensorrt import import_pycuda, import_tensorrt
    from edge_unlearn.errors import DependencyError

    not_shadowed()

    try:
        trt = import_tensorrt()
    except DependencyError as exc:
        pytest.skip(
            f"needs NVIDIA TensorRT, which cannot be installed in CI (run on a Jetson or GPU server): "
            f"{str(exc).split(';')[0]}"
        )
    try:
        import_pycuda()  # also checks that a CUDA GPU is visible
    except DependencyError as exc:
        pytest.skip(f"needs pycuda and a CUDA GPU: {str(exc).split(';')[0]}")
    return trt


# ---------------------------------------------------------------- the real pipeline, for the device tests
#
# export -> quantize (our INT8 and FP16) -> bundle, trained once per session by tests/conftest.py's
# fixtures (lenet on scikit-learn's digits, class 3 masked). They need torch (the host extra). On a device without
# torch, build them on the host with the same fixtures (or `edge-unlearn export/quantize/bundle`) and point
# EDGE_UNLEARN_DEPLOY_DIR at a folder holding model.onnx, model.int8.onnx, model.fp16.onnx and eval.npz.
from tests.conftest import Artifacts  # noqa: E402


@pytest.fixture(scope="session")
def deploy(request, trt_device) -> Artifacts:
    """The exported/quantized lenet + bundle: from EDGE_UNLEARN_DEPLOY_DIR, else made here (needs torch). Depends
    on ``trt_device`` so that nothing is trained where the TensorRT tests skip anyway."""
    import os

    folder = os.environ.get("EDGE_UNLEARN_DEPLOY_DIR")
    if folder:
        root = Path(folder)
        made = Artifacts(
            root / "forgotten.safetensors",
            root / "model.onnx",
            root / "model.int8.onnx",
            root / "model.fp16.onnx",
            root / "eval.npz",
            root,
        )
        missing = [p.name for p in (made.fp32, made.int8, made.fp16, made.bundle) if not p.is_file()]
        if missing:
            pytest.fail(f"EDGE_UNLEARN_DEPLOY_DIR={folder} lacks {missing}")
        return made
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip(
            "the pipeline test exports with torch: install the host extra, or set EDGE_UNLEARN_DEPLOY_DIR "
            "to a folder of model.onnx / model.int8.onnx / model.fp16.onnx / eval.npz made on the host"
        )
    return request.getfixturevalue("artifacts")
