"""The core CLI end to end on digits, and the bad-input contract: one line, exit 2, no output file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edge_unlearn.cli import main

FORGET_KEYS = {
    "forget_classes",
    "samples_used",
    "seconds",
    "forget_acc",
    "forget_acc_unmasked",
    "retain_acc",
    "retain_acc_before",
    "retain_drop",
    "probe_forget_acc",
}


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def assert_usage_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]


def test_forget_json_and_sequential(digits_checkpoint, tmp_path):
    out = tmp_path / "f.safetensors"
    result = run("forget", digits_checkpoint, "--forget", "3", "--samples", "16", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert FORGET_KEYS <= set(data) and data["forget_classes"] == [3] and data["samples_used"] == 16
    assert data["forget_acc"] == 0.0 and data["retain_drop"] < 0.03
    again = tmp_path / "g.safetensors"
    result = run("forget", out, "--forget", "5", "--samples", "8", "-o", again, "--json", "--set", "steps=5")
    data = json.loads(result.output)
    assert data["all_forgotten_classes"] == [3, 5] and data["params"]["steps"] == 5
    ev = json.loads(run("evaluate", again, "--no-probe", "--json").output)
    assert ev["forget_classes"] == [3, 5] and len(ev["lineage"]) == 2
    assert ev["lineage"][1]["parent_sha256"] == data["parent_sha256"]


def test_train_and_retrain(tmp_path):
    ck = tmp_path / "o.safetensors"
    result = run("train", "--epochs", "1", "--min-steps", "30", "-o", ck, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["test_accuracy"] > 0.5
    result = run("retrain", ck, "--forget", "0", "-o", tmp_path / "r.safetensors", "--json")
    data = json.loads(result.output)
    assert data["forget_acc"] == 0.0 and data["forget_classes"] == [0]


def test_forget_from_image_folder(digits_checkpoint, digits, tmp_path):
    from PIL import Image

    folder = tmp_path / "samples" / "3"
    folder.mkdir(parents=True)
    for i, img in enumerate(digits.x_train[digits.y_train == 3][:6]):
        Image.fromarray(img[0].numpy()).save(folder / f"{i}.png")
    out = tmp_path / "f.safetensors"
    result = run(
        "forget",
        digits_checkpoint,
        "--forget",
        "3",
        "--forget-images",
        tmp_path / "samples",
        "-o",
        out,
        "--no-eval",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["samples_used"] == 6


@pytest.mark.parametrize(
    "args, words",
    [
        (["--forget", "10"], ["out of range", "0..9"]),
        (["--forget", "eleven"], ["unknown class 'eleven'"]),
        (["--forget", ",".join(map(str, range(10)))], ["every class"]),
        (["--forget", "3", "--samples", "5000"], ["fewer than --samples 5000"]),
        (["--forget", "3", "--method", "magic"], ["unknown method"]),
        (["--forget", "3", "--set", "steps"], ["KEY=VALUE"]),
    ],
)
def test_forget_bad_input(digits_checkpoint, tmp_path, args, words):
    out = tmp_path / "out.safetensors"
    assert_usage_error(run("forget", digits_checkpoint, *args, "-o", out), *words)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_bad_checkpoints(tmp_path, digits_checkpoint):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 10)
    out = tmp_path / "o.safetensors"
    assert_usage_error(run("forget", bad, "--forget", "3", "-o", out), "not a valid safetensors")
    assert_usage_error(run("forget", tmp_path / "missing.safetensors", "--forget", "3", "-o", out), "not found")
    np.savez(
        tmp_path / "three.npz",
        x_train=np.zeros((6, 8, 8), np.uint8),
        y_train=np.arange(6) % 3,
        x_test=np.zeros((3, 8, 8), np.uint8),
        y_test=np.arange(3),
    )
    assert_usage_error(
        run("forget", digits_checkpoint, "--forget", "1", "--dataset", f"npz:{tmp_path / 'three.npz'}", "-o", out),
        "3 classes",
        "trained on 10",
    )
    assert_usage_error(
        run("forget", digits_checkpoint, "--forget", "1", "-o", tmp_path / "nodir" / "x.safetensors"), "does not exist"
    )
    assert not out.exists()


def test_already_forgotten(digits_checkpoint, tmp_path):
    out = tmp_path / "f.safetensors"
    assert run("forget", digits_checkpoint, "--forget", "2", "--samples", "4", "--no-eval", "-o", out).exit_code == 0
    assert_usage_error(run("forget", out, "--forget", "2", "-o", tmp_path / "g.safetensors"), "already forgotten")


def test_forget_says_what_each_nhle_step_did_and_runs_an_earlier_version(digits_checkpoint, tmp_path):
    """The text output names the feature step's and the head step's edits; ``--set version=5`` runs version 5's
    method (recorded as the version-6 parameters that reproduce it); an unknown version is a usage error."""
    out = tmp_path / "f.safetensors"
    result = run("forget", digits_checkpoint, "--forget", "2", "--samples", "8", "--no-eval", "-o", out)
    assert result.exit_code == 0, result.output
    assert "feature step: class_stats (1 edit(s), forget features sent toward classes {2: " in result.output
    assert "head step: class_stats at scale {2: " in result.output
    old = tmp_path / "v5.safetensors"
    result = run(
        "forget", digits_checkpoint, "--forget", "2", "--samples", "8", "-o", old, "--json", "--set", "version=5"
    )
    params = json.loads(result.output)["params"]
    assert params["version"] == 6 and params["head_entropy_ratio"] is None and params["head_target"] == "mixture"
    assert_usage_error(
        run("forget", digits_checkpoint, "--forget", "2", "-o", tmp_path / "x.safetensors", "--set", "version=9"),
        "unknown",
    )
    assert not (tmp_path / "x.safetensors").exists()


def test_listing_commands():
    assert "lenet" in run("models").output and "nhle" in run("methods").output
    assert "forget" in run("--help").output


def test_every_command_takes_the_same_output_options():
    """--json is a flag (JSON on stdout), --json-out PATH writes it, -q/--quiet: the same on every command."""
    for name, command in main.commands.items():
        params = {p.name: p for p in command.params}
        assert params["as_json"].is_flag and params["as_json"].opts == ["--json"], name
        assert params["json_out"].opts == ["--json-out"] and not params["json_out"].is_flag, name
        assert set(params["quiet"].opts) == {"-q", "--quiet"}, name


def test_progress_bars_stay_off_a_log_file(tmp_path):
    """stderr to a file (not a terminal): no progress bar, so no carriage-return updates in the log."""
    import subprocess
    import sys

    log = tmp_path / "train.log"
    with log.open("w") as handle:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "edge_unlearn.cli",
                "train",
                "--epochs",
                "1",
                "--min-steps",
                "20",
                "-o",
                str(tmp_path / "m.safetensors"),
            ],
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, log.read_text()
    assert "trained lenet on digits" in done.stdout
    assert "\r" not in log.read_text() and "step/s" not in log.read_text()


def test_json_flag_prints_only_json_on_stdout(digits_checkpoint):
    result = CliRunner().invoke(main, ["evaluate", str(digits_checkpoint), "--no-probe", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checkpoint"] == str(digits_checkpoint)
