"""The experiments under benchmarks/research: bad input is one line and exit 2, and what their results files say
(their real runs take hours on CIFAR-10; these run them on digits)."""

from __future__ import annotations

import json

import pytest
import torch


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
