"""The deployment gate against the two attacks of issue #13, built from the real export of conftest.py.

(a) the graph's fill constant edited to 0 or -5 (with and without the metadata's mask_value edited to match);
(b) the *original* model relabelled: forgotten classes and source hash copied into its metadata and the forgotten
class's index-map entry pointed at the fill slot. Each must FAIL `validate` and `build-engine --check-only` with
exit 1 and name the check; our FP32 / FP16 / INT8 exports (and dynamic INT8) must pass both. The attacks of
issue #30 (triggers, overridable constants, edited bundles) are in test_gate_proofs.py.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from edge_unlearn.cli import main
from edge_unlearn.deploy.onnx_hazards import check_model
from edge_unlearn.deploy.onnx_meta import read_meta, write_meta
from edge_unlearn.deploy.structure import analyse_mask, stress_inputs
from tests.conftest import one_line_error


def _set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(value, name))
            return
    raise AssertionError(f"no initializer {name}")


@pytest.fixture(scope="module")
def original_onnx(trained, artifacts, tmp_path_factory):
    """The original (unmasked) network exported as it would be before forgetting."""
    from edge_unlearn.export.onnx_export import export_from_model

    model, meta = trained
    original = copy.deepcopy(model)
    with torch.no_grad():
        original.class_mask.fill_(True)
    path = tmp_path_factory.mktemp("original") / "original.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        export_from_model(original, meta, path)
    return path


def fill_attack(src, dst, fill: float, edit_meta: bool):
    model = onnx.load(str(src))
    _set_init(model, "edge_unlearn_mask_value", np.array(fill, np.float32))
    if edit_meta:
        write_meta(model, dataclasses.replace(read_meta(model), mask_value=fill))
    onnx.save(model, str(dst))
    return dst


def relabel_attack(original, forgotten_export, dst):
    model = onnx.load(str(original))
    theirs = read_meta(forgotten_export)
    write_meta(
        model,
        dataclasses.replace(
            read_meta(model), forgotten_classes=theirs.forgotten_classes, source_sha256=theirs.source_sha256
        ),
    )
    index = np.arange(theirs.num_classes, dtype=np.int64)
    index[list(theirs.forgotten_classes)] = theirs.num_classes  # the fill slot of the padded full head
    _set_init(model, "edge_unlearn_class_index", index)
    onnx.save(model, str(dst))
    return dst


def _validate(model, bundle):
    result = CliRunner().invoke(main, ["validate", str(model), "--bundle", str(bundle)])
    return result.exit_code, result.output


def _check_only(model):
    result = CliRunner().invoke(main, ["build-engine", "--check-only", "--json", str(model)])
    return result.exit_code, result.output


@pytest.mark.parametrize("fill", [0.0, -5.0])
@pytest.mark.parametrize("edit_meta", [False, True])
def test_edited_fill_fails_the_gate(artifacts, tmp_path, fill, edit_meta):
    tampered = fill_attack(artifacts.fp32, tmp_path / "fill.onnx", fill, edit_meta)
    # the attack's premise: on the bundle's natural images the forgotten class still never wins
    code, out = _validate(tampered, artifacts.bundle)
    assert code == 1, out
    assert "[PASS] forget_acc" in out and "[PASS] forgotten_class_wins" in out
    assert "[FAIL] fill_margin" in out, out
    if not edit_meta:
        assert "[FAIL] fill_value" in out and "[FAIL] forgotten_columns_constant" in out
    code, out = _check_only(tampered)
    assert code == 1, out
    codes = {f["code"] for f in json.loads(out)["findings"] if f["severity"] == "error"}
    assert "structure-fill-margin" in codes
    if not edit_meta:
        assert {"structure-fill-value", "structure-forgotten-columns-constant"} <= codes


def test_relabelled_original_fails_the_gate(artifacts, original_onnx, tmp_path):
    tampered = relabel_attack(original_onnx, artifacts.fp32, tmp_path / "relabel.onnx")
    code, out = _validate(tampered, artifacts.bundle)
    assert code == 1, out
    assert "[PASS] forget_acc" in out and "[PASS] same_source_checkpoint" in out  # metadata and images are fooled
    assert "[FAIL] head_rows: 10 == 9" in out and "[FAIL] index_map" in out
    code, out = _check_only(tampered)
    assert code == 1, out
    codes = {f["code"] for f in json.loads(out)["findings"] if f["severity"] == "error"}
    assert {"structure-head-rows", "structure-index-map"} <= codes


def test_relabelled_original_with_compact_index_still_fails(artifacts, original_onnx, tmp_path):
    """Also point the index map at columns 0..R-1 as ours would: the head still has C rows."""
    tampered = relabel_attack(original_onnx, artifacts.fp32, tmp_path / "relabel2.onnx")
    model = onnx.load(str(tampered))
    index = np.array([0, 1, 2, 9, 3, 4, 5, 6, 7, 8], np.int64)
    _set_init(model, "edge_unlearn_class_index", index)
    onnx.save(model, str(tampered))
    code, out = _validate(tampered, artifacts.bundle)
    assert code == 1 and "[FAIL] head_rows: 10 == 9" in out, out


@pytest.mark.parametrize("which", ["fp32", "fp16", "int8"])
def test_our_exports_pass_the_gate(artifacts, which):
    path = getattr(artifacts, which)
    code, out = _validate(path, artifacts.bundle)
    assert code == 0, out
    for name in (
        "mask_structure",
        "head_rows",
        "index_map",
        "fill_value",
        "retained_floor",
        "forgotten_columns_constant",
        "fill_margin",
    ):
        assert f"[PASS] {name}" in out
    code, out = _check_only(path)
    assert code == 0, out
    structure = {c["name"]: c for c in json.loads(out)["structure"]}
    assert structure["head_rows"]["value"] == 9 and structure["fill_margin"]["value"] > 1000


class _Calib:
    def __init__(self, inputs):
        self.batches = [{"input": inputs}]

    def get_next(self):
        return self.batches.pop() if self.batches else None


@pytest.mark.parametrize("layout", ["dynamic-int8", "u8s8-qoperator", "u8s8-qdq"])
def test_cpu_int8_layouts_are_analysed(artifacts, tmp_path, layout):
    """onnxruntime's CPU INT8 layouts (MatMulInteger + scale Mul + bias Add; QGemm + DequantizeLinear; UINT8 QDQ)
    before the float mask are analysed and pass under onnxruntime's rules; TensorRT's rules still refuse UINT8."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    from edge_unlearn.deploy.bundle import load_bundle
    from edge_unlearn.deploy.onnx_meta import mask_node_names

    dst = tmp_path / f"{layout}.onnx"
    exclude = mask_node_names(onnx.load(str(artifacts.fp32)))
    if layout == "dynamic-int8":
        quantize_dynamic(str(artifacts.fp32), str(dst), weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    else:
        fmt = QuantFormat.QOperator if layout == "u8s8-qoperator" else QuantFormat.QDQ
        quantize_static(
            str(artifacts.fp32),
            str(dst),
            _Calib(load_bundle(artifacts.bundle).inputs[:64]),
            quant_format=fmt,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
        )
    model = onnx.load(str(dst))
    found = analyse_mask(model, "logits")
    assert found.head_width == 9 and found.fill_value == -1e4
    report = check_model(model, runtime="onnxruntime")
    assert report.ok and {c.name for c in report.structure if c.passed} >= {"head_rows", "index_map", "fill_margin"}, (
        report.to_json()
    )
    if layout != "dynamic-int8":
        assert "qdq-unsigned" in check_model(model, runtime="tensorrt", structure=False).codes("error")


def test_unanalysable_graph_is_refused(artifacts, tmp_path):
    """A Relu slipped between the head and the mask: the gate cannot tell the head, so it refuses (exit 2)."""
    model = onnx.load(str(artifacts.fp32))
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    relu = onnx.helper.make_node("Relu", [pad.input[0]], ["sneaky"], name="sneaky")
    pad.input[0] = "sneaky"
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes[:-2] + [relu] + nodes[-2:])
    onnx.save(model, str(tmp_path / "relu.onnx"))
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "relu.onnx"), "--bundle", str(artifacts.bundle)])
    one_line_error(result, "cannot prove", "Relu")
    code, out = _check_only(tmp_path / "relu.onnx")
    assert code == 1 and "cannot prove" in out, out


