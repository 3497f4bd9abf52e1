from __future__ import annotations

import pytest
import torch
from torch import nn

from edge_unlearn.errors import UsageError
from edge_unlearn.models import MODELS, build_model, edit_layer

SHAPES = {"lenet": (1, 8, 8), "cifar_resnet18": (3, 8, 8), "vgg11_bn": (1, 8, 8)}


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_contract(arch):
    torch.manual_seed(0)
    shape = SHAPES.get(arch, (1, 16, 16))
    model = build_model(arch, 7, shape).eval()
    x = torch.randn(3, *shape)
    feats = model.features(x)
    assert feats.shape == (3, model.feature_dim) and isinstance(model.head, nn.Linear)
    assert model.head.out_features == 7 and model.class_mask.all()
    torch.testing.assert_close(model.logits(x, masked=False), model.head(feats))
    layer = edit_layer(model.backbone)
    assert isinstance(layer, (nn.Linear, nn.Conv2d))
    assert model.class_stats.shape[1] == (layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_masked_class_never_wins(arch):
    shape = SHAPES.get(arch, (1, 16, 16))
    model = build_model(arch, 5, shape).eval()
    with torch.no_grad():
        model.head.bias[2] = 1e6  # class 2 would win every input
    x = torch.randn(4, *shape)
    assert (model.predict(x) == 2).all()
    model.mask_classes([2])
    pred = model.predict(x)
    assert not (pred == 2).any()
    probs = model.predict(x, output="probs")
    assert torch.all(probs[:, 2] == 0) and torch.allclose(probs.sum(1), torch.ones(4))
    assert model.forgotten_classes == [2]


def test_mask_errors():
    model = build_model("lenet", 3, (1, 8, 8))
    with pytest.raises(UsageError, match="out of range"):
        model.mask_classes([3])
    model.mask_classes([0, 1])
    with pytest.raises(UsageError, match="every class"):
        model.mask_classes([2])
    assert model.forgotten_classes == [0, 1]


def test_build_errors():
    with pytest.raises(UsageError, match="unknown arch"):
        build_model("alexnet", 10, (1, 28, 28))
    with pytest.raises(UsageError, match="at least 16×16"):
        build_model("resnet18", 10, (1, 8, 8))


def test_record_class_stats_are_per_class_means():
    torch.manual_seed(0)
    model = build_model("lenet", 3, (1, 8, 8)).eval()
    x, y = torch.randn(30, 1, 8, 8), torch.arange(30) % 3
    model.record_class_stats(x, y, batch_size=7)
    inputs = model.backbone[:-2](x)
    for c in range(3):
        torch.testing.assert_close(model.class_stats[c], inputs[y == c].mean(0), rtol=1e-5, atol=1e-5)
    assert model.class_stats_count.tolist() == [10, 10, 10] and model.has_class_stats
    model.drop_class_stats([1])
    assert float(model.class_stats[1].abs().sum()) == 0 and model.class_stats_count[1] == 0
