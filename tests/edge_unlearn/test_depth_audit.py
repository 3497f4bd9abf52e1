"""Issue #15, measurement: the probe at every depth, the forgetting audit, `evaluate --depth --attacks`."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from edge_unlearn.attacks import ForgettingAudit, ForgettingAuditConfig, forgetting_audit
from edge_unlearn.checkpoint import load_checkpoint
from edge_unlearn.cli import main
from edge_unlearn.errors import UsageError
from edge_unlearn.metrics import (
    PENULTIMATE,
    RETAINED_LOGITS,
    fit_linear_probe,
    probe_blocks,
    probe_forget_accuracy,
    probe_forget_accuracy_by_depth,
    probe_test_indices,
    probe_train_indices,
)
from edge_unlearn.models import build_model

FAST = ForgettingAuditConfig(probe_train_size=600, relearn_max_steps=5, relearn_eval_samples=100, mia_max_samples=500)


@pytest.fixture(scope="module")
def trained(digits_checkpoint):
    return load_checkpoint(digits_checkpoint).model


@pytest.mark.parametrize(
    "arch, shape, expected",
    [
        ("lenet", (1, 8, 8), ["backbone.3", "backbone.7"]),  # each conv block, ending at its max-pool
        ("resnet18", (1, 16, 16), ["layer1", "layer2", "layer3", "layer4"]),
    ],
)
def test_probe_blocks_follow_the_architecture(arch, shape, expected):
    assert [name for name, _ in probe_blocks(build_model(arch, 10, shape), shape)] == expected


def test_generic_blocks_end_where_the_channel_count_changes():
    """VGG keeps its maps in one `features` container: the rule descends into it and ends a block at
    each change of channel count (64, 128, 256, 512), in execution order."""
    model = build_model("vgg11_bn", 10, (3, 32, 32))
    blocks = probe_blocks(model, (3, 32, 32))
    features = dict(model.backbone.features.named_children())
    assert [name for name, _ in blocks] == ["features.3", "features.7", "features.14", "features.28"]
    assert all(features[name.split(".")[1]] is module for name, module in blocks)


def test_depth_probe_one_figure_per_block_in_order_and_deterministic(trained, digits):
    first = probe_forget_accuracy_by_depth(trained, digits, [3], train_size=600, seed=1)
    again = probe_forget_accuracy_by_depth(trained, digits, [3], train_size=600, seed=1)
    assert list(first) == ["backbone.3", "backbone.7", PENULTIMATE, RETAINED_LOGITS]
    assert first == again
    assert all(0.0 <= v <= 1.0 for v in first.values())
    # the same probe as the penultimate-only figure, on the same draw
    assert first[PENULTIMATE] == probe_forget_accuracy(trained, digits, [3], train_size=600, seed=1)


def _probe_on_logits(model, data, classes, kept, seed=1, train_size=600) -> float:
    """The forgotten classes' probe accuracy fitted on ``model.logits``'s columns ``kept``, computed directly."""
    from edge_unlearn.data import preprocess

    idx, test_idx = probe_train_indices(data, train_size, seed), probe_test_indices(data, classes, seed)
    with torch.no_grad():
        train_z = model.logits(preprocess(data.x_train[idx], data.normalization), masked=False)[:, kept]
        test_z = model.logits(preprocess(data.x_test[test_idx], data.normalization), masked=False)[:, kept]
    pred = fit_linear_probe(train_z.numpy(), data.y_train[idx].numpy(), seed).predict(test_z.numpy())
    return float((torch.as_tensor(pred) == data.y_test[test_idx]).double().mean())


def test_retained_logit_probe_reads_only_the_outputs_of_the_classes_still_predicted(trained, digits):
    """The output-level figure is the same probe fitted on the logits of the classes neither forgotten nor masked,
    so rewriting the forgotten classes' head rows changes nothing it reads, and masking another class drops
    that class's logit from what it reads."""
    classes = [3, 5]
    figures = probe_forget_accuracy_by_depth(trained, digits, classes, train_size=600, seed=1)
    kept = [c for c in range(10) if c not in classes]
    assert figures[RETAINED_LOGITS] == pytest.approx(_probe_on_logits(trained, digits, classes, kept), abs=1e-9)
    assert 0.0 < figures[RETAINED_LOGITS] <= 1.0

    edited = build_model("lenet", digits.num_classes, digits.input_shape)
    edited.load_state_dict(trained.state_dict())
    with torch.no_grad():
        edited.head.weight[classes] = torch.randn(len(classes), edited.head.in_features) * 10
        edited.head.bias[classes] = 5.0
    again = probe_forget_accuracy_by_depth(edited, digits, classes, train_size=600, seed=1)
    assert again[RETAINED_LOGITS] == figures[RETAINED_LOGITS] and again[PENULTIMATE] == figures[PENULTIMATE]
    edited.mask_classes([0])
    masked = probe_forget_accuracy_by_depth(edited, digits, classes, train_size=600, seed=1)
    assert masked[RETAINED_LOGITS] == pytest.approx(_probe_on_logits(trained, digits, classes, kept[1:]), abs=1e-9)


