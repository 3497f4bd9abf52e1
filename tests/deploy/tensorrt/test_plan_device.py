"""Pure device-side decisions (no TensorRT): static shapes and DLA plans, compatibility options, the timing-cache
outcome, the DLA placement verdict, the engine-inspector summary, the trtexec command and the CPU-layout refusal."""

from __future__ import annotations

import json
import shlex

import pytest

from edge_unlearn.deploy.tensorrt.plan import (
    BuildConfig,
    LayerPlacement,
    PlacementReport,
    check_dla_batch,
    compute_profile,
    format_command,
    mask_layers_to_pin,
    plan_build,
    refuse_cpu_layout,
    summarize_engine_information,
    timing_cache_outcome,
    trtexec_command,
)
from edge_unlearn.errors import DependencyError, UsageError

TRT10 = "10.3.0.30"
TRT10_NEW = "10.13.3"
TRT11 = "11.4.1"
IMG = ("batch", 1, 8, 8)


# ---------------------------------------------------------------- static shapes


def test_static_batch_is_min_opt_max():
    assert compute_profile(IMG, batch=4) == ((4, 1, 8, 8),) * 3


def test_static_batch_excludes_a_range():
    with pytest.raises(UsageError, match="--batch-size builds a static shape"):
        compute_profile(IMG, max_batch=16, batch=4)


@pytest.mark.parametrize("bad", [0, -2, True])
def test_static_batch_must_be_positive(bad):
    with pytest.raises(UsageError, match="--batch-size must be a positive integer"):
        compute_profile(IMG, batch=bad)


def test_dla_needs_a_static_shape():
    with pytest.raises(UsageError, match="DLA needs a static input shape: add --batch-size N"):
        compute_profile(IMG, require_static=True)
    assert compute_profile(IMG, batch=2, require_static=True)[0][0] == 2
    assert compute_profile((4, 1, 8, 8), require_static=True) == ((4, 1, 8, 8),) * 3  # fixed in the ONNX
    with pytest.raises(UsageError, match="fixed batch of 4"):
        compute_profile((4, 1, 8, 8), batch=2)


def test_dla_batch_limit():
    check_dla_batch(16, 32)
    check_dla_batch(64, 0)  # unknown limit: TensorRT decides
    with pytest.raises(UsageError, match="exceeds the DLA's maximum batch of 32"):
        check_dla_batch(33, 32)


# ---------------------------------------------------------------- compatibility options, optimisation level


def test_optimization_level_is_checked_and_carried():
    assert plan_build(TRT10, "fp32", BuildConfig(optimization_level=5)).optimization_level == 5
    with pytest.raises(UsageError, match="0..5"):
        plan_build(TRT10, "fp32", BuildConfig(optimization_level=6))


def test_version_compatible_sets_the_flag_on_both_generations():
    assert "VERSION_COMPATIBLE" in plan_build(TRT10, "fp32", BuildConfig(version_compatible=True)).builder_flags
    assert plan_build(TRT11, "int8", BuildConfig(version_compatible=True)).builder_flags == ("VERSION_COMPATIBLE",)


def test_hardware_compatibility_levels_by_version():
    assert (
        plan_build(TRT10, "fp32", BuildConfig(hardware_compatibility="ampere-plus")).hardware_compatibility
        == "AMPERE_PLUS"
    )
    with pytest.raises(UsageError, match="needs TensorRT 10.9.0 or newer"):
        plan_build(TRT10, "fp32", BuildConfig(hardware_compatibility="same-compute-capability"))
    plan = plan_build(TRT10_NEW, "fp32", BuildConfig(hardware_compatibility="same-compute-capability"))
    assert plan.hardware_compatibility == "SAME_COMPUTE_CAPABILITY"


@pytest.mark.parametrize("extra", [dict(version_compatible=True), dict(hardware_compatibility="ampere-plus")])
def test_dla_engines_are_never_portable(extra):
    with pytest.raises(UsageError, match="DLA engines cannot be version- or hardware-compatible"):
        plan_build(TRT10, "fp16", BuildConfig(dla_core=0, **extra))


