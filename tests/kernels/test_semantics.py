"""Issue #16 semantics of the Triton path against PyTorch: NaN, huge C, bias-free and non-contiguous inputs,
index-map validation, launch grids within CUDA's limits and no recompilation per batch size.

On CPU the kernels run through TRITON_INTERPRET=1 (set in conftest); on a CUDA machine the same tests run on
the GPU. PyTorch's eager path on the same masked logits (``F.linear`` + ``masked_fill(-inf)`` + argmax /
softmax / topk, in float64) is the reference for NaN behaviour.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edge_unlearn.kernels import CompactHead, index_maps, masked_head
from edge_unlearn.kernels.op import OPS

from .conftest import (
    HAS_CUDA,
    INTERPRET,
    TIE_TOL,
    TOL,
    assert_argmax_ok,
    assert_close_report,
    assert_topk_ok,
    check_all_outputs,
    make_inputs,
    make_mask,
)

pytest.importorskip("triton", reason="triton is not installed (it comes with torch's CUDA wheels on Linux)")
if not (HAS_CUDA or INTERPRET):
    pytest.skip("needs a CUDA GPU or TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)

DEVICE = "cuda" if HAS_CUDA else "cpu"
# the interpreter reduces with numpy, which warns on an all-NaN row; compiled kernels do not
pytestmark = pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")
OUTPUTS = (("logits", 1), ("probs", 1), ("argmax", 1), ("topk", 4))


def _th():
    from edge_unlearn.kernels import triton_head  # lazy: imports triton after conftest set the interpreter

    return triton_head


def _eager64(x, w, b, mask):
    """Masked logits as eager PyTorch computes them, in float64."""
    return F.linear(x.double(), w.double(), None if b is None else b.double()).masked_fill(~mask, float("-inf"))


def _triton_all(x, w, b, mask, config=None):
    kept, row_of = index_maps(mask)
    th = _th()
    return {
        out: th.masked_head_triton(
            x.to(DEVICE),
            w.to(DEVICE),
            None if b is None else b.to(DEVICE),
            row_of.to(DEVICE),
            kept.to(DEVICE),
            kept.to(DEVICE),
            out,
            k,
            config,
        )
        for out, k in OUTPUTS
    }


def _assert_matches_torch_nan(res, x, w, b, mask, what):
    """argmax/topk/softmax of the float64 eager masked logits, NaN included (per-dtype tolerances)."""
    logits = _eager64(x, w, b, mask)
    rtol, atol = TOL[x.dtype]
    torch.testing.assert_close(
        res["logits"].cpu().double(), logits, rtol=rtol, atol=atol, equal_nan=True, msg=f"{what} logits"
    )
    assert res["argmax"].cpu().tolist() == logits.argmax(dim=1).tolist(), f"{what}: argmax differs from torch"
    probs = torch.softmax(logits, dim=1)
    torch.testing.assert_close(
        res["probs"].cpu().double(), probs, rtol=rtol, atol=atol, equal_nan=True, msg=f"{what} probs"
    )
    vals, ids = res["topk"]
    want_vals, want_ids = torch.topk(logits, 4, dim=1)
    # torch.topk leaves the order among equal keys (NaN with NaN) unspecified; the spec takes ascending ids there
    spec_ids = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :4]
    assert torch.equal(ids.cpu(), spec_ids), f"{what}: top-k ids {ids.tolist()} != {spec_ids.tolist()}"
    assert torch.equal(logits.gather(1, ids.cpu()).isnan(), want_vals.isnan()), f"{what}: NaN ranks differ"
    torch.testing.assert_close(
        vals.cpu().double(), probs.gather(1, ids.cpu()), rtol=rtol, atol=atol, equal_nan=True, msg=f"{what} top-k probs"
    )


@pytest.mark.parametrize("num_splits", [1, 3])
def test_nan_rows_and_columns_follow_torch(num_splits):
    """Row 1 of the features all NaN, row 3 half NaN, kept class 9's weight NaN: the NaN cases torch defines."""
    x, w, b = make_inputs(6, 70, 20, torch.float32, seed=21)
    mask = make_mask(70, "many", seed=5)
    mask[[4, 9, 30]] = True
    x[1] = float("nan")
    x[3, :10] = float("nan")
    w[9, 2] = float("nan")  # class 9 kept: NaN in every row -> argmax 9 everywhere, NaN probabilities
    w[~mask] = float("nan")  # forgotten rows poisoned too: they must still not count
    cfg = _th().KernelConfig(block_b=16, block_c=16, block_d=16, num_splits=num_splits)
    res = _triton_all(x, w, b, mask, cfg)
    _assert_matches_torch_nan(res, x, w, b, mask, f"splits={num_splits}")
    first_kept = int(mask.nonzero()[0])
    assert res["argmax"].cpu().tolist() == [9, first_kept, 9, first_kept, 9, 9]