def test_depth_probe_sees_where_the_class_was_destroyed(trained, digits):
    """A model that cannot have the class at the penultimate layer (its last backbone Linear zeroed: constant
    features) probes near chance there, while the blocks before it — untouched — give exactly the trained
    model's figures: the probe reads each depth on its own."""
    collapsed = build_model("lenet", digits.num_classes, digits.input_shape)
    collapsed.load_state_dict(trained.state_dict())
    with torch.no_grad():
        collapsed.backbone[9].weight.zero_()
    classes = [1, 3, 8]
    before = probe_forget_accuracy_by_depth(trained, digits, classes, train_size=600)
    after = probe_forget_accuracy_by_depth(collapsed, digits, classes, train_size=600)
    assert before[PENULTIMATE] > 0.85
    assert after[PENULTIMATE] < 0.4  # one constant feature vector: at most one of the three classes is right
    assert after["backbone.3"] == before["backbone.3"] and after["backbone.7"] == before["backbone.7"]


def test_depth_probe_ranks_trained_above_random_init(trained, digits):
    """Random-init conv features still carry a lot of digits' class information (about 0.9 here), so the
    claim is the ordering at the penultimate layer over several classes, not a margin."""
    torch.manual_seed(0)
    untrained = build_model("lenet", digits.num_classes, digits.input_shape)
    classes = [1, 3, 8]
    trained_fig = probe_forget_accuracy_by_depth(trained, digits, classes, train_size=600)[PENULTIMATE]
    untrained_fig = probe_forget_accuracy_by_depth(untrained, digits, classes, train_size=600)[PENULTIMATE]
    assert trained_fig > untrained_fig


def test_audit_round_trips_through_json(trained, digits):
    audit = forgetting_audit(trained, digits, [3], config=FAST)
    text = json.dumps(audit.to_json(), allow_nan=False)
    back = ForgettingAudit.from_json(json.loads(text))
    assert back == audit
    figs = back.figures()
    assert list(figs) == [
        "probe@backbone.3",
        "probe@backbone.7",
        "probe@penultimate",
        "probe@retained_logits",
        "proto_attack_masked",
        "proto_attack_unmasked",
        "mia_entropy",
        "mia_confidence",
        "out_entropy",
        "out_confidence",
        "relearn_steps",
    ]
    # the original still knows class 3: the attack keeps it (mask on and off agree), it needs no relearning
    assert figs["proto_attack_masked"] == figs["proto_attack_unmasked"] == audit.attack_masked["forget_acc_before"]
    assert figs["proto_attack_masked"] > 0.8
    assert figs["relearn_steps"] == 0
    with pytest.raises(UsageError):
        ForgettingAudit.from_json({**audit.to_json(), "version": 99})


def test_masked_class_attack_only_works_with_the_mask_lifted(trained, digits):
    model = build_model("lenet", digits.num_classes, digits.input_shape)
    model.load_state_dict(trained.state_dict())
    model.mask_classes([3])
    audit = forgetting_audit(model, digits, [3], depth=False, config=FAST)
    assert audit.probe_by_depth is None
    assert audit.attack_masked["forget_acc"] == 0.0  # the mask holds as deployed
    assert audit.attack_unmasked["forget_acc"] > 0.8  # the weights still know the class


def test_evaluate_depth_attacks_json(digits_checkpoint, tmp_path):
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(digits_checkpoint),
            "--forget",
            "3",
            "--reference",
            str(digits_checkpoint),
            "--depth",
            "--attacks",
            "--json",
            "--json-out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert json.loads(out.read_text()) == summary
    assert set(summary["audit"]) == {"model", "reference"}
    model_audit = ForgettingAudit.from_json(summary["audit"]["model"])
    assert list(model_audit.probe_by_depth) == ["backbone.3", "backbone.7", PENULTIMATE, RETAINED_LOGITS]
    assert model_audit.probe_by_depth[PENULTIMATE] == summary["probe_forget_acc"]
    # the same model as its own reference: identical audits, relearn target from the reference
    assert summary["audit"]["model"]["probe_by_depth"] == summary["audit"]["reference"]["probe_by_depth"]
    assert "original" in model_audit.relearn_target_source


