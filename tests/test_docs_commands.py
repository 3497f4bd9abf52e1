"""The commands in README.md and docs/*.md run as written: every `edge-unlearn CMD --option` names a command and
an option that exist, and no INT8 file quantized for the CPU is handed to `build-engine` (which refuses it)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from edge_unlearn.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _command_lines(doc: Path) -> list[str]:
    """Shell lines of fenced code blocks that call edge-unlearn (comments stripped, `\\` continuations joined)."""
    lines, block, fenced = [], "", False
    for raw in doc.read_text().splitlines():
        if raw.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            continue
        block += raw.split(" #")[0].rstrip()
        if block.endswith("\\"):
            block = block[:-1] + " "
            continue
        for part in re.split(r"&&|;|\|", block):
            if part.strip().startswith("edge-unlearn "):
                lines.append(part.strip())
        block = ""
    return lines


def _options(command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_commands_and_options_exist(doc):
    lines = _command_lines(doc)
    for line in lines:
        words = shlex.split(line.replace(">", " > "))[1:]
        if not words or words[0].startswith("-"):
            continue
        command = main.commands.get(words[0])
        assert command is not None, f"{doc.name}: `{line}` names no command"
        known = _options(command) | {"--help", "-h"}
        for word in words[1:]:
            if word.startswith("-") and not re.fullmatch(r"-\d.*", word):
                assert word.split("=")[0] in known, f"{doc.name}: `{line}`: {word} is not an option of {words[0]}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_build_engine_is_never_given_a_cpu_layout_int8_file(doc):
    cpu_layout: set[str] = set()
    for line in _command_lines(doc):
        words = shlex.split(line)
        if words[1] == "quantize" and "int8" in words and "--dynamic" not in words and "-o" in words:
            output = words[words.index("-o") + 1]
            named_for_tensorrt = "--target" in words and words[words.index("--target") + 1] == "tensorrt"
            if not named_for_tensorrt and not re.search(r"trt|tensorrt", output):  # auto = cpu unless named
                cpu_layout.add(output)
        if words[1] == "build-engine":
            assert words[2] not in cpu_layout, (
                f"{doc.name}: `{line}`: {words[2]} has the CPU layout (no --target tensorrt)"
            )


def test_readme_names_every_base_dependency():
    """The README's install table says what `pip install edge-unlearn` brings to a device."""
    from importlib.metadata import requires

    base = [dep for dep in requires("edge-unlearn") or [] if "extra ==" not in dep]
    names = [re.split(r"[<>=!~\[; (]", dep, maxsplit=1)[0] for dep in base]
    assert "numpy" in names, names
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if "`pip install edge-unlearn`" in line)
    missing = [name for name in names if name.lower() not in row.lower()]
    assert not missing, f"README's base-install row omits {missing}"
