"""`bench` with the GPU-only timing capability and the Jetson power mode, checked without a GPU.

:class:`NumpyLinearRunner` is a real Runner (a linear classifier in numpy) that also implements the timing
capability honestly: ``time_gpu`` times its own compute alone (no input conversion, no output copy), and with
``cuda_graph`` replays the compute into preallocated buffers, the numpy analogue of a captured graph. The
Jetson power mode comes from a ``nvpmodel`` executable on PATH that prints what ``nvpmodel -q`` prints.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import time
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edge_unlearn.cli import main
from edge_unlearn.deploy import doctor
from edge_unlearn.deploy.bench import BenchConfig, BenchReport, bench_artefacts, bench_runner, environment
from edge_unlearn.deploy.runner import Runner
from edge_unlearn.errors import UsageError

SHAPE = (1, 4, 4)
CLASSES = 5


class NumpyLinearRunner(Runner):
    """logits = x.reshape(B, -1) @ W + b, with the GPU timing capability implemented on its own compute."""

    runtime = "numpy"
    supports_gpu_timing = True

    def __init__(self, path: str, name: str | None = None, replayable: bool = True) -> None:
        super().__init__(path, name)
        #: False: like an engine TensorRT cannot capture, it times the plain call and says cuda_graph False
        self.replayable = replayable
        self.timing_calls: list[dict[str, Any]] = []

    def activate_impl(self) -> None:
        rng = np.random.default_rng(1)
        self.weight = rng.standard_normal((int(np.prod(SHAPE)), CLASSES)).astype(np.float32)
        self.bias = rng.standard_normal(CLASSES).astype(np.float32)

    def infer_impl(self, inputs: np.ndarray) -> np.ndarray:
        return inputs.reshape(len(inputs), -1) @ self.weight + self.bias

    def describe_impl(self) -> dict[str, Any]:
        return {"provider": "numpy-cpu", "precision": "fp32"}

    def time_gpu(self, batch: int, iterations: int = 100, warmup: int = 10, cuda_graph: bool = False) -> dict[str, Any]:
        flat = np.zeros((batch, int(np.prod(SHAPE))), dtype=np.float32)
        out = np.empty((batch, CLASSES), dtype=np.float32)
        replay = cuda_graph and self.replayable
        if replay:  # fixed buffers replayed: no allocation per call

            def run() -> None:
                np.matmul(flat, self.weight, out=out)
                np.add(out, self.bias, out=out)
        else:

            def run() -> None:
                flat @ self.weight + self.bias

        for _ in range(warmup):
            run()
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1e3)
        self.timing_calls.append(
            {"batch": batch, "iterations": iterations, "warmup": warmup, "cuda_graph": cuda_graph, "gpu_ms": times}
        )
        return {
            "batch": batch,
            "iterations": iterations,
            "cuda_graph": replay,
            "gpu_ms": times,
            "median_ms": float(np.median(times)),
        }


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_bench_records_gpu_only_latency_of_capable_runners(tmp_path, cuda_graph):
    runner = NumpyLinearRunner(str(tmp_path / "linear.npz"))
    config = BenchConfig(batches=(1, 6), warmup=2, iterations=7, cuda_graph=cuda_graph)
    rows = bench_runner(runner, config, input_shape=SHAPE)
    assert [(c["batch"], c["iterations"], c["warmup"], c["cuda_graph"]) for c in runner.timing_calls] == [
        (1, 7, 2, cuda_graph),
        (6, 7, 2, cuda_graph),
    ]
    for row, call in zip(rows, runner.timing_calls):
        ms = np.asarray(call["gpu_ms"])
        assert row.batch == call["batch"] and row.gpu_iterations == 7 and row.cuda_graph is cuda_graph
        assert row.gpu_p50_ms == pytest.approx(float(np.percentile(ms, 50)), rel=1e-12)
        assert row.gpu_p99_ms == pytest.approx(float(np.percentile(ms, 99)), rel=1e-12)
        assert row.gpu_mean_ms == pytest.approx(float(ms.mean()), rel=1e-12)
        assert (row.gpu_min_ms, row.gpu_max_ms) == pytest.approx((float(ms.min()), float(ms.max())), rel=1e-12)
        assert 0 < row.gpu_min_ms <= row.gpu_p50_ms <= row.gpu_p90_ms <= row.gpu_p99_ms <= row.gpu_max_ms
    report = BenchReport(rows, config, environment())
    table = report.table().splitlines()
    header = table[0].split()
    row_line = next(line for line in table if line.startswith("linear.npz") and f" {rows[1].batch} " in line)
    assert header[-4:] == ["GPU", "p50", "GPU", "p99"] and row_line.split()[-2] == f"{rows[1].gpu_p50_ms:.3f}"
    assert ("CUDA graph replay: linear.npz batch 1" in report.table()) is cuda_graph
    data = report.to_json()["results"]
    assert [r["gpu_p50_ms"] for r in data] == [r.gpu_p50_ms for r in rows]
    assert report.to_json()["config"]["cuda_graph"] is cuda_graph

    # --no-gpu-timing: not called, no figure
    runner = NumpyLinearRunner(str(tmp_path / "linear.npz"))
    rows = bench_runner(runner, BenchConfig(batches=(2,), warmup=0, iterations=3, gpu_timing=False), input_shape=SHAPE)
    assert runner.timing_calls == [] and rows[0].gpu_p50_ms is None and rows[0].cuda_graph is None


def test_row_says_whether_the_graph_was_replayed_not_whether_it_was_asked(tmp_path):
    runner = NumpyLinearRunner(str(tmp_path / "linear.npz"), replayable=False)
    rows = bench_runner(runner, BenchConfig(batches=(2,), warmup=0, iterations=3, cuda_graph=True), input_shape=SHAPE)
    assert runner.timing_calls[0]["cuda_graph"] is True and rows[0].cuda_graph is False
    assert rows[0].gpu_p50_ms is not None


def test_duration_mode_times_the_gpu_as_often_as_end_to_end(tmp_path):
    runner = NumpyLinearRunner(str(tmp_path / "linear.npz"))
    rows = bench_runner(runner, BenchConfig(batches=(3,), warmup=0, duration=0.02), input_shape=SHAPE)
    assert (
        rows[0].iterations >= 5 and rows[0].gpu_iterations == rows[0].iterations == runner.timing_calls[0]["iterations"]
    )
    with pytest.raises(UsageError, match="--cuda-graph"):
        BenchConfig(gpu_timing=False, cuda_graph=True)


def test_onnxruntime_rows_have_no_gpu_figure(tiny_models, tmp_path):
    report = bench_artefacts(
        [tiny_models[0]], BenchConfig(batches=(1, 2), warmup=0, iterations=3, cuda_graph=True), provider="cpu"
    )
    for r in report.rows:
        assert r.gpu_p50_ms is None and r.gpu_iterations is None and r.cuda_graph is None
    out = tmp_path / "b.csv"
    report.write_csv(out)
    rows = list(csv.DictReader(out.open()))
    assert [(r["gpu_p50_ms"], r["cuda_graph"]) for r in rows] == [("", ""), ("", "")]
    assert float(rows[0]["p50_ms"]) > 0
    lines = report.table().splitlines()
    assert lines[2].split()[-2:] == ["-", "-"] and "GPU p50/p99" not in report.table()


NVPMODEL_Q = "NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n"


@pytest.fixture
def jetson(tmp_path, monkeypatch):
    """This machine seen as a Jetson AGX Orin at MAXN: nvpmodel on PATH, the L4T release file and device-tree model."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "nvpmodel"
    exe.write_text(f'#!/bin/sh\n[ "$1" = "-q" ] || exit 1\nprintf \'{NVPMODEL_Q.replace(chr(10), chr(92) + "n")}\'\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    release, model = tmp_path / "nv_tegra_release", tmp_path / "model"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: x\n")
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    monkeypatch.setattr(doctor, "NV_TEGRA_RELEASE", release)
    monkeypatch.setattr(doctor, "DEVICE_TREE_MODEL", model)


def test_power_mode_in_environment_table_json_and_html(jetson, tmp_path):
    runner = NumpyLinearRunner(str(tmp_path / "linear.npz"))
    config = BenchConfig(batches=(2,), warmup=1, iterations=4, cuda_graph=True)
    report = BenchReport(bench_runner(runner, config, input_shape=SHAPE), config, environment())
    env = report.to_json()["environment"]
    assert env["power_mode"] == {"name": "MAXN", "id": 0}
    assert env["jetson_model"] == "NVIDIA Jetson AGX Orin Developer Kit" and env["jetson_release"]["l4t"] == "36.4.3"
    assert "jetson: NVIDIA Jetson AGX Orin Developer Kit, power mode MAXN (id 0)" in report.table()

    from edge_unlearn.deploy.report import render_report

    run = tmp_path / "run"
    run.mkdir()
    report.write_json(run / "bench.json")
    html = render_report(run, manifest=False).read_text()
    assert "power mode MAXN (id 0)" in html and "GPU-only p50 ms" in html
    assert f'<td class="num">{report.rows[0].gpu_p50_ms:.3f}</td>' in html
    assert json.loads((run / "bench.json").read_text())["results"][0]["cuda_graph"] is True


def test_no_power_mode_off_a_jetson_and_html_without_gpu_columns(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvpmodel here
    monkeypatch.setattr(doctor, "NV_TEGRA_RELEASE", tmp_path / "absent")
    monkeypatch.setattr(doctor, "DEVICE_TREE_MODEL", tmp_path / "absent-model")
    env = environment()
    assert "power_mode" not in env and "jetson_model" not in env
    from edge_unlearn.deploy.report import render_report

    run = tmp_path / "run"
    run.mkdir()
    bench_artefacts([tiny_models[0]], BenchConfig(batches=(1,), warmup=0, iterations=2), provider="cpu").write_json(
        run / "bench.json"
    )
    html = render_report(run, manifest=False).read_text()
    assert "p50 ms" in html and "GPU-only p50 ms" not in html and "power mode" not in html


def test_bench_cli_cuda_graph_flag(tiny_models, tmp_path):
    out = tmp_path / "b.json"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            str(tiny_models[0]),
            "--batches",
            "1",
            "--iterations",
            "2",
            "--warmup",
            "0",
            "--provider",
            "cpu",
            "--cuda-graph",
            "--json-out",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["config"]["cuda_graph"] is True and data["config"]["gpu_timing"] is True
    assert data["results"][0]["gpu_p50_ms"] is None
    result = CliRunner().invoke(main, ["bench", str(tiny_models[0]), "--no-gpu-timing", "--cuda-graph"])
    assert result.exit_code == 2 and "--cuda-graph" in result.output


class ProfiledRunner(NumpyLinearRunner):
    """Like an engine: takes only batches ``min_batch..max_batch`` in ``time_gpu`` (the TensorRT runner raises for
    any other) and reports its range in ``describe``."""

    def __init__(self, path: str, min_batch: int, max_batch: int) -> None:
        super().__init__(path)
        self.min_batch, self.max_batch = min_batch, max_batch

    def describe_impl(self) -> dict[str, Any]:
        return {**super().describe_impl(), "min_batch": self.min_batch, "max_batch": self.max_batch}

    def time_gpu(self, batch: int, iterations: int = 100, warmup: int = 10, cuda_graph: bool = False) -> dict[str, Any]:
        if not self.min_batch <= batch <= self.max_batch:
            raise UsageError(f"batch {batch} is outside the engine's profile {self.min_batch}..{self.max_batch}")
        return super().time_gpu(batch, iterations, warmup, cuda_graph)


@pytest.mark.parametrize(
    "profile, benched", [((1, 32), [1, 8, 32]), ((4, 4), [4]), ((1, 64), [1, 8, 64])], ids=["default", "static", "64"]
)
def test_default_batches_are_clipped_to_the_engine_profile(tmp_path, profile, benched):
    """Issue 30: `bench model.plan` failed with its default batches, 64 being outside the default profile."""
    runner = ProfiledRunner(str(tmp_path / "model.plan"), *profile)
    said: list[str] = []
    rows = bench_runner(runner, BenchConfig(warmup=0, iterations=2), input_shape=SHAPE, echo=said.append)
    assert [row.batch for row in rows] == [c["batch"] for c in runner.timing_calls] == benched
    notes = [line for line in said if "the engine's profile takes" in line]
    assert len(notes) == (benched != [1, 8, 64])
