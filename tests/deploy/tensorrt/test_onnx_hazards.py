"""The ONNX hazard checker against the hazards of docs/design.md §4, on graphs built here with onnx.helper."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_unlearn.deploy.onnx_hazards import check_model, check_onnx_for_tensorrt, onnx_precision
from edge_unlearn.errors import ModelFileError

from .conftest import (
    FORGOTTEN,
    NUM_CLASSES,
    masked_add_graph,
    naive_masked_head,
    ours_fp16,
    ours_fp32,
    ours_int8,
    qdq_graph,
    zero_scale_head,
)


def test_naive_masked_head_is_rejected(tmp_path):
    report = check_onnx_for_tensorrt(naive_masked_head(tmp_path))
    assert not report and report.precision == "int8"
    errors = report.codes("error")
    # the §3 INT8 hazard: the -1e4 mask set the output's INT8 range
    assert "qdq-range-dominated" in errors, report.to_json()
    # onnxruntime's defaults: asymmetric activations and an INT32 bias, neither of which TensorRT takes
    assert {"qdq-nonzero-zero-point", "qdq-int32-input"} <= errors
    first = report.errors[0]
    assert first.code == "qdq-range-dominated" and first.node == "logits_QuantizeLinear"
    assert "mask" in first.message and first.fix
    with pytest.raises(ModelFileError, match="not safe to deploy.*qdq-range-dominated"):
        report.raise_for_errors()
    summary = report.summary()
    assert "\n" not in summary and "fix:" in summary


def test_naive_masked_head_zeroed_rows_are_named(tmp_path):
    """onnxruntime substitutes scale 1.0 for the all-zero rows; the report still names them (as info)."""
    report = check_onnx_for_tensorrt(naive_masked_head(tmp_path))
    masked = [f for f in report.findings if f.code == "masked-row-quantized"]
    assert masked and masked[0].severity == "info"
    assert all(str(c) in masked[0].message for c in FORGOTTEN)


def test_zero_per_channel_scale_is_rejected(tmp_path):
    report = check_onnx_for_tensorrt(zero_scale_head(tmp_path))
    bad = [f for f in report.errors if f.code == "qdq-nonpositive-scale"]
    assert len(bad) == 1, report.to_json()
    assert bad[0].node == "W_DequantizeLinear" and bad[0].tensor == "W_scale"
    assert "channel(s) 3, 7" in bad[0].message and "Scale coefficients must all be positive" in bad[0].message


@pytest.mark.parametrize("scale", [-0.5, float("nan"), float("inf")])
def test_negative_or_nonfinite_scale_is_rejected(tmp_path, scale):
    path = qdq_graph(tmp_path, np.array(0, np.int8))
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name == "s":
            init.CopyFrom(numpy_helper.from_array(np.array(scale, np.float32), "s"))
    report = check_model(model)
    assert "qdq-nonpositive-scale" in report.codes("error")


def test_fp16_graph_with_minus_1e9_is_rejected(tmp_path):
    with np.errstate(over="ignore"):
        path = masked_add_graph(tmp_path, np.float16, -1e9)
    report = check_onnx_for_tensorrt(path)
    assert report.precision == "fp16" and not report
    bad = [f for f in report.errors if f.code == "fp16-nonfinite-constant"]
    assert bad and bad[0].tensor == "mask" and "-inf" in bad[0].message and "-1e4" in bad[0].fix


def test_fp32_minus_1e9_is_an_error_only_where_it_becomes_fp16(tmp_path):
    path = masked_add_graph(tmp_path, np.float32, -1e9, name="fp32_mask.onnx")
    assert check_onnx_for_tensorrt(path)  # FP32 engine: fine
    report = check_onnx_for_tensorrt(path, target_precision="fp16")  # TensorRT 10 FP16 builder flag
    assert "fp16-overflow-constant" in report.codes("error")


def test_fp32_constant_cast_to_fp16_is_rejected():
    big = numpy_helper.from_array(np.array([0.0, -1e9], np.float32), "mask32")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["batch", 2])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT16, ["batch", 2])
    nodes = [
        helper.make_node("Cast", ["mask32"], ["mask16"], name="cast", to=TensorProto.FLOAT16),
        helper.make_node("Add", ["input", "mask16"], ["out"], name="add"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], initializer=[big]), opset_imports=[helper.make_opsetid("", 17)]
    )
    report = check_model(model)
    assert report.precision == "fp16" and "fp16-overflow-constant" in report.codes("error")


def test_fp32_minus_inf_is_a_warning_in_fp32_and_an_error_in_fp16(tmp_path):
    path = masked_add_graph(tmp_path, np.float32, -np.inf, name="inf_mask.onnx")
    report = check_onnx_for_tensorrt(path)
    assert report and "nonfinite-constant" in report.codes("warning")
    assert "nonfinite-constant" in check_onnx_for_tensorrt(path, target_precision="fp16").codes("error")


def test_nonzero_zero_point_is_rejected(tmp_path):
    report = check_onnx_for_tensorrt(qdq_graph(tmp_path, np.array(5, np.int8)))
    bad = [f for f in report.errors if f.code == "qdq-nonzero-zero-point"]
    assert len(bad) == 1, "the Q and DQ sharing one zero point are reported once"
    assert bad[0].tensor == "zp" and "5" in bad[0].message and "ActivationSymmetric" in bad[0].fix


def test_unsigned_zero_point_is_rejected(tmp_path):
    report = check_onnx_for_tensorrt(qdq_graph(tmp_path, np.array(0, np.uint8), name="u8.onnx"))
    assert report.codes("error") == {"qdq-unsigned"}


def test_symmetric_int8_qdq_is_accepted(tmp_path):
    assert check_onnx_for_tensorrt(qdq_graph(tmp_path, np.array(0, np.int8)))


def test_argmax_and_topk():
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 5000])
    y = helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", 1])
    v = helper.make_tensor_value_info("vals", TensorProto.FLOAT, ["batch", 4000])
    i = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4000])
    nodes = [
        helper.make_node("ArgMax", ["input"], ["idx"], name="argmax", axis=1, keepdims=1),
        helper.make_node("TopK", ["input", "k"], ["vals", "ids"], name="topk", axis=1),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes, "g", [x], [y, v, i], initializer=[numpy_helper.from_array(np.array([4000], np.int64), "k")]
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    report = check_model(model)
    assert report.codes("error") == {"topk-too-large"}
    assert {"argmax-in-graph", "int64-output"} <= report.codes("warning")


def test_our_fp32_graph_is_accepted():
    report = check_model(ours_fp32())
    assert report and report.precision == "fp32" and not report.findings, report.to_json()


def test_our_fp32_graph_is_accepted_for_the_fp16_builder_flag():
    """The mask value -1e4 is FP16-safe: TensorRT 10's FP16 flag may build our FP32 ONNX."""
    report = check_model(ours_fp32(), target_precision="fp16")
    assert report and not report.findings, report.to_json()


