"""Attacks and metrics on constructed cases whose answer is known (edge_unlearn.attacks)."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from torch import nn

from edge_unlearn import attacks
from edge_unlearn.data import Dataset, Normalization, preprocess
from edge_unlearn.models import UnlearnableClassifier
from tests.conftest import one_thread

NUM_CLASSES = 4


# ---------------------------------------------------------------------------------------------
# Constructed data: 1×4×8 images. The left 4×4 half shows the class as a bright block (every class apart);
# the right half shows it too, except that classes 0 and 1 draw the same block there (0 looks like 1).


def _images(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    x = torch.randint(0, 60, (len(labels), 1, 4, 8), generator=gen)
    for i, c in enumerate(labels.tolist()):
        x[i, 0, c, 0:4] += 180
        x[i, 0, max(c, 1), 4:8] += 180
    return x.clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def blocks() -> Dataset:
    gen = torch.Generator().manual_seed(0)
    y_train = torch.arange(400) % NUM_CLASSES
    y_test = torch.arange(200) % NUM_CLASSES
    x_train, x_test = _images(y_train, gen), _images(y_test, gen)
    return Dataset("blocks", x_train, y_train, x_test, y_test, tuple("abcd"), Normalization.of(x_train))


class Half(nn.Module):
    """Backbone that reads one half of the image as features, through an identity ``Linear`` (the model
    contract wants a learnable layer in the backbone)."""

    def __init__(self, side: str) -> None:
        super().__init__()
        self.side = side
        self.proj = nn.Linear(16, 16)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(16))
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x[..., :4] if self.side == "left" else x[..., 4:]
        return self.proj(half.flatten(1))


def _fit_head(model: UnlearnableClassifier, data: Dataset, steps: int = 60) -> UnlearnableClassifier:
    x = preprocess(data.x_train, data.normalization)
    opt = torch.optim.Adam(model.head.parameters(), lr=0.2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), data.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


_HEADS: dict[tuple[str, str], UnlearnableClassifier] = {}


def _half_model(data: Dataset, side: str, scrub_class0: bool = True, bias0: float = -20.0) -> UnlearnableClassifier:
    """A trained linear head on one half, then class 0's row zeroed and its bias set to ``bias0`` (forgotten
    at the decision level only). A fresh copy each call; the fitted head is cached per dataset and side."""
    key = (data.spec, side)
    if key not in _HEADS:
        torch.manual_seed(0)
        with one_thread():
            _HEADS[key] = _fit_head(UnlearnableClassifier(Half(side), nn.Linear(16, NUM_CLASSES)), data)
    model = copy.deepcopy(_HEADS[key])
    if scrub_class0:
        with torch.no_grad():
            model.head.weight[0] = 0
            model.head.bias[0] = bias0
    return model


def _forget_acc(model: UnlearnableClassifier, data: Dataset, masked: bool = True) -> float:
    with torch.no_grad():
        logits = model.logits(preprocess(data.x_test, data.normalization), masked=masked)
    sel = data.y_test == 0
    return float((logits.argmax(1)[sel] == 0).double().mean())


# ---------------------------------------------------------------------------------------------
# entropy and membership inference


def test_entropy_of_known_distributions():
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    assert attacks.entropy(probs).tolist() == pytest.approx([0.0, math.log(4), math.log(2)], abs=1e-12)


def test_mia_entropy_from_probs_separates_confident_members():
    gen = torch.Generator().manual_seed(0)
    confident = torch.softmax(torch.randn(200, 5, generator=gen) + 12 * torch.eye(5)[torch.arange(200) % 5], 1)
    unsure = torch.softmax(0.1 * torch.randn(200, 5, generator=gen), 1)
    assert attacks.mia_entropy_from_probs(confident, unsure, confident) == 1.0
    assert attacks.mia_entropy_from_probs(confident, unsure, unsure) == 0.0


def _memorise(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    with one_thread():
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(300):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert float(loss.detach()) < 0.05  # it did memorise


@functools.cache
def _memoriser(seed: int, train: bool) -> tuple[UnlearnableClassifier, Dataset]:
    """An MLP that memorised random labels on noise (train=True) or the same net untrained (cached:
    callers must not modify it)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (400, 1, 8, 8), generator=gen).to(torch.uint8)
    y = torch.randint(0, NUM_CLASSES, (400,), generator=gen)
    data = Dataset("noise", x[:200], y[:200], x[200:], y[200:], tuple("abcd"), Normalization.of(x[:200]))
    torch.manual_seed(seed)
    model = UnlearnableClassifier(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU()), nn.Linear(256, NUM_CLASSES)
    )
    if train:
        _memorise(model, preprocess(data.x_train, data.normalization), data.y_train)
    return model.eval(), data


