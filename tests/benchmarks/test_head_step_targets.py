"""benchmarks/research/head_step_targets.py simulates NHLE's head step on cached features: its rank-k edit is the
product's rank-one edit for one point and keeps every retained mean for several, and its ``mixture`` target is
exactly the head NHLE's default writes."""

from __future__ import annotations

import copy

import pytest
import torch

from edge_unlearn.checkpoint import load_checkpoint
from edge_unlearn.data import preprocess
from edge_unlearn.unlearn import forget, method_config
from edge_unlearn.unlearn.nhle import NHLEConfig, retarget_layer
from tests.conftest import forget_set


def _head_and_means(k_retained: int = 6, width: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(width, k_retained + 1)
    return head, torch.randn(k_retained, width)


def test_one_point_is_the_products_rank_one_edit():
    from benchmarks.research.head_step_targets import retarget_points

    head, retained = _head_and_means()
    point, target = torch.randn(1, 16), torch.randn(1, 16)
    expected = copy.deepcopy(head)
    with torch.no_grad():
        retarget_layer(None, expected, point[0], target[0], retained)
    edited = retarget_points(head, point, target, retained)
    assert torch.allclose(edited.weight, expected.weight, atol=1e-5)
    assert torch.allclose(edited.bias, expected.bias, atol=1e-5)


def test_several_points_each_reach_their_target_and_every_retained_mean_keeps_its_logits():
    from benchmarks.research.head_step_targets import retarget_points

    head, retained = _head_and_means()
    points, targets = torch.randn(3, 16), torch.randn(3, 16)
    edited = retarget_points(head, points, targets, retained)
    with torch.no_grad():
        assert torch.allclose(edited(points), head(targets), atol=1e-3)
        assert torch.allclose(edited(retained), head(retained), atol=1e-3)
        assert not torch.allclose(edited.weight, head.weight)  # the points did move


def test_mixture_target_is_the_head_nhle_writes_by_default(digits_checkpoint, digits):
    """The simulation is only worth reading if its version 6 row is version 6: same scale, same retained head rows."""
    from benchmarks.research.head_step_targets import head_targets

    original = load_checkpoint(digits_checkpoint).model
    original.record_depth_stats(preprocess(digits.x_train, digits.normalization), digits.y_train)
    fs = forget_set(digits, [3], 32)
    real = forget(original, fs, method="nhle")
    stepped = forget(original, fs, method="nhle", config=method_config("nhle", {"head_target": "none", "steps": 1}))
    keep = torch.ones(digits.num_classes, dtype=torch.bool)
    keep[3] = False
    with torch.no_grad():
        feats = stepped.model.features(fs.inputs).float().flatten(1)
        feats0 = original.features(fs.inputs).float().flatten(1)
    retained = original.head_input_stats()[keep].float()
    targets = head_targets(stepped.model.head, original.head, feats, feats0, retained, keep, NHLEConfig())
    assert targets["mixture"]["scale"] == pytest.approx(real.details["head_scales"][3], rel=1e-4)
    simulated = targets["mixture"]["head"]
    assert torch.allclose(simulated.weight[keep], real.model.head.weight[keep], atol=1e-5)
    assert torch.allclose(simulated.bias[keep], real.model.head.bias[keep], atol=1e-5)
    # the other targets are other heads (the comparison is not of one edit with itself)
    assert not torch.allclose(targets["nearest"]["head"].weight[keep], simulated.weight[keep], atol=1e-4)


def test_unknown_target_is_one_line_and_exit_2(tmp_path, capsys):
    from benchmarks.research.head_step_targets import main

    code = main(["--preset", "lenet-digits", "--targets", "mixture,best", "--json", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "best" in err[0] and "mixture_original" in err[0]
    assert not (tmp_path / "o.json").exists()


def test_output_measures_on_cached_features_are_the_audits_figures(digits_checkpoint, digits):
    """Each figure of the table is the one forgetting_depth reports for the same model (its audit functions run on
    the model itself): same image draws, same probe, same MIA, same TV."""
    from benchmarks.research.head_step_targets import image_sets, output_measures, penultimate
    from edge_unlearn.attacks import mia_entropy
    from edge_unlearn.metrics import RETAINED_LOGITS, probe_forget_accuracy_by_depth
    from edge_unlearn.output_audit import forget_test_log_softmax, output_figures

    original = load_checkpoint(digits_checkpoint).model
    model = forget(original, forget_set(digits, [5], 32), method="nhle").model
    reference = original  # any other model will do: its answer over the retained classes is the reference
    sets = image_sets(digits, 5)
    figures, _ = output_measures(
        model.head, penultimate(model, digits, sets), digits, sets, 5, forget_test_log_softmax(reference, digits, [5])
    )
    audit = output_figures(model, digits, [5], [reference])
    assert figures["out_entropy"] == pytest.approx(audit["entropy"], abs=1e-6)
    assert figures["out_tv"] == pytest.approx(audit["tv"], abs=1e-6)
    assert figures["mia_entropy"] == pytest.approx(mia_entropy(model, digits, [5]), abs=1e-9)
    probe = probe_forget_accuracy_by_depth(model, digits, [5])[RETAINED_LOGITS]
    assert figures["probe@retained_logits"] == pytest.approx(probe, abs=1e-9)
