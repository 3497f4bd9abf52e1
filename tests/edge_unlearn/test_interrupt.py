"""Ctrl-C is one line and exit 130 (never click's "Aborted!" with exit 1, which a gate reads as a failed validation),
and leaves no file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def test_ctrl_c_during_export_is_one_line_exit_130_and_leaves_no_file(digits_checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    # a runner started in the background (`cmd &`) ignores SIGINT, and so would the child, whose Python then
    # installs no KeyboardInterrupt handler: give the child the default disposition, as a terminal would
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_unlearn.cli", "export", str(digits_checkpoint), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(4.0)  # inside the export (torch import and the exporter take several seconds)
    assert proc.poll() is None, "export finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 130, stderr
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
