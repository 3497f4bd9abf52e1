"""Ctrl-C while the command line or onnxruntime is being imported: one line and exit 130 (128 + SIGINT), no
traceback. The interrupt is a real SIGINT sent to the process at the moment the named module's import begins."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from tests.deploy.conftest import tiny_onnx


def _interrupted_at(module: str, argv: list[str], cwd) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import builtins, os, signal, sys
        real_import = builtins.__import__

        def interrupt_at(name, *args, **kwargs):
            if name == {module!r} and name not in sys.modules:
                builtins.__import__ = real_import
                os.kill(os.getpid(), signal.SIGINT)
            return real_import(name, *args, **kwargs)

        builtins.__import__ = interrupt_at
        sys.argv = ["edge-unlearn", *{argv!r}]
        from edge_unlearn.cli import main
        main()
    """)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal would
    )


@pytest.mark.parametrize("module", ["onnxruntime", "numpy"])
def test_ctrl_c_during_an_import_is_one_line_and_exit_130(tmp_path, module):
    model = tiny_onnx(tmp_path / "m.onnx")
    proc = _interrupted_at(module, ["bench", str(model), "--batches", "1", "--iterations", "1"], tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 130, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
