"""The device install with one more runtime, each on its own: a fresh venv with the base install + ``[openvino]``,
another with the base install + ``[litert]`` (neither has torch), each running validate, bench, report and
verify on an artefact of its runtime made here on the host.

Same pattern as tests/deploy/test_base_install.py: the project's wheel, a new venv without system site-packages,
``pip install 'edge_unlearn-*.whl[openvino]'`` (or ``[litert]``); skipped with pip's reason when the venv cannot be
made, and before any install when the host cannot make the artefact (no OpenVINO, no litert-torch).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from tests.deploy.test_base_install import _run, fresh_venv

#: what each venv must (True) and must not (False) be able to import
MODULES = ("torch", "openvino", "ai_edge_litert")


@pytest.fixture(scope="module")
def openvino_venv(tmp_path_factory) -> Path:
    pytest.importorskip("openvino", reason="OpenVINO is not installed here (the host makes the IR)")
    return fresh_venv(tmp_path_factory.mktemp("openvino-install"), "[openvino]", timeout=900)


@pytest.fixture(scope="module")
def litert_venv(tmp_path_factory) -> Path:
    pytest.importorskip("litert_torch", reason="litert-torch (the host's converter) is not installed")
    return fresh_venv(tmp_path_factory.mktemp("litert-install"), "[litert]", timeout=900)


def _importable(venv: Path, cwd: Path) -> dict[str, bool]:
    probe = _run(
        [
            venv / "python",
            "-c",
            f"import importlib.util as u, json; print(json.dumps([u.find_spec(m) is not None for m in {MODULES!r}]))",
        ],
        cwd,
    )
    assert probe.returncode == 0, probe.stderr
    return dict(zip(MODULES, json.loads(probe.stdout)))


def _validate_bench_report(venv: Path, artefact: Path, bundle: Path, runtime: str, cwd: Path) -> None:
    """validate (pass), bench (two batches), report (rendered with the verdict) and verify, into one run folder."""
    cli, run = venv / "edge-unlearn", cwd / "run"
    validate = _run([cli, "validate", artefact, "--bundle", bundle, "--json", "--run-dir", run], cwd)
    assert validate.returncode == 0, validate.stderr
    verdict = json.loads(validate.stdout)
    assert verdict["verdict"] == "pass" and verdict["environment"]["runtime"] == runtime
    bench = _run(
        [
            cli,
            "bench",
            artefact,
            "--batches",
            "1,4",
            "--iterations",
            "3",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--json-out",
            cwd / "bench.json",
            "--run-dir",
            run,
            "-q",
        ],
        cwd,
    )
    assert bench.returncode == 0, bench.stderr
    rows = json.loads((cwd / "bench.json").read_text())["results"]
    assert [(r["runtime"], r["batch"]) for r in rows] == [(runtime, 1), (runtime, 4)]
    report = _run([cli, "report", run], cwd)
    assert report.returncode == 0, report.stderr
    html = (run / "report.html").read_text()
    assert 'data-verdict="pass"' in html and "p50 ms" in html
    verify = _run([cli, "verify", run, "--json"], cwd)
    assert verify.returncode == 0 and json.loads(verify.stdout)["verdict"] == "pass", verify.stderr


def test_base_plus_openvino_validates_benches_and_reports_an_ir_without_torch(openvino_venv, artifacts, tmp_path):
    from edge_unlearn.export.openvino import convert_openvino

    assert _importable(openvino_venv, tmp_path) == {"torch": False, "openvino": True, "ai_edge_litert": False}
    ir = tmp_path / "model.int8.xml"
    with contextlib.redirect_stdout(io.StringIO()):
        convert_openvino(artifacts.fp32, ir, "int8", calib="digits", calib_samples=100)
    _validate_bench_report(openvino_venv, ir, artifacts.bundle, "openvino", tmp_path)
    (tmp_path / "model.int8.bin").unlink()
    lonely = _run([openvino_venv / "edge-unlearn", "validate", ir, "--bundle", artifacts.bundle], tmp_path)
    assert lonely.returncode == 2 and lonely.stderr.count("\n") == 1 and "model.int8.bin" in lonely.stderr


def test_base_plus_litert_validates_benches_and_reports_a_tflite_without_torch(litert_venv, artifacts, tmp_path):
    from edge_unlearn.export.litert import convert_litert

    assert _importable(litert_venv, tmp_path) == {"torch": False, "openvino": False, "ai_edge_litert": True}
    tflite = tmp_path / "model.tflite"
    with contextlib.redirect_stdout(io.StringIO()):
        convert_litert(artifacts.checkpoint, tflite)
    _validate_bench_report(litert_venv, tflite, artifacts.bundle, "litert", tmp_path)
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(tflite.read_bytes()[:1000])
    truncated = _run([litert_venv / "edge-unlearn", "validate", cut, "--bundle", artifacts.bundle], tmp_path)
    assert truncated.returncode == 2 and truncated.stderr.count("\n") == 1 and "cut.tflite" in truncated.stderr
