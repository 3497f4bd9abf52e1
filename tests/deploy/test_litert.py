"""LiteRT: `edge-unlearn convert --to litert` (FP32, INT8 full integer) writes a .tflite that the real LiteRT
interpreter validates; the gate proves its mask from the flatbuffer; the two gate attacks fail on a .tflite; a
truncated file is one line, exit 2. Conversion needs litert-torch (host), the runner only ai-edge-litert."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import invoke_cli, one_line_error

pytest.importorskip("ai_edge_litert", reason="LiteRT is not installed (pip install 'edge-unlearn[litert]')")
pytest.importorskip("litert_torch", reason="litert-torch (the host's converter) is not installed")


@pytest.fixture(scope="module")
def tflites(artifacts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("litert")
    paths = {}
    for precision in ("fp32", "int8"):
        path = folder / f"model.{precision}.tflite"
        args = ["convert", artifacts.checkpoint, "--to", "litert", "--precision", precision, "-o", path, "--json"]
        result = invoke_cli(args + (["--calib", "digits", "--calib-samples", "100"] if precision == "int8" else []))
        assert result.exit_code == 0, result.output
        paths[precision] = path
    return paths


def _edit(src, dst, change) -> None:
    """Rewrite a .tflite through the flatbuffer's object tree (what an attacker with the schema does)."""
    import flatbuffers

    from edge_unlearn.deploy.runners_litert import load_tflite

    model = load_tflite(src)
    change(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))


def _constant(model, tensor_name_part: str, predicate) -> tuple[int, np.ndarray]:
    """(buffer index, value) of the first float/int constant whose tensor name has ``tensor_name_part``."""
    from edge_unlearn.deploy.structure_litert import _Tflite

    graph = _Tflite(model)
    for index, tensor in enumerate(model.subgraphs[0].tensors):
        value = graph.value(index)
        if value is not None and tensor_name_part in graph.name(index) and predicate(value):
            return tensor.buffer, value
    raise AssertionError(f"no constant {tensor_name_part}")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_tflite_validates(tflites, artifacts, precision):
    result = invoke_cli(["validate", tflites[precision], "--bundle", artifacts.bundle, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["environment"]["runtime"] == "litert" and report["environment"]["precision"] == precision
    passed = {c["name"]: c["passed"] for c in report["checks"]}
    for check in ("mask_structure", "head_rows", "index_map", "fill_value", "retained_floor", "retain_agreement"):
        assert passed[check], check


def test_int8_tflite_is_integer_with_the_mask_in_float(tflites):
    from edge_unlearn.deploy.runners_litert import load_tflite
    from edge_unlearn.deploy.structure_litert import _Tflite

    graph = _Tflite(load_tflite(tflites["int8"]))
    kinds = {graph.kind(op): op for op in graph.ops}
    conv = kinds["CONV_2D"]
    assert graph.dtype(int(conv.inputs[1])) == np.int8  # the backbone runs in INT8
    for kind in ("PADV2", "SELECT_V2", "GATHER_ND"):
        assert graph.dtype(int(kinds[kind].outputs[0])) == np.float32, kind


@pytest.mark.parametrize("fill", [0.0, -5.0])
def test_edited_fill_fails_on_a_tflite(tflites, artifacts, tmp_path, fill):
    def change(model):
        buffer, _ = _constant(model, "_LiteRtMask", lambda v: v.dtype == np.float32 and v.size == 1 and v == -1e4)
        model.buffers[buffer].data = np.frombuffer(np.float32(fill).tobytes(), np.uint8)

    _edit(tflites["fp32"], tmp_path / "fill.tflite", change)
    result = invoke_cli(["validate", tmp_path / "fill.tflite", "--bundle", artifacts.bundle])
    assert result.exit_code == 1, result.output
    assert "[PASS] forget_acc" in result.output
    assert "[FAIL] fill_value" in result.output and "[FAIL] fill_margin" in result.output


def test_relabelled_original_fails_on_a_tflite(trained, tflites, artifacts, tmp_path):
    """The original (unmasked) network, its class-3 index entry pointed at the fill column, converted with
    litert-torch directly (our converter's own gate would refuse it) and given the forgotten model's metadata."""
    import copy

    import litert_torch
    import torch

    from edge_unlearn.deploy.runners_litert import LiteRtRunner, with_tflite_meta
    from edge_unlearn.export.litert import mask_module

    model, meta = trained
    original = copy.deepcopy(model)
    with torch.no_grad():
        original.class_mask.fill_(True)
    module = mask_module(original)
    module.index[3] = 10  # the fill column of the padded full head
    data = bytes(litert_torch.convert(module, (torch.zeros(1, *meta.input_shape),)).model_content())
    relabelled = tmp_path / "relabelled.tflite"
    relabelled.write_bytes(with_tflite_meta(data, LiteRtRunner(tflites["fp32"]).meta))
    result = invoke_cli(["validate", relabelled, "--bundle", artifacts.bundle])
    assert result.exit_code == 1, result.output
    assert "[PASS] forget_acc" in result.output and "[PASS] same_source_checkpoint" in result.output
    assert "[FAIL] head_rows: 10 == 9" in result.output and "[FAIL] index_map" in result.output


def test_truncated_tflite_is_one_line(tflites, artifacts, tmp_path):
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(tflites["fp32"].read_bytes()[:4096])
    one_line_error(invoke_cli(["validate", cut, "--bundle", artifacts.bundle]), "cut.tflite", "truncated")


def test_bench_runs_a_tflite(tflites):
    from edge_unlearn.deploy.bench.measure import BenchConfig, bench_artefacts

    report = bench_artefacts([tflites["int8"]], BenchConfig(batches=(3,), iterations=3, warmup=1, threads=1))
    (row,) = report.rows
    assert row.runtime == "litert" and row.precision == "int8" and row.batch == 3 and row.p50_ms > 0
