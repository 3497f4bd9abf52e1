"""Engine sidecar: JSON round trip, atomic write, and the refusal of an engine built elsewhere."""

from __future__ import annotations

import json

import pytest

from edge_unlearn.deploy.sidecar import (
    EngineSidecar,
    check_compatible,
    compatibility_problems,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from edge_unlearn.errors import ModelFileError
from edge_unlearn.fileio import sha256_file

AGX_ORIN = {"model": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.4.3", "jetpack": "6.x"}
ENV = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "jetson": AGX_ORIN}


def make(engine_path=None, **overrides) -> EngineSidecar:
    values = dict(
        tensorrt_version="10.3.0.30",
        gpu_name="Orin",
        compute_capability="8.7",
        precision="int8",
        source_onnx="model.int8.onnx",
        source_onnx_sha256="a" * 64,
        engine_sha256=sha256_file(engine_path) if engine_path else "",
        forgotten_classes=(3, 7),
        num_classes=10,
        profile={"min": [1, 1, 8, 8], "opt": [8, 1, 8, 8], "max": [32, 1, 8, 8]},
        jetson=AGX_ORIN,
    )
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


@pytest.mark.parametrize(
    "env_change, needle",
    [
        ({"tensorrt_version": "10.4.0"}, "TensorRT 10.3.0.30 (here: 10.4.0)"),
        ({"tensorrt_version": "11.4.1"}, "TensorRT 10.3.0.30 (here: 11.4.1)"),
        ({"gpu_name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}, "compute capability 8.7 (here: 8.9)"),
        ({"gpu_name": "NVIDIA A10G"}, "GPU 'Orin'"),
        ({"compute_capability": "8.6"}, "compute capability 8.7"),
        ({"tensorrt_version": None}, "here: unknown"),
    ],
)
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


# ---------------------------------------------------------------- Jetson modules: every Orin is "Orin", 8.7


@pytest.mark.parametrize(
    "here_model",
    [
        "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
        "NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
    ],
)
def test_agx_orin_engine_is_refused_on_another_orin_module(engine, here_model):
    """Same GPU name and compute capability, different module: only the Jetson model tells them apart."""
    write_sidecar(engine, make(engine))
    here = {**ENV, "jetson": {**AGX_ORIN, "model": here_model}}
    with pytest.raises(ModelFileError, match="Jetson model 'AGX Orin'.*here: 'Orin (Nano|NX)'"):
        check_compatible(engine, here)


def test_same_module_on_another_carrier_is_accepted():
    here = {**ENV, "jetson": {**AGX_ORIN, "model": "NVIDIA Jetson AGX Orin"}}  # production carrier board
    assert compatibility_problems(make(), here) == []


def test_jetson_engine_on_a_server_and_back_is_refused():
    server = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "jetson": None}
    assert any("Jetson model 'AGX Orin' (here: 'none" in p for p in compatibility_problems(make(), server))
    assert any("Jetson model 'none" in p for p in compatibility_problems(make(jetson=None), ENV))


def test_jetson_module_families():
    from edge_unlearn.deploy.sidecar import jetson_module

    assert jetson_module("NVIDIA Jetson AGX Orin Developer Kit") == "AGX Orin"
    assert jetson_module("NVIDIA Jetson Orin Nano Developer Kit") == "Orin Nano"
    assert jetson_module("NVIDIA  Jetson   Xavier NX") == "Xavier NX"
    assert jetson_module("Custom Board") == "Custom Board" and jetson_module(None) is None


# ---------------------------------------------------------------- version- and hardware-compatible engines


@pytest.mark.parametrize(
    "here, ok",
    [
        ("10.3.0", True),
        ("10.7.0", True),
        ("11.4.1", True),  # newer in the major, and 10 -> 11
        ("10.2.0", False),
        ("12.0.0", False),
    ],
)
def test_version_compatible_engine_runs_on_newer_runtimes(here, ok):
    sc = make(version_compatible=True)
    problems = compatibility_problems(sc, {**ENV, "tensorrt_version": here})
    assert (problems == []) is ok, problems
    assert compatibility_problems(make(), {**ENV, "tensorrt_version": "10.7.0"})  # a plain engine does not


def test_hardware_compatible_engine_runs_on_other_ampere_plus_gpus():
    server = dict(gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0", jetson=None)
    sc = make(hardware_compatibility="ampere-plus", **server)
    assert compatibility_problems(sc, {**ENV, **server, "gpu_name": "NVIDIA H100", "compute_capability": "9.0"}) == []
    assert compatibility_problems(sc, {**ENV, **server, "compute_capability": "7.5"})
    same_cc = make(hardware_compatibility="same-compute-capability", **server)
    assert compatibility_problems(same_cc, {**ENV, **server, "gpu_name": "NVIDIA A30"}) == []
    assert compatibility_problems(same_cc, {**ENV, **server, "compute_capability": "8.6"})


def test_power_mode_and_compat_fields_round_trip(engine):
    sc = make(
        engine,
        power_mode={"name": "MAXN", "id": 0},
        version_compatible=True,
        optimization_level=4,
        dla_placement={"dla_layers": 3, "gpu_layers": 2, "layers": []},
    )
    write_sidecar(engine, sc)
    back = read_sidecar(engine)
    assert back == sc and back.power_mode == {"name": "MAXN", "id": 0}
