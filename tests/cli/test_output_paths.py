"""``-o dir/`` (a trailing slash) or ``-o`` naming an existing folder is refused by the parser on every command that
writes a file: one line naming the option, exit 2, and nothing written (never a file named like the folder)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from edge_unlearn.cli import main

#: a value for each required option a command has, so that the parser reaches the output option
REQUIRED_VALUES = {"forget_classes": "3", "bundle_path": "b.npz", "arch": "lenet", "weights": "w.pt", "key": "k.pem"}


def _filler(command: click.Command, option: str) -> list[str]:
    """Arguments and required options with harmless values (the output option is refused before they are read)."""
    words: list[str] = []
    for param in command.params:
        if isinstance(param, click.Argument):
            words.append("input.bin")
        elif param.required and "-o" not in param.opts:
            words += [param.opts[0], REQUIRED_VALUES[param.name]]
    return words


def _commands_with(option: str) -> list[str]:
    return sorted(name for name, cmd in main.commands.items() if any(option in p.opts for p in cmd.params))


def test_the_commands_that_write_a_file_are_all_covered():
    writers = {
        "train",
        "retrain",
        "forget",
        "export",
        "quantize",
        "bundle",
        "build-engine",
        "report",
        "keygen",
        "import",
    }
    assert writers <= set(_commands_with("-o"))
    assert set(_commands_with("--json-out")) == set(main.commands)


@pytest.mark.parametrize("option", ["-o", "--json-out"])
@pytest.mark.parametrize("existing", [False, True], ids=["trailing-slash", "existing-folder"])
def test_a_folder_as_output_file_is_refused(tmp_path, monkeypatch, option, existing):
    monkeypatch.chdir(tmp_path)
    for name in _commands_with(option):
        folder = tmp_path / f"{name}-out"
        if existing:
            folder.mkdir()
        value = f"{folder.name}/" if not existing else folder.name
        command = main.commands[name]
        args = [option, value, *_filler(command, option)]
        if any("-o" in p.opts and p.required for p in command.params) and option != "-o":
            args += ["-o", "out.bin"]
        result = CliRunner().invoke(main, [name, *args])
        assert result.exit_code == 2, (name, result.output)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, result.stderr)
        assert f"'{option}'" in lines[0] and "is a folder" in lines[0], (name, lines[0])
        if existing:
            assert folder.is_dir() and not any(folder.iterdir()), name
        else:
            assert not folder.exists(), name  # no file named like the folder