def test_precision_flags_deprecated_from_10_12_are_noted():
    old = plan_build(TRT10, "fp32", BuildConfig(precision="fp16"))
    new = plan_build(TRT10_NEW, "fp32", BuildConfig(precision="fp16"))
    assert not any("deprecated in TensorRT" in n for n in old.notes)
    assert any("deprecated in TensorRT 10.13.3" in n for n in new.notes)


@pytest.mark.parametrize("onnx_prec", ["fp16", "int8"])
def test_trt10_12_plus_builds_reduced_precision_onnx_strongly_typed(onnx_prec):
    """From 10.12 the FP16/INT8 flags are deprecated: the ONNX that carries its precision needs none of them."""
    plan = plan_build(TRT10_NEW, onnx_prec, BuildConfig())
    assert plan.strongly_typed and plan.network_flags == ("STRONGLY_TYPED",) and plan.builder_flags == ()
    weak = plan_build(TRT10_NEW, onnx_prec, BuildConfig(strongly_typed=False))
    assert not weak.strongly_typed and weak.builder_flags == (onnx_prec.upper(),)
    assert not plan_build(TRT10, onnx_prec, BuildConfig()).strongly_typed  # 10.3: unchanged
    assert not plan_build(TRT10_NEW, "fp32", BuildConfig()).strongly_typed


def test_trt10_strongly_typed_qdq_does_not_silently_ignore_fp16():
    """TensorRT 10 ignores --precision fp16 on a strongly typed Q/DQ network, 11 errors: refuse on both."""
    with pytest.raises(UsageError, match="would be ignored by TensorRT 10"):
        plan_build(TRT10, "int8", BuildConfig(precision="fp16", strongly_typed=True))
    with pytest.raises(UsageError, match="takes the precision from the ONNX"):
        plan_build(TRT11, "int8", BuildConfig(precision="fp16"))


# ---------------------------------------------------------------- timing cache


def test_timing_cache_new_and_loaded():
    assert timing_cache_outcome("t.cache", False, True, True).state == "new"
    loaded = timing_cache_outcome("t.cache", True, True, True)
    assert loaded.state == "loaded" and loaded.message == "timing cache t.cache: loaded"


@pytest.mark.parametrize("created, attached", [(True, False), (False, False)])
def test_timing_cache_from_another_version_is_not_reported_loaded(created, attached):
    outcome = timing_cache_outcome("t.cache", True, created, attached)
    assert outcome.state == "stale"
    assert "loaded" not in outcome.message and "another TensorRT version or GPU" in outcome.message


def test_timing_cache_that_cannot_even_start_is_an_error():
    with pytest.raises(DependencyError, match="drop --timing-cache"):
        timing_cache_outcome("t.cache", False, True, False)


def test_timing_cache_lock_serialises_writers(tmp_path):
    """Two holders of the lock never overlap (fcntl.flock on <cache>.lock, like Polygraphy's LockFile)."""
    import threading
    import time

    from edge_unlearn.export.engine import locked_file

    cache = tmp_path / "t.cache"
    inside: list[int] = []
    overlaps: list[int] = []

    def hold(tag: int) -> None:
        with locked_file(cache):
            if inside:
                overlaps.append(tag)
            inside.append(tag)
            time.sleep(0.05)
            inside.remove(tag)

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [] and (tmp_path / "t.cache.lock").is_file()


# ---------------------------------------------------------------- DLA placement


def _report(*devices: str) -> PlacementReport:
    return PlacementReport(tuple(LayerPlacement(f"l{i}", "CONVOLUTION", d) for i, d in enumerate(devices)))


def test_placement_fails_when_nothing_runs_on_the_dla():
    with pytest.raises(UsageError, match="--dla-core 1: no layer of this network can run on the DLA"):
        _report("GPU", "GPU").require_dla(1)


def test_placement_passes_and_names_the_gpu_layers():
    report = _report("DLA", "DLA", "GPU")
    report.require_dla(0)
    assert report.summary().startswith("DLA placement: 2 of 3 layers on the DLA; on the GPU: l2 (CONVOLUTION)")
    assert report.to_dict()["dla_layers"] == 2 and report.to_dict()["gpu_layers"] == 1


def test_mask_layers_are_pinned_for_implicit_int8():
    names = ["conv", "head", "edge_unlearn_mask/fill", "edge_unlearn_mask/scatter", "edge_unlearn_mask_value"]
    assert mask_layers_to_pin(names) == ["edge_unlearn_mask/fill", "edge_unlearn_mask/scatter"]


