"""OpenVINO: our ONNX files (FP32, FP16, INT8 in both layouts) compile and agree with onnxruntime; the IR from
`edge-unlearn convert` (FP32, FP16, NNCF INT8, accuracy-controlled INT8) validates; the gate's two attacks fail on an
IR; bad input is one line, exit 2. Real OpenVINO on this CPU, on the session's lenet/digits artefacts
(tests/conftest.py)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import multiprocessing
import subprocess
import sys

import numpy as np
import onnx
import pytest

from edge_unlearn.deploy.onnx_meta import read_meta
from edge_unlearn.deploy.runners_openvino import compile_for_cpu
from tests.conftest import invoke_cli, one_line_error
from tests.deploy.test_gate_attacks import fill_attack, original_onnx, relabel_attack  # noqa: F401 (fixture)

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'edge-unlearn[openvino]')")


def _ort_logits(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def _ov_logits(path, x: np.ndarray) -> np.ndarray:
    compiled = compile_for_cpu(str(path))
    return np.asarray(compiled(x)[compiled.output("logits")])


@pytest.fixture(scope="module")
def trt_int8(artifacts, tmp_path_factory):
    """The INT8 ONNX in the TensorRT layout (signed symmetric Q/DQ), the other layout `quantize` writes."""
    from edge_unlearn.export.quantize import QuantizeConfig, quantize_model

    path = tmp_path_factory.mktemp("ov_trt") / "model.trt.int8.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_model(artifacts.fp32, path, QuantizeConfig(precision="int8", target="tensorrt"), calib="digits")
    return path


@pytest.fixture(scope="module")
def irs(artifacts, tmp_path_factory):
    """FP32, FP16 and NNCF INT8 IRs of the session's FP32 export, through the CLI."""
    folder = tmp_path_factory.mktemp("ov_ir")
    paths = {}
    for precision in ("fp32", "fp16", "int8"):
        path = folder / f"model.{precision}.xml"
        args = ["convert", artifacts.fp32, "--to", "openvino", "--precision", precision, "-o", path, "--json"]
        result = invoke_cli(args + (["--calib", "digits", "--calib-samples", "200"] if precision == "int8" else []))
        assert result.exit_code == 0, result.output
        paths[precision] = path
    return paths


@pytest.mark.parametrize("which", ["fp32", "fp16", "int8", "trt_int8"])
def test_our_onnx_compiles_on_openvino_and_agrees_with_onnxruntime(artifacts, trt_int8, which):
    path = trt_int8 if which == "trt_int8" else getattr(artifacts, which)
    bundle = np.load(artifacts.bundle)
    x, labels = bundle["inputs"], bundle["labels"]
    ours, theirs = _ov_logits(path, x), _ort_logits(path, x)
    forgotten = list(read_meta(path).forgotten_classes)
    assert np.all(ours[:, forgotten] == np.float32(-1e4))  # the fill stays exact: never moved into an integer type
    agreement = float(np.mean(ours.argmax(1) == theirs.argmax(1)))
    assert agreement >= 0.99, agreement
    keep = ~np.isin(labels, forgotten)
    assert abs(np.mean(ours[keep].argmax(1) == labels[keep]) - np.mean(theirs[keep].argmax(1) == labels[keep])) <= 0.01
    if which == "fp32":
        assert np.max(np.abs(ours - theirs)) < 1e-3


def test_int8_onnx_has_no_dequantize_before_the_mask(artifacts, trt_int8):
    """What OpenVINO's PadTransformation tripped on: a Q/DQ pair on the head's output, fed into the mask."""
    for path in (artifacts.int8, trt_int8):
        graph = onnx.load(str(path)).graph
        assert not [n.name for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "retained_logits"]
        assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # still INT8


