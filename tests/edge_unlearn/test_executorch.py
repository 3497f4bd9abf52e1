"""ExecuTorch: `edge-unlearn convert --to executorch` (FP32, INT8 PT2E XNNPACK) writes a .pte that ExecuTorch's
runtime validates; the gate proves its mask from the program's kernel calls, constants and the XNNPACK delegate's
graph; the two gate attacks fail on a .pte; a truncated or foreign-version file is one line, exit 2. ExecuTorch's
Python runtime needs torch: these run on the host (skipped where executorch is not installed, as in CI)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import invoke_cli, one_line_error

pytest.importorskip("executorch", reason="ExecuTorch is not installed (pip install 'edge-unlearn[executorch]')")
pytest.importorskip("torchao", reason="torchao (ExecuTorch's PT2E quantization) is not installed")


@pytest.fixture(scope="module")
def ptes(artifacts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("executorch")
    paths = {}
    for precision in ("fp32", "int8"):
        path = folder / f"model.{precision}.pte"
        args = ["convert", artifacts.checkpoint, "--to", "executorch", "--precision", precision, "-o", path, "--json"]
        result = invoke_cli(args + (["--calib", "digits", "--calib-samples", "100"] if precision == "int8" else []))
        assert result.exit_code == 0, result.output
        paths[precision] = path
    return paths


def _program(path):
    from edge_unlearn.pte.runner import load_pte

    return load_pte(path)


def _pte_file(path):
    """The whole .pte (program + named data: the delegate's weights) as executorch's serializer reads it."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    return deserialize_pte_binary(path.read_bytes())


def _write(pte, dst) -> None:
    """Serialize an edited .pte back (what an attacker with executorch's serializer does)."""
    from executorch.exir._serialize._program import serialize_pte_binary

    dst.write_bytes(bytes(serialize_pte_binary(pte)))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_pte_validates(ptes, artifacts, precision):
    result = invoke_cli(["validate", ptes[precision], "--bundle", artifacts.bundle, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["environment"]["runtime"] == "executorch" and report["environment"]["precision"] == precision
    passed = {c["name"]: c["passed"] for c in report["checks"]}
    for check in ("mask_structure", "head_rows", "index_map", "fill_value", "retained_floor", "retain_agreement"):
        assert passed[check], check


def test_int8_pte_is_quantized_with_the_mask_outside_the_delegate(ptes):
    from edge_unlearn.pte.structure import _fully_connected, _Program

    program = _Program(_program(ptes["int8"]))
    kernels = {name.split(".")[0] for name, _, _ in program.producer.values()}
    assert {"aten::index_select", "aten::constant_pad_nd", "aten::where", "aten::gt"} <= kernels
    (graph,) = program.graphs.values()
    datatypes = {
        (v["xvalue_union"].get("tensor_value") or {}).get("datatype")
        for v in graph["xvalues"]
        if v["xvalue_union_type"] == "XNNQuantizedTensorValue"
    }
    assert "xnn_datatype_qcint8" in datatypes  # per-channel int8 weights in the delegate
    assert [dims[0] for _, dims in _fully_connected(graph)][-1] == 9


@pytest.mark.parametrize("fill", [0.0, -5.0])
def test_edited_fill_fails_on_a_pte(ptes, artifacts, tmp_path, fill):
    pte = _pte_file(ptes["fp32"])
    (method,) = [p for p in pte.program.execution_plan if p.name == "forward"]
    doubles = [v.val for v in method.values if type(v.val).__name__ == "Double" and v.val.double_val == -1e4]
    assert len(doubles) == 1
    doubles[0].double_val = fill
    _write(pte, tmp_path / "fill.pte")
    result = invoke_cli(["validate", tmp_path / "fill.pte", "--bundle", artifacts.bundle])
    assert result.exit_code == 1, result.output
    assert "[PASS] forget_acc" in result.output
    assert "[FAIL] fill_value" in result.output and "[FAIL] fill_margin" in result.output


def test_relabelled_original_fails_on_a_pte(trained, ptes, artifacts, tmp_path):
    """The original (unmasked) network, its class-3 index entry pointed at the fill column, lowered directly
    (our converter's own gate would refuse it) and given the forgotten model's metadata."""
    import copy

    import torch

    from edge_unlearn.export.executorch import lower_to_pte
    from edge_unlearn.export.litert import mask_module
    from edge_unlearn.pte.runner import ExecuTorchRunner

    model, meta = trained
    original = copy.deepcopy(model)
    with torch.no_grad():
        original.class_mask.fill_(True)
    module = mask_module(original)
    module.index[3] = 10  # the fill column of the padded full head
    data = lower_to_pte(module, (torch.zeros(1, *meta.input_shape),), ExecuTorchRunner(ptes["fp32"]).meta)
    relabelled = tmp_path / "relabelled.pte"
    relabelled.write_bytes(data)
    result = invoke_cli(["validate", relabelled, "--bundle", artifacts.bundle])
    assert result.exit_code == 1, result.output
    assert "[PASS] forget_acc" in result.output and "[PASS] same_source_checkpoint" in result.output
    assert "[FAIL] head_rows: 10 == 9" in result.output and "[FAIL] index_map" in result.output


def test_truncated_pte_is_one_line(ptes, artifacts, tmp_path):
    cut = tmp_path / "cut.pte"
    cut.write_bytes(ptes["fp32"].read_bytes()[:4096])
    one_line_error(invoke_cli(["validate", cut, "--bundle", artifacts.bundle]), "cut.pte", "truncated")


def test_pte_of_another_format_version_is_one_line(ptes, artifacts, tmp_path):
    data = bytearray(ptes["fp32"].read_bytes())
    data[4:8] = b"ET11"
    other = tmp_path / "other.pte"
    other.write_bytes(bytes(data))
    one_line_error(invoke_cli(["validate", other, "--bundle", artifacts.bundle]), "other.pte", "another ExecuTorch")


def test_mask_inside_the_delegate_is_refused(trained, ptes, artifacts, tmp_path):
    """A program lowered with the plain XnnpackPartitioner (the pad inside the delegate): the gate cannot read the
    fill, so validate refuses it (exit 2), never passes it."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from edge_unlearn.export.litert import mask_module
    from edge_unlearn.pte.runner import META_METHOD

    model, meta = trained
    meta_tensor = _program(ptes["fp32"])
    (method,) = [p for p in meta_tensor.execution_plan if p.name == META_METHOD]
    from edge_unlearn.pte.runner import constant_tensor

    props = torch.from_numpy(constant_tensor(meta_tensor, method.values[method.outputs[0]]).copy())
    program = torch.export.export(mask_module(model), (torch.zeros(1, *meta.input_shape),))
    edge = to_edge_transform_and_lower(
        program, partitioner=[XnnpackPartitioner()], constant_methods={META_METHOD: props}
    )
    path = tmp_path / "inside.pte"
    path.write_bytes(bytes(edge.to_executorch().buffer))
    one_line_error(invoke_cli(["validate", path, "--bundle", artifacts.bundle]), "inside.pte", "cannot prove the mask")


def test_bench_runs_a_pte(ptes):
    from edge_unlearn.deploy.bench.measure import BenchConfig, bench_artefacts

    report = bench_artefacts([ptes["int8"]], BenchConfig(batches=(3,), iterations=3, warmup=1, threads=1))
    (row,) = report.rows
    assert row.runtime == "executorch" and row.precision == "int8" and row.batch == 3 and row.p50_ms > 0
