"""Real TensorRT engines: build -> infer -> validate -> bench. Marked ``tensorrt``; every test takes the
``trt_device`` fixture, which skips with the reason when TensorRT, pycuda or a CUDA GPU is absent (always in CI).

Run on a Jetson or a GPU server: ``pytest tests/tensorrt -m tensorrt -v``. No torch is needed: the ONNX graphs
and the evaluation bundle are built with onnx.helper and onnxruntime (conftest.py).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from edge_unlearn.errors import ModelFileError, UsageError
from edge_unlearn.export.bundle import load_bundle
from edge_unlearn.export.onnx_meta import MASK_VALUE
from edge_unlearn.export.sidecar import read_sidecar, sidecar_path
from edge_unlearn.export.tensorrt import BuildConfig, TensorRTRunner, api_generation, build_engine, current_environment
from edge_unlearn.export.validate import Thresholds, validate

from .conftest import (FORGOTTEN, IMAGE, NUM_CLASSES, calib_inputs, ours_fp16, ours_fp32, ours_int8, save,
                       write_bundle)

pytestmark = pytest.mark.tensorrt

SMALL = dict(min_batch=1, opt_batch=4, max_batch=16, workspace_mib=256)


def _ort_logits(onnx_path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def test_build_fp32_engine_run_and_compare(trt_device, tmp_path):
    onnx_path = save(ours_fp32(), tmp_path / "model.onnx")
    plan = tmp_path / "model.plan"
    sidecar = build_engine(onnx_path, plan, BuildConfig(**SMALL))
    assert plan.is_file() and sidecar_path(plan).is_file()
    env = current_environment()
    assert read_sidecar(plan) == sidecar
    assert (sidecar.tensorrt_version, sidecar.gpu_name, sidecar.compute_capability) == (
        env["tensorrt_version"], env["gpu_name"], env["compute_capability"])
    assert sidecar.precision == "fp32" and sidecar.forgotten_classes == FORGOTTEN
    assert sidecar.profile == {"min": [1, *IMAGE], "opt": [4, *IMAGE], "max": [16, *IMAGE]}
    x = calib_inputs(40, seed=5)
    ref = _ort_logits(onnx_path, x)
    with TensorRTRunner(str(plan)) as runner:
        for n in (1, 5, 16, 40):  # 40 > max batch 16: split into chunks
            out = runner.infer(x[:n])
            assert out.shape == (n, NUM_CLASSES) and out.dtype == np.float32
            np.testing.assert_allclose(out, ref[:n], rtol=1e-3, atol=1e-3)
            assert np.all(out[:, list(FORGOTTEN)] == np.float32(MASK_VALUE))
        info = runner.describe()
    assert info["runtime"] == "tensorrt" and info["forgotten_classes"] == list(FORGOTTEN)
    assert info["num_classes"] == NUM_CLASSES and info["max_batch"] == 16


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_build_from_reduced_precision_onnx_and_validate(trt_device, tmp_path, precision):
    fp32 = save(ours_fp32(), tmp_path / "model.onnx")
    src = ours_fp16(tmp_path) if precision == "fp16" else ours_int8(tmp_path)
    plan = tmp_path / f"model.{precision}.plan"
    sidecar = build_engine(src, plan, BuildConfig(**SMALL))
    assert sidecar.precision == precision
    assert sidecar.strongly_typed is (api_generation(sidecar.tensorrt_version) >= 11)
    bundle = load_bundle(write_bundle(tmp_path / "eval.npz", fp32))
    thresholds = Thresholds() if precision == "fp16" else Thresholds(max_retain_drop=0.1, min_agreement=0.9)
    report = validate(TensorRTRunner(str(plan)), bundle, thresholds)
    checks = {c.name: c for c in report.checks}
    for name in ("finite_outputs", "forget_acc", "forgotten_class_wins", "model_forgets_bundle_classes"):
        assert checks[name].passed, report.summary()
    assert report.environment["runtime"] == "tensorrt"
    if precision == "fp16":
        assert report, report.summary()


def test_open_runner_dispatches_engines_to_tensorrt(trt_device, tmp_path):
    """The lead's wiring: ``open_runner`` (and so ``validate``/``bench``) takes .plan/.engine unchanged."""
    from edge_unlearn.export.runners import open_runner
    from edge_unlearn.export.validate import validate_model

    fp32 = save(ours_fp32(), tmp_path / "model.onnx")
    plan = tmp_path / "model.engine"
    build_engine(fp32, plan, BuildConfig(**SMALL))
    assert isinstance(open_runner(plan), TensorRTRunner)
    report = validate_model(plan, write_bundle(tmp_path / "eval.npz", fp32))
    assert report, report.summary()


