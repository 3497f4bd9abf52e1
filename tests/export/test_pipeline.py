"""export -> quantize -> bundle -> validate on a real (digits) lenet with class 3 masked."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edge_unlearn.deploy.bundle import load_bundle, write_bundle
from edge_unlearn.deploy.onnx_meta import MASK_VALUE, OUTPUT_NAME, graph_hazards, read_meta
from edge_unlearn.deploy.runners import OnnxRuntimeRunner, open_runner
from edge_unlearn.deploy.validate import Thresholds, validate, validate_model
from edge_unlearn.errors import ModelFileError, UsageError
from edge_unlearn.export.quantize import QuantizeConfig, quantize_model
from edge_unlearn.torch_runners import TorchRunner

FORGET = (3,)  # the class the session fixture masks (conftest.py)


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run([OUTPUT_NAME], {"input": x})[0]


def test_export_graph_contract(artifacts, trained):
    model, meta = trained
    proto = onnx.load(str(artifacts.fp32))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(meta.input_shape)
    m = read_meta(proto)
    assert m.forgotten_classes == FORGET and m.num_classes == 10 and m.class_names == meta.class_names
    assert m.precision == "fp32" and tuple(m.input_shape) == tuple(meta.input_shape)
    assert m.normalization == meta.normalization.to_json()
    assert len(m.source_sha256) == 64
    # the forgotten class's head row is not in the file: the only [*, 128] float weights have 9 rows
    shapes = [tuple(t.dims) for t in proto.graph.initializer]
    assert (9, 128) in shapes and (10, 128) not in shapes


def test_export_parity_and_dynamic_batch(artifacts, trained, digits):
    import torch

    from edge_unlearn.data import preprocess

    model, meta = trained
    x = preprocess(digits.x_test[:37], meta.normalization)
    with torch.no_grad():
        ref = model.logits(x, masked=False).numpy()
    out = _run(artifacts.fp32, x.numpy())
    keep = [c for c in range(10) if c not in FORGET]
    np.testing.assert_allclose(out[:, keep], ref[:, keep], rtol=1e-4, atol=1e-4)
    assert np.all(out[:, list(FORGET)] == np.float32(MASK_VALUE))
    assert _run(artifacts.fp32, x[:1].numpy()).shape == (1, 10)


def test_int8_keeps_mask_in_float(artifacts):
    proto = onnx.load(str(artifacts.int8))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    meta = read_meta(proto)
    assert meta.precision == "int8" and 3 not in meta.quantization["calib_classes"]
    producers = {o: n for n in proto.graph.node for o in n.output}
    gather = producers[OUTPUT_NAME]
    assert gather.op_type == "Gather"  # the class scatter produces the output directly, no Q/DQ after it
    pad = producers[gather.input[0]]
    assert pad.op_type == "Pad"
    fill = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}[pad.input[2]]
    assert fill.dtype == np.float32 and float(fill) == MASK_VALUE
    assert graph_hazards(proto) == []
    first = [n for n in proto.graph.node if "input" in n.input]
    assert [n.op_type for n in first] == ["Conv"]  # the first layer reads the float input: not quantized
    assert first[0].name in meta.quantization["excluded_nodes"]
    assert (
        sum(
            n.op_type == "Conv" and producers.get(n.input[0], first[0]).op_type == "DequantizeLinear"
            for n in proto.graph.node
        )
        == 1
    )  # the second conv is quantized


def test_int8_is_tensorrt_shaped(artifacts):
    """Q/DQ as TensorRT wants it (docs/design.md §5): signed INT8, zero point 0, no int32 (bias) DequantizeLinear."""
    from onnx import TensorProto

    proto = onnx.load(str(artifacts.int8))
    inits = {t.name: t for t in proto.graph.initializer}
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.data_type == TensorProto.INT8, node.name
        assert not numpy_helper.to_array(zero_point).any(), node.name
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            assert inits[node.input[0]].data_type == TensorProto.INT8, f"{node.name}: quantized bias"


def test_fp16_mask_is_finite(artifacts, digits):
    meta = read_meta(artifacts.fp16)
    assert meta.precision == "fp16"
    bundle = load_bundle(artifacts.bundle)
    out = _run(artifacts.fp16, bundle.inputs[:64])
    assert np.all(np.isfinite(out)) and np.all(out[:, 3] == np.float32(MASK_VALUE))


@pytest.mark.parametrize("which", ["fp32", "int8", "fp16", "checkpoint"])
def test_every_precision_passes(artifacts, which):
    path = {"fp32": artifacts.fp32, "int8": artifacts.int8, "fp16": artifacts.fp16, "checkpoint": artifacts.checkpoint}[
        which
    ]
    report = validate_model(path, artifacts.bundle)
    assert report, report.summary()
    assert report.figure("forget_acc") == 0.0
    data = json.loads(json.dumps(report.to_json()))
    assert data["verdict"] == "pass" and data["precision"] == ("fp32" if which == "checkpoint" else which)
    assert data["runtime"] == ("torch" if which == "checkpoint" else "onnxruntime")
    assert len(data["per_class"]) == 10 and data["per_class"][3]["forgotten"]


def test_naive_masked_head_int8_is_rejected(trained, artifacts, tmp_path):
    """docs/design.md §4: zero rows + -1e4 bias under onnxruntime's default static QDQ must fail validation."""
    from benchmarks.mask_variants import DESIGNS
    from edge_unlearn.export.onnx_export import export_from_model

    model, meta = trained
    with contextlib.redirect_stdout(io.StringIO()):
        naive = export_from_model(model, meta, tmp_path / "naive.onnx", design=DESIGNS["naive"]).path
        quantize_model(
            naive, tmp_path / "naive.int8.onnx", QuantizeConfig(ort_defaults=True, strict=False), calib="digits"
        )
    with pytest.raises(ModelFileError, match="cannot prove"):  # not our mask: the gate refuses it outright
        validate_model(naive, artifacts.bundle)
    fp32 = validate(open_runner(naive), load_bundle(artifacts.bundle))  # the accuracy checks alone
    assert fp32.figure("retain_agreement") > 0.99  # in float the naive head is fine...
    report = validate(open_runner(tmp_path / "naive.int8.onnx"), load_bundle(artifacts.bundle))
    assert not report  # ...but its INT8 model is not
    assert "retain_agreement" in [c.name for c in report.failed]
    assert report.figure("retain_agreement") < 0.5
    assert validate_model(artifacts.int8, artifacts.bundle)  # ours, same network, passes


