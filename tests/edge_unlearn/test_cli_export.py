"""The export/quantize/bundle/validate commands through click, in a local group (the lead wires the real one)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edge_unlearn.demo import deployment_demo


@pytest.fixture(scope="module")
def cli():
    from edge_unlearn.cli import main as group

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(group, [str(a) for a in args], catch_exceptions=False)

    return invoke


def _one_error_line(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]


def test_cli_round_trip(cli, artifacts, tmp_path):
    onnx_path, int8, bundle = tmp_path / "m.onnx", tmp_path / "m.int8.onnx", tmp_path / "eval.npz"
    result = cli("export", artifacts.checkpoint, "-o", onnx_path, "--json-out", tmp_path / "export.json")
    assert result.exit_code == 0, result.output
    assert "parity torch vs onnxruntime" in result.output and "argmax agreement 1.0000" in result.output
    assert json.loads((tmp_path / "export.json").read_text())["parity"]["ok"] is True
    result = cli("quantize", onnx_path, "--precision", "int8", "--calib", "digits", "-o", int8, "-q")
    assert result.exit_code == 0 and result.output == "", result.output
    result = cli("bundle", artifacts.checkpoint, "--dataset", "digits", "--per-class", "20", "-o", bundle)
    assert result.exit_code == 0, result.output
    report = tmp_path / "report.json"
    result = cli("validate", int8, "--bundle", bundle, "--json-out", report)
    assert result.exit_code == 0, result.output
    assert "verdict: PASS" in result.output and "FORGOTTEN" in result.output
    data = json.loads(report.read_text())
    assert data["verdict"] == "pass" and data["precision"] == "int8" and data["thresholds"]["max_forget_acc"] == 0.01
    # an impossible threshold turns the same model into exit 1
    result = cli("validate", int8, "--bundle", bundle, "--min-agreement", "1.0", "--max-retain-drop", "0", "-q")
    agreement = data["checks"][4]["value"]
    assert result.exit_code == (0 if agreement == 1.0 and data["checks"][3]["value"] <= 0 else 1)


def test_cli_missing_and_foreign_files(cli, artifacts, tmp_path):
    out = tmp_path / "out.onnx"
    _one_error_line(cli("export", tmp_path / "nope.safetensors", "-o", out), "not found")
    _one_error_line(cli("quantize", tmp_path / "nope.onnx", "--calib", "digits", "-o", out), "not found")
    _one_error_line(cli("validate", tmp_path / "nope.onnx", "--bundle", artifacts.bundle), "not found")
    _one_error_line(cli("validate", artifacts.int8, "--bundle", tmp_path / "nope.npz"), "not found")
    (tmp_path / "foreign.onnx").write_bytes(b"garbage")
    _one_error_line(cli("validate", tmp_path / "foreign.onnx", "--bundle", artifacts.bundle), "not a readable ONNX")
    (tmp_path / "engine.plan").write_bytes(b"x")
    _one_error_line(cli("validate", tmp_path / "engine.plan", "--bundle", artifacts.bundle), "edge-unlearn[tensorrt]")
    assert not out.exists()


def test_cli_bad_options(cli, artifacts, tmp_path):
    out = tmp_path / "q.onnx"
    _one_error_line(cli("quantize", artifacts.fp32, "--precision", "int4", "-o", out), "'int4' is not one of", "--help")
    _one_error_line(cli("quantize", artifacts.fp32, "--precision", "int8", "-o", out), "--calib")
    _one_error_line(
        cli("quantize", artifacts.fp32, "--calib", "digits", "--calib-method", "magic", "-o", out),
        "'magic' is not one of",
    )
    _one_error_line(
        cli("validate", artifacts.int8, "--bundle", artifacts.bundle, "--max-forget-acc", "2"), "--max-forget-acc"
    )
    _one_error_line(
        cli("quantize", artifacts.fp32, "--calib", "digits", "-o", tmp_path / "no" / "dir.onnx"), "does not exist"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_bundle_needs_forgotten_classes(cli, trained, tmp_path):
    import copy

    from edge_unlearn.checkpoint import save_checkpoint

    model, meta = trained
    original = copy.deepcopy(model)
    original.class_mask.fill_(True)
    save_checkpoint(tmp_path / "orig.safetensors", original, meta)
    _one_error_line(
        cli("bundle", tmp_path / "orig.safetensors", "--dataset", "digits", "-o", tmp_path / "b.npz"),
        "no forgotten classes",
    )
    assert not (tmp_path / "b.npz").exists()


def test_deployment_demo(artifacts, tmp_path):
    lines: list[str] = []
    result = deployment_demo(artifacts.checkpoint, "digits", tmp_path / "demo", echo=lines.append)
    assert result["passed"], lines
    assert result["int8"]["verdict"] == "pass" and result["int8"]["forget_acc"] == 0.0
    assert any(line.startswith("validate int8: PASS") for line in lines)
    from edge_unlearn.export.quant_layout import read_layout  # the demo runs on this CPU: the CPU layout, like the CLI

    assert read_layout(result["artifacts"]["int8"])["target"] == "cpu"
