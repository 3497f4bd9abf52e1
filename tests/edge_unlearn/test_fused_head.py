"""The model's inference path through the fused head (kernels/) agrees with the eager path."""

from __future__ import annotations

import pytest
import torch

from edge_unlearn.models import build_model


@pytest.mark.parametrize("output", ["argmax", "probs", "logits", "topk"])
def test_fused_path_matches_eager(output):
    torch.manual_seed(0)
    model = build_model("lenet", 10, (1, 8, 8)).eval()
    model.mask_classes([2, 7])
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        model.head_impl = "eager"
        eager = model.predict(x, output=output, k=3)
        model.head_impl = "fused"
        fused = model.predict(x, output=output, k=3)
    if output == "topk":
        torch.testing.assert_close(fused[0], eager[0])
        assert torch.equal(fused[1], eager[1])
    elif output == "argmax":
        assert torch.equal(fused, eager) and not torch.isin(fused, torch.tensor([2, 7])).any()
    else:
        torch.testing.assert_close(fused, eager)


def test_compact_head_cache_follows_mask_changes():
    model = build_model("lenet", 5, (1, 8, 8)).eval()
    model.head_impl = "fused"
    with torch.no_grad():
        model.head.bias[4] = 1e4
        x = torch.randn(3, 1, 8, 8)
        assert (model.predict(x) == 4).all()
        model.mask_classes([4])
        assert not (model.predict(x) == 4).any()


@pytest.mark.parametrize("output", ["argmax", "probs", "topk"])
def test_bias_free_head_fused_matches_eager(output):
    """A head without bias (nn.Linear(bias=False)): the compact-head cache key must not read bias._version."""
    torch.manual_seed(1)
    model = build_model("lenet", 10, (1, 8, 8)).eval()
    model.head.register_parameter("bias", None)
    model.mask_classes([0, 5])
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        model.head_impl = "eager"
        eager = model.predict(x, output=output, k=3)
        model.head_impl = "fused"
        fused = model.predict(x, output=output, k=3)
        assert model.compact_head().bias is None
    if output == "topk":
        torch.testing.assert_close(fused[0], eager[0])
        assert torch.equal(fused[1], eager[1])
    elif output == "argmax":
        assert torch.equal(fused, eager)
    else:
        torch.testing.assert_close(fused, eager)


@pytest.mark.gpu
def test_fused_cuda_matches_eager():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    model = build_model("lenet", 1000, (1, 28, 28)).cuda().eval()
    model.mask_classes(list(range(0, 1000, 7)))
    x = torch.randn(33, 1, 28, 28, device="cuda")
    with torch.no_grad():
        model.head_impl = "eager"
        eager = model.predict(x, output="probs")
        model.head_impl = "auto"
        fused = model.predict(x, output="probs")
    torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-6)
