"""Version dispatch, the optimisation profile and the build configuration: pure functions, no TensorRT needed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge_unlearn.deploy.tensorrt import (
    BuildConfig,
    api_generation,
    compute_profile,
    default_engine_path,
    hazard_target,
    is_engine_path,
    load_calibration_inputs,
    onnx_input_shape,
    parse_version,
    plan_build,
)
from edge_unlearn.errors import DependencyError, ModelFileError, UsageError

from .conftest import IMAGE, ours_fp32

TRT10 = "10.3.0.30"  # JetPack 6.1 / 6.2
TRT11 = "11.4.1"  # JetPack 7.2.2+


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10.3.0.30", (10, 3, 0)),
        ("10.0", (10, 0, 0)),
        ("11.4.1", (11, 4, 1)),
        ("10.13.3.9+cuda13", (10, 13, 3)),
        ("8.6.2.3", (8, 6, 2)),
        (" 11.0.0 ", (11, 0, 0)),
        ("10.1.0rc1", (10, 1, 0)),
    ],
)
def test_parse_version(text, expected):
    assert parse_version(text) == expected


@pytest.mark.parametrize("bad", ["", "abc", "v10"])
def test_parse_version_rejects_garbage(bad):
    with pytest.raises(ValueError):
        parse_version(bad)


@pytest.mark.parametrize(
    "version, gen", [("10.0.1", 10), ("10.16.0", 10), ("11.0.0", 11), ("11.4.1", 11), ("12.0.0", 11)]
)
def test_api_generation(version, gen):
    assert api_generation(version) == gen


@pytest.mark.parametrize("old", ["8.6.2.3", "9.3.0", "garbage"])
def test_too_old_or_unreadable_tensorrt_is_refused(old):
    with pytest.raises(DependencyError, match="TensorRT"):
        api_generation(old)


# ---------------------------------------------------------------- TensorRT 10: weak typing, flags


def test_trt10_fp32_onnx_default_is_fp32_without_flags():
    plan = plan_build(TRT10, "fp32", BuildConfig())
    assert (plan.precision, plan.builder_flags, plan.network_flags, plan.strongly_typed) == ("fp32", (), (), False)


def test_trt10_fp16_by_builder_flag():
    plan = plan_build(TRT10, "fp32", BuildConfig(precision="fp16"))
    assert plan.precision == "fp16" and plan.builder_flags == ("FP16",) and not plan.strongly_typed


def test_trt10_int8_from_qdq_onnx():
    plan = plan_build(TRT10, "int8", BuildConfig())
    assert plan.precision == "int8" and plan.builder_flags == ("INT8",) and not plan.calibrate
    mixed = plan_build(TRT10, "int8", BuildConfig(precision="fp16"))
    assert mixed.builder_flags == ("INT8", "FP16")


def test_trt10_fp16_onnx():
    assert plan_build(TRT10, "fp16", BuildConfig()).builder_flags == ("FP16",)
    strong = plan_build(TRT10, "fp16", BuildConfig(strongly_typed=True))
    assert strong.strongly_typed and strong.network_flags == ("STRONGLY_TYPED",) and strong.builder_flags == ()


def test_trt10_int8_needs_qdq_or_explicit_calibration():
    with pytest.raises(UsageError, match="Q/DQ ONNX"):
        plan_build(TRT10, "fp32", BuildConfig(precision="int8"))
    plan = plan_build(TRT10, "fp32", BuildConfig(int8_calibration="calib.npz"))
    assert plan.calibrate and plan.precision == "int8" and plan.builder_flags == ("INT8",)
    assert any("deprecated" in note for note in plan.notes)


def test_trt10_calibration_only_for_fp32_onnx():
    with pytest.raises(UsageError, match="already carries its scales"):
        plan_build(TRT10, "int8", BuildConfig(int8_calibration="calib.npz"))


def test_trt10_strongly_typed_refuses_precision_flags():
    with pytest.raises(UsageError, match="FP16 ONNX"):
        plan_build(TRT10, "fp32", BuildConfig(precision="fp16", strongly_typed=True))


def test_trt10_dla_builds_fp16():
    plan = plan_build(TRT10, "fp32", BuildConfig(dla_core=0, precision="fp16", batch=1))
    assert plan.dla_core == 0 and plan.precision == "fp16" and plan.builder_flags == ("FP16", "GPU_FALLBACK")
    assert plan_build(TRT10, "fp16", BuildConfig(dla_core=1)).builder_flags == ("FP16", "GPU_FALLBACK")
    # trtexec without --allowGPUFallback: DIRECT_IO, so no I/O reformat lands on the GPU (sampleEngines.cpp)
    assert plan_build(TRT10, "fp16", BuildConfig(dla_core=0, gpu_fallback=False)).builder_flags == ("FP16", "DIRECT_IO")
    with pytest.raises(UsageError, match="DLA runs FP16 or INT8"):
        plan_build(TRT10, "fp32", BuildConfig(dla_core=0))
    with pytest.raises(UsageError, match="--dla-core"):
        plan_build(TRT10, "fp16", BuildConfig(dla_core=-1))


def test_trt10_dla_refuses_qdq_int8_and_calibration():
    """TensorRT 10's DLA does not run explicit (Q/DQ) INT8: with GPU fallback every layer would silently land on
    the GPU while the sidecar said dla_core=0."""
    with pytest.raises(UsageError, match="does not run Q/DQ.*FP16"):
        plan_build(TRT10, "int8", BuildConfig(dla_core=0))
    with pytest.raises(UsageError, match="DLA engines in FP16"):
        plan_build(TRT10, "fp32", BuildConfig(dla_core=0, int8_calibration="calib.npz"))


def test_unknown_precision():
    with pytest.raises(UsageError, match="unknown precision"):
        plan_build(TRT10, "fp32", BuildConfig(precision="bf16"))


# ---------------------------------------------------------------- TensorRT 11: strongly typed only


@pytest.mark.parametrize("prec", ["fp32", "fp16", "int8"])
def test_trt11_precision_comes_from_the_onnx(prec):
    plan = plan_build(TRT11, prec, BuildConfig())
    assert plan.precision == prec and plan.strongly_typed
    assert plan.builder_flags == () and plan.network_flags == ()  # no FP16/INT8 flags; STRONGLY_TYPED is ignored


def test_trt11_refuses_builder_flag_precision():
    with pytest.raises(UsageError, match="takes the precision from the ONNX.*FP16 ONNX"):
        plan_build(TRT11, "fp32", BuildConfig(precision="fp16"))
    with pytest.raises(UsageError, match="INT8 ONNX"):
        plan_build(TRT11, "fp32", BuildConfig(precision="int8"))
    assert plan_build(TRT11, "fp16", BuildConfig(precision="fp16")).precision == "fp16"


def test_trt11_refuses_implicit_calibration_and_weak_typing():
    with pytest.raises(UsageError, match="removed in TensorRT 11"):
        plan_build(TRT11, "fp32", BuildConfig(int8_calibration="calib.npz"))
    with pytest.raises(UsageError, match="strongly typed networks only"):
        plan_build(TRT11, "fp16", BuildConfig(strongly_typed=False))


def test_trt11_dla_keeps_gpu_fallback():
    assert plan_build(TRT11, "fp16", BuildConfig(dla_core=1)).builder_flags == ("GPU_FALLBACK",)
    assert plan_build(TRT11, "int8", BuildConfig(dla_core=0)).precision == "int8"  # the placement report decides
    with pytest.raises(UsageError, match="DLA runs FP16 or INT8"):
        plan_build(TRT11, "fp32", BuildConfig(dla_core=0))


def test_hazard_target():
    assert hazard_target("fp32", BuildConfig()) == "fp32"
    assert hazard_target("fp32", BuildConfig(precision="fp16")) == "fp16"
    assert hazard_target("fp16", BuildConfig()) == "fp16"
    assert hazard_target("int8", BuildConfig()) == "int8"


# ---------------------------------------------------------------- optimisation profile


def test_profile_defaults():
    lo, opt, hi = compute_profile(("batch", 3, 32, 32))
    assert (lo, opt, hi) == ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))


@pytest.mark.parametrize(
    "given, expected",
    [
        ((None, None, 4), (1, 4, 4)),  # opt clamped into [min, max]
        ((16, None, None), (16, 16, 32)),
        ((64, None, None), (64, 64, 64)),  # max follows a large min
        ((2, 3, 5), (2, 3, 5)),
        ((1, 1, 1), (1, 1, 1)),
    ],
)
def test_profile_batches(given, expected):
    lo, opt, hi = compute_profile((None, 1, 8, 8), *given)
    assert (lo[0], opt[0], hi[0]) == expected and lo[1:] == (1, 8, 8)


@pytest.mark.parametrize("given", [(4, 2, 8), (1, 9, 8), (0, None, None), (None, None, -1)])
def test_profile_rejects_bad_batches(given):
    with pytest.raises(UsageError):
        compute_profile(("batch", 1, 8, 8), *given)


def test_profile_fixed_batch():
    assert compute_profile((4, 1, 8, 8)) == ((4, 1, 8, 8),) * 3
    assert compute_profile((4, 1, 8, 8), 4, 4, 4)[2] == (4, 1, 8, 8)
    with pytest.raises(UsageError, match="fixed batch of 4"):
        compute_profile((4, 1, 8, 8), max_batch=16)


def test_profile_refuses_dynamic_image_axes():
    with pytest.raises(ModelFileError, match="axis 2 is dynamic"):
        compute_profile(("batch", 3, "h", 32))


def test_onnx_input_shape_of_our_graph():
    name, shape = onnx_input_shape(ours_fp32())
    assert name == "input" and shape == ("batch", *IMAGE)


def test_engine_paths():
    assert str(default_engine_path("a/model.int8.onnx")) == "a/model.int8.plan"
    assert is_engine_path("m.plan") and is_engine_path("m.ENGINE") and not is_engine_path("m.onnx")


def test_load_calibration_inputs(tmp_path):
    x = np.zeros((5, *IMAGE), np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "b.npz", inputs=x, labels=np.zeros(5))
    assert load_calibration_inputs(tmp_path / "x.npy", IMAGE).shape == (5, *IMAGE)
    assert load_calibration_inputs(tmp_path / "b.npz", IMAGE).dtype == np.float32
    with pytest.raises(UsageError, match="float \\[N, 3, 8, 8\\]"):
        load_calibration_inputs(tmp_path / "x.npy", (3, 8, 8))
    with pytest.raises(UsageError, match="not found"):
        load_calibration_inputs(tmp_path / "missing.npz", IMAGE)


def test_build_config_is_frozen_and_serialisable():
    config = BuildConfig(precision="fp16", max_batch=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.precision = "int8"  # type: ignore[misc]
    assert config.to_json()["max_batch"] == 4 and config.to_json()["min_batch"] is None