def test_all_nan_row_argmax_is_a_real_class():
    """An all-NaN feature row: the first kept class (torch.argmax on the masked logits), not a sentinel id."""
    x, w, b = make_inputs(3, 40, 16, torch.float16, seed=3)
    mask = torch.ones(40, dtype=torch.bool)
    mask[[0, 1, 5]] = False
    x[0] = float("nan")
    cfg = _th().KernelConfig(block_b=16, block_c=16, block_d=16, num_splits=2)
    res = _triton_all(x, w, b, mask, cfg)
    assert int(res["argmax"][0]) == 2, res["argmax"]
    assert res["topk"][1][0].tolist() == [2, 3, 4, 6]
    assert torch.isnan(res["probs"][0]).all() and torch.isnan(res["topk"][0][0]).all()
    assert torch.isinf(res["logits"][0, [0, 1, 5]]).all()  # forgotten stay -inf, not NaN
    _assert_matches_torch_nan(res, x, w, b, mask, "fp16 all-NaN row")
    check_all_outputs(
        {k: (v[1:] if k != "topk" else (v[0][1:], v[1][1:])) for k, v in res.items()},
        x[1:],
        w,
        b,
        mask,
        torch.float16,
        4,
        "fp16 finite rows next to a NaN row",
    )


def test_minus_inf_kept_logits_do_not_poison_the_softmax():
    """A kept class whose logit is -inf (a -inf bias) gets probability 0, as torch.softmax gives."""
    x, w, b = make_inputs(4, 50, 16, torch.float32, seed=8)
    mask = make_mask(50, "one", seed=2)
    b[:20] = float("-inf")  # the whole first class tile is -inf: the online softmax must not make NaN
    res = _triton_all(x, w, b, mask, _th().KernelConfig(block_b=16, block_c=16, block_d=16, num_splits=3))
    _assert_matches_torch_nan(res, x, w, b, mask, "-inf logits")
    assert not torch.isnan(res["probs"]).any()


@pytest.mark.slow
def test_huge_number_of_classes_probs():
    """C > 65 535 x 64 (4.19 M): a 2-D grid with classes on axis 1 could not launch on CUDA. Probabilities run
    every kernel of the [B, C] path (the logits tile, the partials, the merge, the in-place scale); D = 16 and
    65 536-class tiles keep the interpreter to about a minute. The plan test below checks the GPU tiles' grid
    and test_gpu_huge_classes_default_tiles runs logits and probabilities on a GPU."""
    num_classes, dim = 4_300_000, 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, dim, generator=g)
    w = torch.randn(num_classes, dim, generator=g) / 4
    mask = torch.ones(num_classes, dtype=torch.bool)
    mask[::7] = False
    mask[-1] = False
    kept, row_of = index_maps(mask)
    cfg = None if HAS_CUDA else _th().KernelConfig(block_b=16, block_c=65536, block_d=16)
    th = _th()
    got = {
        "probs": th.masked_head_triton(
            x.to(DEVICE), w.to(DEVICE), None, row_of.to(DEVICE), kept.to(DEVICE), kept.to(DEVICE), "probs", 1, cfg
        )
        .cpu()
        .double()
    }
    logits64 = _eager64(x, w, None, mask)
    assert (got["probs"][:, ~mask] == 0).all()
    probs64 = torch.softmax(logits64, dim=1)[:, mask]
    # probabilities are ~3e-7 here, under any absolute tolerance: compare relative errors
    rel = (got["probs"][:, mask] / probs64 - 1).abs().max().item()
    assert rel < 1e-5, f"huge-C probs: worst relative error {rel:.2e}"


