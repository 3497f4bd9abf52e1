"""``--run-dir`` on every command whose output a run folder records: each command appends one record of its kind
holding its JSON summary and the sha256 of the artefacts it read and wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_unlearn.cli import main
from edge_unlearn.deploy.rundir import KINDS, read_records
from edge_unlearn.fileio import sha256_file

from ..conftest import invoke_cli

#: record kinds a command writes with --run-dir (the demo writes its own folder, --out-dir)
COMMAND_KINDS = tuple(kind for kind in KINDS if kind != "demo")


@pytest.mark.parametrize("kind", COMMAND_KINDS)
def test_every_recorded_kind_has_a_command_with_run_dir(kind):
    command = main.commands[kind]
    assert "run_dir" in {p.name for p in command.params}, f"`{kind}` has no --run-dir"


def _one_record(run: Path, kind: str, artefacts: list[Path]) -> dict:
    records = read_records(run)
    assert [r["kind"] for r in records] == [kind]
    record = records[0]
    hashed = {Path(a["path"]).name: a["sha256"] for a in record["artefacts"]}
    for path in artefacts:
        assert hashed[path.name] == sha256_file(path), path
    return record


@pytest.fixture(scope="module")
def forgotten(digits_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("forgotten") / "f.safetensors"
    result = invoke_cli(["forget", digits_checkpoint, "--forget", "3", "--samples", "8", "--no-eval", "-o", out])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def exported(forgotten, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("exported")
    onnx_path, bundle = folder / "m.onnx", folder / "b.npz"
    assert invoke_cli(["export", forgotten, "-o", onnx_path, "-q"]).exit_code == 0
    assert invoke_cli(["bundle", forgotten, "--per-class", "3", "-o", bundle, "-q"]).exit_code == 0
    return onnx_path, bundle


def test_train_records(tmp_path):
    out, run = tmp_path / "o.safetensors", tmp_path / "run"
    result = invoke_cli(["train", "--epochs", "1", "--min-steps", "5", "-o", out, "--run-dir", run, "-q"])
    assert result.exit_code == 0, result.output
    record = _one_record(run, "train", [out])
    assert record["payload"]["checkpoint"] == str(out) and record["payload"]["sha256"] == sha256_file(out)


def test_retrain_records(digits_checkpoint, tmp_path):
    out, run = tmp_path / "r.safetensors", tmp_path / "run"
    args = ["retrain", digits_checkpoint, "--forget", "3", "-o", out, "--run-dir", run, "-q"]
    assert invoke_cli(args).exit_code == 0
    record = _one_record(run, "retrain", [Path(digits_checkpoint), out])
    assert record["payload"]["forget_classes"] == [3]


def test_forget_records(digits_checkpoint, tmp_path):
    out, run = tmp_path / "f.safetensors", tmp_path / "run"
    args = ["forget", digits_checkpoint, "--forget", "2", "--samples", "4", "--no-eval", "-o", out, "--run-dir", run]
    assert invoke_cli(args).exit_code == 0
    assert _one_record(run, "forget", [Path(digits_checkpoint), out])["payload"]["forget_classes"] == [2]


def test_evaluate_records(forgotten, digits_checkpoint, tmp_path):
    run = tmp_path / "run"
    args = ["evaluate", forgotten, "--no-probe", "--reference", digits_checkpoint, "--run-dir", run, "-q"]
    assert invoke_cli(args).exit_code == 0
    record = _one_record(run, "evaluate", [forgotten, Path(digits_checkpoint)])
    assert record["payload"]["forget_classes"] == [3] and "retain_drop" in record["payload"]


def test_bundle_records(forgotten, tmp_path):
    out, run = tmp_path / "b.npz", tmp_path / "run"
    assert invoke_cli(["bundle", forgotten, "--per-class", "2", "-o", out, "--run-dir", run, "-q"]).exit_code == 0
    record = _one_record(run, "bundle", [forgotten, out])
    assert record["payload"]["forgotten_classes"] == [3]


def test_export_records(forgotten, tmp_path):
    out, run = tmp_path / "m.onnx", tmp_path / "run"
    assert invoke_cli(["export", forgotten, "-o", out, "--run-dir", run, "-q"]).exit_code == 0
    _one_record(run, "export", [forgotten, out])


def test_quantize_records(exported, tmp_path):
    out, run = tmp_path / "m.fp16.onnx", tmp_path / "run"
    args = ["quantize", exported[0], "--precision", "fp16", "-o", out, "--run-dir", run, "-q"]
    assert invoke_cli(args).exit_code == 0
    _one_record(run, "quantize", [exported[0], out])


def test_validate_records(exported, tmp_path):
    run = tmp_path / "run"
    result = invoke_cli(["validate", exported[0], "--bundle", exported[1], "--run-dir", run, "--json"])
    assert result.exit_code in (0, 1), result.output  # the verdict is the gate's; the record is written either way
    record = _one_record(run, "validate", list(exported))
    assert (
        record["payload"]["verdict"]
        == json.loads(result.stdout)["verdict"]
        == ("pass" if result.exit_code == 0 else "fail")
    )


def test_bench_records(exported, tmp_path):
    run = tmp_path / "run"
    args = ["bench", exported[0], "--batches", "1", "--warmup", "0", "--iterations", "1", "--run-dir", run, "-q"]
    assert invoke_cli(args).exit_code == 0
    record = _one_record(run, "bench", [exported[0]])
    assert record["payload"]["config"]["batches"] == [1]


def test_an_unwritable_run_dir_is_refused_before_any_work(digits_checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = tmp_path / "e.json"
    result = invoke_cli(["evaluate", digits_checkpoint, "--no-probe", "--json-out", out, "--run-dir", blocker])
    assert result.exit_code == 2 and "--run-dir" in result.stderr and not out.exists()
