"""Shared set-up for the kernel tests: Triton interpreter on CPU, the `gpu` marker, inputs and comparisons.

``TRITON_INTERPRET=1`` is set here, at import time, when no CUDA device is present: Triton decides whether
kernels are interpreted when they are defined, so this must happen before ``kernels.triton_head`` is imported
(the library imports it lazily, only when the Triton path runs).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Per-dtype tolerances for outputs stored in that dtype, against a float64 reference computed from the same
# (already rounded) inputs. Accumulation is fp32 in every implementation, so the error is the output rounding
# (half an ulp: 2^-11 fp16, 2^-8 bf16) plus fp32 summation error over D (<~1e-6 here).
TOL: dict[torch.dtype, tuple[float, float]] = {  # dtype -> (rtol, atol)
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (8e-3, 1e-4),
}
# Two logits closer than this (in float64) count as a true tie when judging argmax / top-k order.
TIE_TOL: dict[torch.dtype, float] = {torch.float32: 1e-4, torch.float16: 1e-4, torch.bfloat16: 1e-3}

MASK_KINDS = ("none", "one", "many", "all_but_one")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped with a reason when none is present")


def pytest_collection_modifyitems(config: pytest.Config, items) -> None:
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none present); CPU coverage runs through TRITON_INTERPRET=1")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    """One BLAS/OpenMP thread while these tests run (restored after each module).

    Triton's interpreter runs tl.dot with numpy, and the shapes here are small: with a thread pool on a busy
    2-core runner, OpenBLAS made each small matmul ~100x slower (measured: 10 ms vs 70 us for 64x128x128), and
    torch's OpenMP pool slowed the reference tests ~5x.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed is at stake
        limiter = None
    else:
        limiter = threadpool_limits(limits=1, user_api="blas")
    try:
        yield
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        torch.set_num_threads(threads)


def make_mask(num_classes: int, kind: str, seed: int = 0) -> torch.Tensor:
    """Boolean class mask [C]: none forgotten, one, many (about 60%, including class 0), or all but one."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(num_classes, dtype=torch.bool)
    if kind == "none":
        return mask
    if kind == "one":
        mask[int(torch.randint(num_classes, (1,), generator=g))] = False
    elif kind == "many":
        mask = torch.rand(num_classes, generator=g) > 0.6
        mask[0] = False
        if not mask.any():
            mask[-1] = True
    elif kind == "all_but_one":
        mask[:] = False
        mask[int(torch.randint(num_classes, (1,), generator=g))] = True
    else:
        raise ValueError(kind)
    return mask


def make_inputs(
    batch: int, num_classes: int, dim: int, dtype: torch.dtype, seed: int = 0, integer: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features [B, D], weight [C, D], bias [C] in ``dtype`` with logits of order 1.

    ``integer=True`` draws small integers so every product and sum is exact in fp32: ties are then exact
    whatever the summation order.
    """
    g = torch.Generator().manual_seed(seed)
    if integer:
        x = torch.randint(-2, 3, (batch, dim), generator=g).float()
        w = torch.randint(-2, 3, (num_classes, dim), generator=g).float()
        b = torch.randint(-2, 3, (num_classes,), generator=g).float()
    else:
        x = torch.randn(batch, dim, generator=g)
        w = torch.randn(num_classes, dim, generator=g) / dim**0.5
        b = 0.5 * torch.randn(num_classes, generator=g)
    return x.to(dtype), w.to(dtype), b.to(dtype)


