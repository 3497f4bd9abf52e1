"""Real TensorRT engines: export -> quantize -> build -> validate -> bench. Marked ``tensorrt``; every test takes
the ``trt_device`` fixture first, which skips with the reason when TensorRT, pycuda or a CUDA GPU is absent
(always in CI). NONE of these has run yet: TensorRT cannot be installed where this was written.

Run on a Jetson or a GPU server: ``pytest tests/deploy/tensorrt -m tensorrt -v -rs``. The pipeline tests export a lenet
trained on digits (needs torch), or take the files from ``EDGE_UNLEARN_DEPLOY_DIR`` (see conftest.py).
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from edge_unlearn.deploy.bundle import load_bundle
from edge_unlearn.deploy.onnx_meta import MASK_VALUE
from edge_unlearn.deploy.sidecar import read_sidecar, sidecar_path
from edge_unlearn.deploy.tensorrt import (
    BuildConfig,
    TensorRTRunner,
    api_generation,
    current_environment,
    plan_build,
)
from edge_unlearn.deploy.validate import Thresholds, validate
from edge_unlearn.errors import ModelFileError, UsageError
from edge_unlearn.export.engine import build_engine, inspect_engine

from .conftest import FORGOTTEN, IMAGE, NUM_CLASSES, calib_inputs, ours_fp32, save

pytestmark = pytest.mark.tensorrt

SMALL = dict(min_batch=1, opt_batch=4, max_batch=16, workspace_mib=256)


def _ort_logits(onnx_path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


# ---------------------------------------------------------------- the real pipeline, default thresholds


@pytest.mark.parametrize("which", ["fp32", "fp16", "int8"])
def test_pipeline_engine_passes_validation_with_default_thresholds(trt_device, deploy, tmp_path, which):
    """export -> quantize (our FP16 and INT8 files) -> build-engine -> validate, thresholds untouched."""
    src = {"fp32": deploy.fp32, "fp16": deploy.fp16, "int8": deploy.int8}[which]
    plan = tmp_path / f"model.{which}.plan"
    sidecar = build_engine(src, plan, BuildConfig(**SMALL))
    assert sidecar.precision == which
    assert sidecar.strongly_typed is plan_build(sidecar.tensorrt_version, which, BuildConfig(**SMALL)).strongly_typed
    report = validate(TensorRTRunner(str(plan)), load_bundle(deploy.bundle), Thresholds())
    assert report, report.summary()
    assert report.environment["runtime"] == "tensorrt"
    info = inspect_engine(plan)
    assert info["detailed"] and info["num_layers"] > 0
    if which == "int8":
        assert info["precision_counts"].get("int8", 0) > 0, info["precision_counts"]


def test_cli_build_validate_bench_on_the_pipeline(trt_device, deploy, tmp_path):
    """What a user types on the device: build-engine --json --verbose, validate, bench."""
    from click.testing import CliRunner

    from edge_unlearn.cli import main

    plan = tmp_path / "model.plan"
    try:
        cli = CliRunner(mix_stderr=False)
    except TypeError:
        cli = CliRunner()
    built = cli.invoke(
        main, ["build-engine", str(deploy.int8), "-o", str(plan), "--max-batch", "16", "--json", "--verbose"]
    )
    assert built.exit_code == 0, built.output
    data = json.loads(built.stdout)  # TensorRT's verbose log went to stderr, stdout is pure JSON
    assert data["engine"] == str(plan) and data["precision"] == "int8"
    assert "equivalent trtexec command: trtexec --onnx=" in built.stderr
    assert "[TensorRT verbose]" in built.stderr
    validated = cli.invoke(main, ["validate", str(plan), "--bundle", str(deploy.bundle)])
    assert validated.exit_code == 0, validated.output
    bench = cli.invoke(main, ["bench", str(plan)])
    assert bench.exit_code == 0, bench.output
    said = bench.output + (bench.stderr if bench.stderr_bytes is not None else "")
    assert "benching batch 1, 8, 16 instead of 1, 8, 64" in said  # clipped to the --max-batch 16 profile
    inspected = cli.invoke(main, ["inspect-engine", str(plan), "--json"])
    assert inspected.exit_code == 0 and json.loads(inspected.stdout)["num_layers"] > 0


# ---------------------------------------------------------------- runner mechanics on the tiny graph


def test_build_fp32_engine_run_and_compare(trt_device, tmp_path):
    onnx_path = save(ours_fp32(), tmp_path / "model.onnx")
    plan = tmp_path / "model.plan"
    sidecar = build_engine(onnx_path, plan, BuildConfig(**SMALL))
    assert plan.is_file() and sidecar_path(plan).is_file()
    env = current_environment()
    assert read_sidecar(plan) == sidecar
    assert (sidecar.tensorrt_version, sidecar.gpu_name, sidecar.compute_capability) == (
        env["tensorrt_version"],
        env["gpu_name"],
        env["compute_capability"],
    )
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


def test_static_batch_engine_pads_and_runs_from_another_thread(trt_device, tmp_path):
    onnx_path = save(ours_fp32(), tmp_path / "model.onnx")
    plan = tmp_path / "static.plan"
    sidecar = build_engine(onnx_path, plan, BuildConfig(batch=4, workspace_mib=256))
    assert sidecar.profile["min"] == sidecar.profile["max"] == [4, *IMAGE]
    x = calib_inputs(5, seed=3)
    ref = _ort_logits(onnx_path, x)
    results: dict[str, np.ndarray] = {}
    with TensorRTRunner(str(plan)) as runner:
        results["main"] = runner.infer(x)  # 5 -> 4 + 1 padded to 4
        worker = threading.Thread(target=lambda: results.__setitem__("thread", runner.infer(x)))
        worker.start()
        worker.join()
    for out in results.values():
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3)


def test_gpu_timing_with_and_without_cuda_graph(trt_device, tmp_path):
    onnx_path = save(ours_fp32(), tmp_path / "model.onnx")
    plan = tmp_path / "model.plan"
    build_engine(onnx_path, plan, BuildConfig(**SMALL))
    with TensorRTRunner(str(plan)) as runner:
        plain = runner.time_gpu(batch=8, iterations=20, warmup=3)
        graphed = runner.time_gpu(batch=8, iterations=20, warmup=3, cuda_graph=True)
        with pytest.raises(UsageError, match="outside the engine's profile"):
            runner.time_gpu(batch=17)
        after = runner.infer(calib_inputs(2))  # timing leaves the runner usable
    assert plain["cuda_graph"] is False and len(plain["gpu_ms"]) == 20 and plain["median_ms"] > 0
    assert isinstance(graphed["cuda_graph"], bool) and graphed["median_ms"] > 0
    assert after.shape == (2, NUM_CLASSES)


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
        return
    messages: list[str] = []
    sidecar = build_engine(onnx_path, tmp_path / "c.plan", config, echo=messages.append)
    assert sidecar.precision == "int8" and "INT8" in sidecar.builder_flags
    assert any("class-mask layers stay FP32" in m for m in messages), messages
    with TensorRTRunner(str(tmp_path / "c.plan")) as runner:
        out = runner.infer(calib_inputs(4))
    assert np.all(out[:, list(FORGOTTEN)] == np.float32(MASK_VALUE))  # the mask survived INT8


def test_timing_cache_is_written_reused_and_a_stale_one_replaced(trt_device, tmp_path):
    onnx_path = save(ours_fp32(), tmp_path / "model.onnx")
    cache = tmp_path / "timing.cache"
    first: list[str] = []
    build_engine(onnx_path, tmp_path / "a.plan", BuildConfig(timing_cache=str(cache), **SMALL), echo=first.append)
    assert cache.is_file() and cache.stat().st_size > 0 and any(": new" in m for m in first)
    second: list[str] = []
    build_engine(onnx_path, tmp_path / "b.plan", BuildConfig(timing_cache=str(cache), **SMALL), echo=second.append)
    assert any(m.endswith(": loaded") for m in second), second
    cache.write_bytes(b"\x00" * 64)  # not a cache of this TensorRT
    third: list[str] = []
    build_engine(onnx_path, tmp_path / "c.plan", BuildConfig(timing_cache=str(cache), **SMALL), echo=third.append)
    assert any("another TensorRT version or GPU" in m for m in third) and not any(m.endswith(": loaded") for m in third)
    assert cache.read_bytes() != b"\x00" * 64


def test_engine_for_another_tensorrt_or_gpu_is_refused_before_deserialising(trt_device, tmp_path):
    onnx_path = save(ours_fp32(), tmp_path / "model.onnx")
    plan = tmp_path / "model.plan"
    build_engine(onnx_path, plan, BuildConfig(**SMALL))
    path = sidecar_path(plan)
    data = json.loads(path.read_text())
    for change in (
        {"tensorrt_version": "9.9.9"},
        {"gpu_name": "Some Other GPU"},
        {"compute_capability": "1.0"},
        {"jetson": {"model": "NVIDIA Jetson Orin Nano Developer Kit"}},
    ):
        path.write_text(json.dumps({**data, **change}))
        with pytest.raises(ModelFileError, match="rebuild on this device with `edge-unlearn build-engine"):
            with TensorRTRunner(str(plan)):
                pass
    path.unlink()
    with pytest.raises(ModelFileError, match="has no sidecar"):
        with TensorRTRunner(str(plan)):
            pass


def test_dla_core_static_fp16_with_placement(trt_device, deploy, tmp_path):
    cores = trt_device.Builder(trt_device.Logger(trt_device.Logger.WARNING)).num_DLA_cores
    if not cores:
        pytest.skip("this device has no DLA core (DLA is on Jetson AGX Orin and Orin NX)")
    generation = api_generation(trt_device.__version__)
    src = deploy.fp32 if generation == 10 else deploy.fp16
    config = BuildConfig(dla_core=0, batch=1, precision="fp16" if generation == 10 else None, workspace_mib=256)
    plan = tmp_path / "dla.plan"
    sidecar = build_engine(src, plan, config)
    assert sidecar.dla_core == 0 and sidecar.dla_placement["dla_layers"] > 0
    assert sidecar.dla_placement["inspector_dla_layers"] >= 1  # a {ForeignNode[...]} the DLA runs
    report = validate(TensorRTRunner(str(plan)), load_bundle(deploy.bundle), Thresholds(), batch_size=1)
    assert report, report.summary()
