"""Issue 30's TensorRT findings, each through the pure planning functions (no TensorRT here, no fake modules):
the bench clips to the engine's profile, DLA builds set the static shape before asking the DLA, DLA layers are
counted from the inspector's fields and an engine without one fails, --no-gpu-fallback is refused for our mask
and otherwise set up as trtexec does, the sidecar tells Jetson modules of one family apart, FP32 engines clear
TF32, and NumPy 2 beside JetPack 6's TensorRT 10.3 bindings is named."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import tomllib

from edge_unlearn.deploy.sidecar import EngineSidecar, compatibility_problems, same_memory_class
from edge_unlearn.deploy.tensorrt.plan import (
    BuildConfig,
    LayerPlacement,
    PlacementReport,
    clip_batches,
    dla_input_shape,
    layer_device,
    needs_optimization_profile,
    numpy_tensorrt_problem,
    plan_build,
    refuse_no_gpu_fallback,
    require_dla_engine,
    summarize_engine_information,
    trtexec_command,
)
from edge_unlearn.errors import ModelFileError, UsageError

from .conftest import ours_fp32

TRT10, TRT11 = "10.3.0.30", "11.1.0"
REPO = Path(__file__).resolve().parents[3]

# ---------------------------------------------------------------- bench batches vs the engine's profile


def test_default_sweep_is_clipped_to_the_default_profile():
    batches, note = clip_batches((1, 8, 64), 1, 32)
    assert batches == (1, 8, 32)
    assert note == (
        "the engine's profile takes batches 1..32: benching batch 1, 8, 32 instead of 1, 8, 64 "
        "(rebuild with --max-batch to bench larger batches)"
    )


def test_static_engine_benches_its_one_batch():
    assert clip_batches((1, 8, 64), 4, 4) == (
        (4,),
        "the engine's profile takes batch 4: benching batch 4 instead of 1, 8, 64 "
        "(rebuild with --max-batch to bench larger batches)",
    )


def test_batches_inside_the_profile_are_kept_without_a_note():
    assert clip_batches((2, 16), 1, 32) == ((2, 16), None)
    with pytest.raises(ModelFileError, match="batch range 8..4"):
        clip_batches((1,), 8, 4)


# ---------------------------------------------------------------- DLA: static shape before can_run_on_DLA


def test_dla_sets_the_static_shape_the_parser_left_dynamic():
    profile = ((2, 1, 8, 8),) * 3
    assert dla_input_shape((-1, 1, 8, 8), profile) == (2, 1, 8, 8)
    assert not needs_optimization_profile(dla_input_shape((-1, 1, 8, 8), profile))
    assert needs_optimization_profile((-1, 1, 8, 8))


def test_dla_input_shape_refuses_a_dynamic_profile_or_other_axes():
    with pytest.raises(UsageError, match="DLA needs a static input shape"):
        dla_input_shape((-1, 1, 8, 8), ((1, 1, 8, 8), (8, 1, 8, 8), (32, 1, 8, 8)))
    with pytest.raises(ModelFileError, match=r"parsed network input \[-1, 3, 8, 8\] does not match"):
        dla_input_shape((-1, 3, 8, 8), ((1, 1, 8, 8),) * 3)


def test_dla_placement_takes_no_unused_parameter():
    from edge_unlearn.export.engine import dla_placement

    assert list(inspect.signature(dla_placement).parameters) == ["network", "builder_config"]


# ---------------------------------------------------------------- DLA layers from the inspector's fields

DLA_NODE = {
    "Name": "{ForeignNode[conv...flatten]}",
    "LayerType": "DLA",
    "TacticName": "",
    "Outputs": [{"Name": "features", "Format/Datatype": "Channel major FP16 format where channel % 16 == 0"}],
}
MYELIN_NODE = {"Name": "{ForeignNode[head...edge_unlearn_mask/scatter]}", "LayerType": "Myelin", "TacticName": ""}
MASK = {
    "Name": "edge_unlearn_mask/scatter",
    "LayerType": "Gather",
    "Outputs": [{"Name": "logits", "Format/Datatype": "Row major linear FP32"}],
}


def _engine(*layers) -> str:
    return json.dumps({"Layers": list(layers), "Bindings": ["input", "logits"]})


def test_foreign_node_is_dla_only_when_the_dla_runs_it():
    assert layer_device(DLA_NODE) == "DLA"
    assert layer_device(MYELIN_NODE) == "GPU"  # the same kind of name, compiled by Myelin for the GPU
    assert layer_device({**DLA_NODE, "Name": "conv"}) == "GPU"  # not a foreign node
    assert layer_device({"Name": "{ForeignNode[a...b]}", "LayerType": "", "TacticName": "dla_tactic"}) == "DLA"


def test_detailed_dla_engine_counts_its_subgraph_and_passes():
    summary = summarize_engine_information(_engine("input to nvm", DLA_NODE, "features from nvm", MASK))
    assert summary["dla_layers"] == 1 and summary["dla_decidable"]
    assert [r["device"] for r in summary["layers"]] == ["GPU", "DLA", "GPU", "GPU"]
    require_dla_engine(summary, 0)


def test_dla_build_that_ran_on_the_gpu_fails():
    summary = summarize_engine_information(_engine(MYELIN_NODE, MASK))
    assert summary["dla_layers"] == 0
    with pytest.raises(ModelFileError, match="--dla-core 1: the built engine has no DLA subgraph"):
        require_dla_engine(summary, 1)
    require_dla_engine(summary, None)  # a GPU build: nothing to check


def test_names_only_inspector_is_decided_by_the_nvm_transfers():
    with_dla = summarize_engine_information(_engine("input to nvm", "{ForeignNode[conv...flatten]}", "x copy finish"))
    assert with_dla["dla_layers"] == 1 and with_dla["dla_decidable"]
    ambiguous = summarize_engine_information(_engine("{ForeignNode[conv...scatter]}"))
    assert ambiguous["dla_layers"] == 0 and not ambiguous["dla_decidable"]
    with pytest.raises(ModelFileError, match="only layer names"):
        require_dla_engine(ambiguous, 0)


# ---------------------------------------------------------------- --no-gpu-fallback


def test_no_gpu_fallback_is_refused_for_our_mask():
    nodes = [(n.name, n.op_type) for n in ours_fp32().graph.node]
    with pytest.raises(UsageError, match=r"--no-gpu-fallback: the DLA cannot run .*\((Pad|Gather|Where)\)"):
        refuse_no_gpu_fallback(nodes, BuildConfig(dla_core=0, gpu_fallback=False, batch=1))
    refuse_no_gpu_fallback(nodes, BuildConfig(dla_core=0, batch=1))  # with fallback the GPU takes the mask
    refuse_no_gpu_fallback(nodes, BuildConfig(gpu_fallback=False))  # not a DLA build
    refuse_no_gpu_fallback([("conv", "Conv"), ("relu", "Relu")], BuildConfig(dla_core=0, gpu_fallback=False))


def test_no_gpu_fallback_is_refused_when_can_run_on_dla_says_no():
    report = PlacementReport((LayerPlacement("conv", "CONVOLUTION", "DLA"), LayerPlacement("pad", "SLICE", "GPU")))
    with pytest.raises(UsageError, match=r"--dla-core 0 --no-gpu-fallback: the DLA cannot run pad \(SLICE\)"):
        report.require_no_fallback(0)
    PlacementReport((LayerPlacement("conv", "CONVOLUTION", "DLA"),)).require_no_fallback(0)


@pytest.mark.parametrize("version, precision_flags", [(TRT10, ("FP16",)), (TRT11, ())])
def test_no_gpu_fallback_sets_direct_io_as_trtexec_does(version, precision_flags):
    plan = plan_build(version, "fp16", BuildConfig(dla_core=0, gpu_fallback=False, batch=1))
    assert plan.builder_flags == (*precision_flags, "DIRECT_IO")
    cmd = trtexec_command("m.onnx", "m.plan", plan, "input", ((1, 1, 8, 8),) * 3, 1024, BuildConfig(dla_core=0))
    assert "--useDLACore=0" in cmd and "--directIO" in cmd and "--allowGPUFallback" not in cmd
    with_fallback = plan_build(version, "fp16", BuildConfig(dla_core=0, batch=1))
    assert "GPU_FALLBACK" in with_fallback.builder_flags and "DIRECT_IO" not in with_fallback.builder_flags


# ---------------------------------------------------------------- TF32


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_fp32_engines_clear_tf32(version):
    plan = plan_build(version, "fp32", BuildConfig())
    assert plan.cleared_flags == ("TF32",) and any("TF32 disabled" in note for note in plan.notes)
    cmd = trtexec_command("m.onnx", "m.plan", plan, "input", ((1, 1, 8, 8),) * 3, 1024, BuildConfig())
    assert "--noTF32" in cmd
    assert plan_build(version, "fp16", BuildConfig()).cleared_flags == ()
    assert plan_build(version, "int8", BuildConfig()).cleared_flags == ()


# ---------------------------------------------------------------- the exact Jetson module

ORIN_DEVKIT = {"model": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.4.3"}
ORIN_NX = {"model": "NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "l4t": "36.4.3"}
ORIN_NANO = {"model": "NVIDIA Jetson Orin Nano Developer Kit", "l4t": "36.4.3"}


def _sidecar(jetson, sm, mem) -> EngineSidecar:
    return EngineSidecar(
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        precision="fp16",
        source_onnx="m.onnx",
        source_onnx_sha256="",
        engine_sha256="",
        forgotten_classes=(3,),
        jetson=jetson,
        gpu_sm_count=sm,
        gpu_memory_mib=mem,
    )


def _env(jetson, sm, mem) -> dict:
    return {
        "tensorrt_version": "10.3.0",
        "gpu_name": "Orin",
        "compute_capability": "8.7",
        "jetson": jetson,
        "gpu_sm_count": sm,
        "gpu_memory_mib": mem,
    }


@pytest.mark.parametrize(
    "jetson, built, here, needle",
    [
        (ORIN_DEVKIT, (16, 62_800), (14, 30_600), "16 streaming multiprocessors (here: 14)"),  # AGX Orin 64 vs 32 GB
        (ORIN_NX, (8, 15_600), (8, 7_600), "15600 MiB of memory (here: 7600 MiB)"),  # Orin NX 16 vs 8 GB
        (ORIN_NANO, (8, 7_600), (4, 3_600), "8 streaming multiprocessors (here: 4)"),  # Orin Nano 8 vs 4 GB
        (ORIN_NANO, (8, 7_600), (None, None), "(here: unknown)"),  # fail closed
    ],
)
def test_modules_of_one_family_do_not_share_an_engine(jetson, built, here, needle):
    problems = compatibility_problems(_sidecar(jetson, *built), _env(jetson, *here))
    assert any(needle in p for p in problems), problems


def test_same_module_with_a_little_less_memory_is_accepted():
    assert compatibility_problems(_sidecar(ORIN_NX, 8, 15_600), _env(ORIN_NX, 8, 15_300)) == []
    assert same_memory_class(15_600, 15_300) and not same_memory_class(15_600, 7_600)
    # an engine whose sidecar predates these fields is judged as before
    assert compatibility_problems(_sidecar(ORIN_NX, None, None), _env(ORIN_NX, 8, 7_600)) == []


# ---------------------------------------------------------------- NumPy 2 beside JetPack 6's TensorRT 10.3


def test_numpy2_beside_tensorrt_10_3_is_named():
    problem = numpy_tensorrt_problem("2.1.3", "10.3.0.30")
    assert problem and "pip install 'numpy<2'" in problem and "docs/jetson.md" in problem
    assert numpy_tensorrt_problem("1.26.4", "10.3.0.30") is None
    assert numpy_tensorrt_problem("2.1.3", "10.8.0") is None


def test_numpy2_import_failure_is_named():
    error = "A module that was compiled using NumPy 1.x cannot be run in NumPy 2.1.3 as it may crash"
    assert "numpy<2" in numpy_tensorrt_problem("2.1.3", None, error)
    assert numpy_tensorrt_problem("2.1.3", None, "libnvinfer.so.10: cannot open shared object file") is None


def test_tensorrt_extra_pins_numpy_below_2_on_jetson():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tensorrt"]
    assert "numpy<2; platform_machine == 'aarch64'" in extra
    assert "numpy<2" in (REPO / "docs" / "jetson.md").read_text()