def poison_forgotten(
    weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Copies with forgotten rows (and bias entries) set to NaN: any read of them would show in the output."""
    w = weight.clone()
    w[~mask] = float("nan")
    b = None
    if bias is not None:
        b = bias.clone()
        b[~mask] = float("nan")
    return w, b


def truth_logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Float64 masked logits [B, C] (forgotten = -inf) from the clean, already-rounded inputs."""
    out = x.double() @ w.double().T
    if b is not None:
        out = out + b.double()
    return out.masked_fill(~mask, float("-inf"))


def assert_close_report(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Compare with the per-dtype tolerance; on failure name the worst element, its values and the tolerance.

    Non-finite expected entries (-inf logits) must match exactly; NaN is never accepted.
    """
    rtol, atol = TOL[dtype]
    a = actual.double().cpu()
    e = expected.double().cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    assert not torch.isnan(a).any(), f"{what}: NaN at {torch.isnan(a).nonzero()[:5].tolist()}"
    finite = torch.isfinite(e)
    bad_inf = (a != e) & ~finite
    assert not bad_inf.any(), (
        f"{what}: forgotten/non-finite entries differ at {bad_inf.nonzero()[:5].tolist()} "
        f"(got {a[bad_inf][:5].tolist()}, expected {e[bad_inf][:5].tolist()})"
    )
    diff = torch.where(finite, (a - e).abs(), torch.zeros_like(a))
    allowed = atol + rtol * e.abs().where(finite, torch.zeros_like(e))
    ratio = diff / allowed
    if ratio.numel() and ratio.max() > 1:
        where = tuple(int(i) for i in torch.unravel_index(ratio.argmax(), ratio.shape))
        rel = diff[where] / max(float(e[where].abs()), 1e-300)
        raise AssertionError(
            f"{what}: worst difference {float(diff[where]):.3e} (relative {float(rel):.3e}) at {where}: "
            f"got {float(a[where])!r}, expected {float(e[where])!r}; tolerance rtol={rtol} atol={atol}; "
            f"{int((ratio > 1).sum())} of {ratio.numel()} elements out of tolerance"
        )


def assert_argmax_ok(pred: torch.Tensor, logits64: torch.Tensor, tie_tol: float, what: str) -> None:
    """Exact argmax except at true ties: where the best kept logit leads the second by more than ``tie_tol``
    the prediction must be it; otherwise it must be a kept class within ``tie_tol`` of the best."""
    pred = pred.cpu()
    assert pred.dtype == torch.int64, f"{what}: argmax dtype {pred.dtype}, want int64"
    top2 = logits64.topk(min(2, logits64.shape[1]), dim=1).values
    best = top2[:, 0]
    chosen = logits64.gather(1, pred.clamp(0, logits64.shape[1] - 1)[:, None])[:, 0]
    valid = (pred >= 0) & (pred < logits64.shape[1])
    clear = (top2[:, 0] - top2[:, 1] > tie_tol) if top2.shape[1] > 1 else torch.ones_like(best, dtype=torch.bool)
    exact = logits64.argmax(dim=1)
    wrong = ~valid | (clear & (pred != exact)) | (~clear & ~(chosen >= best - tie_tol))
    if wrong.any():
        r = int(wrong.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(wrong.sum())} of {pred.numel()} rows wrong; first row {r}: predicted {int(pred[r])} "
            f"(logit {float(chosen[r])!r}), expected {int(exact[r])} (logit {float(best[r])!r}), tie_tol {tie_tol}"
        )


def assert_topk_ok(
    vals: torch.Tensor, ids: torch.Tensor, logits64: torch.Tensor, k: int, dtype: torch.dtype, what: str
) -> None:
    """Top-k ids: kept, distinct, in decreasing order, equal to the float64 order except within true ties;
    values: the float64 softmax at the returned ids within the per-dtype tolerance."""
    vals, ids = vals.cpu(), ids.cpu()
    assert ids.shape == (logits64.shape[0], k) and vals.shape == ids.shape, f"{what}: shapes {vals.shape} {ids.shape}"
    assert ids.dtype == torch.int64, f"{what}: ids dtype {ids.dtype}"
    tie_tol = TIE_TOL[dtype]
    assert ((ids >= 0) & (ids < logits64.shape[1])).all(), f"{what}: ids out of range: {ids}"
    chosen = logits64.gather(1, ids)
    assert torch.isfinite(chosen).all(), f"{what}: a forgotten class was returned: {ids[~torch.isfinite(chosen)]}"
    for r in range(ids.shape[0]):
        assert len(set(ids[r].tolist())) == k, f"{what}: row {r} repeats a class id: {ids[r].tolist()}"
    sorted64 = logits64.sort(dim=1, descending=True).values[:, :k]
    off = (chosen - sorted64).abs()
    if (off > tie_tol).any():
        r, j = (int(i) for i in (off > tie_tol).nonzero()[0])
        raise AssertionError(
            f"{what}: rank {j} of row {r} is class {int(ids[r, j])} with logit {float(chosen[r, j])!r}, "
            f"but the rank-{j} logit is {float(sorted64[r, j])!r} (tie_tol {tie_tol})"
        )
    probs64 = torch.softmax(logits64, dim=1).gather(1, ids)
    assert_close_report(vals, probs64, dtype, f"{what} (top-k probabilities)")


def check_all_outputs(
    results: dict[str, object],
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    mask: torch.Tensor,
    dtype: torch.dtype,
    k: int,
    what: str,
) -> None:
    """Check every output in ``results`` ({"logits": .., "probs": .., "argmax": .., "topk": (v, i)})."""
    logits64 = truth_logits(x, w, b, mask)
    for name, res in results.items():
        label = f"{what} output={name}"
        if name == "logits":
            assert res.dtype == dtype, f"{label}: dtype {res.dtype}"
            assert_close_report(res, logits64, dtype, label)
        elif name == "probs":
            assert res.dtype == dtype, f"{label}: dtype {res.dtype}"
            leaked = res.cpu()[:, ~mask.cpu()]
            assert (leaked == 0).all(), f"{label}: forgotten classes got probability {leaked.abs().max().item()}"
            assert_close_report(res, torch.softmax(logits64, dim=1), dtype, label)
        elif name == "argmax":
            assert_argmax_ok(res, logits64, TIE_TOL[dtype], label)
        elif name == "topk":
            assert res[0].dtype == dtype, f"{label}: dtype {res[0].dtype}"
            assert_topk_ok(res[0], res[1], logits64, k, dtype, label)
        else:
            raise ValueError(name)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the AOT compile's registers and spills per variant (test_aot_compile.py), when it ran."""
    import sys

    module = sys.modules.get("tests.kernels.test_aot_compile")
    if module is None or not getattr(module, "AOT_RESULTS", None):
        return
    from edge_unlearn.kernels.aot import format_table

    for name, rows in module.AOT_RESULTS.items():
        terminalreporter.section(f"AOT compile ({name}): registers and spills per variant")
        terminalreporter.write_line(format_table(rows))
