"""``doctor``: runs here (no TensorRT, no GPU) without a traceback and says what is missing."""

from __future__ import annotations

import json

import pytest

from edge_unlearn.deploy.doctor import jetson_info, missing_features, parse_nv_tegra_release, probe, render

from .conftest import has_tensorrt


@pytest.fixture(scope="module")
def report():
    return probe()


def test_probe_is_json_ready(report):
    json.dumps(report)
    for key in ("python", "numpy", "torch", "triton", "onnxruntime", "tensorrt", "pycuda", "gpu", "jetson", "missing"):
        assert key in report
    assert "providers" in report["onnxruntime"]


@pytest.mark.skipif(has_tensorrt(), reason="TensorRT is installed here")
def test_tensorrt_absent_is_reported_with_the_fix(report):
    assert report["tensorrt"]["available"] is False
    assert "pip install edge-unlearn[tensorrt]" in report["tensorrt"]["error"]
    missing = {m["missing"]: m for m in report["missing"]}
    assert "build-engine" in missing["tensorrt"]["disables"]
    text = render(report)
    assert "tensorrt     absent" in text and "what it disables" in text


def test_render_covers_every_line(report):
    text = render(report)
    for label in ("python", "numpy", "torch", "triton", "onnxruntime", "tensorrt", "pycuda", "gpu", "jetson"):
        assert f"\n{label}" in f"\n{text}"


def test_missing_features_of_a_bare_device():
    bare = {
        "torch": {"available": False},
        "triton": {"available": False},
        "onnxruntime": {"available": False},
        "tensorrt": {"available": False},
        "pycuda": {"available": False},
    }
    names = [m["missing"] for m in missing_features(bare)]
    assert names[0] == "torch" and "tensorrt" in names and "onnxruntime" in names
    full = {
        "torch": {"available": True, "cuda_available": True},
        "triton": {"available": True},
        "onnxruntime": {"available": True, "providers": ["CUDAExecutionProvider"]},
        "tensorrt": {"available": True},
        "pycuda": {"available": True},
    }
    assert missing_features(full) == []


@pytest.mark.parametrize(
    "text, l4t, jetpack",
    [
        (
            "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025",
            "36.4.3",
            "6.x",
        ),
        (
            "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023",
            "35.4.1",
            "5.x",
        ),
        ("# R38 (release), REVISION: 2.0, GCID: 1, BOARD: generic, EABI: aarch64", "38.2.0", "7.x"),
    ],
)
def test_parse_nv_tegra_release(text, l4t, jetpack):
    info = parse_nv_tegra_release(text)
    assert info["l4t"] == l4t and info["jetpack"] == jetpack


def test_jetson_info_from_files(tmp_path):
    release = tmp_path / "nv_tegra_release"
    model = tmp_path / "model"
    assert jetson_info(release, model) is None  # not a Jetson
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic, EABI: aarch64\n")
    model.write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00")
    info = jetson_info(release, model)
    assert info["model"].startswith("NVIDIA Jetson Orin Nano") and info["l4t"] == "36.4.3"
    assert parse_nv_tegra_release("garbage") is None
