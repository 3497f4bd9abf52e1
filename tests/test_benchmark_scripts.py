"""Logic of the benchmark scripts that decides what a results file says (their runs are too long for CI)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.forgetting_depth import CombineError, combine, main, table, write_results


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


def test_probe_gap_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    from benchmarks.research.probe_gap import main as probe_gap

    code = probe_gap(["--checkpoint", str(tmp_path / "none.safetensors"), "--dataset", "digits", "--forget-class", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "none.safetensors" in err[0]


def test_probe_gap_refuses_more_forget_samples_than_the_class_has(tmp_path, capsys, digits):
    """``--finetune-samples`` past the class's training images, or an unknown ``--rows`` group: one line naming
    the limit, exit 2, no results file."""
    from benchmarks.research.probe_gap import main as probe_gap
    from edge_unlearn.checkpoint import CheckpointMeta, save_checkpoint
    from edge_unlearn.data import preprocess
    from edge_unlearn.models import build_model

    torch.manual_seed(0)
    model = build_model("cifar_resnet18", digits.num_classes, digits.input_shape).eval()
    model.record_class_stats(preprocess(digits.x_train, digits.normalization), digits.y_train)
    path = tmp_path / "r.safetensors"
    save_checkpoint(
        path,
        model,
        CheckpointMeta(
            "cifar_resnet18", digits.num_classes, digits.class_names, digits.input_shape, digits.normalization, "digits"
        ),
    )
    available = int((digits.y_train == 3).sum())
    code = probe_gap(
        [
            "--checkpoint",
            str(path),
            "--dataset",
            "digits",
            "--forget-class",
            "3",
            "--finetune-samples",
            f"32,{available + 1}",
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"has {available} training images" in err[0], err
    assert not (tmp_path / "out.json").exists()
    code = probe_gap(
        [
            "--checkpoint",
            str(path),
            "--dataset",
            "digits",
            "--forget-class",
            "3",
            "--rows",
            "finetune,everything",
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--rows: choose among nhle, per-sample" in err[0], err
    assert not (tmp_path / "out.json").exists()


def test_block_stats_shift_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    from benchmarks.research.block_stats_shift import main as block_stats_shift

    code = block_stats_shift(
        [
            "--checkpoint",
            str(tmp_path / "none.safetensors"),
            "--dataset",
            "digits",
            "--forget-class",
            "3",
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "none.safetensors" in err[0] and not (tmp_path / "out.json").exists()


def test_stage_retrain_oracle_refuses_a_model_without_layer4_in_one_line(tmp_path, capsys, digits_checkpoint):
    from benchmarks.research.stage_retrain_oracle import main as stage_retrain_oracle

    code = stage_retrain_oracle(
        [
            "--checkpoint",
            str(digits_checkpoint),
            "--dataset",
            "digits",
            "--forget-class",
            "3",
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "layer4" in err[0] and not (tmp_path / "out.json").exists()


def test_stage_retrain_oracle_reproduces_the_original_then_retrains_the_stages_it_names(tmp_path, digits):
    """The "original" row is the checkpoint's own retained accuracy (so the cached stage inputs and the rebuilt tail
    compute what the backbone computes), and only the stages from ``--from-stage`` on are retrained."""
    from benchmarks.research.stage_retrain_oracle import main as stage_retrain_oracle
    from edge_unlearn.checkpoint import CheckpointMeta, save_checkpoint
    from edge_unlearn.data import preprocess
    from edge_unlearn.models import build_model

    from_stage = "layer2"
    torch.manual_seed(0)
    model = build_model("cifar_resnet18", digits.num_classes, digits.input_shape).eval()
    path = tmp_path / "r.safetensors"
    save_checkpoint(
        path,
        model,
        CheckpointMeta(
            "cifar_resnet18", digits.num_classes, digits.class_names, digits.input_shape, digits.normalization, "digits"
        ),
    )
    before = torch.get_num_threads()
    try:
        code = stage_retrain_oracle(
            [
                "--checkpoint",
                str(path),
                "--dataset",
                "digits",
                "--forget-class",
                "3",
                "--from-stage",
                from_stage,
                "--epochs",
                "1",
                "--probe-train-size",
                "300",
                "--json",
                str(tmp_path / "out.json"),
            ]
        )
    finally:
        torch.set_num_threads(before)
    assert code == 0
    report = json.loads((tmp_path / "out.json").read_text())
    with torch.no_grad():
        logits = model(preprocess(digits.x_test, digits.normalization))
    logits[:, 3] = float("-inf")
    kept = digits.y_test != 3
    expected = float((logits.argmax(1) == digits.y_test)[kept].float().mean())
    assert report["from_stage"] == from_stage and [r["variant"] for r in report["rows"]] == [
        "original",
        "layer2–layer4 + head retrained, epoch 1/1",
    ]
    assert report["rows"][0]["retain_acc"] == pytest.approx(expected, abs=1e-6)
    assert report["rows"][1]["retain_acc"] != pytest.approx(expected, abs=1e-6)


def test_retrain_spread_audits_each_retrained_seed_beside_the_original(tmp_path):
    """One row per model (the original, then one retrained model per seed, each trained once and cached under
    forgetting_depth's key), and a summary over the retrained seeds."""
    from benchmarks.harness import cached_train, data_digest
    from benchmarks.research.retrain_spread import main as retrain_spread
    from edge_unlearn.data import load_dataset
    from edge_unlearn.training import TrainConfig

    before = torch.get_num_threads()
    try:
        code = retrain_spread(
            [
                "--preset",
                "quick",
                "--forget-class",
                "3",
                "--retrain-seeds",
                "0,1",
                "--probe-train-size",
                "300",
                "--relearn-max-steps",
                "2",
                "--device",
                "cpu",
                "--out-dir",
                str(tmp_path / "cache"),
                "--json",
                str(tmp_path / "out.json"),
            ]
        )
        assert code == 0
        report = json.loads((tmp_path / "out.json").read_text())
        rows = {r["model"]: r for r in report["rows"]}
        assert list(rows) == ["original", "retrain[seed=0]", "retrain[seed=1]"]
        assert len({r["cache_key"] for r in rows.values()}) == 3
        data = load_dataset("digits")
        _, _, key = cached_train(
            tmp_path / "cache" / "models",
            "lenet",
            data,
            data_digest(data),
            TrainConfig(epochs=1, min_steps=150, seed=1, device="cpu"),
            (3,),
        )
    finally:
        torch.set_num_threads(before)
    assert key == rows["retrain[seed=1]"]["cache_key"]  # what forgetting_depth would find, not trained again
    figs = {name: r["figures"] for name, r in rows.items()}
    assert figs["original"]["forget_acc_unmasked"] > 0.8  # the original learnt class 3, the retrained ones never saw it
    assert figs["retrain[seed=0]"]["forget_acc_unmasked"] < 0.1 and figs["retrain[seed=1]"]["forget_acc_unmasked"] < 0.1
    assert (
        figs["retrain[seed=0]"]["probe@penultimate"] != figs["retrain[seed=1]"]["probe@penultimate"]
        or figs["retrain[seed=0]"]["retain_acc"] != figs["retrain[seed=1]"]["retain_acc"]
    )  # two different trainings
    spread = report["summary"]["retrain (every seed)"]["probe@penultimate"]
    assert spread["n"] == 2 and spread["mean"] == pytest.approx(
        (figs["retrain[seed=0]"]["probe@penultimate"] + figs["retrain[seed=1]"]["probe@penultimate"]) / 2
    )


def test_retrain_spread_refuses_bad_seeds_in_one_line(tmp_path, capsys):
    from benchmarks.research.retrain_spread import main as retrain_spread

    code = retrain_spread(
        [
            "--preset",
            "quick",
            "--forget-class",
            "3",
            "--retrain-seeds",
            "0,x",
            "--out-dir",
            str(tmp_path / "cache"),
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--retrain-seeds" in err[0] and not (tmp_path / "out.json").exists()
    assert not (tmp_path / "cache").exists()


def test_probe_size_cells_are_the_depth_probe_at_that_size_and_draw(digits, digits_checkpoint, tmp_path, capsys):
    """Each cell of benchmarks/research/probe_size.py is evaluate --depth's probe (penultimate and retained logits) fitted
    on the training draw of that size and seed, on features computed once; a retrained model that forgot another
    class is refused in one line."""
    from benchmarks.research.probe_size import main as probe_size
    from benchmarks.research.probe_size import probe_cell, readouts
    from edge_unlearn.checkpoint import load_checkpoint
    from edge_unlearn.metrics import PENULTIMATE, RETAINED_LOGITS, probe_forget_accuracy_by_depth, probe_test_indices

    model = load_checkpoint(digits_checkpoint).model.eval()
    model.mask_classes([7])  # a masked class is not among the logits the output probe reads
    cls, n_test = 3, len(probe_test_indices(digits, [3]))
    reads = readouts(model, digits, cls)
    assert reads["test"][RETAINED_LOGITS].shape == (n_test, 8)
    for size, seed in ((300, 0), (900, 2)):
        expected = probe_forget_accuracy_by_depth(model, digits, [cls], train_size=size, seed=seed, blocks=[])
        for depth in (PENULTIMATE, RETAINED_LOGITS):
            assert probe_cell(reads, digits, cls, depth, size, seed) / n_test == pytest.approx(
                expected[depth], abs=1e-12
            )
    common = [
        "--checkpoint",
        str(digits_checkpoint),
        "--retrained",
        str(digits_checkpoint),
        "--dataset",
        "digits",
        "--forget-class",
        "3",
        "--json",
        str(tmp_path / "out.json"),
    ]
    for extra, needle in (
        (["--sizes", "300,all"], "--retrained forgot []"),
        (["--sizes", "300,5000"], f"between 20 and {len(digits.y_train)}"),
    ):
        code = probe_size(common + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "out.json").exists()


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