@pytest.mark.parametrize(
    "args, message",
    [
        (["--depth", "--no-probe", "--forget", "3"], "--no-probe"),
        (["--attacks"], "no forgotten class"),
        (["--depth", "--forget", "3", "--retrained", "{ck}"], "not retrained without"),
    ],
)
def test_evaluate_bad_combinations_exit_2(digits_checkpoint, args, message):
    args = [a.replace("{ck}", str(digits_checkpoint)) for a in args]
    result = CliRunner().invoke(main, ["evaluate", str(digits_checkpoint), *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_output_figures_against_a_reference(trained, digits):
    """Against itself a model's outputs are indistinguishable (TV 0, KL 0, AUC near 0.5); against the same model
    with the forgotten class masked they differ, and a masked copy's entropy is that of its retained softmax."""
    import copy

    import numpy as np

    from edge_unlearn.output_audit import compare_outputs, distinguisher_auc, forget_test_log_softmax, output_figures

    same = output_figures(trained, digits, [3], [trained])
    assert same["tv"] == pytest.approx(0.0, abs=1e-9) and same["kl"] == pytest.approx(0.0, abs=1e-9)
    assert 0.3 <= same["auc"] <= 0.7
    sharp = copy.deepcopy(trained)
    with torch.no_grad():
        sharp.head.weight.mul_(3.0)
        sharp.head.bias.mul_(3.0)
    lp, lq = forget_test_log_softmax(trained, digits, [3]), forget_test_log_softmax(sharp, digits, [3])
    other = compare_outputs(lp, [lq])
    assert other["tv"] > 0.05 and other["kl"] > 0.01 and other["auc"] > 0.9
    assert compare_outputs(lq, [])["entropy"] < other["entropy"]  # sharper logits, lower entropy
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(40, 9))
    assert distinguisher_auc(noise, noise + 3.0) > 0.95
    assert 0.3 < distinguisher_auc(noise, rng.normal(size=(40, 9))) < 0.75


def test_evaluate_against_several_retrained_models_averages_and_reports_their_floor(digits_checkpoint, tmp_path):
    """`evaluate --retrained A --retrained B`: the model's output distances are the mean over A and B, the
    retrained column's are A's to B (the seed-to-seed floor); naming one model twice is refused. (A and B here are
    the digits model with class 3 masked, B with its head sharpened: stand-ins whose distances are known.)"""
    from dataclasses import replace

    from edge_unlearn.checkpoint import load_checkpoint, save_checkpoint
    from edge_unlearn.data import load_dataset
    from edge_unlearn.output_audit import compare_outputs, forget_test_log_softmax

    paths = {}
    for name, gain in (("model", 1.0), ("a", 2.0), ("b", 0.5)):
        loaded = load_checkpoint(digits_checkpoint)
        with torch.no_grad():
            loaded.model.head.weight.mul_(gain)
            loaded.model.head.bias.mul_(gain)
        loaded.model.mask_classes([3])
        paths[name] = tmp_path / f"{name}.safetensors"
        save_checkpoint(paths[name], loaded.model, replace(loaded.meta, forgotten_classes=(3,)))
    result = CliRunner().invoke(
        main,
        ["evaluate", str(paths["model"]), "--attacks", "--retrained", str(paths["a"]), "--retrained", str(paths["b"]),
         "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    audit = json.loads(result.output)["audit"]
    digits = load_dataset("digits")
    lp = {n: forget_test_log_softmax(load_checkpoint(p).model.eval(), digits, [3]) for n, p in paths.items()}
    model = compare_outputs(lp["model"], [lp["a"], lp["b"]])
    floor = compare_outputs(lp["a"], [lp["b"]])
    assert audit["model"]["outputs"]["tv"] == pytest.approx(model["tv"], abs=1e-9)
    assert audit["model"]["outputs"]["tv"] == pytest.approx(
        (compare_outputs(lp["model"], [lp["a"]])["tv"] + compare_outputs(lp["model"], [lp["b"]])["tv"]) / 2, abs=1e-9
    )
    assert audit["retrained"]["outputs"]["tv"] == pytest.approx(floor["tv"], abs=1e-9) and floor["tv"] > 0.01
    twice = CliRunner().invoke(
        main,
        ["evaluate", str(paths["model"]), "--depth", "--retrained", str(paths["a"]), "--retrained", str(paths["a"])],
    )
    assert twice.exit_code == 2 and "same model twice" in twice.output
