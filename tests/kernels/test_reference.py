"""The pure-PyTorch reference (the specification) over the full cross product of shapes, dtypes and masks."""

from __future__ import annotations

import itertools

import pytest
import torch

from edge_unlearn.kernels import CompactHead, index_maps, masked_head, masked_head_reference

from .conftest import MASK_KINDS, check_all_outputs, make_inputs, make_mask, poison_forgotten

SHAPES = list(itertools.product((1, 5, 33), (10, 1000, 1003), (7, 512, 513)))
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
K = 5


def _all_outputs(fn, k):
    return {"logits": fn("logits", 1), "probs": fn("probs", 1), "argmax": fn("argmax", 1), "topk": fn("topk", k)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-C{}-D{}".format(*s))
def test_reference_matches_float64(shape, mask_kind, dtype):
    batch, num_classes, dim = shape
    x, w, b = make_inputs(batch, num_classes, dim, dtype, seed=hash(shape) % 1000)
    mask = make_mask(num_classes, mask_kind, seed=num_classes + dim)
    k = min(K, int(mask.sum()))
    wp, bp = poison_forgotten(w, b, mask)  # forgotten rows are NaN: the spec must never read them
    results = _all_outputs(lambda out, kk: masked_head_reference(x, wp, bp, mask, output=out, k=kk), k)
    check_all_outputs(results, x, w, b, mask, dtype, k, f"reference {shape} {mask_kind} {dtype}")


@pytest.mark.parametrize("output", ["logits", "probs", "argmax", "topk"])
def test_public_api_and_compact_head_equal_reference(output):
    x, w, b = make_inputs(5, 1003, 513, torch.float32, seed=3)
    mask = make_mask(1003, "many", seed=4)
    k = 7 if output == "topk" else 1
    want = masked_head_reference(x, w, b, mask, output=output, k=k)
    got_api = masked_head(x, w, b, mask, output=output, k=k)  # impl="auto" on CPU -> reference
    head = CompactHead.from_head(w, b, mask)
    got_compact = head(x, output=output, k=k, impl="reference")
    for got in (got_api, got_compact):
        for g, e in zip(got if output == "topk" else (got,), want if output == "topk" else (want,)):
            torch.testing.assert_close(g, e, rtol=0, atol=0)
    assert head.weight.shape == (int(mask.sum()), 513)
    assert torch.equal(head.class_mask, mask)


def test_no_bias():
    x, w, _ = make_inputs(5, 10, 7, torch.float32)
    mask = make_mask(10, "one")
    results = _all_outputs(lambda out, kk: masked_head_reference(x, w, None, mask, output=out, k=kk), 3)
    check_all_outputs(results, x, w, None, mask, torch.float32, 3, "reference without bias")


def test_ties_go_to_smallest_kept_id():
    x = torch.ones(2, 4)
    w = torch.ones(6, 4)  # every class has the same logit
    b = torch.zeros(6)
    mask = torch.tensor([False, True, True, False, True, True])
    assert masked_head_reference(x, w, b, mask, output="argmax").tolist() == [1, 1]
    vals, ids = masked_head_reference(x, w, b, mask, output="topk", k=3)
    assert ids.tolist() == [[1, 2, 4], [1, 2, 4]]
    torch.testing.assert_close(vals, torch.full((2, 3), 0.25))


def test_index_maps():
    mask = torch.tensor([True, False, True, True, False])
    kept, row_of = index_maps(mask)
    assert kept.tolist() == [0, 2, 3] and kept.dtype == torch.int32
    assert row_of.tolist() == [0, -1, 2, 3, -1]
    head = CompactHead.from_head(torch.randn(5, 3), torch.randn(5), mask)
    assert head.row_of.tolist() == [0, -1, 1, 2, -1] and head.kept_rows.tolist() == [0, 1, 2]


@pytest.mark.parametrize("output", ["logits", "probs", "argmax", "topk"])
def test_every_class_masked_is_a_clear_error(output):
    x, w, b = make_inputs(2, 10, 7, torch.float32)
    mask = torch.zeros(10, dtype=torch.bool)
    with pytest.raises(ValueError, match="every one of the 10 classes is masked"):
        masked_head(x, w, b, mask, output=output)
    with pytest.raises(ValueError, match="every one of the 10 classes is masked"):
        masked_head_reference(x, w, b, mask, output=output)
    with pytest.raises(ValueError, match="masked"):
        CompactHead.from_head(w, b, mask)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(output="softmax"), "output must be one of"),
        (dict(output="topk", k=0), r"k must be in \[1, 16\]"),
        (dict(output="topk", k=17), r"k must be in \[1, 16\]"),
        (dict(output="topk", k=4), "exceeds the 3 kept classes"),
        (dict(impl="cuda"), "impl must be one of"),
    ],
)
def test_bad_requests(kwargs, match):
    x, w, b = make_inputs(2, 10, 7, torch.float32)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[:3] = True
    with pytest.raises(ValueError, match=match):
        masked_head(x, w, b, mask, **kwargs)


def test_bad_inputs():
    x, w, b = make_inputs(2, 10, 7, torch.float32)
    mask = torch.ones(10, dtype=torch.bool)
    with pytest.raises(ValueError, match="1-D bool"):
        masked_head(x, w, b, mask.int())
    with pytest.raises(ValueError, match=r"class_mask must be \[C\]"):
        masked_head(x, w, b, mask[:5])
    with pytest.raises(ValueError, match="share one dtype"):
        masked_head(x.half(), w, b, mask)
    with pytest.raises(ValueError, match=r"features must be \[B, D\]"):
        masked_head(x[None], w, b, mask)
    with pytest.raises(ValueError, match=r"weight must be \[C, D\]"):
        masked_head(x, w[:, :5], b, mask)
    with pytest.raises(ValueError, match=r"bias must be \[10\]"):
        masked_head(x, w, b[:3], mask)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU error path")
def test_triton_on_cpu_without_interpreter_says_how_to_fix(monkeypatch):
    pytest.importorskip("triton", reason="triton is not installed")
    # import first: kernels are defined (interpreted or not) at import, and later tests need the interpreter
    from edge_unlearn.kernels.triton_head import masked_head_triton

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, w, b = make_inputs(2, 10, 7, torch.float32)
    kept, row_of = index_maps(torch.ones(10, dtype=torch.bool))
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        masked_head_triton(x, w, b, row_of, kept, kept, "logits")
