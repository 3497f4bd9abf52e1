"""Every error is one line, whatever the bad input it quotes holds (the fuzz suite found a manifest entry with a
NEL character, which ``str.splitlines`` ends a line at)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edge_unlearn.cli import main
from edge_unlearn.cli.common import one_line


@pytest.mark.parametrize("text", ["a\nb", "a\rb", "a\x85b", "a\u2028b", "a\x0bb\x1cc", "tab\there"])
def test_one_line_escapes_every_line_break(text):
    out = one_line(text)
    assert len(out.splitlines()) == 1 and out.isprintable()
    assert one_line("plain é text") == "plain é text"


def test_an_error_quoting_a_line_separator_stays_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(
        json.dumps({"format": "edge-unlearn.manifest/1", "files": ["\x85"], "external": []})
    )
    result = CliRunner().invoke(main, ["verify", str(run)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "\\x85" in lines[0], result.stderr
