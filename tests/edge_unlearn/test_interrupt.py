"""Ctrl-C is one line and exit 2 (never click's "Aborted!" with exit 1, which a gate reads as a failed validation),
and leaves no file behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def test_ctrl_c_during_export_is_one_line_exit_2_and_leaves_no_file(digits_checkpoint, tmp_path):
    # the export takes several seconds (torch import, the exporter); on a loaded machine an attempt can still
    # finish between the last poll and the signal, so an attempt that ended by itself (exit 0) is retried sooner
    for delay in (4.0, 2.5, 1.5):
        work = tmp_path / f"after_{delay}s"
        work.mkdir()
        proc = subprocess.Popen([sys.executable, "-m", "edge_unlearn.cli", "export", str(digits_checkpoint), "-o",
                                 str(work / "m.onnx")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=work)
        time.sleep(delay)
        if proc.poll() is not None:
            proc.communicate()
            continue
        os.kill(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        if proc.returncode == 0 and not stderr.strip():
            continue  # it finished before the signal arrived: nothing was interrupted
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, stderr
        assert len(lines) == 1 and lines[0].startswith("error: interrupted"), stderr
        assert sorted(p.name for p in work.iterdir()) == []
        return
    raise AssertionError("every export finished before it could be interrupted")