def test_our_int8_graph_is_accepted(tmp_path):
    report = check_onnx_for_tensorrt(ours_int8(tmp_path))
    assert report.precision == "int8"
    assert report.ok and not report.warnings, report.to_json()


def test_our_fp16_graph_is_accepted(tmp_path):
    report = check_onnx_for_tensorrt(ours_fp16(tmp_path))
    assert report.precision == "fp16"
    assert report.ok and not report.warnings, report.to_json()


def test_range_limit_is_a_parameter(tmp_path):
    path = ours_int8(tmp_path)
    assert "qdq-range-dominated" in check_onnx_for_tensorrt(path, range_limit=1e-3).codes("error")


def test_report_json_round_trip(tmp_path):
    report = check_onnx_for_tensorrt(naive_masked_head(tmp_path))
    data = json.loads(report.to_json())
    assert data["ok"] is False and data["errors"] == len(report.errors)
    assert {"code", "severity", "message", "fix", "node", "tensor"} <= set(data["findings"][0])


def test_onnx_precision_detection(tmp_path):
    assert onnx_precision(ours_fp32()) == "fp32"
    assert onnx_precision(onnx.load(str(ours_fp16(tmp_path)))) == "fp16"
    assert onnx_precision(onnx.load(str(ours_int8(tmp_path)))) == "int8"


