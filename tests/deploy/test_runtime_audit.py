"""`validate --audit` on OpenVINO IRs, LiteRT files and ExecuTorch programs (issue #29): `convert --to openvino`
keeps an audit export's second output "features" (FP32 and NNCF INT8), the runners read both outputs by name, and
the audit's figures on the FP32 IR are the ONNX audit export's; a file without the features output is one line,
exit 2, naming the fix. `convert --to executorch --audit` writes a two-output program (skipped without executorch).

One small model for the module: the digits lenet of tests/conftest.py with class 3 masked and nothing else (its
features still hold the class: the audit fails it on `audit_prototype_recovery`, on every runtime alike). LiteRT
conversion needs litert-torch on the host (skipped without it); the LiteRT runner's two-output handling is checked
on a hand-built flatbuffer with the same mask chain, which needs only ai-edge-litert.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import invoke_cli, one_line_error

FORGET = 3
#: accuracy figures of two runtimes on the same bundle: equal up to one of the ~55 forgotten-class images
FIGURE_TOLERANCE = 0.02
FIGURES = ("probe_forget_acc", "probe_retain_acc", "prototype_forget_acc", "logit_probe_forget_acc")

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None,
    reason="OpenVINO is not installed (pip install 'edge-unlearn[openvino]')",
)
needs_litert = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None,
    reason="LiteRT is not installed (pip install 'edge-unlearn[litert]')",
)
needs_executorch = pytest.mark.skipif(
    importlib.util.find_spec("executorch") is None or importlib.util.find_spec("torchao") is None,
    reason="ExecuTorch is not installed (pip install 'edge-unlearn[executorch]')",
)
needs_litert_torch = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None or importlib.util.find_spec("litert_torch") is None,
    reason="litert-torch (the host's converter) or ai-edge-litert is not installed",
)


@dataclass(frozen=True)
class AuditSet:
    folder: Path
    checkpoint: Path
    audit_onnx: Path
    plain_onnx: Path
    bundle: Path


@pytest.fixture(scope="module")
def audit_set(digits_checkpoint, tmp_path_factory) -> AuditSet:
    """The masked lenet, its audit export and plain export (FP32), and its `bundle --audit`."""
    from edge_unlearn.checkpoint import load_checkpoint, save_checkpoint
    from edge_unlearn.export.onnx_export import ExportConfig, export_onnx
    from tests.conftest import one_thread

    folder = tmp_path_factory.mktemp("runtime_audit")
    loaded = load_checkpoint(digits_checkpoint)
    loaded.model.mask_classes([FORGET])
    checkpoint = folder / "masked.safetensors"
    save_checkpoint(checkpoint, loaded.model, replace(loaded.meta, forgotten_classes=(FORGET,)))
    with one_thread(), contextlib.redirect_stdout(io.StringIO()):
        export_onnx(checkpoint, folder / "model.audit.onnx", ExportConfig(audit=True))
        export_onnx(checkpoint, folder / "model.onnx")
        result = invoke_cli(["bundle", checkpoint, "--audit", "-o", folder / "eval.audit.npz", "-q"])
    assert result.exit_code == 0, result.output
    return AuditSet(folder, checkpoint, folder / "model.audit.onnx", folder / "model.onnx", folder / "eval.audit.npz")


def _validate_audit(model, bundle, *extra) -> tuple[int, dict]:
    result = invoke_cli(["validate", model, "--bundle", bundle, "--audit", "--json", *extra])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture(scope="module")
def onnx_audit_report(audit_set) -> tuple[int, dict]:
    """`validate --audit` on the FP32 ONNX audit export (onnxruntime): the reference figures."""
    return _validate_audit(audit_set.audit_onnx, audit_set.bundle)


@pytest.fixture(scope="module")
def audit_irs(audit_set) -> dict[str, Path]:
    """FP32 and NNCF INT8 IRs of the audit export, and the FP32 IR of the plain export, through the CLI."""
    pytest.importorskip("openvino")
    out = {}
    for name, source, precision in (
        ("fp32", audit_set.audit_onnx, "fp32"),
        ("int8", audit_set.audit_onnx, "int8"),
        ("plain", audit_set.plain_onnx, "fp32"),
    ):
        path = audit_set.folder / f"model.{name}.xml"
        args = ["convert", source, "--to", "openvino", "--precision", precision, "-o", path, "--json"]
        result = invoke_cli(args + (["--calib", "digits", "--calib-samples", "100"] if precision == "int8" else []))
        assert result.exit_code == 0, result.output
        outputs = json.loads(result.stdout)["outputs"]
        assert outputs == (["logits"] if name == "plain" else ["logits", "features"]), (name, outputs)
        out[name] = path
    return out


@needs_openvino
def test_converted_ir_keeps_the_features_output_by_name(audit_set, audit_irs):
    import onnxruntime as ort

    from edge_unlearn.deploy.runners_openvino import OpenVinoRunner, read_ir, read_ir_meta

    x = np.load(audit_set.bundle)["inputs"][:64]
    ref_logits, ref_features = ort.InferenceSession(str(audit_set.audit_onnx), providers=["CPUExecutionProvider"]).run(
        ["logits", "features"], {"input": x}
    )
    for name in ("fp32", "int8"):
        model = read_ir(audit_irs[name])
        meta = read_ir_meta(model, name)
        assert meta.features_name == "features" and meta.precision == name
        assert sorted(sorted(o.get_names()) for o in model.outputs) == [["features"], ["logits"]]
        with OpenVinoRunner(audit_irs[name]) as runner:
            assert runner.has_features
            logits, features = runner.infer_features(x)
            assert np.array_equal(runner.infer(x), logits)  # infer reads the logits output by name
        assert logits.dtype == features.dtype == np.float32 and features.shape == ref_features.shape
        assert np.all(logits[:, FORGET] == np.float32(-1e4))
        error = np.linalg.norm(features - ref_features) / np.linalg.norm(ref_features)
        assert error < (1e-5 if name == "fp32" else 0.05), (name, error)
        if name == "fp32":
            assert np.max(np.abs(logits - ref_logits)) < 1e-3
    with OpenVinoRunner(audit_irs["plain"]) as runner:
        assert not runner.has_features


@needs_openvino
def test_fp32_audit_ir_gives_the_onnx_audit_exports_figures(audit_set, audit_irs, onnx_audit_report):
    code, report = _validate_audit(audit_irs["fp32"], audit_set.bundle)
    ref_code, ref = onnx_audit_report
    assert report["environment"]["runtime"] == "openvino" and report["precision"] == "fp32"
    assert code == ref_code == 1  # the masked original: its features give the class away on every runtime
    device, expected = report["audit"]["device"], ref["audit"]["device"]
    for figure in FIGURES:
        assert abs(device[figure] - expected[figure]) <= FIGURE_TOLERANCE, (figure, device[figure], expected[figure])
    assert abs(report["audit"]["feature_relative_error"] - ref["audit"]["feature_relative_error"]) < 1e-4
    verdicts = {c["name"]: c["passed"] for c in report["checks"] if c["name"].startswith("audit_")}
    assert verdicts == {c["name"]: c["passed"] for c in ref["checks"] if c["name"].startswith("audit_")}
    assert not verdicts["audit_prototype_recovery"] and verdicts["audit_fp32_reference"]
    gate = {c["name"]: c["passed"] for c in report["checks"]}
    for check in ("mask_structure", "head_rows", "index_map", "fill_value", "retained_floor", "forget_acc"):
        assert gate[check], check  # the gate proves the mask on the logits output of the two-output IR
    # the same audit export on OpenVINO without converting it (--provider openvino) reads the same figures
    _, direct = _validate_audit(audit_set.audit_onnx, audit_set.bundle, "--provider", "openvino")
    assert direct["environment"]["runtime"] == "openvino"
    for figure in FIGURES:
        assert abs(direct["audit"]["device"][figure] - expected[figure]) <= FIGURE_TOLERANCE, figure


@needs_openvino
def test_int8_audit_ir_runs_and_reports_its_figures_and_verdict(audit_set, audit_irs, onnx_audit_report):
    from edge_unlearn.deploy.audit import DEFAULT_TOLERANCE

    code, report = _validate_audit(audit_irs["int8"], audit_set.bundle)
    assert report["environment"]["runtime"] == "openvino" and report["precision"] == "int8"
    checks = {c["name"]: c for c in report["checks"]}
    assert code == (0 if all(c["passed"] for c in checks.values()) else 1)
    assert report["verdict"] == ("pass" if code == 0 else "fail")
    device, fp32 = report["audit"]["device"], report["audit"]["fp32"]
    for figure in FIGURES:
        assert 0.0 <= device[figure] <= 1.0, figure
    # NNCF's INT8 keeps forgetting where FP32 had it: each figure within the gate's own quantization tolerance
    for figure in ("probe_forget_acc", "prototype_forget_acc", "logit_probe_forget_acc"):
        assert abs(device[figure] - fp32[figure]) <= DEFAULT_TOLERANCE, (figure, device[figure], fp32[figure])
    assert 0.0 < report["audit"]["feature_relative_error"] < 0.05
    for name in ("audit_prototype_recovery", "audit_prototype_quant_gap", "audit_probe_retained_drop"):
        assert name in checks, name
    assert not checks["audit_prototype_recovery"]["passed"]  # the masked original fails here too
    assert checks["mask_structure"]["passed"] and checks["fill_value"]["passed"]
    text = invoke_cli(["validate", audit_irs["int8"], "--bundle", audit_set.bundle, "--audit"])
    assert text.exit_code == code and "feature-level audit" in text.output and "prototype recovery" in text.output


@needs_openvino
def test_a_plain_ir_with_audit_is_one_line_naming_the_fix(audit_set, audit_irs):
    result = invoke_cli(["validate", audit_irs["plain"], "--bundle", audit_set.bundle, "--audit"])
    one_line_error(result, "no features output", "export CHECKPOINT --audit", "convert model.audit.onnx --to openvino")
    # --audit on convert asks for the audit export up front
    refused = invoke_cli(
        ["convert", audit_set.plain_onnx, "--to", "openvino", "--audit", "-o", audit_set.folder / "no.xml"]
    )
    one_line_error(refused, "not an audit export", "export CHECKPOINT --audit")
    assert not (audit_set.folder / "no.xml").exists()


def test_litert_from_an_onnx_audit_export_is_one_line_naming_the_checkpoint_route(audit_set):
    result = invoke_cli(["convert", audit_set.audit_onnx, "--to", "litert", "-o", audit_set.folder / "m.tflite"])
    one_line_error(result, ".safetensors checkpoint", "--to litert --audit")


# ---------------------------------------------------------------------------------------------------------- LiteRT


def _convert_audit_set(audit_set, to: str, suffix: str) -> dict[str, Path]:
    """FP32 and INT8 audit files and the plain FP32 one, converted from the checkpoint with ``convert --to``."""
    out = {}
    for name, precision, audit in (("fp32", "fp32", True), ("int8", "int8", True), ("plain", "fp32", False)):
        path = audit_set.folder / f"model.{name}{suffix}"
        args = ["convert", audit_set.checkpoint, "--to", to, "--precision", precision, "-o", path, "--json"]
        args += (["--audit"] if audit else []) + (
            ["--calib", "digits", "--calib-samples", "50"] if name == "int8" else []
        )
        result = invoke_cli(args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["outputs"] == (["logits", "features"] if audit else ["logits"])
        out[name] = path
    return out


@pytest.fixture(scope="module")
def audit_tflites(audit_set) -> dict[str, Path]:
    """FP32 and INT8 audit .tflite files, and the plain FP32 one (litert-torch)."""
    pytest.importorskip("litert_torch")
    return _convert_audit_set(audit_set, "litert", ".tflite")


@needs_litert_torch
def test_fp32_audit_tflite_gives_the_onnx_audit_exports_figures(audit_set, audit_tflites, onnx_audit_report):
    code, report = _validate_audit(audit_tflites["fp32"], audit_set.bundle)
    ref_code, ref = onnx_audit_report
    assert report["environment"]["runtime"] == "litert" and code == ref_code
    for figure in FIGURES:
        assert abs(report["audit"]["device"][figure] - ref["audit"]["device"][figure]) <= FIGURE_TOLERANCE, figure
    assert {c["name"]: c["passed"] for c in report["checks"]}["mask_structure"]


@needs_litert_torch
def test_int8_audit_tflite_runs_and_a_plain_tflite_is_refused(audit_set, audit_tflites):
    code, report = _validate_audit(audit_tflites["int8"], audit_set.bundle)
    assert report["precision"] == "int8" and report["verdict"] == ("pass" if code == 0 else "fail")
    assert 0.0 <= report["audit"]["device"]["prototype_forget_acc"] <= 1.0
    result = invoke_cli(["validate", audit_tflites["plain"], "--bundle", audit_set.bundle, "--audit"])
    one_line_error(result, "no features output", "--to litert --audit")


# ------------------------------------------------------------------------------------------------------ ExecuTorch


@pytest.fixture(scope="module")
def audit_ptes(audit_set) -> dict[str, Path]:
    """FP32 and INT8 audit .pte programs, and the plain FP32 one."""
    pytest.importorskip("executorch")
    pytest.importorskip("torchao")
    return _convert_audit_set(audit_set, "executorch", ".pte")


@needs_executorch
def test_fp32_audit_pte_gives_the_onnx_audit_exports_figures(audit_set, audit_ptes, onnx_audit_report):
    code, report = _validate_audit(audit_ptes["fp32"], audit_set.bundle)
    ref_code, ref = onnx_audit_report
    assert report["environment"]["runtime"] == "executorch" and code == ref_code
    for figure in FIGURES:
        assert abs(report["audit"]["device"][figure] - ref["audit"]["device"][figure]) <= FIGURE_TOLERANCE, figure
    passed = {c["name"]: c["passed"] for c in report["checks"]}
    assert passed["mask_structure"] and passed["head_rows"] and passed["index_map"]  # proven on the logits output


@needs_executorch
def test_int8_audit_pte_runs_and_a_plain_pte_is_refused(audit_set, audit_ptes):
    from edge_unlearn.pte.runner import ExecuTorchRunner

    code, report = _validate_audit(audit_ptes["int8"], audit_set.bundle)
    assert report["precision"] == "int8" and report["verdict"] == ("pass" if code == 0 else "fail")
    assert 0.0 <= report["audit"]["device"]["prototype_forget_acc"] <= 1.0
    x = np.load(audit_set.bundle)["inputs"][:4]
    with ExecuTorchRunner(audit_ptes["int8"]) as runner:
        logits, features = runner.infer_features(x)
        assert np.array_equal(runner.infer(x), logits) and np.all(logits[:, FORGET] == np.float32(-1e4))
    assert features.dtype == np.float32 and features.ndim == 2 and len(features) == 4
    result = invoke_cli(["validate", audit_ptes["plain"], "--bundle", audit_set.bundle, "--audit"])
    one_line_error(result, "no features output", "--to executorch --audit")


def test_executorch_from_an_onnx_audit_export_is_one_line_naming_the_checkpoint_route(audit_set):
    result = invoke_cli(["convert", audit_set.audit_onnx, "--to", "executorch", "-o", audit_set.folder / "m.pte"])
    one_line_error(result, ".safetensors checkpoint", "--to executorch --audit")


@needs_litert
def test_restore_signature_outputs_undoes_the_quantizers_output_swap(tmp_path):
    """What ai-edge-quantizer does to an audit file's float features output t: QUANTIZE(t) -> t_q, and t_q listed as
    the graph output while the signature still names t. The runner then finds no 'features' output; the
    converter's repair lists t again (float features, as computed), and leaves a file without the swap unchanged."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    from edge_unlearn.deploy.runners_litert import LiteRtRunner, load_tflite
    from edge_unlearn.export.litert import restore_signature_outputs

    path = tmp_path / "toy.audit.tflite"
    weights = _toy_tflite(path)
    model = load_tflite(path)
    graph = model.subgraphs[0]
    features = int(graph.outputs[0])  # tensor 5, listed first (see _toy_tflite)
    quantized = fb.TensorT()
    quantized.shape, quantized.type, quantized.buffer = graph.tensors[features].shape, fb.TensorType.INT8, 0
    quantized.name = b"serving_default_features_output_quantized"
    quantized.quantization = fb.QuantizationParametersT()
    quantized.quantization.scale, quantized.quantization.zeroPoint = [0.05], [0]
    graph.tensors.append(quantized)
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.QUANTIZE
    code.version = 1
    model.operatorCodes.append(code)
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = len(model.operatorCodes) - 1, [features], [len(graph.tensors) - 1]
    graph.operators.append(op)
    graph.outputs = np.asarray([len(graph.tensors) - 1, int(graph.outputs[1])], np.int32)
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    swapped = bytes(builder.Output())
    (tmp_path / "swapped.tflite").write_bytes(swapped)
    assert not LiteRtRunner(tmp_path / "swapped.tflite").has_features  # the bug: 'features' names no output
    repaired = tmp_path / "repaired.tflite"
    repaired.write_bytes(restore_signature_outputs(swapped))
    assert [int(i) for i in load_tflite(repaired).subgraphs[0].outputs] == [features, int(graph.outputs[1])]
    x = np.random.default_rng(2).standard_normal((3, 1, 8, 8)).astype(np.float32)
    with LiteRtRunner(repaired) as runner:
        assert runner.has_features
        logits, got = runner.infer_features(x)
    ref_logits, ref_features = _toy_reference(weights, x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref_features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert restore_signature_outputs(path.read_bytes()) == path.read_bytes()


def _toy_tflite(path: Path, features_name: str = "features") -> dict[str, np.ndarray]:
    """A hand-built two-output .tflite with the deployed mask chain: input [1, 1, 8, 8] -> RESHAPE -> FC(16, RELU)
    = features -> head FC(3 retained rows) -> floor SELECT_V2(GREATER) -> PADV2(+1 fill column) -> GATHER(axis 1)
    = logits [1, 4], class 1 forgotten. The outputs are listed features first and named only in the signature (the
    tensors have converter-like names), so the runner must find them by name. Returns the weights."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    from edge_unlearn.deploy.onnx_meta import MASK_VALUE, RETAINED_FLOOR, OnnxMeta
    from edge_unlearn.deploy.runners_litert import with_tflite_meta

    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((16, 64)).astype(np.float32),
        "b1": rng.standard_normal(16).astype(np.float32),
        "w2": rng.standard_normal((3, 16)).astype(np.float32),
        "b2": rng.standard_normal(3).astype(np.float32),
    }
    model = fb.ModelT()
    model.version = 3
    model.buffers = [fb.BufferT()]
    tensors: list = []

    def tensor(name: str, shape: list[int], kind: int = fb.TensorType.FLOAT32, value=None) -> int:
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), np.asarray(shape, np.int32), kind, 0
        if value is not None:
            buffer = fb.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(value).tobytes(), np.uint8)
            model.buffers.append(buffer)
            t.buffer = len(model.buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    codes: list[int] = []

    def op(code: int, inputs: list[int], outputs: list[int], options_type: int = 0, options=None):
        if code not in codes:
            codes.append(code)
        o = fb.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = (
            codes.index(code),
            np.asarray(inputs, np.int32),
            np.asarray(outputs, np.int32),
        )
        o.builtinOptionsType, o.builtinOptions = options_type, options
        return o

    ops = fb.BuiltinOperator
    index = np.array([0, 3, 1, 2], np.int32)  # class 1 -> the fill column; retained 0, 2, 3 in their places
    x = tensor("serving_default_args_0:0", [1, 1, 8, 8])
    shape = tensor("shape", [2], fb.TensorType.INT32, np.array([1, 64], np.int32))
    flat = tensor("flat", [1, 64])
    w1, b1 = tensor("w1", [16, 64], value=weights["w1"]), tensor("b1", [16], value=weights["b1"])
    feats = tensor("StatefulPartitionedCall:1", [1, 16])
    w2, b2 = tensor("w2", [3, 16], value=weights["w2"]), tensor("b2", [3], value=weights["b2"])
    retained = tensor("retained", [1, 3])
    floor = tensor("floor", [], value=np.array(RETAINED_FLOOR, np.float32))
    above = tensor("above", [1, 3], fb.TensorType.BOOL)
    floored = tensor("floored", [1, 3])
    pads = tensor("pads", [2, 2], fb.TensorType.INT32, np.array([[0, 0], [0, 1]], np.int32))
    fill = tensor("fill", [], value=np.array(MASK_VALUE, np.float32))
    padded = tensor("padded", [1, 4])
    gather_index = tensor("index", [4], fb.TensorType.INT32, index)
    logits = tensor("StatefulPartitionedCall:0", [1, 4])
    relu = fb.FullyConnectedOptionsT()
    relu.fusedActivationFunction = fb.ActivationFunctionType.RELU
    axis = fb.GatherOptionsT()
    axis.axis = 1
    operators = [
        op(ops.RESHAPE, [x, shape], [flat]),
        op(ops.FULLY_CONNECTED, [flat, w1, b1], [feats], fb.BuiltinOptions.FullyConnectedOptions, relu),
        op(
            ops.FULLY_CONNECTED,
            [feats, w2, b2],
            [retained],
            fb.BuiltinOptions.FullyConnectedOptions,
            fb.FullyConnectedOptionsT(),
        ),
        op(ops.GREATER, [retained, floor], [above]),
        op(ops.SELECT_V2, [above, retained, floor], [floored]),
        op(ops.PADV2, [floored, pads, fill], [padded]),
        op(ops.GATHER, [padded, gather_index], [logits], fb.BuiltinOptions.GatherOptions, axis),
    ]
    model.operatorCodes = []
    for code in codes:
        c = fb.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
        model.operatorCodes.append(c)
    graph = fb.SubGraphT()
    graph.tensors, graph.operators = tensors, operators
    graph.inputs, graph.outputs = np.asarray([x], np.int32), np.asarray([feats, logits], np.int32)
    model.subgraphs = [graph]
    signature = fb.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = b"serving_default", 0
    entries = []
    for name, tensor_index in (("args_0", x), ("logits", logits), ("features", feats)):
        entry = fb.TensorMapT()
        entry.name, entry.tensorIndex = name.encode(), tensor_index
        entries.append(entry)
    signature.inputs, signature.outputs = entries[:1], entries[1:]
    model.signatureDefs = [signature]
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    meta = OnnxMeta(
        num_classes=4,
        class_names=("zero", "one", "two", "three"),
        forgotten_classes=(1,),
        input_shape=(1, 8, 8),
        normalization={"mean": [0.0], "std": [1.0]},
        source_sha256="ab" * 32,
        arch="toy",
        dataset="digits",
        features_name=features_name,
    )
    path.write_bytes(with_tflite_meta(bytes(builder.Output()), meta))
    return {**weights, "index": index}


def _toy_reference(w: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from edge_unlearn.deploy.onnx_meta import MASK_VALUE, RETAINED_FLOOR

    features = np.maximum(x.reshape(len(x), -1) @ w["w1"].T + w["b1"], 0.0)
    retained = np.maximum(features @ w["w2"].T + w["b2"], RETAINED_FLOOR)
    padded = np.concatenate([retained, np.full((len(x), 1), MASK_VALUE, np.float32)], axis=1)
    return padded[:, w["index"]], features


@needs_litert
def test_litert_runner_reads_both_outputs_by_name_and_the_gate_proves_the_logits(tmp_path):
    from edge_unlearn.deploy.runners_litert import LiteRtRunner, load_tflite, logits_view, output_tensor
    from edge_unlearn.deploy.structure_litert import tflite_static_checks
    from edge_unlearn.errors import ModelFileError

    path = tmp_path / "toy.audit.tflite"
    weights = _toy_tflite(path)
    model = load_tflite(path)
    # tensors 5 (features) and 16 (logits), listed features first: found by the signature's names
    assert output_tensor(model, "features") == 5 and output_tensor(model, "logits") == 16
    assert output_tensor(model, "nothing") is None
    runner = LiteRtRunner(path)
    assert runner.has_features
    # the whole file has two outputs, which the gate refuses as a deployed model; its logits output is proven
    with pytest.raises(ModelFileError, match="2 outputs"):
        tflite_static_checks(model, runner.meta, str(path))
    assert [int(i) for i in logits_view(model, runner.meta).subgraphs[0].outputs] == [16]
    assert [int(i) for i in model.subgraphs[0].outputs] == [5, 16]  # the view is a copy
    checks = runner.static_checks()
    assert [c.line() for c in checks if not c.passed] == [] and {c.name for c in checks} >= {"index_map", "fill_value"}
    x = np.random.default_rng(1).standard_normal((5, 1, 8, 8)).astype(np.float32)
    ref_logits, ref_features = _toy_reference(weights, x)
    with runner:
        logits, features = runner.infer_features(x)
        plain = runner.infer(x)
    assert logits.dtype == features.dtype == np.float32 and logits.shape == (5, 4) and features.shape == (5, 16)
    np.testing.assert_allclose(features, ref_features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert np.array_equal(plain, logits) and np.all(logits[:, 1] == np.float32(-1e4))
    # metadata without features_name: not an audit file, and infer_features says how to make one
    _toy_tflite(tmp_path / "toy.tflite", features_name="")
    with LiteRtRunner(tmp_path / "toy.tflite") as plain_runner:
        assert not plain_runner.has_features
        np.testing.assert_allclose(plain_runner.infer(x), ref_logits, rtol=1e-4, atol=1e-4)
        with pytest.raises(ModelFileError, match="--to litert --audit"):
            plain_runner.infer_features(x)


@needs_litert
def test_validate_audit_refuses_a_tflite_without_features_naming_the_fix(audit_set, tmp_path):
    path = tmp_path / "toy.tflite"
    _toy_tflite(path, features_name="")
    result = invoke_cli(["validate", path, "--bundle", audit_set.bundle, "--audit"])
    one_line_error(result, "no features output", "convert CHECKPOINT --to litert --audit")