@pytest.mark.parametrize("output, k", OUTPUTS)
@pytest.mark.parametrize("batch", [1, 1024])
def test_gpu_plans_stay_within_cuda_grid_limits(output, k, batch):
    """The launches the GPU would make for C = 5 M (tiles of the GPU table) fit CUDA's grid limits."""
    th = _th()
    for dtype in (torch.float16, torch.float32):
        plan = th.plan_launches(batch, 5_000_000, 4_500_000, 512, dtype, output, k, True, 512, 512, True, 132)
        for launch in plan.launches:
            assert len(launch.grid) == 1, launch
            th.check_grid(launch.grid)  # raises past a limit
    with pytest.raises(ValueError, match="over CUDA's limit of 65535"):
        th.check_grid((1, 65536))


def test_batch_size_does_not_change_the_compiled_variant():
    """Batch size is do_not_specialize: batches of one regime share every compiled variant (no recompile)."""
    from edge_unlearn.kernels import aot

    th = _th()

    def variants(batch, output, k):
        plan = th.plan_launches(batch, 1000, 900, 512, torch.float16, output, k, True, 512, 512, True, 132)
        return [aot._variant(th.KERNELS[launch.kernel], launch) for launch in plan.launches]

    for output, k in OUTPUTS:
        for batch_set in ((17, 32, 48, 64), (65, 128, 1000)):
            first = variants(batch_set[0], output, k)
            for batch in batch_set[1:]:
                assert variants(batch, output, k) == first, f"{output}: batch {batch} compiles another variant"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_bias_free_head_all_outputs(dtype):
    x, w, _ = make_inputs(7, 90, 40, dtype, seed=13)
    mask = make_mask(90, "many", seed=14)
    head = CompactHead.from_linear(_linear(w, None), mask).to(DEVICE)
    assert head.bias is None
    res = {out: head(x.to(DEVICE), output=out, k=k, impl="triton") for out, k in OUTPUTS}
    check_all_outputs(res, x, w, None, mask, dtype, 4, f"bias-free {dtype}")


def _linear(w, b):
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    return lin


def test_non_contiguous_features_and_weight():
    """Transposed features, a weight that is a column slice of a wider one, and a transposed weight view."""
    xb, wb, b = make_inputs(40, 30, 64, torch.float32, seed=17)
    x_t = xb[:6].t().contiguous().t()  # [6, 64] with strides (1, 6): last dim not contiguous
    assert not x_t.is_contiguous()
    w_slice = wb[:, :48]  # row stride 64, last dim contiguous: used in place
    w_t = wb[:, :48].t().contiguous().t()  # last dim strided: the launcher makes it contiguous
    mask = make_mask(30, "many", seed=18)
    for w in (w_slice, w_t):
        x = x_t[:, :48]
        res = {
            out: masked_head(x.to(DEVICE), w.to(DEVICE), b.to(DEVICE), mask.to(DEVICE), output=out, k=k, impl="triton")
            for out, k in OUTPUTS
        }
        check_all_outputs(res, x, w, b, mask, torch.float32, 4, f"strides x={x.stride()} w={w.stride()}")