def test_naive_1e9_fp16_cast_is_rejected(trained, artifacts, tmp_path):
    """A -1e9 bias cast to FP16 without clamping becomes -inf (docs/design.md §4); the validator must catch it."""
    from benchmarks.mask_variants import DESIGNS
    from edge_unlearn.deploy.onnx_meta import write_meta
    from edge_unlearn.export.onnx_export import export_from_model
    from edge_unlearn.export.quantize import fp16_plain_cast

    model, meta = trained
    with contextlib.redirect_stdout(io.StringIO()):
        naive = export_from_model(model, meta, tmp_path / "n9.onnx", design=DESIGNS["naive_1e9"]).path
    proto = fp16_plain_cast(onnx.load(str(naive)))
    write_meta(proto, dataclasses.replace(read_meta(naive), precision="fp16"))
    onnx.save(proto, str(tmp_path / "n9.fp16.onnx"))
    with pytest.raises(ModelFileError, match="cannot prove"):
        validate_model(tmp_path / "n9.fp16.onnx", artifacts.bundle)
    report = validate(open_runner(tmp_path / "n9.fp16.onnx"), load_bundle(artifacts.bundle))
    assert not report and "finite_outputs" in {c.name for c in report.failed}, report.summary()
    assert graph_hazards(proto)


def test_runner_protocol(artifacts):
    runner = open_runner(artifacts.fp32)
    assert isinstance(runner, OnnxRuntimeRunner) and not runner.is_active
    with pytest.raises(RuntimeError):
        runner.infer(np.zeros((1, 1, 8, 8), np.float32))
    with runner:
        out = runner.infer(np.zeros((2, 1, 8, 8), np.float64))  # cast to float32
        assert out.shape == (2, 10) and out.dtype == np.float32
        assert runner.describe()["provider"] == "CPUExecutionProvider"
    assert isinstance(open_runner(artifacts.checkpoint), TorchRunner)