# ---------------------------------------------------------------- engine inspector


def test_engine_information_detailed():
    text = json.dumps(
        {
            "Layers": [
                {
                    "Name": "conv + relu",
                    "LayerType": "CaskConvolution",
                    "TacticName": "sm87_xmma_fprop",
                    "Outputs": [
                        {"Name": "relu_out", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}
                    ],
                },
                {
                    "Name": "{ForeignNode[head...flatten]}",
                    "LayerType": "DLA",
                    "TacticName": "",
                    "Outputs": [{"Name": "retained_logits", "Format/Datatype": "Row major linear Int8 format"}],
                },
                {
                    "Name": "edge_unlearn_mask/scatter",
                    "LayerType": "Gather",
                    "Outputs": [{"Name": "logits", "Format/Datatype": "Row major linear FP32"}],
                },
            ],
            "Bindings": ["input", "logits"],
        }
    )
    info = summarize_engine_information(text)
    assert info["detailed"] and info["num_layers"] == 3 and info["dla_layers"] == 1
    assert [r["precision"] for r in info["layers"]] == ["fp16", "int8", "fp32"]
    assert info["precision_counts"] == {"fp16": 1, "int8": 1, "fp32": 1}


def test_engine_information_names_only():
    info = summarize_engine_information(json.dumps({"Layers": ["a", "b"], "Bindings": []}))
    assert not info["detailed"] and info["num_layers"] == 2 and info["precision_counts"] == {}


# ---------------------------------------------------------------- trtexec


def _cmd(config: BuildConfig, version: str = TRT10, onnx_prec: str = "fp32", profile=None) -> list[str]:
    plan = plan_build(version, onnx_prec, config)
    profile = profile or compute_profile(IMG, config.min_batch, config.opt_batch, config.max_batch, batch=config.batch)
    return trtexec_command("m.onnx", "m.plan", plan, "input", profile, 256, config)


def test_trtexec_dynamic_profile():
    cmd = _cmd(BuildConfig(max_batch=16))
    assert cmd[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.plan"]
    assert "--minShapes=input:1x1x8x8" in cmd and "--optShapes=input:8x1x8x8" in cmd
    assert "--maxShapes=input:16x1x8x8" in cmd and "--memPoolSize=workspace:256M" in cmd
    assert "--fp16" not in cmd and "--profilingVerbosity=detailed" in cmd


def test_trtexec_dla_fp16_static():
    cmd = _cmd(BuildConfig(precision="fp16", dla_core=1, batch=2, optimization_level=4, timing_cache="t.cache"))
    for piece in (
        "--shapes=input:2x1x8x8",
        "--fp16",
        "--useDLACore=1",
        "--allowGPUFallback",
        "--builderOptimizationLevel=4",
        "--timingCacheFile=t.cache",
    ):
        assert piece in cmd
    assert not any(p.startswith("--minShapes") for p in cmd)


def test_trtexec_trt11_and_compat():
    cmd = _cmd(BuildConfig(version_compatible=True, hardware_compatibility="ampere-plus", verbose=True), TRT11, "int8")
    assert "--versionCompatible" in cmd and "--hardwareCompatibilityLevel=ampere+" in cmd and "--verbose" in cmd
    assert "--int8" not in cmd and "--stronglyTyped" not in cmd  # 11: the ONNX carries the precision
    strong = _cmd(BuildConfig(strongly_typed=True), TRT10, "int8")
    assert "--stronglyTyped" in strong and "--int8" not in strong


def test_format_command_is_shell_safe():
    text = format_command(["trtexec", "--onnx=my model.onnx"])
    assert shlex.split(text) == ["trtexec", "--onnx=my model.onnx"]


# ---------------------------------------------------------------- CPU-layout refusal


def test_cpu_quantized_onnx_is_refused_and_others_accepted():
    with pytest.raises(UsageError, match="quantize MODEL.onnx --target tensorrt"):
        refuse_cpu_layout({"edge_unlearn_quant_target": "cpu"}, "m.int8.onnx")
    refuse_cpu_layout({"edge_unlearn_quant_target": "tensorrt"}, "m.int8.onnx")
    refuse_cpu_layout({}, "m.onnx")