def test_keep_head_output_float_removes_exactly_the_pair(artifacts):
    """On the onnxruntime quantizer's raw output (before the fix) the pair exists and is the only thing removed."""
    from edge_unlearn.deploy.onnx_meta import mask_node_names
    from edge_unlearn.export.quantize import (
        QuantizeConfig,
        calibration_inputs,
        keep_head_output_float,
        quantize_int8_proto,
    )

    meta = read_meta(artifacts.fp32)
    inputs, _ = calibration_inputs("digits", meta, 64)
    raw = artifacts.folder / "raw.int8.onnx"
    proto = onnx.load(str(artifacts.fp32))
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_int8_proto(artifacts.fp32, raw, inputs, "input", QuantizeConfig(), mask_node_names(proto))
    model = onnx.load(str(raw))
    before = len(model.graph.node)
    removed = keep_head_output_float(model, "retained_logits")
    assert len(removed) == 2 and len(model.graph.node) == before - 2
    onnx.checker.check_model(model, full_check=True)
    x = np.load(artifacts.bundle)["inputs"][:64]
    fixed = artifacts.folder / "fixed.int8.onnx"
    onnx.save(model, str(fixed))
    assert np.mean(_ort_logits(raw, x).argmax(1) == _ort_logits(fixed, x).argmax(1)) >= 0.99
    _ov_logits(fixed, x)  # compiles


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_ir_validates(irs, artifacts, precision):
    result = invoke_cli(["validate", irs[precision], "--bundle", artifacts.bundle, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["environment"]["runtime"] == "openvino" and report["environment"]["precision"] == precision
    # OpenVINO's CPU default is bf16 on CPUs with AMX / AVX-512 BF16: the gate measures the file in f32 everywhere
    assert report["environment"]["inference_precision"] == "f32"
    names = {c["name"]: c["passed"] for c in report["checks"]}
    for check in ("mask_structure", "head_rows", "index_map", "fill_value", "retained_floor", "forget_acc"):
        assert names[check], check


def test_int8_ir_is_quantized_with_the_mask_in_float(irs, artifacts):
    from edge_unlearn.deploy.runners_openvino import read_ir, read_ir_meta
    from edge_unlearn.deploy.structure_openvino import analyse_ir

    model = read_ir(irs["int8"])
    meta = read_ir_meta(model, "int8 IR")
    assert meta.quantization["tool"] == "nncf" and 3 not in meta.quantization["calib_classes"]
    kinds = {op.get_type_name() for op in model.get_ops()}
    assert "FakeQuantize" in kinds  # NNCF quantized the backbone
    mask = analyse_ir(model, meta).mask_ops
    for op in model.get_ops():
        if op.get_type_name() == "FakeQuantize":
            consumers = {t.get_node().get_friendly_name() for t in op.output(0).get_target_inputs()}
            assert not consumers & set(mask), consumers


def test_onnx_on_the_openvino_provider_validates(artifacts):
    result = invoke_cli(["validate", artifacts.int8, "--bundle", artifacts.bundle, "--provider", "openvino", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["environment"]["runtime"] == "openvino"


def _to_ir(onnx_path, xml):
    """What an attacker with OpenVINO's own tools does: convert a tampered ONNX file (its metadata comes along)."""
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml))
    return xml


@pytest.mark.parametrize("edit_meta", [False, True])
def test_edited_fill_fails_on_an_ir(artifacts, tmp_path, edit_meta):
    tampered = _to_ir(fill_attack(artifacts.fp32, tmp_path / "fill.onnx", -5.0, edit_meta), tmp_path / "fill.xml")
    result = invoke_cli(["validate", tampered, "--bundle", artifacts.bundle])
    assert result.exit_code == 1, result.output
    assert "[PASS] forget_acc" in result.output and "[FAIL] fill_margin" in result.output
    assert ("[FAIL] fill_value" in result.output) == (not edit_meta)
    assert "[FAIL] retained_floor" in result.output  # the floor -5000 is no longer above the fill


def test_relabelled_original_fails_on_an_ir(artifacts, original_onnx, tmp_path):  # noqa: F811
    tampered = _to_ir(relabel_attack(original_onnx, artifacts.fp32, tmp_path / "r.onnx"), tmp_path / "r.xml")
    result = invoke_cli(["validate", tampered, "--bundle", artifacts.bundle])
    assert result.exit_code == 1, result.output
    assert "[PASS] forget_acc" in result.output and "[PASS] same_source_checkpoint" in result.output
    assert "[FAIL] head_rows: 10 == 9" in result.output and "[FAIL] index_map" in result.output


def test_an_ir_without_the_floor_is_refused(artifacts, tmp_path):
    """An IR whose mask the gate cannot prove is one line, exit 2 -- never a pass."""
    model = onnx.load(str(artifacts.fp32))
    where = next(n for n in model.graph.node if n.op_type == "Where")
    for node in model.graph.node:
        node.input[:] = ["retained_logits" if i == where.output[0] else i for i in node.input]
    model.graph.node.remove(where)
    model.graph.node.remove(next(n for n in model.graph.node if n.op_type == "Greater"))
    onnx.save(model, str(tmp_path / "nofloor.onnx"))
    result = invoke_cli(
        ["validate", _to_ir(tmp_path / "nofloor.onnx", tmp_path / "nofloor.xml"), "--bundle", artifacts.bundle]
    )
    one_line_error(result, "cannot prove the mask", "floor")


def test_xml_without_its_bin_is_one_line(irs, artifacts, tmp_path):
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(irs["fp32"].read_bytes())
    one_line_error(invoke_cli(["validate", lonely, "--bundle", artifacts.bundle]), "lonely.bin", "no weights file")


def test_convert_refuses_bad_input(artifacts, tmp_path):
    one_line_error(invoke_cli(["convert", artifacts.fp32, "--precision", "int8", "-o", tmp_path / "m.xml"]), "--calib")
    one_line_error(invoke_cli(["convert", artifacts.int8, "-o", tmp_path / "m.xml"]), "already int8")
    one_line_error(invoke_cli(["convert", artifacts.fp32, "-o", tmp_path / "m.onnx"]), ".xml")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_bench_runs_an_ir(irs):
    from edge_unlearn.deploy.bench.measure import BenchConfig, bench_artefacts

    report = bench_artefacts([irs["int8"]], BenchConfig(batches=(4,), iterations=5, warmup=1, threads=1))
    (row,) = report.rows
    assert row.runtime == "openvino" and row.precision == "int8" and row.batch == 4 and row.p50_ms > 0


def test_doctor_names_the_installed_runtimes():
    from importlib import metadata, util

    result = invoke_cli(["doctor", "--json"])
    assert result.exit_code in (0, 1), result.output
    runtimes = json.loads(result.output)["runtimes"]
    assert runtimes["openvino"] == {"available": True, "version": metadata.version("openvino")}
    for key, module in (("litert", "ai_edge_litert"), ("executorch", "executorch")):
        assert runtimes[key]["available"] == (util.find_spec(module) is not None)
    text = invoke_cli(["doctor"]).output
    assert f"openvino {metadata.version('openvino')}: validate/bench .xml" in text


# ----------------------------------------------------------------------------- accuracy-controlled INT8 (NNCF)


def _top1(path_or_model, x: np.ndarray) -> np.ndarray:
    compiled = compile_for_cpu(path_or_model)
    return np.asarray(compiled(x)[compiled.output("logits")]).argmax(1)


def _in_own_process(fn, *args):
    """Run ``fn(*args)`` in a fresh (spawned) process. NNCF's accuracy control ranks layers on a thread pool of
    OpenVINO inferences; run inside the test process, later torch-heavy tests crashed (SIGSEGV), so every call
    of it here runs apart, as the CLI does (one process per command)."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _cli_apart(args: list) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_unlearn.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def _convert_noise_cases(fp32, calib, noise, folder) -> str:
    """Plain INT8, INT8 controlled to 0.25 disagreement on ``noise``, and the refused 0.0 bound; returns the
    refusal's message (empty if nothing was refused)."""
    from edge_unlearn.errors import ModelFileError
    from edge_unlearn.export.openvino import convert_openvino

    with contextlib.redirect_stdout(io.StringIO()):
        convert_openvino(fp32, folder / "plain.xml", "int8", calib_inputs=calib)
        convert_openvino(
            fp32, folder / "controlled.xml", "int8", calib_inputs=calib, validation_inputs=noise, max_disagreement=0.25
        )
        try:
            convert_openvino(
                fp32,
                folder / "all_float.xml",
                "int8",
                calib_inputs=calib,
                validation_inputs=noise,
                max_disagreement=0.0,
            )
        except ModelFileError as exc:
            return str(exc)
    return ""


def _control(xml) -> dict:
    from edge_unlearn.deploy.runners_openvino import read_ir, read_ir_meta

    return read_ir_meta(read_ir(xml), str(xml)).quantization["accuracy_control"]


def test_validation_draw_is_disjoint_from_the_calibration_draw(artifacts):
    from edge_unlearn.export.quantize import calibration_inputs, retained_draws

    meta = read_meta(artifacts.fp32)
    calib, classes = calibration_inputs("digits", meta, 200)
    (first, second), same = retained_draws("digits", meta, (200, 300))
    assert np.array_equal(first, calib) and same == classes  # the calibration draw is unchanged
    assert len(second) == 300
    rows = {row.tobytes() for row in calib.reshape(len(calib), -1)}
    assert not any(row.tobytes() in rows for row in second.reshape(len(second), -1))


def test_accuracy_controlled_ir_validates_and_records_its_agreement(artifacts, tmp_path):
    """`convert --max-disagreement` on retained digits: the IR passes the gate and records an agreement that a
    recomputation on the same (disjoint) validation draw reproduces."""
    pytest.importorskip("nncf", reason="NNCF is not installed (pip install 'edge-unlearn[openvino]')")
    from edge_unlearn.export.quantize import retained_draws

    xml = tmp_path / "model.ac.int8.xml"
    args = ["convert", artifacts.fp32, "--to", "openvino", "--precision", "int8", "--calib", "digits"]
    args += ["--calib-samples", "200", "--max-disagreement", "0.01", "--validation-samples", "150", "-o", xml, "-q"]
    result = _cli_apart(args)
    assert result.returncode == 0, result.stderr
    control = _control(xml)
    assert control["max_drop"] == 0.01 and control["validation_count"] == 150 and control["validation"] == "digits"
    assert control["agreement"] >= 0.99
    (_, images), _ = retained_draws("digits", read_meta(artifacts.fp32), (200, 150))
    fp32 = _top1(ov.convert_model(str(artifacts.fp32)), images)
    assert float(np.mean(_top1(str(xml), images) == fp32)) == control["agreement"]
    report = invoke_cli(["validate", xml, "--bundle", artifacts.bundle, "--json"])
    assert report.exit_code == 0, report.output
    assert json.loads(report.output)["verdict"] == "pass"


def test_accuracy_control_puts_layers_back_in_float_until_the_bound_holds(artifacts, tmp_path):
    """On inputs where plain INT8 disagrees with FP32 far more than allowed (noise), NNCF must revert layers to
    float until at most max_disagreement of them disagree; the IR still passes the gate's structural self-check.
    A bound met only with every layer back in float is refused."""
    pytest.importorskip("nncf", reason="NNCF is not installed (pip install 'edge-unlearn[openvino]')")
    from edge_unlearn.export.openvino import float_compute_ops
    from edge_unlearn.export.quantize import calibration_inputs

    meta = read_meta(artifacts.fp32)
    calib, _ = calibration_inputs("digits", meta, 200)
    noise = np.random.default_rng(1).standard_normal((200, *meta.input_shape)).astype(np.float32) * 3.0
    fp32 = _top1(ov.convert_model(str(artifacts.fp32)), noise)
    refusal = _in_own_process(_convert_noise_cases, artifacts.fp32, calib, noise, tmp_path)
    plain, controlled, refused = (tmp_path / f"{n}.xml" for n in ("plain", "controlled", "all_float"))
    assert float(np.mean(_top1(str(plain), noise) == fp32)) < 0.75  # else this test proves nothing
    assert float_compute_ops(ov.Core().read_model(str(plain))) == []
    control = _control(controlled)
    reached = float(np.mean(_top1(str(controlled), noise) == fp32))
    assert control["agreement"] == reached >= 0.75 and control["validation"] == "(inputs)"
    assert control["float_ops"] and control["float_ops"] == float_compute_ops(ov.Core().read_model(str(controlled)))
    assert len(control["float_ops"]) < control["compute_ops"]  # still an INT8 model
    # a bound only the float model meets: every quantizer reverted is no INT8 model, and nothing is written
    assert "no INT8 op is left" in refusal
    assert not refused.exists() and not refused.with_suffix(".bin").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--precision", "fp32", "--max-disagreement", "0.01"], "--precision int8"),
        (["--to", "litert", "--precision", "int8", "--calib", "digits", "--max-disagreement", "0.01"], "--to openvino"),
        (["--precision", "int8", "--calib", "digits", "--validation-samples", "50"], "--max-disagreement"),
        (["--precision", "int8", "--calib", "digits", "--max-disagreement", "1.5"], "--max-disagreement"),
    ],
)
def test_max_disagreement_outside_openvino_int8_is_one_line(artifacts, tmp_path, extra, needle):
    one_line_error(invoke_cli(["convert", artifacts.fp32, *extra, "-o", tmp_path / "m.xml"]), needle)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_openvinos_bf16_default_keeps_the_fill_exact_and_the_forgotten_classes_out(irs, artifacts, precision):
    """What runs where an application leaves OpenVINO's default, on a CPU where that default is bf16: the logits
    move (the gate measures f32), but the forgotten classes' fill stays exact and none of them is ever predicted."""
    core = ov.Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16: OpenVINO's default is f32 here, the case does not arise")
    compiled = core.compile_model(str(irs[precision]), "CPU")  # the application's default: no hint
    assert compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "bf16"
    x = np.load(artifacts.bundle)["inputs"]
    default = np.asarray(compiled(x)[compiled.output("logits")])
    forgotten = list(read_meta(artifacts.fp32).forgotten_classes)
    assert np.all(default[:, forgotten] == np.float32(-1e4))
    assert not np.isin(default.argmax(1), forgotten).any()
    assert float(np.mean(default.argmax(1) == _ov_logits(irs[precision], x).argmax(1))) >= 0.99