@pytest.mark.parametrize(
    "break_maps, match",
    [
        (lambda r, i, k: (r.long(), i, k), "row_of must be a 1-D int32 tensor"),
        (lambda r, i, k: (r, i, k[:-1]), "must have one length"),
        (lambda r, i, k: (r, i, torch.where(k == k[-1], k + 1000, k)), "kept_rows outside"),
        (lambda r, i, k: (r, i.flip(0), k.flip(0)), "not strictly ascending"),
        (lambda r, i, k: (torch.where(r == 3, -1, r), i, k), "row_of does not map exactly"),
    ],
)
def test_bad_index_maps_are_refused_before_any_launch(break_maps, match):
    x, w, b = make_inputs(2, 12, 16, torch.float32)
    mask = torch.ones(12, dtype=torch.bool)
    mask[5] = False
    kept, row_of = index_maps(mask)
    row_of, kept_ids, kept_rows = break_maps(row_of, kept, kept.clone())
    with pytest.raises(ValueError, match=match):
        OPS["argmax"](x, w, b, row_of, kept_ids, kept_rows, "reference")


def test_index_maps_on_another_device_are_refused():
    from edge_unlearn.kernels.reference import check_index_maps

    kept, row_of = index_maps(torch.ones(12, dtype=torch.bool))
    with pytest.raises(ValueError, match="row_of is on meta but the features are on cpu"):
        check_index_maps(row_of.to("meta"), kept, kept, 12, torch.device("cpu"))


def test_validated_maps_are_rechecked_after_an_in_place_edit():
    x, w, b = make_inputs(2, 12, 16, torch.float32)
    kept, row_of = index_maps(torch.ones(12, dtype=torch.bool))
    rows = kept.clone()
    OPS["argmax"](x, w, b, row_of, kept, rows, "reference")  # valid: cached
    rows[3] = 99  # in-place edit bumps the tensor's version
    with pytest.raises(ValueError, match="kept_rows outside"):
        OPS["argmax"](x, w, b, row_of, kept, rows, "reference")


@pytest.mark.gpu
def test_launch_follows_the_tensors_device_not_the_current_one():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    x, w, b = make_inputs(33, 300, 64, torch.float16, seed=1)
    mask = make_mask(300, "many", seed=1)
    with torch.cuda.device(0):
        res = {
            out: masked_head(
                x.to("cuda:1"), w.to("cuda:1"), b.to("cuda:1"), mask.to("cuda:1"), output=out, k=k, impl="triton"
            )
            for out, k in OUTPUTS
        }
    check_all_outputs(
        {k: v.cpu() if k != "topk" else (v[0].cpu(), v[1].cpu()) for k, v in res.items()},
        x,
        w,
        b,
        mask,
        torch.float16,
        4,
        "cuda:1 while cuda:0 is current",
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_gpu_huge_classes_default_tiles(dtype):
    """C > 4.19 M with the GPU's own tiles (a 2-D grid would exceed 65 535 blocks on axis 1)."""
    num_classes, dim = 4_300_000, 64
    x, w, b = make_inputs(3, num_classes, dim, dtype, seed=2)
    mask = make_mask(num_classes, "many", seed=3)
    res = {
        out: masked_head(x.cuda(), w.cuda(), b.cuda(), mask.cuda(), output=out, k=k, impl="triton")
        for out, k in OUTPUTS
    }
    logits64 = _eager64(x, w, b, mask)
    assert_close_report(res["logits"].cpu(), logits64, dtype, "gpu huge-C logits")
    assert_close_report(res["probs"].cpu(), torch.softmax(logits64, dim=1), dtype, "gpu huge-C probs")
    assert_argmax_ok(res["argmax"].cpu(), logits64, TIE_TOL[dtype], "gpu huge-C argmax")
    assert_topk_ok(res["topk"][0].cpu(), res["topk"][1].cpu(), logits64, 4, dtype, "gpu huge-C top-k")