def test_quantize_rejects_bad_input(artifacts, digits, tmp_path):
    out = tmp_path / "q.onnx"
    with pytest.raises(UsageError, match="unsupported precision"):
        quantize_model(artifacts.fp32, out, QuantizeConfig(precision="int4"))
    with pytest.raises(UsageError, match="calibration"):
        quantize_model(artifacts.fp32, out, QuantizeConfig(precision="int8"))
    with pytest.raises(UsageError, match="already int8"):
        quantize_model(artifacts.int8, out, QuantizeConfig(precision="fp16"))
    only3 = tmp_path / "only3.npz"
    keep_tr, keep_te = digits.y_train == 3, digits.y_test == 3
    np.savez(
        only3,
        x_train=digits.x_train[keep_tr].numpy(),
        y_train=digits.y_train[keep_tr].numpy(),
        x_test=digits.x_test[keep_te].numpy(),
        y_test=digits.y_test[keep_te].numpy(),
    )
    with pytest.raises(UsageError, match="only forgotten classes"):
        quantize_model(artifacts.fp32, out, QuantizeConfig(precision="int8"), calib=f"npz:{only3}")
    assert not out.exists() and list(tmp_path.iterdir()) == [only3]


def test_bundle_class_count_mismatch(artifacts, tmp_path):
    bundle = load_bundle(artifacts.bundle)
    with np.load(artifacts.bundle) as arrays:
        data = dict(arrays)
    data["class_names"] = data["class_names"][:9]
    data["reference_logits"] = data["reference_logits"][:, :9]
    keep = data["labels"] < 9
    for key in ("inputs", "labels", "reference_logits", "indices"):
        data[key] = data[key][keep]
    bad = tmp_path / "nine.npz"
    with open(bad, "wb") as handle:  # a consistent bundle (its digest rewritten), of another class count
        write_bundle(handle, data, json.loads(str(data.pop("meta_json"))))
    assert load_bundle(bad).num_classes == 9 and bundle.num_classes == 10
    with pytest.raises(ModelFileError, match="10 classes but bundle"):
        validate_model(artifacts.int8, bad)


def test_foreign_onnx_is_refused(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ModelFileError, match="not produced by `edge-unlearn export`"):
        open_runner(path)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a readable ONNX"):
        open_runner(tmp_path / "junk.onnx")


def test_bundle_contents(artifacts, digits):
    bundle = load_bundle(artifacts.bundle)
    assert bundle.forgotten_classes == FORGET and bundle.num_classes == 10
    assert len(bundle.labels) == len(digits.y_test) and bundle.inputs.dtype == np.float32
    assert np.all(bundle.reference_logits[:, 3] == np.float32(MASK_VALUE))
    with np.load(artifacts.bundle, allow_pickle=False) as arrays:  # readable without pickle
        assert set(arrays.files) >= {"inputs", "labels", "reference_logits", "class_names", "forgotten_classes"}


def test_validate_thresholds_are_used(artifacts):
    strict = validate_model(artifacts.int8, artifacts.bundle, Thresholds(min_agreement=1.0, max_retain_drop=0.0))
    agreement = strict.figure("retain_agreement")
    assert (agreement == 1.0) == bool(strict.checks[4].passed)
    with pytest.raises(UsageError):
        Thresholds(max_forget_acc=1.5)


def test_validate_with_runner_object(artifacts):
    report = validate(OnnxRuntimeRunner(artifacts.int8, provider="cpu"), load_bundle(artifacts.bundle))
    assert report and report.environment["precision"] == "int8"


def test_research_mask_designs_plug_into_the_exporter(trained, tmp_path):
    """The compared graph designs live in benchmarks/ and export through the library's MaskDesign hooks."""
    from benchmarks.mask_variants import DESIGNS
    from edge_unlearn.export.onnx_export import export_from_model

    model, meta = trained
    with contextlib.redirect_stdout(io.StringIO()):
        where = export_from_model(model, meta, tmp_path / "where.onnx", design=DESIGNS["where"])
    assert where.parity.ok and where.parity.forgotten_exact
    assert read_meta(where.path).quantization == {"graph_variant": "where"}
    ops = [node.op_type for node in onnx.load(str(where.path)).graph.node]
    assert ops[-1] == "Where" and "Gather" not in ops[-2:]
