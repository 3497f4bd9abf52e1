"""The product benchmarks and their harness: what decides what a results file says (forgetting_depth's merging
and tables), the model cache and provenance every benchmark shares, and the quick modes cheap enough for CI
(audit_quantized, byom, data_scale and forgetting_depth --quick take minutes: run by hand)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess

import pytest
import torch

from benchmarks.forgetting_depth import CombineError, combine, main, table, write_results
from benchmarks.harness import (
    ROOT,
    cache_key,
    cached_train,
    data_digest,
    provenance,
    results_dir,
    use_threads,
)
from benchmarks.harness import write_results as write_files
from edge_unlearn.training import TrainConfig


def _part(tmp_path, name, classes, dataset="npz:data/cifar10.npz", epochs=3, variants=(), models=("original", "nhle")):
    rows = [
        {
            "seed": 0,
            "forget_class": c,
            "model": m,
            "cache_key": None,
            "method_details": None,
            "figures": {"forget_acc": 0.0, "probe@penultimate": 0.2 + 0.1 * c / 5 + (0.3 if m == "original" else 0)},
        }
        for c in classes
        for m in models
    ]
    report = {
        "schema": "edge_unlearn.bench.forgetting_depth",
        "version": 1,
        "preset": "cifar-resnet18",
        "arch": "cifar_resnet18",
        "dataset": dataset,
        "recipe": {"epochs": epochs, "min_steps": 500},
        "classes": list(classes),
        "seeds": [0],
        "nhle_samples": 32,
        "retrain_seeds": [0, 1],
        "variants": list(variants),
        "audit_config": {"probe_train_size": 2000},
        "rows": rows,
        "seconds": 10.0,
        "command": name,
        "environment": {"torch": "x"},
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(report))
    return path


def test_combine_merges_parts_of_one_experiment_into_one_summary(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    a = _part(
        tmp_path, "a", [3], variants=[{"target_scale": 1.0}], models=("original", "nhle", "nhle[target_scale=1.0]")
    )
    b = _part(tmp_path, "b", [5], dataset=f"npz:{tmp_path}/data/../data/cifar10.npz")  # the same file, spelt otherwise
    merged = combine([a, b])
    assert merged["classes"] == [3, 5] and merged["seconds"] == 20.0 and len(merged["rows"]) == 5
    assert merged["variants"] == [{"target_scale": 1.0}]
    write_results(merged, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "forgetting_depth_cifar-resnet18.json").read_text())["summary"]
    probe = summary["nhle"]["probe@penultimate"]
    assert (
        probe["n"] == 2 and probe["mean"] == pytest.approx(0.28) and probe["std"] == pytest.approx(0.0282843, abs=1e-6)
    )
    assert summary["nhle[target_scale=1.0]"]["probe@penultimate"]["n"] == 1
    text = (tmp_path / "out" / "forgetting_depth_cifar-resnet18.md").read_text()
    assert "| runs | 2 | 2 | 1 |" in text and "2 runs" in text


def test_combine_refuses_other_experiments_and_a_run_counted_twice(tmp_path):
    a = _part(tmp_path, "a", [3])
    with pytest.raises(CombineError, match="recipe"):
        combine([a, _part(tmp_path, "b", [5], epochs=4)])
    with pytest.raises(CombineError, match="two parts"):
        combine([a, _part(tmp_path, "c", [3])])


def test_combine_of_other_experiments_is_one_line_and_exit_2_writing_nothing(tmp_path, capsys):
    a, b = _part(tmp_path, "a", [3]), _part(tmp_path, "b", [5], epochs=4)
    assert main(["--combine", str(a), str(b), "--results-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "recipe" in err[0]
    assert not (tmp_path / "out").exists()


def test_table_says_over_how_many_runs_each_model_is_taken():
    summary = {
        "original": {"x": {"mean": 1.0, "std": 0.0, "n": 2}},
        "nhle[v]": {"x": {"mean": 0.5, "std": 0.1, "n": 1}},
    }
    lines = table(summary, "t").splitlines()
    assert lines[4] == "| runs | 2 | 1 |" and lines[5] == "| x | 1.000 ± 0.000 | 0.500 ± 0.100 |"


def _band_rows(nhle_figures: dict) -> list[dict]:
    """One run: two retrained seeds (the band) and an unlearned model."""
    base = {
        "forget_acc": 0.0,
        "forget_acc_unmasked": 0.0,
        "retain_drop": 0.0,
        "probe@penultimate": 0.80,
        "probe@retained_logits": 0.70,
        "proto_attack_unmasked": 0.10,
        "mia_entropy": 0.10,
        "out_entropy": 0.60,
        "out_tv": 0.20,
        "out_auc": 0.90,
        "seconds": 100.0,
    }
    band = [
        {"model": "retrain", "figures": {**base}},
        {"model": "retrain_other", "figures": {**base, "out_entropy": 0.70, "out_tv": 0.24, "mia_entropy": 0.20}},
    ]
    return [{"seed": 0, "forget_class": 3, **r} for r in band] + [
        {"seed": 0, "forget_class": 3, "model": "nhle", "figures": {**base, "seconds": 0.5, **nhle_figures}}
    ]


@pytest.mark.parametrize(
    "figures, failing",
    [
        ({}, set()),
        ({"probe@retained_logits": 0.73}, {"probe@retained_logits ≤ band max + 0.02"}),
        ({"out_tv": 0.28}, {"out_tv ≤ floor + 0.05"}),  # floor = mean of the band's 0.20 and 0.24
        ({"out_entropy": 0.75}, {"out_entropy in band ± 5 %"}),  # band 0.60..0.70, ± 0.0325
        ({"out_entropy": 0.56}, {"out_entropy in band ± 5 %"}),
        ({"mia_entropy": 0.01}, {"mia_entropy in band ± 0.05"}),
        ({"proto_attack_unmasked": 0.2}, {"proto_attack_unmasked ≤ band max"}),
        ({"seconds": 2.0}, {"seconds ≤ retrain / 100"}),
        ({"forget_acc_unmasked": 0.05, "retain_drop": 0.02}, {"forget_acc_unmasked ≤ 0.02", "retain_drop ≤ 0.01"}),
    ],
)
def test_acceptance_judges_each_figure_against_the_retrained_band(figures, failing):
    from benchmarks.forgetting_depth import acceptance

    verdict = acceptance(_band_rows(figures))["nhle"]
    failed = {check for check, v in verdict.items() if v["passed"] < v["runs"]}
    assert failed == failing
    assert verdict["out_auc (reported; floor = retrain vs retrain)"]["values"]["seed 0 class 3"][1] == "floor 0.900"


def test_acceptance_needs_a_band():
    from benchmarks.forgetting_depth import acceptance

    rows = [r for r in _band_rows({}) if r["model"] != "retrain_other"]
    assert acceptance(rows) == {}


@pytest.fixture
def torch_threads():
    """The benchmarks set torch's threads for their process: put them back after a test that runs one."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_cache_key_is_the_hash_that_forgetting_depths_caches_were_filled_with(digits):
    """16 hex digits of the SHA-256 of {"arch", "data", "recipe" (the device left out), "forget"} as sorted-key
    JSON: models trained for hours under this name are found again, whatever device trains the next run."""
    digest = data_digest(digits)
    recipe = TrainConfig(epochs=3, min_steps=500, seed=1, device="cpu")
    spelled = {k: v for k, v in recipe.to_json().items() if k != "device"}
    payload = json.dumps(
        {"arch": "cifar_resnet18", "data": digest, "recipe": spelled, "forget": [3, 5]}, sort_keys=True
    )
    key = cache_key("cifar_resnet18", digest, recipe, (5, 3))
    assert key == hashlib.sha256(payload.encode()).hexdigest()[:16]
    assert key == cache_key("cifar_resnet18", digest, dataclasses.replace(recipe, device="cuda"), (3, 5))
    assert key != cache_key("cifar_resnet18", digest, dataclasses.replace(recipe, seed=0), (3, 5))
    assert key != cache_key("cifar_resnet18", digest, recipe, (3,))