def test_stress_inputs_cover_extremes():
    x = stress_inputs((1, 8, 8), {"mean": [0.5], "std": [0.25]})
    assert x.shape[1:] == (1, 8, 8) and np.isfinite(x).all()
    # constant images at pixel 0 and 1 and far outside [0, 1]
    flat = x.reshape(len(x), -1)
    constant = np.ptp(flat, axis=1) == 0
    values = sorted(set(np.round(flat[constant, 0], 4)))
    assert values == sorted({round((v - 0.5) / 0.25, 4) for v in (-4.0, 0.0, 0.5, 1.0, 5.0)})


def rewrite_bundle(src, dst, change) -> None:
    """A bundle whose arrays and metadata (``change(arrays, info)``) were edited and the digest recomputed: a
    self-consistent bundle, as `edge-unlearn bundle` would write it for other data."""
    from edge_unlearn.deploy.bundle import write_bundle

    with np.load(src, allow_pickle=False) as loaded:
        arrays = {k: loaded[k] for k in loaded.files}
    info = json.loads(str(arrays.pop("meta_json")))
    change(arrays, info)
    with open(dst, "wb") as handle:
        write_bundle(handle, arrays, info)


def test_bundle_of_another_image_size_is_one_line(artifacts, tmp_path):
    def bigger(arrays, info):
        arrays["inputs"] = np.zeros((len(arrays["labels"]), 1, 16, 16), np.float32)

    rewrite_bundle(artifacts.bundle, tmp_path / "big.npz", bigger)
    result = CliRunner().invoke(main, ["validate", str(artifacts.fp32), "--bundle", str(tmp_path / "big.npz")])
    assert result.exit_code == 2 and "images of shape [1, 16, 16]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("record", ["preprocessing", "normalization only (an older bundle)"])
