"""Every renamed option keeps its old spelling for one release: the old spelling parses exactly like the new one
and prints one warning line on stderr (a test per alias), end to end where the command is cheap to run."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edge_unlearn.cli import main
from edge_unlearn.cli.common import Command

#: (command, other arguments, old spelling, new spelling, value)
ALIASES = [
    ("bench", ["model.onnx"], "--batch", "--batches", "1,8"),
    ("build-engine", ["model.onnx"], "--batch", "--batch-size", "4"),
    ("bundle", ["model.safetensors", "-o", "b.npz", "--audit"], "--audit-k", "--audit-samples", "3"),
    (
        "forget",
        ["model.safetensors", "--forget", "3", "-o", "f.safetensors"],
        "--forget-samples",
        "--forget-images",
        "imgs",
    ),
]


def _parse(name: str, args: list[str]) -> dict:
    command = main.commands[name]
    with command.make_context(name, list(args)) as ctx:
        return dict(ctx.params)


@pytest.mark.parametrize("name, args, old, new, value", ALIASES, ids=[f"{a[0]} {a[2]}" for a in ALIASES])
@pytest.mark.parametrize("form", ["separate", "equals"])
def test_old_spelling_parses_like_the_new_one_and_warns(
    tmp_path, monkeypatch, capsys, name, args, old, new, value, form
):
    monkeypatch.chdir(tmp_path)

    def spelled(option: str) -> list[str]:
        return [option, value] if form == "separate" else [f"{option}={value}"]

    expected = _parse(name, [*args, *spelled(new)])
    assert capsys.readouterr().err == ""
    assert _parse(name, [*args, *spelled(old)]) == expected
    assert capsys.readouterr().err.splitlines() == [f"warning: {old} is deprecated; use {new}"]


@pytest.mark.parametrize("name, args, old, new, value", ALIASES, ids=[f"{a[0]} {a[2]}" for a in ALIASES])
def test_help_names_the_new_spelling_and_the_old_one_as_deprecated(name, args, old, new, value):
    command = main.commands[name]
    assert isinstance(command, Command) and command.renamed[old] == new
    options = {opt for param in command.params for opt in param.opts}
    assert new in options and old not in options
    text = CliRunner().invoke(main, [name, "--help"]).output
    assert f"{old}(now{new})" in "".join(text.split())  # however the help text wraps


def test_a_value_that_looks_like_an_old_spelling_after_double_dash_is_left_alone(tmp_path):
    from edge_unlearn.cli.common import rename_args

    assert rename_args(["--batch", "2", "--", "--batch"], {"--batch": "--batches"}) == [
        "--batches",
        "2",
        "--",
        "--batch",
    ]


def test_bench_old_batch_spelling_runs(tmp_path):
    from tests.deploy.conftest import tiny_onnx

    model = tiny_onnx(tmp_path / "tiny.onnx")
    result = CliRunner().invoke(
        main, ["bench", str(model), "--batch", "1,2", "--warmup", "0", "--iterations", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["batches"] == [1, 2]
    assert result.stderr.splitlines()[0] == "warning: --batch is deprecated; use --batches"


def test_forget_old_forget_samples_spelling_runs(digits_checkpoint, digits, tmp_path):
    from PIL import Image

    folder = tmp_path / "samples" / "3"
    folder.mkdir(parents=True)
    for i, img in enumerate(digits.x_train[digits.y_train == 3][:4]):
        Image.fromarray(img[0].numpy()).save(folder / f"{i}.png")
    out = tmp_path / "f.safetensors"
    args = ["forget", str(digits_checkpoint), "--forget", "3", "--forget-samples", str(tmp_path / "samples")]
    result = CliRunner().invoke(main, [*args, "-o", str(out), "--no-eval", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples_used"] == 4 and out.is_file()
    assert result.stderr.splitlines() == ["warning: --forget-samples is deprecated; use --forget-images"]


def test_build_engine_old_batch_spelling_reaches_the_static_shape_check(tmp_path):
    """--batch N still sets the static batch: with a profile option beside it the plan refuses the mix."""
    import onnx

    from edge_unlearn.cli.tensorrt import build_engine_cmd

    from ..deploy.tensorrt.conftest import ours_fp32

    path = tmp_path / "m.onnx"
    onnx.save(ours_fp32(), str(path))
    result = CliRunner().invoke(build_engine_cmd, [str(path), "--batch", "4", "--max-batch", "16"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == "warning: --batch is deprecated; use --batch-size"
    assert len(lines) == 2 and "static shape" in lines[1]