def test_cached_train_trains_once_then_loads_what_it_saved(digits, tmp_path, torch_threads):
    recipe = TrainConfig(epochs=1, min_steps=20, seed=0, device="cpu")
    model, seconds, key = cached_train(tmp_path, "lenet", digits, data_digest(digits), recipe, (3,))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"lenet_{key}.json", f"lenet_{key}.safetensors"]
    info = json.loads((tmp_path / f"lenet_{key}.json").read_text())
    assert info["trained_with"] == {"torch": torch.__version__, "threads": torch.get_num_threads()}
    again, again_seconds, again_key = cached_train(tmp_path, "lenet", digits, data_digest(digits), recipe, (3,))
    assert (again_key, again_seconds) == (key, seconds)  # the seconds of the run that trained it, not a new run
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


def test_provenance_names_the_command_that_reruns_it_and_the_commit(monkeypatch, torch_threads):
    monkeypatch.setenv("BENCH_THREADS", "1")
    assert use_threads() == 1 == torch.get_num_threads()
    assert use_threads(2) == min(2, os.cpu_count() or 1)  # an explicit --threads wins over the environment
    made = provenance("benchmarks.data_scale", ["--sizes", "500,2000", "--cache", "a dir"], onnxruntime="1.0")
    assert made["command"] == "python -m benchmarks.data_scale --sizes 500,2000 --cache 'a dir'"
    env = made["environment"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert env["git_commit"].startswith(head) and env["threads"] == torch.get_num_threads()
    assert env["onnxruntime"] == "1.0" and env["torch"] == torch.__version__


def test_write_results_writes_strict_json_and_the_table_or_nothing(tmp_path):
    write_files({"x": float("nan"), "n": 1}, tmp_path / "a" / "r.json", "| t |", tmp_path / "a" / "r.md")
    assert json.loads((tmp_path / "a" / "r.json").read_text()) == {"x": None, "n": 1}
    assert (tmp_path / "a" / "r.md").read_text() == "| t |\n"
    with pytest.raises(TypeError):
        write_files({"x": object()}, tmp_path / "b.json")
    assert not (tmp_path / "b.json").exists()


def test_quantized_forgetting_quick_survives_every_precision_into_its_own_folder(tmp_path, torch_threads):
    """--quick (lenet on digits, short recipe): every precision validated on the bundle, the INT8 cpu model
    keeps the classes forgotten, and the results go to --out-dir, not over the committed ones."""
    from benchmarks.quantized_forgetting import main as quantized_forgetting

    committed = (results_dir("quantized_forgetting") / "quantized_forgetting.json").read_bytes()
    assert quantized_forgetting(["--quick", "--rounds", "1", "--iters-b1", "2", "--out-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "quantized_forgetting.json").read_text())
    models = report["rows"][0]["models"]
    assert {"fp32", "int8 tensorrt", "int8 cpu", "int8 dynamic", "fp16 cpu"} <= set(models)
    assert models["fp32"]["verdict"] == "pass" and models["fp32"]["forget_acc"] == 0.0
    assert report["acceptance"][0]["forgetting_ok"] and report["rows"][0]["forget"] == [0, 3, 7]
    assert report["command"].startswith("python -m benchmarks.quantized_forgetting --quick")
    assert (results_dir("quantized_forgetting") / "quantized_forgetting.json").read_bytes() == committed


def test_unlearning_table_quick_forgets_with_nhle_beside_retrain(tmp_path, torch_threads):
    from benchmarks.unlearning_table import main as unlearning_table

    argv = ["--quick", "--no-plots", "--methods", "retrain,nhle", "--out-dir", str(tmp_path / "out")]
    report = unlearning_table([*argv, "--cache-dir", str(tmp_path / "models")])
    rows = {r["method"]: r for r in report["rows"]}
    assert list(rows) == ["original", "retrain", "nhle"]
    assert rows["original"]["forget_acc"] > 0.8 and rows["nhle"]["forget_acc"] == 0.0
    assert rows["retrain"]["forget_acc"] == 0.0 and len(list((tmp_path / "models").glob("lenet_*.safetensors"))) == 1
    assert json.loads((tmp_path / "out" / "rows.json").read_text())["environment"]["command"].endswith(
        f"--cache-dir {tmp_path / 'models'}"
    )
    assert "| digits | nhle | forget |" in (tmp_path / "out" / "table.md").read_text()


def test_backend_latency_quick_times_every_backend_at_every_batch(tmp_path, torch_threads):
    from benchmarks.backend_latency import main as backend_latency

    argv = ["--quick", "--archs", "lenet", "--iterations", "2", "--threads", "1", "--out-dir", str(tmp_path)]
    assert backend_latency(argv) == 0
    report = json.loads((tmp_path / "backend_latency.json").read_text())
    timed = {(r["name"], r["batch"]) for r in report["results"] if r.get("p50_ms")}
    names = ("lenet torch eager", "lenet onnx fp32", "lenet onnx int8")
    assert timed == {(n, b) for n in names for b in (1, 8)} and not report["errors"]
    assert report["command"].startswith("python -m benchmarks.backend_latency --quick")


@pytest.mark.parametrize("models", ["nhle,original", ",", "retrained"])
def test_audit_quantized_refuses_an_unknown_model_before_any_work(tmp_path, capsys, models):
    from benchmarks.audit_quantized import main as audit_main

    assert audit_main(["--models", models, "--work", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --models") and "\n" not in err
    assert not any((tmp_path / "work").glob("*.safetensors"))
