"""The click commands: build-engine refuses without TensorRT (exit 2, one line, no file), --check-only, doctor."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edge_unlearn.cli.tensorrt import build_engine_cmd, doctor_cmd

from .conftest import has_tensorrt, naive_masked_head, not_shadowed, ours_fp32, ours_int8, save

needs_no_trt = pytest.mark.skipif(has_tensorrt(), reason="TensorRT is installed here; this checks its absence")


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()


@needs_no_trt
def test_build_engine_without_tensorrt_exits_2_with_one_line(tmp_path):
    not_shadowed()
    onnx_path = save(ours_fp32(), tmp_path / "model.onnx")
    out = tmp_path / "model.plan"
    result = _runner().invoke(build_engine_cmd, [str(onnx_path), "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: TensorRT is not available")
    assert "pip install edge-unlearn[tensorrt]" in lines[0]
    assert result.stdout == ""
    assert not out.exists() and not (tmp_path / "model.plan.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_build_engine_refuses_the_naive_masked_head_before_looking_for_tensorrt(tmp_path):
    path = naive_masked_head(tmp_path)
    result = _runner().invoke(build_engine_cmd, [str(path), "-o", str(tmp_path / "naive.plan")])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "qdq-range-dominated" in lines[0] and "fix:" in lines[0]
    assert not (tmp_path / "naive.plan").exists()


def test_check_only(tmp_path):
    bad = _runner().invoke(build_engine_cmd, [str(naive_masked_head(tmp_path)), "--check-only"])
    assert bad.exit_code == 1 and "not safe to deploy" in bad.stdout
    good = _runner().invoke(build_engine_cmd, [str(ours_int8(tmp_path)), "--check-only", "--json"])
    assert good.exit_code == 0, good.output
    data = json.loads(good.stdout)
    assert data["ok"] is True and data["precision"] == "int8"


def test_missing_onnx_is_one_line(tmp_path):
    result = _runner().invoke(build_engine_cmd, [str(tmp_path / "nope.onnx")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "does not exist" in result.stderr


def test_doctor_json_runs_without_traceback():
    result = _runner().invoke(doctor_cmd, ["--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["tensorrt"]["available"] is has_tensorrt()


def test_doctor_text():
    result = _runner().invoke(doctor_cmd, [])
    assert result.exit_code == 0 and "tensorrt" in result.stdout and "Traceback" not in result.output


def _cpu_quantized(tmp_path):
    import onnx

    model = onnx.load(str(ours_int8(tmp_path)))
    entry = model.metadata_props.add()
    entry.key, entry.value = "edge_unlearn_quant_target", "cpu"
    return save(model, tmp_path / "ours.cpu.int8.onnx")


@pytest.mark.parametrize("extra", [[], ["--check-only"]])
def test_cpu_quantized_onnx_is_refused_in_one_line(tmp_path, extra):
    path = _cpu_quantized(tmp_path)
    out = tmp_path / "cpu.plan"
    result = _runner().invoke(build_engine_cmd, [str(path), "-o", str(out), *extra])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "quantized for the CPU" in lines[0]
    assert "`edge-unlearn quantize MODEL.onnx --target tensorrt`" in lines[0]
    assert not out.exists() and result.stdout == ""


def test_static_batch_and_dynamic_range_conflict_is_refused_before_tensorrt(tmp_path):
    onnx_path = save(ours_fp32(), tmp_path / "model.onnx")
    result = _runner().invoke(build_engine_cmd, [str(onnx_path), "--batch-size", "4", "--max-batch", "16"])
    assert result.exit_code == 2 and "--batch-size builds a static shape" in result.stderr


def test_dla_without_static_batch_is_refused_before_tensorrt(tmp_path):
    onnx_path = save(ours_fp32(), tmp_path / "model.onnx")
    result = _runner().invoke(build_engine_cmd, [str(onnx_path), "--dla-core", "0", "--precision", "fp16"])
    assert result.exit_code == 2 and "DLA needs a static input shape: add --batch-size N" in result.stderr


@needs_no_trt
def test_inspect_engine_without_tensorrt_exits_2(tmp_path):
    from edge_unlearn.cli.tensorrt import inspect_engine_cmd

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    result = _runner().invoke(inspect_engine_cmd, [str(plan)])
    assert result.exit_code == 2 and result.stderr.startswith("error: TensorRT is not available")


def test_doctor_renders_jetson_power_mode_and_dla():
    from edge_unlearn.deploy.doctor import render

    report = {
        "jetson": {
            "model": "NVIDIA Jetson Orin Nano Developer Kit",
            "l4t": "36.4.3",
            "jetpack": "6.x",
            "power_mode": {"name": "15W", "id": 0},
            "dla": {"cores": 0, "source": "sysfs"},
        },
        "missing": [],
    }
    text = render(report)
    assert "power mode   15W (nvpmodel mode 0)" in text
    assert "DLA cores    0 (from sysfs); DLA is on AGX Orin and Orin NX only" in text
    agx = {**report, "jetson": {**report["jetson"], "power_mode": None, "dla": {"cores": 2, "source": "tensorrt"}}}
    text = render(agx)
    assert "power mode   unknown (`nvpmodel -q` not available)" in text and "DLA cores    2 (from tensorrt)" in text