def test_fp16_builder_flag_is_version_dependent(trt_device, tmp_path):
    onnx_path = save(ours_fp32(), tmp_path / "model.onnx")
    plan = tmp_path / "model.fp16.plan"
    config = BuildConfig(precision="fp16", **SMALL)
    if api_generation(trt_device.__version__) >= 11:
        with pytest.raises(UsageError, match="takes the precision from the ONNX"):
            build_engine(onnx_path, plan, config)
        assert not plan.exists()
    else:
        sidecar = build_engine(onnx_path, plan, config)
        assert sidecar.precision == "fp16" and "FP16" in sidecar.builder_flags


def test_implicit_calibration_only_on_tensorrt_10(trt_device, tmp_path):
    onnx_path = save(ours_fp32(), tmp_path / "model.onnx")
    np.save(tmp_path / "calib.npy", calib_inputs(32))
    config = BuildConfig(int8_calibration=str(tmp_path / "calib.npy"), **SMALL)
    if api_generation(trt_device.__version__) >= 11:
        with pytest.raises(UsageError, match="removed in TensorRT"):
            build_engine(onnx_path, tmp_path / "c.plan", config)
    else:
        sidecar = build_engine(onnx_path, tmp_path / "c.plan", config)
        assert sidecar.precision == "int8" and "INT8" in sidecar.builder_flags


def test_timing_cache_is_written_and_reused(trt_device, tmp_path):
    onnx_path = save(ours_fp32(), tmp_path / "model.onnx")
    cache = tmp_path / "timing.cache"
    build_engine(onnx_path, tmp_path / "a.plan", BuildConfig(timing_cache=str(cache), **SMALL))
    assert cache.is_file() and cache.stat().st_size > 0
    messages: list[str] = []
    build_engine(onnx_path, tmp_path / "b.plan", BuildConfig(timing_cache=str(cache), **SMALL), echo=messages.append)
    assert any("loaded" in m for m in messages)


def test_engine_for_another_tensorrt_or_gpu_is_refused_before_deserialising(trt_device, tmp_path):
    onnx_path = save(ours_fp32(), tmp_path / "model.onnx")
    plan = tmp_path / "model.plan"
    build_engine(onnx_path, plan, BuildConfig(**SMALL))
    path = sidecar_path(plan)
    data = json.loads(path.read_text())
    for change in ({"tensorrt_version": "9.9.9"}, {"gpu_name": "Some Other GPU"}, {"compute_capability": "1.0"}):
        path.write_text(json.dumps({**data, **change}))
        with pytest.raises(ModelFileError, match="rebuild on this device with `edge-unlearn build-engine"):
            with TensorRTRunner(str(plan)):
                pass
    path.unlink()
    with pytest.raises(ModelFileError, match="has no sidecar"):
        with TensorRTRunner(str(plan)):
            pass


def test_dla_core(trt_device, tmp_path):
    cores = trt_device.Builder(trt_device.Logger(trt_device.Logger.WARNING)).num_DLA_cores
    if not cores:
        pytest.skip("this device has no DLA core (DLA is on Jetson Orin/Xavier)")
    src = ours_int8(tmp_path)
    sidecar = build_engine(src, tmp_path / "dla.plan", BuildConfig(dla_core=0, **SMALL))
    assert sidecar.dla_core == 0
    with TensorRTRunner(str(tmp_path / "dla.plan")) as runner:
        assert runner.infer(calib_inputs(3)).shape == (3, NUM_CLASSES)


def test_cli_build_validate_bench(trt_device, tmp_path):
    """What a user types on the device: build-engine, validate, bench."""
    from click.testing import CliRunner

    from edge_unlearn.cli import main

    for command in ("build-engine", "validate", "bench"):
        if command not in main.commands:
            pytest.fail(f"`edge-unlearn {command}` is not wired into the CLI group")
    fp32 = save(ours_fp32(), tmp_path / "model.onnx")
    src = ours_int8(tmp_path)
    plan = tmp_path / "model.plan"
    bundle = write_bundle(tmp_path / "eval.npz", fp32)
    cli = CliRunner()
    built = cli.invoke(main, ["build-engine", str(src), "-o", str(plan), "--max-batch", "16", "--json"])
    assert built.exit_code == 0, built.output
    assert plan.is_file() and sidecar_path(plan).is_file()
    validated = cli.invoke(main, ["validate", str(plan), "--bundle", str(bundle)])
    assert validated.exit_code in (0, 1), validated.output  # 1 = a validation verdict, not a crash
    assert "Traceback" not in validated.output
    bench = cli.invoke(main, ["bench", str(plan)])
    assert bench.exit_code == 0, bench.output
