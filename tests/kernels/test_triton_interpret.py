"""The Triton kernels against a float64 truth. On CPU they run through TRITON_INTERPRET=1 (set in conftest).

The interpreter is slow, so this file takes a representative subset of the issue's cross product: the nine
(B, C, D) triples of a pairwise covering design (every pair of values of two factors appears once) x fp32/fp16,
with the four mask kinds cycled over them; the full cross product runs against the reference only
(test_reference.py). Forgotten rows are NaN in every case, so a read that reaches any output shows; in addition
test_forgotten_rows_are_never_loaded records every address the interpreter loads (a kernel that loads a
forgotten row and then masks the value passes the NaN check but not that one). bf16 runs only on a GPU (the
interpreter has no bf16 arithmetic).
"""

from __future__ import annotations

import pytest
import torch

from edge_unlearn.kernels import CompactHead, index_maps, masked_head

from .conftest import (
    HAS_CUDA,
    INTERPRET,
    MASK_KINDS,
    check_all_outputs,
    make_inputs,
    make_mask,
    poison_forgotten,
)

pytest.importorskip("triton", reason="triton is not installed (it comes with torch's CUDA wheels on Linux)")
if not (HAS_CUDA or INTERPRET):
    pytest.skip("needs a CUDA GPU or TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)

DEVICE = "cuda" if HAS_CUDA else "cpu"
PAIRWISE = [
    (1, 10, 7),
    (1, 1000, 512),
    (1, 1003, 513),
    (5, 10, 512),
    (5, 1000, 513),
    (5, 1003, 7),
    (33, 10, 513),
    (33, 1000, 7),
    (33, 1003, 512),
]
CASES = [
    (shape, dtype, MASK_KINDS[(i + j) % len(MASK_KINDS)])
    for i, shape in enumerate(PAIRWISE)
    for j, dtype in enumerate((torch.float32, torch.float16))
]


def _kernel_config(**kwargs):
    from edge_unlearn.kernels.triton_head import KernelConfig  # lazy: imports triton

    return KernelConfig(**kwargs)


def _run_all(x, w, b, mask, k, compact: bool, config=None):
    """All four outputs from the Triton path: public API (gather by index list) or a CompactHead."""
    if config is None:
        if compact:
            head = CompactHead.from_head(w, b, mask)
            return {
                out: head(x, output=out, k=kk, impl="triton")
                for out, kk in (("logits", 1), ("probs", 1), ("argmax", 1), ("topk", k))
            }
        return {
            out: masked_head(x, w, b, mask, output=out, k=kk, impl="triton")
            for out, kk in (("logits", 1), ("probs", 1), ("argmax", 1), ("topk", k))
        }
    from edge_unlearn.kernels.triton_head import masked_head_triton

    kept, row_of = index_maps(mask.to(w.device))
    return {
        out: masked_head_triton(x, w, b, row_of, kept, kept, out, kk, config)
        for out, kk in (("logits", 1), ("probs", 1), ("argmax", 1), ("topk", k))
    }


@pytest.mark.parametrize(
    "shape, dtype, mask_kind", CASES, ids=[f"B{s[0]}-C{s[1]}-D{s[2]}-{str(d)[6:]}-{m}" for s, d, m in CASES]
)
def test_kernel_matches_float64(shape, dtype, mask_kind):
    batch, num_classes, dim = shape
    x, w, b = make_inputs(batch, num_classes, dim, dtype, seed=batch * 7 + dim)
    mask = make_mask(num_classes, mask_kind, seed=num_classes)
    k = min(3, int(mask.sum()))
    wp, bp = poison_forgotten(w, b, mask)
    compact = (batch + dim) % 2 == 0  # half the cases through CompactHead, half by index list
    results = _run_all(x.to(DEVICE), wp.to(DEVICE), bp.to(DEVICE), mask.to(DEVICE), k, compact)
    check_all_outputs(results, x, w, b, mask, dtype, k, f"triton {shape} {dtype} {mask_kind} compact={compact}")


@pytest.mark.parametrize("block_c, num_splits", [(16, 1), (16, 7), (64, 2)])
def test_class_split_and_merge(block_c, num_splits):
    """Small class tiles and explicit splits: the second (merge) pass must give the single-pass answer."""
    x, w, b = make_inputs(17, 200, 24, torch.float32, seed=num_splits)
    mask = make_mask(200, "many", seed=1)
    wp, bp = poison_forgotten(w, b, mask)
    cfg = _kernel_config(block_b=16, block_c=block_c, block_d=16, num_splits=num_splits)
    results = _run_all(x.to(DEVICE), wp.to(DEVICE), bp.to(DEVICE), mask.to(DEVICE), 6, False, cfg)
    check_all_outputs(results, x, w, b, mask, torch.float32, 6, f"split={num_splits} block_c={block_c}")


@pytest.mark.parametrize("num_splits", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_exact_ties_pick_smallest_kept_id(num_splits, dtype):
    """Integer inputs make ties exact; tied classes sit in different tiles and splits, some are forgotten."""
    x, w, b = make_inputs(6, 120, 24, dtype, seed=5, integer=True)
    w[0:120:37] = w[3]  # classes 0, 37, 74, 111 share row 3 of the weight (and class 3 gets row 0)...
    b[0:120:37] = b[3]
    w[3] = w[0]
    b[3] = b[0]
    x[:, :] = 0
    x[:, 0] = 1  # ...and a single active feature: many exact ties everywhere
    mask = torch.ones(120, dtype=torch.bool)
    mask[[0, 40, 41]] = False
    wp, bp = poison_forgotten(w, b, mask)
    cfg = _kernel_config(block_c=16, block_d=16, num_splits=num_splits)
    res = _run_all(x.to(DEVICE), wp.to(DEVICE), bp.to(DEVICE), mask.to(DEVICE), 16, False, cfg)
    from edge_unlearn.kernels import masked_head_reference

    want_arg = masked_head_reference(x, w, b, mask, output="argmax", compute_dtype=torch.float64)
    want_v, want_i = masked_head_reference(x, w, b, mask, output="topk", k=16, compute_dtype=torch.float64)
    assert res["argmax"].cpu().tolist() == want_arg.tolist()
    assert res["topk"][1].cpu().tolist() == want_i.tolist(), "top-k order among exact ties must be by class id"
    check_all_outputs(res, x, w, b, mask, dtype, 16, f"ties split={num_splits}")


def test_k_equals_number_of_kept_and_k_one():
    x, w, b = make_inputs(3, 40, 9, torch.float32, seed=2)
    mask = torch.zeros(40, dtype=torch.bool)
    mask[[1, 17, 18, 39]] = True
    for k in (1, 4):
        vals, ids = masked_head(
            x.to(DEVICE), w.to(DEVICE), b.to(DEVICE), mask.to(DEVICE), output="topk", k=k, impl="triton"
        )
        check_all_outputs({"topk": (vals, ids)}, x, w, b, mask, torch.float32, k, f"k={k}")
        if k == 4:
            torch.testing.assert_close(vals.sum(1).cpu(), torch.ones(3), rtol=1e-6, atol=1e-6)


def test_strided_features_and_no_bias():
    base, w, _ = make_inputs(5, 70, 30, torch.float16, seed=8)
    x = base[:, :23]  # row stride 30, not contiguous
    w = w[:, :23].contiguous()
    mask = make_mask(70, "one", seed=3)
    results = _run_all(base.to(DEVICE)[:, :23], w.to(DEVICE), None, mask.to(DEVICE), 5, False)
    check_all_outputs(results, x, w, None, mask, torch.float16, 5, "strided, no bias")


def test_empty_batch():
    _, w, b = make_inputs(1, 10, 7, torch.float32)
    x, w, b = torch.empty(0, 7, device=DEVICE), w.to(DEVICE), b.to(DEVICE)
    mask = make_mask(10, "one").to(DEVICE)
    assert masked_head(x, w, b, mask, output="logits", impl="triton").shape == (0, 10)
    assert masked_head(x, w, b, mask, output="argmax", impl="triton").shape == (0,)
    vals, ids = masked_head(x, w, b, mask, output="topk", k=2, impl="triton")
    assert vals.shape == ids.shape == (0, 2)


def test_every_class_masked_raises_before_launch():
    x, w, b = make_inputs(2, 10, 7, torch.float32)
    with pytest.raises(ValueError, match="every one of the 10 classes is masked"):
        masked_head(x, w, b, torch.zeros(10, dtype=torch.bool), output="argmax", impl="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("output", ["logits", "probs", "argmax", "topk"])
@pytest.mark.parametrize(
    "shape", [(1, 100000, 512), (64, 1000, 512), (256, 1003, 513)], ids=lambda s: "B{}-C{}-D{}".format(*s)
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_bf16_fp16_large(output, shape, dtype):
    """bf16 (no interpreter support) and the benchmark's large shapes, on a GPU."""
    batch, num_classes, dim = shape
    x, w, b = make_inputs(batch, num_classes, dim, dtype, seed=11)
    mask = make_mask(num_classes, "many", seed=12)
    wp, bp = poison_forgotten(w, b, mask)
    k = 16 if output == "topk" else 1
    got = masked_head(x.cuda(), wp.cuda(), bp.cuda(), mask.cuda(), output=output, k=k, impl="triton")
    got = tuple(t.cpu() for t in got) if output == "topk" else got.cpu()
    check_all_outputs({output: got}, x, w, b, mask, dtype, k, f"gpu {shape} {dtype}")


@pytest.mark.skipif(not INTERPRET, reason="watches the interpreter's loads; on a GPU the NaN-filled rows stand in")
@pytest.mark.parametrize("output", ["logits", "probs", "argmax", "topk"])
def test_forgotten_rows_are_never_loaded(output, monkeypatch):
    """Record every address the interpreter loads: none may fall in a forgotten row of weight or bias."""
    import numpy as np
    from triton.runtime import interpreter

    loaded = []
    original = interpreter.InterpreterBuilder.create_masked_load

    def spy(self, ptrs, mask, *args, **kwargs):
        loaded.append(np.asarray(ptrs.data)[np.asarray(mask.data, dtype=bool)].astype(np.int64).ravel())
        return original(self, ptrs, mask, *args, **kwargs)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_load", spy)
    x, w, b = make_inputs(5, 90, 20, torch.float32, seed=4)
    mask = make_mask(90, "many", seed=6)
    res = masked_head(x, w, b, mask, output=output, k=3, impl="triton")
    monkeypatch.undo()
    addrs = np.concatenate(loaded)
    for name, t, row_bytes in (("weight", w, w.stride(0) * w.element_size()), ("bias", b, b.element_size())):
        start = t.data_ptr()
        inside = addrs[(addrs >= start) & (addrs < start + t.numel() * t.element_size())]
        rows = np.unique((inside - start) // row_bytes)
        forgotten_read = [int(r) for r in rows if not mask[int(r)]]
        assert not forgotten_read, f"{output}: loaded forgotten {name} rows {forgotten_read[:10]}"
        assert len(rows) == int(mask.sum()), f"{output}: spy saw {len(rows)} {name} rows, expected every kept one"
    check_all_outputs({output: res}, x, w, b, mask, torch.float32, 3, f"spied {output}")
