"""Engine sidecar: JSON round trip, atomic write, and the refusal of an engine built elsewhere."""
from __future__ import annotations

import json

import pytest

from edge_unlearn.errors import ModelFileError
from edge_unlearn.fileio import sha256_file
from edge_unlearn.export.sidecar import (EngineSidecar, check_compatible, compatibility_problems, read_sidecar, sidecar_path,
                            write_sidecar)

ENV = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}


def make(engine_path=None, **overrides) -> EngineSidecar:
    values = dict(tensorrt_version="10.3.0.30", gpu_name="Orin", compute_capability="8.7", precision="int8",
                  source_onnx="model.int8.onnx", source_onnx_sha256="a" * 64,
                  engine_sha256=sha256_file(engine_path) if engine_path else "",
                  forgotten_classes=(3, 7), num_classes=10, profile={"min": [1, 1, 8, 8], "opt": [8, 1, 8, 8],
                                                                     "max": [32, 1, 8, 8]},
                  jetson={"model": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.4.3", "jetpack": "6.x"})
    values.update(overrides)
    return EngineSidecar(**values)


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "model.plan"
    path.write_bytes(b"not really an engine, but bytes with a sha256")
    return path


def test_round_trip(engine):
    sc = make(engine)
    written = write_sidecar(engine, sc)
    assert written == sidecar_path(engine) and written.name == "model.plan.json"
    assert read_sidecar(engine) == sc
    data = json.loads(written.read_text())
    assert data["forgotten_classes"] == [3, 7] and data["format"] == "edge-unlearn.engine/1"
    assert data["jetson"]["l4t"] == "36.4.3"
    assert not list(engine.parent.glob(".*.tmp")), "atomic write leaves no temp file"


def test_compatible_engine_is_accepted(engine):
    write_sidecar(engine, make(engine))
    assert check_compatible(engine, ENV).precision == "int8"


@pytest.mark.parametrize("env_change, needle", [
    ({"tensorrt_version": "10.4.0"}, "TensorRT 10.3.0.30 (here: 10.4.0)"),
    ({"tensorrt_version": "11.4.1"}, "TensorRT 10.3.0.30 (here: 11.4.1)"),
    ({"gpu_name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}, "compute capability 8.7 (here: 8.9)"),
    ({"gpu_name": "NVIDIA A10G"}, "GPU 'Orin'"),
    ({"compute_capability": "8.6"}, "compute capability 8.7"),
    ({"tensorrt_version": None}, "here: unknown"),
])
def test_mismatched_engine_is_refused_with_rebuild_message(engine, env_change, needle):
    write_sidecar(engine, make(engine))
    with pytest.raises(ModelFileError) as info:
        check_compatible(engine, {**ENV, **env_change})
    message = str(info.value)
    assert needle in message
    assert "rebuild on this device with `edge-unlearn build-engine model.int8.onnx -o" in message
    assert "\n" not in message


def test_build_number_does_not_matter_but_patch_does():
    sc = make()
    assert compatibility_problems(sc, {**ENV, "tensorrt_version": "10.3.0.26"}) == []
    assert compatibility_problems(sc, {**ENV, "tensorrt_version": "10.3.1"})


def test_gpu_name_compare_ignores_case_and_spaces():
    assert compatibility_problems(make(), {**ENV, "gpu_name": " orin "}) == []


def test_stale_sidecar_is_refused(engine):
    write_sidecar(engine, make(engine))
    engine.write_bytes(b"a different engine")
    with pytest.raises(ModelFileError, match="does not match its sidecar.*rebuild on this device"):
        check_compatible(engine, ENV)


def test_missing_sidecar_is_refused(engine):
    with pytest.raises(ModelFileError, match="has no sidecar model.plan.json.*build-engine"):
        check_compatible(engine, ENV)


@pytest.mark.parametrize("text", ["{not json", json.dumps({"format": "something-else"}), json.dumps([1, 2])])
def test_damaged_sidecar_is_refused(engine, text):
    sidecar_path(engine).write_text(text)
    with pytest.raises(ModelFileError, match="rebuild the engine"):
        read_sidecar(engine)


def test_unknown_keys_are_ignored(engine):
    data = {**make(engine).to_dict(), "future_field": 1}
    sidecar_path(engine).write_text(json.dumps(data))
    assert read_sidecar(engine).num_classes == 10
