"""The torch.library registration: opcheck, torch.compile (fullgraph) and torch.export see the custom ops."""

from __future__ import annotations

import pytest
import torch

from edge_unlearn.kernels import CompactHead, index_maps, masked_head_reference
from edge_unlearn.kernels.op import OPS

from .conftest import HAS_CUDA, INTERPRET, make_inputs, make_mask

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False
IMPLS = ["reference"] + (["triton"] if HAS_TRITON and (HAS_CUDA or INTERPRET) else [])
DEVICE = "cuda" if HAS_CUDA else "cpu"


def _op_args(output, impl, compact, dtype=torch.float32):
    x, w, b = make_inputs(3, 37, 20, dtype, seed=1)
    mask = make_mask(37, "many", seed=2)
    if compact:
        head = CompactHead.from_head(w, b, mask)
        args = [x, head.weight, head.bias, head.row_of, head.kept_ids, head.kept_rows]
    else:
        kept, row_of = index_maps(mask)
        args = [x, w, b, row_of, kept, kept]
    args = [a.to(DEVICE) for a in args]
    if output == "topk":
        args.append(4)
    return args + [impl]


@pytest.mark.parametrize("compact", [False, True], ids=["gather", "compact"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("output", ["logits", "probs", "argmax", "topk"])
def test_opcheck(output, impl, compact):
    torch.library.opcheck(OPS[output], _op_args(output, impl, compact))


@pytest.mark.parametrize("output", ["logits", "probs", "argmax", "topk"])
def test_op_equals_reference(output):
    args = _op_args(output, "reference", compact=True)
    x, w, b = make_inputs(3, 37, 20, torch.float32, seed=1)
    mask = make_mask(37, "many", seed=2)
    got = OPS[output](*args)
    want = masked_head_reference(x, w, b, mask, output=output, k=4)
    for g, e in zip(got if output == "topk" else (got,), want if output == "topk" else (want,)):
        torch.testing.assert_close(g.cpu(), e, rtol=0, atol=0)


class _MaskedModel(torch.nn.Module):
    """Stand-in for an edge_unlearn model: backbone -> compact masked head -> argmax/probs."""

    def __init__(self, head: CompactHead, output: str):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(8, 20), torch.nn.ReLU())
        self.head = head
        self.output = output

    def forward(self, x: torch.Tensor):
        return self.head(self.backbone(x), output=self.output, k=3, impl="auto")  # Triton on CUDA


def _model(output):
    torch.manual_seed(0)
    _, w, b = make_inputs(1, 37, 20, torch.float32, seed=3)
    head = CompactHead.from_head(w, b, make_mask(37, "one", seed=4)).to(DEVICE)
    return _MaskedModel(head, output).to(DEVICE).eval()


@pytest.mark.parametrize("output", ["probs", "argmax", "topk"])
def test_torch_compile_fullgraph(output):
    model = _model(output)
    x = torch.randn(4, 8, device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    with torch.no_grad():
        got, want = compiled(x), model(x)
        other = compiled(torch.randn(7, 8, device=DEVICE))  # another batch size through the same dynamic graph
    for g, e in zip(got if output == "topk" else (got,), want if output == "topk" else (want,)):
        torch.testing.assert_close(g, e)
    assert (other[0] if output == "topk" else other).shape[0] == 7


def test_torch_export_keeps_the_op():
    model = _model("argmax")
    x = torch.randn(4, 8, device=DEVICE)
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "edge_unlearn.masked_head_argmax.default" in targets, targets
    torch.testing.assert_close(ep.module()(x), model(x))