def test_missing_and_corrupt_files_are_one_line_errors(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        check_onnx_for_tensorrt(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx at all")
    with pytest.raises(ModelFileError, match="not a readable ONNX"):
        check_onnx_for_tensorrt(junk)


def test_hazard_module_imports_no_torch_or_tensorrt():
    import subprocess
    import sys

    code = (
        "import sys, edge_unlearn.deploy.onnx_hazards, edge_unlearn.deploy.sidecar, "
        "edge_unlearn.deploy.tensorrt, edge_unlearn.deploy.tensorrt.plan, edge_unlearn.deploy.tensorrt.probe, "
        "edge_unlearn.deploy.tensorrt.logger, edge_unlearn.export.engine, "
        "edge_unlearn.deploy.tensorrt.runner, edge_unlearn.deploy.doctor, edge_unlearn.cli.tensorrt; "
        "bad = [m for m in ('torch', 'tensorrt', 'pycuda') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------ what `edge-unlearn quantize` writes


def _quantize(tmp_path, **config):
    from edge_unlearn.export.quantize import QuantizeConfig, quantize_model

    from .conftest import calib_inputs, save

    src = save(ours_fp32(), tmp_path / "model.onnx")
    out = tmp_path / f"model.{config.get('precision', 'int8')}.onnx"
    quantize_model(src, out, QuantizeConfig(**config), calib_inputs=calib_inputs())
    return out


def test_edge_unlearn_quantize_fp16_is_accepted(tmp_path):
    report = check_onnx_for_tensorrt(_quantize(tmp_path, precision="fp16"))
    assert report.ok and report.precision == "fp16", report.to_json()


def test_edge_unlearn_quantize_int8_default_is_accepted(tmp_path):
    """quantize's default (symmetric activations, float biases) is what TensorRT takes."""
    report = check_onnx_for_tensorrt(_quantize(tmp_path))
    assert report.ok, report.summary()


def test_edge_unlearn_quantize_int8_asymmetric_is_refused(tmp_path):
    """`--asymmetric-activations` (onnxruntime only) has zero points TensorRT cannot take."""
    report = check_onnx_for_tensorrt(_quantize(tmp_path, symmetric_activations=False))
    assert "qdq-nonzero-zero-point" in report.codes("error")
    assert "without --asymmetric-activations" in next(
        f.fix for f in report.errors if f.code == "qdq-nonzero-zero-point"
    )


# ------------------------------------------------------------------ one checker, two rule sets (issue #13)


def test_onnxruntime_rules_demote_tensorrt_only_findings(tmp_path):
    """UINT8 / asymmetric Q/DQ runs correctly on onnxruntime (the CPU layouts): info there, errors for TensorRT."""
    model = onnx.load(str(naive_masked_head(tmp_path)))
    trt = check_model(model, structure=False)
    ort = check_model(model, runtime="onnxruntime", structure=False)
    assert {"qdq-nonzero-zero-point", "qdq-int32-input"} <= trt.codes("error")
    assert not ({"qdq-nonzero-zero-point", "qdq-int32-input", "qdq-range-dominated"} & ort.codes("error"))
    assert {"qdq-nonzero-zero-point", "qdq-int32-input"} <= ort.codes("info")


def test_graph_hazards_is_the_unified_checker(tmp_path):
    from edge_unlearn.deploy.onnx_meta import graph_hazards

    bad = onnx.load(str(zero_scale_head(tmp_path)))
    lines = graph_hazards(bad)
    assert len(lines) == 1 and lines[0].startswith("[qdq-nonpositive-scale]")
    assert graph_hazards(ours_fp32()) == []


def test_graph_without_metadata_gets_a_structure_warning(tmp_path):
    report = check_onnx_for_tensorrt(zero_scale_head(tmp_path))
    assert "structure-not-checked" in report.codes("warning") and not report.structure


def test_our_graph_reports_its_structure_and_margin():
    report = check_model(ours_fp32())
    checks = {c.name: c for c in report.structure}
    assert all(c.passed for c in checks.values()), report.to_json()
    assert checks["head_rows"].value == NUM_CLASSES - len(FORGOTTEN)
    assert checks["fill_margin"].value > 1000 and "fill margin" in report.summary()


def test_nonfinite_attribute_is_an_error():
    model = ours_fp32()
    node = next(n for n in model.graph.node if n.op_type == "Gemm")
    node.attribute.append(helper.make_attribute("alpha", float("inf")))
    assert "nonfinite-attribute" in check_model(model, structure=False).codes("error")


def test_graph_cpu_onnxruntime_cannot_run_gets_a_warning_not_a_refusal():
    """E.g. FP16 kernels missing on CPU: the static structure still proves the mask; the stress run is a warning."""
    model = ours_fp32()
    model.graph.node[0].domain = "com.example"  # an op CPU onnxruntime does not have; the head chain is intact
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    report = check_model(model)
    assert report.ok and report.codes("warning") == {"structure-stress-run"}, report.to_json()
    assert {c.name for c in report.structure if c.passed} >= {"mask_structure", "head_rows", "index_map", "fill_value"}