@pytest.mark.parametrize("train", [True, False], ids=["memorised", "random"])
def test_mia_tells_members_only_for_a_memorising_model(train):
    model, data = _memoriser(0, train)
    members = attacks._probs(model, data.x_train, data, masked=True)
    nonmembers = attacks._probs(model, data.x_test, data, masked=True)
    # half of each set fits the attack, the other half is judged
    rate_in = attacks.mia_entropy_from_probs(members[:100], nonmembers[:100], members[100:])
    rate_out = attacks.mia_entropy_from_probs(members[:100], nonmembers[:100], nonmembers[100:])
    svc_in = attacks.mia_svc_from_probs(
        (members[:100], data.y_train[:100]), (nonmembers[:100], data.y_test[:100]), (members[100:], data.y_train[100:])
    )
    svc_out = attacks.mia_svc_from_probs(
        (members[:100], data.y_train[:100]),
        (nonmembers[:100], data.y_test[:100]),
        (nonmembers[100:], data.y_test[100:]),
    )
    assert svc_in["efficacy"] == pytest.approx(1 - svc_in["member_rate"])
    if train:
        assert rate_in > 0.9 and rate_out < 0.35
        assert svc_in["member_rate"] > 0.9 and svc_out["member_rate"] < 0.35
    else:
        assert abs(rate_in - rate_out) < 0.2
        assert abs(svc_in["member_rate"] - svc_out["member_rate"]) < 0.2


def test_mia_wrappers_use_forget_training_samples_as_targets():
    model, data = _memoriser(0, True)
    # every class's training samples are members of a memorising model
    assert attacks.mia_entropy(model, data, [0]) > 0.9
    assert attacks.mia_svc(model, data, [0])["efficacy"] < 0.1
    # a model that cannot output class 0 (masked) gives its samples zero confidence: SalUn efficacy is high
    masked = UnlearnableClassifier(model.backbone, model.head)
    masked.mask_classes([0])
    assert attacks.mia_svc(masked, data, [0])["efficacy"] > 0.9


# ---------------------------------------------------------------------------------------------
# linear probe


def test_probe_reads_a_separable_class_and_not_an_inseparable_one(blocks):
    separable = _half_model(blocks, "left")
    confused = _half_model(blocks, "right")
    assert _forget_acc(separable, blocks) == 0.0  # forgotten at the decision level...
    assert attacks.probe_recoverability(separable, blocks, [0]) >= 0.98  # ...but the features still carry it
    assert attacks.probe_recoverability(confused, blocks, [0]) <= 0.7  # 0 and 1 look alike: about a coin toss


# ---------------------------------------------------------------------------------------------
# prototypical relearning attack


def test_prototype_attack_restores_a_class_the_features_still_carry(blocks):
    model = _half_model(blocks, "left")
    res = attacks.prototype_relearn_attack(model, blocks, [0], k=5)
    assert res.forget_acc_before == 0.0
    assert res.forget_acc >= 0.9 and res.alpha > 0
    assert res.retain_drop <= 0.01
    assert [g["alpha"] for g in res.grid] == list(attacks.ALPHA_GRID)


def test_prototype_attack_respects_the_mask_unless_lifted(blocks):
    model = _half_model(blocks, "left")
    model.mask_classes([0])
    assert attacks.prototype_relearn_attack(model, blocks, [0]).forget_acc == 0.0
    lifted = attacks.prototype_relearn_attack(model, blocks, [0], lift_mask=True)
    assert lifted.mask_lifted and lifted.forget_acc >= 0.9
    assert model.forgotten_classes == [0]  # the attack worked on a copy of the head


def test_prototype_attack_cannot_restore_a_class_the_features_lost(blocks):
    res = attacks.prototype_relearn_attack(_half_model(blocks, "right", bias0=0.0), blocks, [0])
    # class 0's prototype is class 1's: any α that lets it win steals class 1, so the retain constraint bites
    assert res.retain_drop <= 0.01
    assert res.forget_acc <= 0.1
    assert any(g["retain_acc"] < res.retain_acc_before - 0.01 for g in res.grid)


# ---------------------------------------------------------------------------------------------
# relearn time


def test_relearn_time_is_short_when_features_carry_the_class(blocks):
    model = _half_model(blocks, "left")
    model.mask_classes([0])
    before = [p.clone() for p in model.parameters()]
    res = attacks.relearn_time(model, blocks, [0], target_acc=0.9, lr=0.1, max_steps=30)
    assert res.steps is not None and 1 <= res.steps <= 30
    assert res.final_forget_acc >= 0.9 and res.history[0] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # input model untouched
    assert model.forgotten_classes == [0]


def test_relearn_time_is_censored_when_the_target_is_not_reached(blocks):
    # a learning rate too small to move the head in 20 steps: the figure must say "not reached", not 20
    res = attacks.relearn_time(_half_model(blocks, "left"), blocks, [0], target_acc=0.9, lr=1e-9, max_steps=20)
    assert res.steps is None and res.steps_or_cap == 20 and len(res.history) == 21
    assert res.to_json()["reached"] is False


def test_relearn_time_zero_steps_when_nothing_was_forgotten(blocks):
    model = _half_model(blocks, "left", scrub_class0=False)
    res = attacks.relearn_time(model, blocks, [0], target_acc=0.9, max_steps=5)
    assert res.steps == 0
