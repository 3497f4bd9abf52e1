"""The device install: a fresh virtual environment with the base install only (numpy, onnx, onnxruntime, click;
no torch), running validate, bench, report, verify and doctor on artefacts the host side made.

It builds the project's wheel with this (dev) environment, creates a new venv without system site-packages,
installs the wheel there with its base dependencies (from pip's cache or the package index) and runs the
`edge-unlearn` of that venv. Skipped, with pip's reason, when the venv cannot be made (no index reachable).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def fresh_venv(work: Path, extras: str = "", timeout: int = 600) -> Path:
    """bin/ folder of a new venv (no system site-packages) with the project's wheel installed, ``extras`` (e.g.
    ``"[openvino,litert]"``) included; skips with pip's reason when the wheel, the venv or the install fails. The
    wheel is built from a clean copy of the sources (a stale build/ folder in the checkout would leak into it)."""
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, source / name)
    for name in ("edge_unlearn", "export", "kernels"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheel_dir = work / "wheel"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheel_dir, source],
        cwd=work,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build the wheel: {(built.stderr or built.stdout).strip().splitlines()[-1:]}")
    made = _run([sys.executable, "-m", "venv", work / "venv"], cwd=work)
    if made.returncode != 0:
        pytest.skip(f"cannot create a venv: {(made.stderr or made.stdout).strip().splitlines()[-1:]}")
    bin_dir = work / "venv" / "bin"
    wheel = next(wheel_dir.glob("edge_unlearn-*.whl"))
    installed = _run([bin_dir / "python", "-m", "pip", "install", "-q", f"{wheel}{extras}"], cwd=work, timeout=timeout)
    if installed.returncode != 0:
        pytest.skip(
            f"cannot install the wheel{extras} (package index unreachable?): "
            f"{(installed.stderr or installed.stdout).strip().splitlines()[-1:]}"
        )
    return bin_dir


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory) -> Path:
    """bin/ folder of a fresh venv with `pip install edge-unlearn` (base install) and nothing else."""
    return fresh_venv(tmp_path_factory.mktemp("base-install"))


def test_device_commands_run_on_the_base_install(base_venv, artifacts, tmp_path):
    python, cli = base_venv / "python", base_venv / "edge-unlearn"
    # the base install has no torch (nor any other host or report extra); Jinja2 renders the report
    probe = _run(
        [
            python,
            "-c",
            "import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) is not None "
            "for m in ('torch', 'torchvision', 'sklearn', 'safetensors', 'matplotlib', 'jinja2', 'onnxruntime')}))",
        ],
        cwd=tmp_path,
    )
    assert json.loads(probe.stdout) == {
        "torch": False,
        "torchvision": False,
        "sklearn": False,
        "safetensors": False,
        "matplotlib": False,
        "jinja2": True,
        "onnxruntime": True,
    }, probe.stderr
    run = tmp_path / "run"

    validate = _run(
        [
            cli,
            "validate",
            artifacts.int8,
            "--bundle",
            artifacts.bundle,
            "--provider",
            "cpu",
            "--json",
            "--run-dir",
            run,
        ],
        cwd=tmp_path,
    )
    assert validate.returncode == 0, validate.stderr
    verdict = json.loads(validate.stdout)
    assert verdict["verdict"] == "pass" and verdict["precision"] == "int8"

    bench = _run(
        [
            cli,
            "bench",
            artifacts.fp32,
            artifacts.int8,
            "--batches",
            "1,4",
            "--iterations",
            "3",
            "--warmup",
            "1",
            "--provider",
            "cpu",
            "--threads",
            "1",
            "--json-out",
            tmp_path / "bench.json",
            "--run-dir",
            run,
            "-q",
        ],
        cwd=tmp_path,
    )
    assert bench.returncode == 0, bench.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [(r["precision"], r["batch"]) for r in rows] == [("fp32", 1), ("fp32", 4), ("int8", 1), ("int8", 4)]

    # a torch checkpoint cannot be benched here: one line naming the fix, exit 2
    torch_bench = _run([cli, "bench", artifacts.checkpoint, "--iterations", "1", "--batches", "1"], cwd=tmp_path)
    assert torch_bench.returncode == 2 and torch_bench.stderr.count("\n") == 1, torch_bench.stderr
    assert "edge-unlearn[host]" in torch_bench.stderr

    # a plot needs the report extra: one line naming it
    plot = _run(
        [cli, "bench", artifacts.fp32, "--iterations", "1", "--batches", "1", "--plot", tmp_path / "p.png"],
        cwd=tmp_path,
    )
    assert plot.returncode == 2 and "edge-unlearn[report]" in plot.stderr and not (tmp_path / "p.png").exists()

    # the report still renders (plots left out with a note naming the extra), then verify checks its manifest
    report = _run([cli, "report", run], cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    html = (run / "report.html").read_text()
    assert 'data-verdict="pass"' in html and "p50 ms" in html and "edge-unlearn[report]" in html
    assert "<img" not in html
    verify = _run([cli, "verify", run, "--json"], cwd=tmp_path)
    assert verify.returncode == 0 and json.loads(verify.stdout)["verdict"] == "pass", verify.stderr

    doctor = _run([cli, "doctor", "--json"], cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stderr
    assert "torch" in doctor.stdout and "onnxruntime" in doctor.stdout