def test_bundle_preprocessed_for_another_model_is_one_line(artifacts, tmp_path, record):
    """Images of the right shape normalised otherwise are not what the model sees: refused, not scored."""

    def otherwise(arrays, info):
        assert info["preprocessing"]["mean"] == info["normalization"]["mean"]
        if record == "preprocessing":
            info["preprocessing"]["mean"] = [v + 0.1 for v in info["preprocessing"]["mean"]]
        else:
            del info["preprocessing"]
            info["normalization"]["std"] = [v * 2 for v in info["normalization"]["std"]]

    rewrite_bundle(artifacts.bundle, tmp_path / "other.npz", otherwise)
    result = CliRunner().invoke(main, ["validate", str(artifacts.fp32), "--bundle", str(tmp_path / "other.npz")])
    one_line_error(result, "preprocessed otherwise", "mean" if record == "preprocessing" else "std")
    # the unedited bundle, re-saved the same way, passes: the check compares records, not files
    rewrite_bundle(artifacts.bundle, tmp_path / "same.npz", lambda arrays, info: None)
    assert (
        CliRunner().invoke(main, ["validate", str(artifacts.fp32), "--bundle", str(tmp_path / "same.npz")]).exit_code
        == 0
    )


def test_edited_output_name_is_one_line(artifacts, tmp_path):
    model = onnx.load(str(artifacts.fp32))
    write_meta(model, dataclasses.replace(read_meta(model), output_name="nope"))
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "m.onnx"), "--bundle", str(artifacts.bundle)])
    assert result.exit_code == 2 and "metadata names input" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    code, out = _check_only(tmp_path / "m.onnx")
    assert code == 1 and "structure-mask-structure" in out
