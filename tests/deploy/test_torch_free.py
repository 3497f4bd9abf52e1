"""The deployment side runs where torch cannot be imported (a Jetson with numpy + onnxruntime only)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_validate_without_torch(artifacts):
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import edge_unlearn.deploy.runners, edge_unlearn.export.bundle, edge_unlearn.deploy.validate
        import edge_unlearn.deploy.runner, edge_unlearn.deploy.onnx_meta
        import edge_unlearn.cli.export
        from edge_unlearn.deploy.validate import validate_model
        report = validate_model({str(artifacts.int8)!r}, {str(artifacts.bundle)!r})
        try:
            import torch
            raise SystemExit("torch was importable")
        except ImportError:
            pass
        print(json.dumps({{"verdict": bool(report), "precision": report.environment["precision"],
                          "torch_loaded": [m for m in sys.modules if m == "torch" or m.startswith("torch.")
                                           if sys.modules[m] is not None]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"verdict": True, "precision": "int8", "torch_loaded": []}


def test_torch_runner_reports_missing_torch_cleanly(artifacts):
    """On a torch-less device a checkpoint is a one-line DependencyError naming the fix: at open time on the base
    install (no host runtime registered), on entry where the host runners are registered but torch is missing."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        from edge_unlearn.deploy.runners import open_runner
        from edge_unlearn.errors import DependencyError
        try:
            open_runner({str(artifacts.checkpoint)!r})
        except DependencyError as exc:
            print("base", "onnxruntime instead" in str(exc))
        import edge_unlearn.torch_runners
        runner = open_runner({str(artifacts.checkpoint)!r})
        try:
            with runner:
                pass
        except DependencyError as exc:
            print(type(runner).__name__, "onnxruntime instead" in str(exc))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.split() == ["base", "True", "TorchRunner", "True"], proc.stderr[-2000:]


def test_a_pte_program_on_a_torch_free_install_says_to_validate_it_on_the_host(tmp_path):
    """ExecuTorch's Python runtime needs torch: on the base install a .pte is a one-line DependencyError naming
    the host extra, before anything is read."""
    program = tmp_path / "model.pte"
    program.write_bytes(b"\0" * 64)
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        from edge_unlearn.deploy.runners import open_runner
        from edge_unlearn.errors import DependencyError
        try:
            open_runner({str(program)!r})
        except DependencyError as exc:
            print("base", "edge-unlearn[executorch]" in str(exc) and "\\n" not in str(exc))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.split() == ["base", "True"], proc.stderr[-2000:]
