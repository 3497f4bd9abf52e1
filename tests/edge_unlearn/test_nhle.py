"""NHLE on a real (small) trained model: digits + lenet, and the projection's exact properties."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edge_unlearn.checkpoint import load_checkpoint
from edge_unlearn.data import preprocess
from edge_unlearn.errors import UsageError
from edge_unlearn.metrics import evaluate_model
from edge_unlearn.models import build_model
from edge_unlearn.unlearn import METHODS, ForgetSet, forget, list_methods, method_config
from edge_unlearn.unlearn.nhle import NHLEConfig, largest_scale_above, project_forget_directions
from tests.conftest import forget_set


def _forget_set(data, classes, n=16):
    return forget_set(data, classes, n)


@pytest.fixture(scope="module")
def original(digits_checkpoint):
    return load_checkpoint(digits_checkpoint).model


def test_nhle_forgets_and_keeps_the_rest(original, digits):
    before = evaluate_model(original, digits, [3], probe=False)
    assert before.forget_acc_unmasked > 0.8  # the original knows class 3
    params_before = copy.deepcopy(original.state_dict())
    result = forget(original, _forget_set(digits, [3]), method="nhle")
    after = evaluate_model(result.model, digits, [3], probe=False)
    assert after.forget_acc == 0.0
    assert after.forget_acc_unmasked <= 0.05
    assert before.retain_acc - after.retain_acc <= 0.02
    assert result.model.forgotten_classes == [3] and not result.model.class_stats_count[3]
    for key, value in original.state_dict().items():  # the input model is untouched
        assert torch.equal(value, params_before[key]), key


def test_nhle_retained_head_rows_unchanged(original, digits):
    """Without the head step, the negative-hot training moves only the forgotten class's head row."""
    result = forget(original, _forget_set(digits, [3]), method="nhle", config=NHLEConfig(head_target="none"))
    rows = [c for c in range(10) if c != 3]
    assert torch.equal(result.model.head.weight[rows], original.head.weight[rows])
    assert not torch.equal(result.model.head.weight[3], original.head.weight[3])
    assert "head_step" not in result.details


def test_data_free_projection_moves_forget_mean_to_the_retained_mean_estimate(original, digits):
    """Without class statistics the feature step projects the forget direction out against a retained-mean
    estimate (from a data-free feature mean): the forget mean then maps where that estimate maps."""
    model = copy.deepcopy(original)
    fs = _forget_set(digits, [3])
    layer = model.edit_layer()
    captured = []
    handle = layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    with torch.no_grad():
        model.backbone(preprocess(digits.x_train[:500], digits.normalization))
        model.backbone(fs.inputs)
    handle.remove()
    feature_mean, mu_f = captured[0].mean(0), captured[1].mean(0)
    model.drop_class_stats(range(10))  # as an imported model without statistics
    mu_r = (10 * feature_mean - mu_f) / 9
    with torch.no_grad():
        removed = project_forget_directions(model, fs.inputs, fs.labels, [3], feature_mean=feature_mean)
        out_r, out_f = layer(mu_r[None]), layer(mu_f[None])
    assert removed == 1
    torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=1e-4)


def test_projection_needs_class_stats(digits):
    model = build_model("lenet", 10, (1, 8, 8)).eval()
    fs = _forget_set(digits, [1], n=4)
    assert project_forget_directions(model, fs.inputs, fs.labels, [1]) == 0


def test_multi_class_and_sequential_forgetting(original, digits):
    first = forget(original, _forget_set(digits, [1, 7]), method="nhle")
    assert first.model.forgotten_classes == [1, 7]
    second = forget(first.model, _forget_set(digits, [4]), method="nhle")
    assert second.model.forgotten_classes == [1, 4, 7]
    report = evaluate_model(second.model, digits, [1, 4, 7], probe=False)
    assert report.forget_acc == 0.0 and report.retain_acc > 0.85


def test_bad_requests(original, digits):
    with pytest.raises(UsageError, match="out of range"):
        forget(original, ForgetSet(torch.zeros(1, 1, 8, 8), torch.tensor([0]), (10,)))
    with pytest.raises(UsageError, match="every class"):
        forget(original, ForgetSet(torch.zeros(1, 1, 8, 8), torch.tensor([0]), tuple(range(10))))
    with pytest.raises(UsageError, match="scope"):
        method_config("nhle", {"scope": "everything"})
    with pytest.raises(UsageError, match="no parameter"):
        method_config("nhle", {"learning_rate": 1})
    with pytest.raises(UsageError, match="unknown method"):
        forget(original, _forget_set(digits, [3]), method="magic")


@pytest.mark.parametrize("name", [n for n in list_methods() if METHODS[n].needs == "forget"])
def test_every_forget_only_method_reduces_forget_accuracy(name, original, digits):
    before = evaluate_model(original, digits, [5], probe=False)
    result = forget(original, _forget_set(digits, [5]), method=name)
    after = evaluate_model(result.model, digits, [5], probe=False)
    assert after.forget_acc_unmasked < before.forget_acc_unmasked - 0.5


@pytest.mark.parametrize(
    "arch, shape", [("lenet", (1, 8, 8)), ("resnet18", (1, 16, 16)), ("mobilenet_v3_small", (3, 16, 16))]
)
def test_projection_keeps_retained_mean_on_every_edit_layer_kind(arch, shape):
    """Linear edit layers (lenet, mobilenet) and conv ones (resnet: bias folded into the next BatchNorm)."""
    torch.manual_seed(0)
    model = build_model(arch, 4, shape).eval()
    x, y = torch.rand(40, *shape), torch.arange(40) % 4
    x[y == 2] += 1.0  # class 2 differs
    model.record_class_stats(x, y)
    layer = model.edit_layer()
    mu_r = model.class_stats[[0, 1, 3]].mean(0)
    probe = mu_r[None] if isinstance(layer, torch.nn.Linear) else mu_r[None, :, None, None].expand(1, -1, 4, 4)
    bn = None
    if isinstance(layer, torch.nn.Conv2d):
        from edge_unlearn.unlearn.nhle import _following_batchnorm

        bn = _following_batchnorm(model, layer)
        assert bn is not None

    def response():
        out = layer(probe)
        if bn is not None:
            out = bn(out)
        return out[..., 1:-1, 1:-1] if out.dim() == 4 else out  # conv: interior taps (padding breaks the mean)

    with torch.no_grad():
        before = response()
        assert project_forget_directions(model, x[y == 2], y[y == 2], [2]) == 1
        after = response()
    torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-3)
    result = forget(model, ForgetSet(x[y == 2], y[y == 2], (2,)), method="nhle")
    assert result.model.forgotten_classes == [2]


@given(st.floats(0.06, 1.9), st.floats(0.1, 4.0))
def test_largest_scale_above_finds_where_a_falling_entropy_crosses_the_goal(crossing, steepness):
    """Version 6's rule: the largest scale whose entropy is not below the goal, for any falling curve; the ends
    of the range when the whole range is on one side of the goal."""

    def entropy_at(scale: float) -> float:
        return 1.0 - steepness * (scale - crossing)  # equals the goal 1.0 at ``crossing``

    found = largest_scale_above(entropy_at, 1.0, 0.05, 2.0)
    assert found == pytest.approx(crossing, rel=0.01)
    assert largest_scale_above(entropy_at, entropy_at(2.0) - 0.1, 0.05, 2.0) == 2.0
    assert largest_scale_above(entropy_at, entropy_at(0.05) + 0.1, 0.05, 2.0) == 0.05
