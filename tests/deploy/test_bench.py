"""`edge-unlearn bench` on real onnxruntime sessions of tiny ONNX models: structure, percentiles, outputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_unlearn.cli import main
from edge_unlearn.deploy.bench import (
    BenchConfig,
    BenchReport,
    BenchRow,
    bench_artefacts,
    input_shape_of,
    parse_batches,
    summarize,
)
from edge_unlearn.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def test_bench_library_real_onnxruntime(tiny_models):
    fp32, int8 = tiny_models
    report = bench_artefacts(
        [fp32, int8], BenchConfig(batches=(1, 3, 16), warmup=2, iterations=12, threads=1), provider="cpu"
    )
    assert [(r.name, r.batch) for r in report.rows] == [(p.name, b) for p in (fp32, int8) for b in (1, 3, 16)]
    for r in report.rows:
        assert r.runtime == "onnxruntime" and r.provider == "CPUExecutionProvider" and r.iterations == 12
        assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
        assert r.min_ms <= r.mean_ms <= r.max_ms
        assert r.throughput == pytest.approx(r.batch / (r.mean_ms / 1e3))
        assert r.peak_rss_mib is not None and r.peak_rss_mib > 10  # onnxruntime alone is tens of MiB
        assert r.gpu_peak_mib is None and r.threads == 1
    assert {r.precision for r in report.rows} == {"fp32", "int8"}
    ratios = report.ratios()  # same source checkpoint: INT8 against FP32 per batch
    assert [(q["precision"], q["batch"]) for q in ratios] == [("int8", 1), ("int8", 3), ("int8", 16)]
    for q in ratios:
        fp, i8 = (next(r for r in report.rows if r.precision == p and r.batch == q["batch"]) for p in ("fp32", "int8"))
        assert q["p50_ratio"] == pytest.approx(i8.p50_ms / fp.p50_ms)
    env = report.environment
    assert env["cpu"] and env["threads"] == 1 and "onnxruntime" in env["versions"]
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]


def test_duration_mode_and_config_errors(tiny_models):
    report = bench_artefacts([tiny_models[0]], BenchConfig(batches=(2,), warmup=0, duration=0.05), provider="cpu")
    assert report.rows[0].iterations >= 5  # min_iterations
    with pytest.raises(UsageError, match="not both"):
        BenchConfig(iterations=3, duration=1.0)
    with pytest.raises(UsageError, match="--batch"):
        parse_batches("1,x")
    assert parse_batches("1, 8,64,8") == (1, 8, 64)
    assert input_shape_of(tiny_models[0]) == (1, 8, 8)


def test_summarize_percentiles_are_numpy_linear():
    stats = summarize([0.001 * k for k in range(1, 101)], batch=4)  # 1..100 ms
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01) and stats["throughput"] == pytest.approx(4 / 0.0505)


def test_bench_cli_writes_table_json_csv_plot(tiny_models, tmp_path):
    fp32, int8 = tiny_models
    out_json, out_csv, out_png = tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "b.png"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            str(fp32),
            str(int8),
            "--batches",
            "1,4",
            "--iterations",
            "6",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--provider",
            "cpu",
            "--name",
            "fp32",
            "--name",
            "int8",
            "--json-out",
            str(out_json),
            "--csv",
            str(out_csv),
            "--plot",
            str(out_png),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "p50 ms" in result.output and "p99 ms" in result.output and "speedup" in result.output
    data = json.loads(out_json.read_text())
    assert data["format"] == "edge-unlearn.bench/1" and data["config"]["batches"] == [1, 4]
    assert [(r["name"], r["batch"]) for r in data["results"]] == [("fp32", 1), ("fp32", 4), ("int8", 1), ("int8", 4)]
    assert all(r["p50_ms"] <= r["p99_ms"] for r in data["results"])
    assert [q["batch"] for q in data["ratios_vs_onnx_fp32"]] == [1, 4]
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 4 and float(rows[0]["p99_ms"]) >= float(rows[0]["p50_ms"])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_cli_errors_are_one_line(tmp_path, tiny_models):
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 2 and "not found" in result.output
    result = CliRunner().invoke(main, ["bench", str(tiny_models[0]), "--iterations", "3", "--duration", "1"])
    assert result.exit_code == 2 and "not both" in result.output


def test_bench_onnx_without_torch(tiny_models, tmp_path):
    """The measuring loop (and the run-folder and report modules) load where torch cannot be imported."""
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None
        from edge_unlearn.deploy.bench import BenchConfig, bench_artefacts
        from edge_unlearn.cli import report as cli_report
        import edge_unlearn.deploy.rundir, edge_unlearn.deploy.report
        report = bench_artefacts([{str(tiny_models[0])!r}], BenchConfig(batches=(1,), warmup=0, iterations=3))
        loaded = [m for m in sys.modules if (m == "torch" or m.startswith("torch.")) and sys.modules[m] is not None]
        print(json.dumps({{"rows": len(report.rows), "torch": loaded}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rows": 1, "torch": []}


def test_bench_torch_checkpoint_eager(tmp_path):
    """A .safetensors checkpoint runs through the torch runner (eager head); its input shape comes from the
    safetensors header, read without torch."""
    import torch

    from edge_unlearn.checkpoint import CheckpointMeta, save_checkpoint
    from edge_unlearn.data import Normalization
    from edge_unlearn.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet", 4, (1, 8, 8))
    model.mask_classes([3])
    meta = CheckpointMeta("lenet", 4, ("a", "b", "c", "d"), (1, 8, 8), Normalization((0.0,), (1.0,)), "digits")
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, meta)
    assert input_shape_of(path) == (1, 8, 8)
    threads = torch.get_num_threads()
    report = bench_artefacts([path], BenchConfig(batches=(1, 5), warmup=1, iterations=4, threads=1), provider="cpu")
    assert torch.get_num_threads() == threads  # restored
    assert [(r.runtime, r.provider, r.precision, r.batch) for r in report.rows] == [
        ("torch", "cpu", "fp32", 1),
        ("torch", "cpu", "fp32", 5),
    ]
    assert all(r.p50_ms <= r.p99_ms for r in report.rows) and "torch" in report.environment["versions"]

    # the fused masked head runner (Triton on CUDA; here its PyTorch reference path) keeps the runner contract
    import numpy as np

    from edge_unlearn.deploy.bench import open_bench_runner
    from edge_unlearn.errors import DependencyError
    from edge_unlearn.torch_runners import TorchRunner, fused_head_runner

    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    with TorchRunner(path) as eager, fused_head_runner(path, device="cpu") as fused:
        np.testing.assert_allclose(fused.infer(x), eager.infer(x), rtol=1e-5, atol=1e-5)
        assert fused.describe()["provider"] == "cpu-fused"
    if not torch.cuda.is_available():
        with pytest.raises(DependencyError, match="CUDA"):
            open_bench_runner(path, "cuda-fused")


def test_bench_names_the_quant_layout_of_each_onnx_row(tiny_models, tmp_path):
    """The ONNX metadata key edge_unlearn_quant_layout is shown next to every latency row that has it."""
    import onnx

    fp32, int8 = tiny_models
    tagged = tmp_path / "tagged.int8.onnx"
    model = onnx.load(str(int8))
    entry = model.metadata_props.add()
    entry.key, entry.value = "edge_unlearn_quant_layout", "s8s8-qdq"
    onnx.save(model, str(tagged))
    report = bench_artefacts([fp32, tagged], BenchConfig(batches=(1, 2), warmup=0, iterations=2), provider="cpu")
    assert [(r.name, r.quant_layout) for r in report.rows] == [
        (fp32.name, ""),
        (fp32.name, ""),
        ("tagged.int8.onnx", "s8s8-qdq"),
        ("tagged.int8.onnx", "s8s8-qdq"),
    ]
    table_rows = [line for line in report.table().splitlines() if line.startswith("tagged.int8.onnx")]
    assert len(table_rows) == 2 and all("s8s8-qdq" in line for line in table_rows)
    assert all(r["quant_layout"] == "s8s8-qdq" for r in report.to_json()["results"] if r["name"] == "tagged.int8.onnx")


def _row(name: str, batch: int, p50: float, precision: str = "fp32") -> BenchRow:
    return BenchRow(
        name, f"/m/{name}", "onnxruntime", "cpu", precision, batch, 5, p50, p50, p50, p50, p50, p50, 0.0,
        batch / p50 * 1e3, None, None, 1,
    )  # fmt: skip


def test_fastest_passing_picks_the_lowest_p50_among_artefacts_that_pass_per_batch():
    rows = [_row("a", 1, 2.0), _row("a", 8, 9.0), _row("b", 1, 1.0, "int8"), _row("b", 8, 10.0, "int8")]
    rows.append(_row("c", 1, 0.5))  # fastest of all, but it fails validate
    verdicts = {
        "/m/a": {"passed": True, "failed": [], "error": None},
        "/m/b": {"passed": True, "failed": [], "error": None},
        "/m/c": {"passed": False, "failed": ["forget_acc"], "error": None},
    }
    report = BenchReport(rows, BenchConfig(iterations=5), {}, [], verdicts, "eval.npz")
    assert [(f["batch"], f["name"], f["precision"]) for f in report.fastest_passing()] == [
        (1, "b", "int8"),
        (8, "a", "fp32"),
    ]
    assert report.to_json()["fastest_passing"][0]["p50_ms"] == 1.0
    assert "fastest that passes validate, batch 1: b" in report.table() and "c.onnx" not in report.table()
    none = BenchReport(
        rows, BenchConfig(iterations=5), {}, [], {k: {**v, "passed": False} for k, v in verdicts.items()}, "e.npz"
    )
    assert none.fastest_passing() == [] and "no artefact passes validate" in none.table()
    assert "fastest_passing" not in BenchReport(rows, BenchConfig(iterations=5), {}).to_json()


def test_bench_bundle_validates_every_artefact_and_names_the_fastest_that_passes(artifacts, tiny_models, tmp_path):
    """Real files: the digits export in FP32 and INT8 pass validate against their bundle; a graph that is not an
    edge-unlearn export cannot be judged (error) and is never named, however fast."""
    out = tmp_path / "bench.json"
    args = [str(artifacts.fp32), str(artifacts.int8), str(tiny_models[0]), "--batches", "1", "--iterations", "5"]
    result = CliRunner().invoke(
        main,
        ["bench", *args, "--warmup", "1", "--threads", "1", "--bundle", str(artifacts.bundle), "--json-out", str(out)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    verdicts = data["validation"]
    assert verdicts[str(artifacts.fp32)]["passed"] and verdicts[str(artifacts.int8)]["passed"]
    assert not verdicts[str(tiny_models[0])]["passed"] and verdicts[str(tiny_models[0])]["error"]
    passing = [r for r in data["results"] if r["path"] in (str(artifacts.fp32), str(artifacts.int8))]
    fastest = min(passing, key=lambda r: r["p50_ms"])
    assert data["fastest_passing"] == [
        {k: fastest[k] for k in ("batch", "name", "path", "runtime", "provider", "precision", "p50_ms")}
    ]
    assert f"fastest that passes validate, batch 1: {fastest['name']}" in result.output


def test_ratios_give_each_runtime_int8_against_its_own_fp32():
    from dataclasses import replace

    rows = [
        replace(_row("ort", 1, 4.0), source_sha256="s"),
        replace(_row("ov", 1, 2.0), runtime="openvino", source_sha256="s"),
        replace(_row("ov8", 1, 1.0, "int8"), runtime="openvino", source_sha256="s"),
        replace(_row("lite8", 1, 3.0, "int8"), runtime="litert", source_sha256="s"),  # no LiteRT FP32 row
    ]
    ratios = {q["name"]: q for q in BenchReport(rows, BenchConfig(iterations=5), {}).ratios()}
    assert ratios["ov8"]["p50_ratio"] == pytest.approx(0.25) and ratios["ov8"]["p50_ratio_own_fp32"] == pytest.approx(
        0.5
    )
    assert ratios["ov"]["p50_ratio_own_fp32"] == pytest.approx(1.0)
    assert ratios["lite8"]["p50_ratio"] == pytest.approx(0.75) and ratios["lite8"]["p50_ratio_own_fp32"] is None
    assert "(x0.50 its own openvino FP32)" in BenchReport(rows, BenchConfig(iterations=5), {}).table()
