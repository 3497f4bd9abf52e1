"""Issue #29's acceptance cells for resnet18 on fashion-mnist on OpenVINO, through benchmarks/runtime_cells.py's own
code (a smaller subset and recipe than its committed run): FP32 and NNCF INT8 IRs validate, `validate --audit`
runs on the audit IRs, and both gate attacks -- the fill edited in the IR, the original network relabelled and
converted (INT8: quantized by NNCF) -- fail. Real data: skipped where ../shared/data is absent. LiteRT and
ExecuTorch cells need their converters (not installed in CI): the benchmark runs them."""

from __future__ import annotations

import pytest

from tests.conftest import one_thread, shared_npz

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'edge-unlearn[openvino]')")
pytest.importorskip("nncf", reason="NNCF is not installed (pip install 'edge-unlearn[openvino]')")

#: checks of the gate itself (the structure and the fill); a quantized model may miss the accuracy thresholds only
GATE_CHECKS = ("mask_structure", "head_rows", "index_map", "fill_value", "fill_margin", "retained_floor")


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    from benchmarks.runtime_cells import ModelSpec, prepare, run_cell

    shared_npz("fashion_mnist")
    # 60 training images per class, 20 per class in the bundle, 32 calibration images, 30 steps of batch 64
    spec = ModelSpec("resnet18-fashion", "resnet18", "fashion_mnist", 60, 20, 32, epochs=1, min_steps=30, batch_size=64)
    with one_thread():
        ctx = prepare(spec, tmp_path_factory.mktemp("runtime_cells"))
        return ctx, {precision: run_cell(ctx, "openvino", precision) for precision in ("fp32", "int8")}


def test_fp32_ir_passes_and_int8_keeps_the_classes_forgotten(cells):
    ctx, by_precision = cells
    assert ctx["onnxruntime_fp32"]["verdict"] == "pass"
    fp32, int8 = by_precision["fp32"]["validate"], by_precision["int8"]["validate"]
    assert fp32["verdict"] == "pass" and fp32["forget_acc"] == 0.0 and fp32["retain_agreement"] >= 0.99
    assert int8["forget_acc"] == 0.0 and int8["exit"] in (0, 1)
    assert not set(int8["failed"]) - {"retain_agreement", "retain_drop"}, int8["failed"]  # the gate proves it


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_audit_runs_and_both_attacks_fail(cells, precision):
    from benchmarks.runtime_cells import table

    cell = cells[1][precision]
    audit = cell["audit"]
    assert audit["exit"] in (0, 1) and 0.0 <= audit["audit"]["prototype_forget_acc"] <= 1.0, audit
    fill, relabel = cell["attacks"]["fill"], cell["attacks"]["relabel"]
    assert fill["exit"] == 1 and fill["forget_acc"] == 0.0  # the attack's premise: the classes still never win
    assert {"fill_value", "retained_floor"} <= set(fill["failed"]), fill
    assert relabel["exit"] == 1 and {"head_rows", "index_map"} <= set(relabel["failed"]), relabel
    assert not set(GATE_CHECKS) & set(cell["validate"]["failed"])
    row = [line for line in table([cell]).splitlines() if line.startswith("| resnet18-fashion")]
    assert row and row[0].endswith("| FAIL | FAIL |"), row


def test_an_unknown_model_or_runtime_is_one_line_and_exit_2(capsys):
    from benchmarks.runtime_cells import main

    with one_thread():  # main sets torch's threads for its process
        assert main(["--models", "nope"]) == 2
        assert main(["--runtimes", "openvino,tflite"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: unknown model 'nope'") and "tflite" in lines[1], lines


def test_an_accuracy_controlled_cell_is_its_own_row():
    """`--max-disagreement` adds an OpenVINO INT8 cell through NNCF's accuracy control beside the plain one; only
    OpenVINO INT8 takes it, and its row says so."""
    from benchmarks.runtime_cells import accuracy_controlled, table

    assert accuracy_controlled("openvino", "int8", 0.01)
    assert not accuracy_controlled("openvino", "int8", None)
    assert not accuracy_controlled("openvino", "fp32", 0.01) and not accuracy_controlled("litert", "int8", 0.01)
    cell = {"model": "m", "runtime": "openvino", "precision": "int8", "status": "ran", "validate": {"verdict": "pass"}}
    rows = table([cell, {**cell, "accuracy_control": {"max_drop": 0.01}}]).splitlines()[2:]
    assert rows[0].startswith("| m | openvino | int8 | PASS |")
    assert rows[1].startswith("| m | openvino | int8 (accuracy control ≤ 0.01) | PASS |")
