"""The device install with another runtime: a fresh venv with the base install + ``[openvino]`` (and ``[litert]``,
no torch) running validate and bench on an OpenVINO IR (and a .tflite) made here on the host.

Same pattern as tests/deploy/test_base_install.py: the project's wheel, a new venv without system site-packages,
``pip install 'edge_unlearn-*.whl[openvino,litert]'``; skipped with pip's reason when the venv cannot be made.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from tests.deploy.test_base_install import _run, fresh_venv

pytest.importorskip("openvino", reason="OpenVINO is not installed here (the host makes the IR)")


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    return fresh_venv(tmp_path_factory.mktemp("runtime-install"), "[openvino,litert]", timeout=900)


def test_validate_and_bench_an_ir_without_torch(runtime_venv, artifacts, tmp_path):
    from edge_unlearn.export.openvino import convert_openvino

    python, cli = runtime_venv / "python", runtime_venv / "edge-unlearn"
    probe = _run(
        [
            python,
            "-c",
            "import importlib.util as u, json; print(json.dumps([u.find_spec(m) is not None for m in "
            "('torch', 'openvino', 'ai_edge_litert')]))",
        ],
        tmp_path,
    )
    assert json.loads(probe.stdout) == [False, True, True], probe.stderr
    ir = tmp_path / "model.int8.xml"
    with contextlib.redirect_stdout(io.StringIO()):
        convert_openvino(artifacts.fp32, ir, "int8", calib="digits", calib_samples=100)
    validate = _run([cli, "validate", ir, "--bundle", artifacts.bundle, "--json"], tmp_path)
    assert validate.returncode == 0, validate.stderr
    report = json.loads(validate.stdout)
    assert report["verdict"] == "pass" and report["environment"]["runtime"] == "openvino"
    bench = _run(
        [
            cli,
            "bench",
            ir,
            "--batches",
            "1,4",
            "--iterations",
            "3",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--json-out",
            tmp_path / "bench.json",
            "-q",
        ],
        tmp_path,
    )
    assert bench.returncode == 0, bench.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [(r["runtime"], r["precision"], r["batch"]) for r in rows] == [
        ("openvino", "int8", 1),
        ("openvino", "int8", 4),
    ]
    (tmp_path / "model.int8.bin").unlink()
    lonely = _run([cli, "validate", ir, "--bundle", artifacts.bundle], tmp_path)
    assert lonely.returncode == 2 and lonely.stderr.count("\n") == 1 and "model.int8.bin" in lonely.stderr


def test_validate_a_tflite_without_torch(runtime_venv, artifacts, tmp_path):
    pytest.importorskip("litert_torch", reason="litert-torch (the host's converter) is not installed")
    from edge_unlearn.export.litert import convert_litert

    tflite = tmp_path / "model.tflite"
    with contextlib.redirect_stdout(io.StringIO()):
        convert_litert(artifacts.checkpoint, tflite)
    validate = _run(
        [runtime_venv / "edge-unlearn", "validate", tflite, "--bundle", artifacts.bundle, "--json"], tmp_path
    )
    assert validate.returncode == 0, validate.stderr
    assert json.loads(validate.stdout)["environment"]["runtime"] == "litert"
