"""Triton kernels of the fused masked head, their launch plan and their launcher.

Imported lazily (only when the Triton path is used): ``TRITON_INTERPRET=1`` must be in the environment before
this module is imported for the kernels to run on CPU tensors through Triton's interpreter.

Kernels (all tiled over batch x classes, fp32 accumulation, forgotten rows of the weight never loaded):

* ``_reduce_kernel`` walks the *kept* classes (``kept_rows``/``kept_ids``) for argmax or top-k. Each logit is
  turned into one int64 *packed key*: an order-preserving integer image of the fp32 value in the high half
  (NaN above +inf, as ``torch.argmax``/``topk`` treat it) and ``2^31-1 - class id`` in the low half, so one
  integer max gives the largest logit and, among ties, the smallest class id. Argmax keeps a running max of the
  keys; top-k keeps a running list of k keys and inserts a tile's candidates only while some row has one above
  its current k-th key, so after the first tiles a tile costs one max reduction, not k. Top-k also keeps the
  online log-sum-exp for the probabilities. With several programs per batch tile (a split of the classes, for
  a small batch and many classes) it writes per-split partials.
* ``_merge_kernel`` merges the partials of a split (argmax, top-k + log-sum-exp, or log-sum-exp alone):
  these all decompose exactly over a partition of the classes.
* ``_write_kernel`` writes the [B, C] outputs walking the class columns with ``row_of`` (-1 = forgotten: the
  weight row is not loaded, the column gets -inf or probability 0). Probabilities take one matmul pass: when
  the classes fit in one tile the row is normalised in registers; otherwise each tile stores
  ``exp(logit - tile max)`` plus (tile max, tile sum) partials, ``_merge_kernel`` turns those into the
  log-sum-exp and ``_scale_kernel`` rescales the stored values in place.

Grids are one-dimensional over (class tile, batch tile) pairs, so no launch meets CUDA's 65 535-block limit
of grid axes 1 and 2, whatever the number of classes. Batch size and the other per-call integers are
``do_not_specialize``: a new batch size reuses the compiled kernel.

NaN semantics match PyTorch on the same masked logits: argmax returns the smallest class id whose logit is
NaN, top-k ranks NaN above every number, and a row with a NaN kept logit has NaN probabilities everywhere
(``torch.softmax``); forgotten classes stay -inf in the logits.

``plan_launches`` describes every launch of a call (kernel, grid, constexprs, integers, buffers) without any
tensor; ``masked_head_triton`` executes the plan, and ``edge_unlearn.kernels.aot`` compiles the same plans
ahead of time for real GPUs on a CPU-only machine.
Longer than 500 lines because the kernels, their constexpr sentinels and their launch configuration must be read together.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

HeadOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

# Sentinels are constexpr globals: compiled Triton refuses plain module globals inside @triton.jit code.
_EMPTY = tl.constexpr(-(2**63))  # packed key below every real key: padding, forgotten, removed
_KEY_MAX = tl.constexpr(2**63 - 1)  # top-k slots >= k: never the k-th smallest, never replaced
_ID_FLIP = tl.constexpr(2**31 - 1)  # low half of a packed key = _ID_FLIP - class id (smaller id, larger key)
_NAN_KEY = tl.constexpr(2**31 - 1)  # high half of NaN: above +inf (0x7F800000)
_LOWEST_REAL = tl.constexpr(-(2**63) + 2**32)  # smallest packed key of a real logit (high half -2^31 + 1)

MODE_ARGMAX, MODE_TOPK, MODE_LSE = 0, 1, 2  # _reduce_kernel / _merge_kernel
WRITE_LOGITS, WRITE_PROBS_ONE_TILE, WRITE_PROBS_PARTIAL = 0, 1, 2  # _write_kernel
MERGE_CHUNK = 64  # splits merged per step by _merge_kernel
CUDA_GRID_LIMITS = (2**31 - 1, 65535, 65535)
# runtime integers the JIT must not specialise (== 1, multiple of 16): they change from call to call
_DYNAMIC_INTS = ("B", "C", "K", "n_tiles", "tiles_per_split", "n_splits", "n_btiles", "n_ctiles")


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _tile_logits(
    x_ptr,
    w_ptr,
    b_ptr,
    offs_b,
    rows,
    valid_b,
    valid_c,
    D,
    stride_xb,
    stride_wc,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """fp32 logits of one [BLOCK_B, BLOCK_C] tile; columns with valid_c False are -inf and their rows unread."""
    rows64 = tl.where(valid_c, rows, 0).to(tl.int64)
    x_row = x_ptr + offs_b.to(tl.int64)[:, None] * stride_xb
    w_row = w_ptr + rows64[:, None] * stride_wc
    acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        if EVEN_D:  # D is a multiple of BLOCK_D: no mask along D
            xt = tl.load(x_row + offs_d[None, :], mask=valid_b[:, None], other=0.0)
            wt = tl.load(w_row + offs_d[None, :], mask=valid_c[:, None], other=0.0)
        else:
            valid_d = offs_d < D
            xt = tl.load(x_row + offs_d[None, :], mask=valid_b[:, None] & valid_d[None, :], other=0.0)
            wt = tl.load(w_row + offs_d[None, :], mask=valid_c[:, None] & valid_d[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(xt, tl.trans(wt), acc, input_precision="ieee")
        else:
            acc = tl.dot(xt, tl.trans(wt), acc)
    if HAS_BIAS:
        bias = tl.load(b_ptr + rows64, mask=valid_c, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    return tl.where(valid_c[None, :], acc, float("-inf"))


@triton.jit
def _packed_keys(acc, ids, valid):
    """int64 keys ordered like (logit with NaN largest, then smaller class id); invalid entries get _EMPTY."""
    bits = acc.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # order-preserving image of the float
    key = tl.where(key == -1, 0, key)  # -0.0 ties with +0.0
    key = tl.where(acc != acc, _NAN_KEY, key)
    low = (0x7FFFFFFF - ids).to(tl.int64)
    packed = (key.to(tl.int64) << 32) | low
    return tl.where(valid, packed, _EMPTY)


@triton.jit
def _unpack_value(packed):
    """fp32 logit of a packed key (NaN for NaN)."""
    key = (packed >> 32).to(tl.int32)
    bits = tl.where(key >= 0, key, key ^ 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _unpack_id(packed):
    """Class id (int64) of a packed key."""
    low = packed - ((packed >> 32) << 32)
    return 0x7FFFFFFF - low


@triton.jit
def _topk_insert(top, cand, TOPK: tl.constexpr):
    """Insert candidates ``cand`` [R, N] (unique packed keys per row) into the running top list ``top`` [R, KP].

    ``top`` holds the k best keys so far in slots < k (unsorted) and _KEY_MAX in the others. Each step moves
    every row's best remaining candidate in place of its k-th key if larger. At most k steps can insert; once
    no row has a candidate above its k-th key the remaining steps only test that (a few scalar operations),
    so a tile without newcomers costs one max and one min reduction, not k passes over the tile.
    """
    m = tl.max(cand, axis=1)
    kth = tl.min(top, axis=1)
    for _ in range(0, TOPK):
        enter = m > kth
        if tl.max(enter.to(tl.int32), axis=0) > 0:
            top = tl.where((top == kth[:, None]) & enter[:, None], m[:, None], top)
            cand = tl.where(cand == m[:, None], _EMPTY, cand)
            m = tl.max(cand, axis=1)
            kth = tl.min(top, axis=1)
    return top


@triton.jit
def _topk_init(BLOCK_R: tl.constexpr, TOPK: tl.constexpr, KP: tl.constexpr):
    """Empty running top list [BLOCK_R, KP]: distinct sentinels below any real key in slots < k."""
    kcols = tl.arange(0, KP)
    empty = kcols.to(tl.int64) + (_EMPTY + 1)
    top = tl.where(kcols < TOPK, empty, _KEY_MAX)
    return tl.zeros((BLOCK_R, KP), dtype=tl.int64) + top[None, :]


@triton.jit
def _topk_sorted(top, TOPK: tl.constexpr, KP: tl.constexpr):
    """The k keys of ``top`` sorted by decreasing key, in slots 0..k-1 (others _EMPTY); keys are unique."""
    kcols = tl.arange(0, KP)
    return tl.sort(tl.where(kcols[None, :] < TOPK, top, _EMPTY), dim=1, descending=True)


@triton.jit
def _safe_max(m):
    """The running max used as exp's shift: 0 where it is -inf (an all -inf row must not give -inf - -inf)."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit(do_not_specialize=["B", "K", "n_tiles", "tiles_per_split", "n_splits"])
def _reduce_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    ids_ptr,
    rows_ptr,
    part_key_ptr,
    part_m_ptr,
    part_s_ptr,
    out_v_ptr,
    out_i_ptr,
    B,
    D,
    K,
    stride_xb,
    stride_wc,
    n_tiles,
    tiles_per_split,
    n_splits,
    MODE: tl.constexpr,
    TOPK: tl.constexpr,
    KP: tl.constexpr,
    FINAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Argmax or top-k (+ log-sum-exp) over the kept classes of one split of one batch tile."""
    pid = tl.program_id(0)
    pid_b = pid % ((B + BLOCK_B - 1) // BLOCK_B)
    pid_s = pid // ((B + BLOCK_B - 1) // BLOCK_B)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    valid_b = offs_b < B

    best = tl.full((BLOCK_B,), _EMPTY, tl.int64)
    run_m = tl.full((BLOCK_B,), float("-inf"), tl.float32)
    run_s = tl.zeros((BLOCK_B,), tl.float32)
    top = _topk_init(BLOCK_B, TOPK, KP)

    t_start = pid_s * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, n_tiles)
    for t in range(t_start, t_end):
        offs_c = t * BLOCK_C + tl.arange(0, BLOCK_C)
        valid_c = offs_c < K
        rows = tl.load(rows_ptr + offs_c, mask=valid_c, other=0)
        ids = tl.load(ids_ptr + offs_c, mask=valid_c, other=0)
        acc = _tile_logits(
            x_ptr,
            w_ptr,
            b_ptr,
            offs_b,
            rows,
            valid_b,
            valid_c,
            D,
            stride_xb,
            stride_wc,
            HAS_BIAS,
            IEEE,
            EVEN_D,
            BLOCK_B,
            BLOCK_C,
            BLOCK_D,
        )
        keys = _packed_keys(acc, ids[None, :], valid_b[:, None] & valid_c[None, :])
        if MODE == 0:
            best = tl.maximum(best, tl.max(keys, axis=1))
        else:
            new_m = tl.maximum(run_m, tl.max(acc, axis=1))
            shift = _safe_max(new_m)
            run_s = run_s * tl.exp(run_m - shift) + tl.sum(tl.exp(acc - shift[:, None]), axis=1)
            run_m = new_m
            top = _topk_insert(top, keys, TOPK)

    kcols = tl.arange(0, KP)
    if FINAL:
        if MODE == 0:
            tl.store(out_i_ptr + offs_b, _unpack_id(best), mask=valid_b)
        else:
            lse = run_m + tl.log(run_s)
            ranked = _topk_sorted(top, TOPK, KP)
            probs = tl.exp(_unpack_value(ranked) - lse[:, None])
            o = offs_b.to(tl.int64)[:, None] * TOPK + kcols[None, :]
            msk = valid_b[:, None] & (kcols[None, :] < TOPK)
            tl.store(out_v_ptr + o, probs.to(out_v_ptr.dtype.element_ty), mask=msk)
            tl.store(out_i_ptr + o, _unpack_id(ranked), mask=msk)
    else:
        p = offs_b.to(tl.int64) * n_splits + pid_s
        if MODE == 0:
            tl.store(part_key_ptr + p, best, mask=valid_b)
        else:
            tl.store(part_m_ptr + p, run_m, mask=valid_b)
            tl.store(part_s_ptr + p, run_s, mask=valid_b)
            # only real keys leave: no sentinel of a split with fewer than k classes, no slot >= k
            top = tl.where((top < _LOWEST_REAL) | (kcols[None, :] >= TOPK), _EMPTY, top)
            o = p[:, None] * KP + kcols[None, :]
            tl.store(part_key_ptr + o, top, mask=valid_b[:, None])


@triton.jit(do_not_specialize=["n_splits"])
def _merge_kernel(
    part_key_ptr,
    part_m_ptr,
    part_s_ptr,
    out_v_ptr,
    out_i_ptr,
    n_splits,
    MODE: tl.constexpr,
    TOPK: tl.constexpr,
    KP: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Merge one batch row's per-split partials: argmax keys, top-k keys + (max, sum-exp), or (max, sum-exp).

    MODE 2 (log-sum-exp) writes the row's log-sum-exp as fp32 to ``out_v_ptr``.
    """
    b = tl.program_id(0).to(tl.int64)
    base = b * n_splits
    offs = tl.arange(0, CHUNK)
    best = tl.full((1,), _EMPTY, tl.int64)
    run_m = tl.full((1,), float("-inf"), tl.float32)
    run_s = tl.zeros((1,), tl.float32)
    top = _topk_init(1, TOPK, KP)
    for s0 in range(0, n_splits, CHUNK):
        valid = s0 + offs < n_splits
        if MODE == 0:
            keys = tl.load(part_key_ptr + base + s0 + offs, mask=valid, other=_EMPTY)
            best = tl.maximum(best, tl.max(keys, axis=0))
        else:
            pm = tl.load(part_m_ptr + base + s0 + offs, mask=valid, other=float("-inf"))
            ps = tl.load(part_s_ptr + base + s0 + offs, mask=valid, other=0.0)
            new_m = tl.maximum(run_m, tl.max(pm, axis=0))
            shift = _safe_max(new_m)
            run_s = run_s * tl.exp(run_m - shift) + tl.sum(ps * tl.exp(pm - shift), axis=0)
            run_m = new_m
            if MODE == 1:
                kc = tl.arange(0, KP)
                ko = (base + s0 + offs.to(tl.int64))[:, None] * KP + kc[None, :]
                keys = tl.load(part_key_ptr + ko, mask=valid[:, None], other=_EMPTY)
                top = _topk_insert(top, tl.reshape(keys, (1, CHUNK * KP)), TOPK)
    if MODE == 0:
        tl.store(out_i_ptr + b + tl.arange(0, 1), _unpack_id(best))
    else:
        lse = run_m + tl.log(run_s)
        if MODE == 2:
            tl.store(out_v_ptr + b + tl.arange(0, 1), lse)
        else:
            kcols = tl.arange(0, KP)
            ranked = _topk_sorted(top, TOPK, KP)
            probs = tl.exp(_unpack_value(ranked) - lse[:, None])
            o = b * TOPK + kcols[None, :]
            msk = kcols[None, :] < TOPK
            tl.store(out_v_ptr + o, probs.to(out_v_ptr.dtype.element_ty), mask=msk)
            tl.store(out_i_ptr + o, _unpack_id(ranked), mask=msk)


@triton.jit(do_not_specialize=["B", "C", "n_btiles", "n_ctiles"])
def _write_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    row_of_ptr,
    out_ptr,
    part_m_ptr,
    part_s_ptr,
    B,
    C,
    D,
    stride_xb,
    stride_wc,
    stride_ob,
    n_btiles,
    n_ctiles,
    MODE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """[B, C] masked logits (forgotten = -inf) or probabilities (one tile) or probability partials (see module)."""
    pid = tl.program_id(0)
    pid_b = pid % n_btiles  # consecutive programs share a class tile: its weight rows are read from L2
    pid_c = pid // n_btiles
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    valid_b = offs_b < B
    in_c = offs_c < C
    rows = tl.load(row_of_ptr + offs_c, mask=in_c, other=-1)
    acc = _tile_logits(
        x_ptr,
        w_ptr,
        b_ptr,
        offs_b,
        rows,
        valid_b,
        rows >= 0,
        D,
        stride_xb,
        stride_wc,
        HAS_BIAS,
        IEEE,
        EVEN_D,
        BLOCK_B,
        BLOCK_C,
        BLOCK_D,
    )
    if MODE != 0:
        m = tl.max(acc, axis=1)
        e = tl.exp(acc - _safe_max(m)[:, None])
        s = tl.sum(e, axis=1)
        if MODE == 1:
            acc = e / s[:, None]
        else:
            acc = e
            p = offs_b.to(tl.int64) * n_ctiles + pid_c
            tl.store(part_m_ptr + p, m, mask=valid_b)
            tl.store(part_s_ptr + p, s, mask=valid_b)
    o = offs_b.to(tl.int64)[:, None] * stride_ob + offs_c[None, :]
    tl.store(out_ptr + o, acc.to(out_ptr.dtype.element_ty), mask=valid_b[:, None] & in_c[None, :])


@triton.jit(do_not_specialize=["B", "C", "n_btiles", "n_ctiles"])
def _scale_kernel(
    out_ptr,
    part_m_ptr,
    lse_ptr,
    B,
    C,
    stride_ob,
    n_btiles,
    n_ctiles,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Finish multi-tile probabilities in place: out = exp(logit - tile max) * exp(tile max - log-sum-exp)."""
    pid = tl.program_id(0)
    pid_b = pid % n_btiles
    pid_c = pid // n_btiles
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    valid_b = offs_b < B
    m = tl.load(part_m_ptr + offs_b.to(tl.int64) * n_ctiles + pid_c, mask=valid_b, other=0.0)
    lse = tl.load(lse_ptr + offs_b, mask=valid_b, other=0.0)
    factor = tl.exp(_safe_max(m) - lse)
    o = offs_b.to(tl.int64)[:, None] * stride_ob + offs_c[None, :]
    msk = valid_b[:, None] & (offs_c < C)[None, :]
    v = tl.load(out_ptr + o, mask=msk, other=0.0).to(tl.float32)
    tl.store(out_ptr + o, (v * factor[:, None]).to(out_ptr.dtype.element_ty), mask=msk)


KERNELS = {"reduce": _reduce_kernel, "merge": _merge_kernel, "write": _write_kernel, "scale": _scale_kernel}


# ----------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes, class split and launch options; ``None`` fields come from the regime table."""

    block_b: int | None = None
    block_c: int | None = None
    block_d: int | None = None
    num_splits: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None


@dataclass(frozen=True)
class TileConfig:
    """One row of the regime table: tiles and launch options of the main kernel of a call."""

    block_b: int
    block_c: int
    block_d: int
    num_warps: int
    num_stages: int


# GPU regime table: (kernel family, batch regime) -> tiles for fp16/bf16 rows that are 16-byte aligned.
# small: B <= 16 (decode-like, bound by the weight read), mid: B <= 64, large: B > 64 (compute bound).
# fp32 (FMA dot, no tensor cores) and rows that are not 16-byte aligned (odd D: no vector loads, one 64-bit
# address per element) take narrower D tiles and the warps below; with the plain table ptxas spilled (AOT
# compile: up to 1 KB at 255 registers). The AOT test fails on any spill of what the table launches; the
# timings that choose between spill-free entries are for benchmarks/kernel_bench.py --sweep on a GPU.
GPU_TABLE: dict[tuple[str, str], TileConfig] = {
    ("reduce", "small"): TileConfig(16, 64, 64, 4, 2),
    ("reduce", "mid"): TileConfig(64, 64, 64, 4, 2),
    ("reduce", "large"): TileConfig(64, 64, 64, 4, 2),
    ("write", "small"): TileConfig(16, 64, 64, 4, 3),
    ("write", "mid"): TileConfig(64, 64, 64, 4, 3),
    ("write", "large"): TileConfig(64, 128, 64, 8, 3),
}
FP32_TILE_D, UNALIGNED_TILE_D = 16, 32  # D tiles of fp32 and of unaligned 16-bit rows
# warps for fp32 and for unaligned 16-bit rows, per family; fp32 writes pipeline 2 stages, not 3
FP32_WARPS, FP32_WRITE_STAGES, UNALIGNED_WARPS = {"reduce": 8, "write": 8}, 2, {"reduce": 4, "write": 8}
# top-k keeps a running list of int64 keys: 8 warps; 3 stages in 16-bit, 1 in fp32 (other choices spilled
# 4-56 B in some variants of the full product)
TOPK_WARPS, TOPK_STAGES, FP32_TOPK_STAGES = 8, 3, 1
# Interpreter: every op has a fixed Python cost, so few, large tiles (tests also pass small tiles explicitly).
INTERPRET_TILE = TileConfig(64, 128, 128, 4, 1)
SCALE_BLOCK = (16, 256)  # _scale_kernel is a pure streaming pass


def batch_regime(batch: int) -> str:
    """Regime name of a batch size in the GPU table."""
    return "small" if batch <= 16 else "mid" if batch <= 64 else "large"


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def tile_config(
    family: str,
    batch: int,
    num_cols: int,
    dtype: torch.dtype,
    on_gpu: bool,
    config: KernelConfig | None = None,
    aligned_rows: bool = True,
) -> TileConfig:
    """Tiles for a kernel family ("reduce" over kept classes, "write" over all classes) and a call;
    ``aligned_rows``: every row of features and weight starts on a 16-byte boundary (vector loads)."""
    config = config or KernelConfig()
    if on_gpu:
        base = GPU_TABLE[(family, batch_regime(batch))]
        if dtype == torch.float32:
            stages = FP32_WRITE_STAGES if family == "write" else base.num_stages
            base = TileConfig(base.block_b, base.block_c, FP32_TILE_D, FP32_WARPS[family], stages)
        elif not aligned_rows:
            base = TileConfig(base.block_b, base.block_c, UNALIGNED_TILE_D, UNALIGNED_WARPS[family], base.num_stages)
    else:
        base = TileConfig(
            min(INTERPRET_TILE.block_b, max(16, _next_pow2(batch))),
            min(INTERPRET_TILE.block_c, max(16, _next_pow2(num_cols))),
            INTERPRET_TILE.block_d,
            INTERPRET_TILE.num_warps,
            INTERPRET_TILE.num_stages,
        )
    return TileConfig(
        config.block_b or base.block_b,
        config.block_c or base.block_c,
        config.block_d or base.block_d,
        config.num_warps or base.num_warps,
        config.num_stages or base.num_stages,
    )


@dataclass(frozen=True)
class Buffer:
    """A tensor a launch reads or writes: an input ("x", "w", "b", "row_of", "kept_ids", "kept_rows"), an
    output ("out", "out_v", "out_i") or a scratch buffer the executor allocates (shape and dtype given)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a plan: kernel name in KERNELS, 1-D grid, pointer args, integer args, constexprs."""

    kernel: str
    grid: tuple[int, ...]
    pointers: Mapping[str, Buffer]
    ints: Mapping[str, int]
    constexprs: Mapping[str, object]
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class Plan:
    """Every launch of one call plus its outputs and scratch buffers, in launch order."""

    launches: tuple[Launch, ...]
    outputs: tuple[Buffer, ...]
    scratch: tuple[Buffer, ...] = field(default=())


def plan_launches(
    batch: int,
    num_classes: int,
    num_kept: int,
    dim: int,
    dtype: torch.dtype,
    output: str,
    k: int,
    has_bias: bool,
    x_row_stride: int,
    w_row_stride: int,
    on_gpu: bool,
    sm_count: int,
    config: KernelConfig | None = None,
) -> Plan:
    """The launches ``masked_head_triton`` makes for a call (batch >= 1, num_kept >= 1), without tensors."""
    config = config or KernelConfig()
    f32, i64 = torch.float32, torch.int64
    esize = dtype.itemsize
    aligned = all((n * esize) % 16 == 0 for n in (dim, x_row_stride, w_row_stride))
    inputs = dict(x_ptr=Buffer("x", dtype), w_ptr=Buffer("w", dtype), b_ptr=Buffer("b" if has_bias else "x", dtype))
    common = dict(HAS_BIAS=has_bias, IEEE=dtype == torch.float32)
    if output in ("logits", "probs"):
        tc = tile_config("write", batch, num_classes, dtype, on_gpu, config, aligned)
        n_btiles, n_ctiles = triton.cdiv(batch, tc.block_b), triton.cdiv(num_classes, tc.block_c)
        out = Buffer("out", dtype, (batch, num_classes))
        if output == "logits":
            mode = WRITE_LOGITS
        else:
            mode = WRITE_PROBS_ONE_TILE if n_ctiles == 1 else WRITE_PROBS_PARTIAL
        part_m = Buffer("part_m", f32, (batch, n_ctiles)) if mode == WRITE_PROBS_PARTIAL else out
        part_s = Buffer("part_s", f32, (batch, n_ctiles)) if mode == WRITE_PROBS_PARTIAL else out
        write = Launch(
            "write",
            (n_btiles * n_ctiles,),
            dict(inputs, row_of_ptr=Buffer("row_of", torch.int32), out_ptr=out, part_m_ptr=part_m, part_s_ptr=part_s),
            dict(
                B=batch,
                C=num_classes,
                D=dim,
                stride_xb=x_row_stride,
                stride_wc=w_row_stride,
                stride_ob=num_classes,
                n_btiles=n_btiles,
                n_ctiles=n_ctiles,
            ),
            dict(
                MODE=mode,
                EVEN_D=dim % tc.block_d == 0,
                BLOCK_B=tc.block_b,
                BLOCK_C=tc.block_c,
                BLOCK_D=tc.block_d,
                **common,
            ),
            tc.num_warps,
            tc.num_stages,
        )
        if mode != WRITE_PROBS_PARTIAL:
            return Plan((write,), (out,))
        lse = Buffer("lse", f32, (batch,))
        merge = Launch(
            "merge",
            (batch,),
            dict(
                part_key_ptr=Buffer("part_m", f32), part_m_ptr=part_m, part_s_ptr=part_s, out_v_ptr=lse, out_i_ptr=lse
            ),
            dict(n_splits=n_ctiles),
            dict(MODE=MODE_LSE, TOPK=1, KP=2, CHUNK=MERGE_CHUNK),
            4,
            1,
        )
        # a scale tile never straddles two write tiles; the interpreter takes the write tiles themselves
        sb, sc = (
            (min(SCALE_BLOCK[0], tc.block_b), min(SCALE_BLOCK[1], tc.block_c)) if on_gpu else (tc.block_b, tc.block_c)
        )
        sb_tiles = triton.cdiv(batch, sb)
        scale = Launch(
            "scale",
            (sb_tiles * n_ctiles * (tc.block_c // sc),),
            dict(out_ptr=out, part_m_ptr=part_m, lse_ptr=lse),
            dict(B=batch, C=num_classes, stride_ob=num_classes, n_btiles=sb_tiles, n_ctiles=n_ctiles),
            dict(BLOCK_B=sb, BLOCK_C=sc),
            4,
            1,
        )
        return Plan((write, merge, scale), (out,), (part_m, part_s, lse))

    mode = MODE_ARGMAX if output == "argmax" else MODE_TOPK
    tc = tile_config("reduce", batch, num_kept, dtype, on_gpu, config, aligned)
    if mode == MODE_TOPK and on_gpu and config.num_warps is None:
        stages = (
            tc.num_stages
            if config.num_stages is not None
            else FP32_TOPK_STAGES
            if dtype == torch.float32
            else TOPK_STAGES
        )
        tc = TileConfig(tc.block_b, tc.block_c, tc.block_d, TOPK_WARPS, stages)
    n_tiles = triton.cdiv(num_kept, tc.block_c)
    n_btiles = triton.cdiv(batch, tc.block_b)
    want = config.num_splits if config.num_splits is not None else triton.cdiv(2 * sm_count, n_btiles)
    want = max(1, min(want, n_tiles))
    tiles_per_split = triton.cdiv(n_tiles, want)
    n_splits = triton.cdiv(n_tiles, tiles_per_split)
    kp = max(2, _next_pow2(k)) if mode == MODE_TOPK else 2
    final = n_splits == 1
    if mode == MODE_ARGMAX:
        outs = (Buffer("out_i", i64, (batch,)),)
        out_v, out_i = Buffer("out_i", i64), outs[0]
    else:
        outs = (Buffer("out_v", dtype, (batch, k)), Buffer("out_i", i64, (batch, k)))
        out_v, out_i = outs
    scratch: tuple[Buffer, ...] = ()
    if final:
        part_key = part_m = part_s = out_i
    else:
        part_key = Buffer("part_key", i64, (batch, n_splits, kp if mode == MODE_TOPK else 1))
        part_m = Buffer("part_m", f32, (batch, n_splits))
        part_s = Buffer("part_s", f32, (batch, n_splits))
        scratch = (part_key, part_m, part_s)
    reduce = Launch(
        "reduce",
        (n_btiles * n_splits,),
        dict(
            inputs,
            ids_ptr=Buffer("kept_ids", torch.int32),
            rows_ptr=Buffer("kept_rows", torch.int32),
            part_key_ptr=part_key,
            part_m_ptr=part_m,
            part_s_ptr=part_s,
            out_v_ptr=out_v,
            out_i_ptr=out_i,
        ),
        dict(
            B=batch,
            D=dim,
            K=num_kept,
            stride_xb=x_row_stride,
            stride_wc=w_row_stride,
            n_tiles=n_tiles,
            tiles_per_split=tiles_per_split,
            n_splits=n_splits,
        ),
        dict(
            MODE=mode,
            TOPK=k if mode == MODE_TOPK else 1,
            KP=kp,
            FINAL=final,
            EVEN_D=dim % tc.block_d == 0,
            BLOCK_B=tc.block_b,
            BLOCK_C=tc.block_c,
            BLOCK_D=tc.block_d,
            **common,
        ),
        tc.num_warps,
        tc.num_stages,
    )
    if final:
        return Plan((reduce,), outs)
    merge = Launch(
        "merge",
        (batch,),
        dict(part_key_ptr=part_key, part_m_ptr=part_m, part_s_ptr=part_s, out_v_ptr=out_v, out_i_ptr=out_i),
        dict(n_splits=n_splits),
        dict(MODE=mode, TOPK=k if mode == MODE_TOPK else 1, KP=kp, CHUNK=MERGE_CHUNK),
        4,
        1,
    )
    return Plan((reduce, merge), outs, scratch)


def check_grid(grid: tuple[int, ...]) -> None:
    """Refuse a grid beyond CUDA's per-axis block limits (the interpreter would run it, a GPU would not)."""
    for axis, (n, limit) in enumerate(zip(grid, CUDA_GRID_LIMITS)):
        if n > limit:
            raise ValueError(f"grid axis {axis} has {n} blocks, over CUDA's limit of {limit}")


# ----------------------------------------------------------------------------------------------- execution


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a few splits so the merge pass is exercised


def _check_device(x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"the Triton kernel needs CUDA tensors (got device {x.device}); use impl='reference' on CPU, or set "
            "TRITON_INTERPRET=1 in the environment before triton is imported to run it through the interpreter."
        )
    if x.dtype == torch.bfloat16 and interpreting():
        raise ValueError("Triton's interpreter has no bf16 arithmetic; test bf16 on a GPU or use fp16/fp32.")


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def masked_head_triton(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    row_of: torch.Tensor,
    kept_ids: torch.Tensor,
    kept_rows: torch.Tensor,
    output: str,
    k: int = 1,
    config: KernelConfig | None = None,
) -> HeadOutput:
    """Launch the fused head on index maps (see ``kernels.reference.reference_from_index`` for semantics).

    Inputs are assumed validated (``kernels.reference.check_inputs`` and ``check_index_maps``): int32 maps on
    the features' device. Launches run on the tensors' own CUDA device, whatever the current device is.
    """
    _check_device(features)
    x = _last_dim_contiguous(features)
    w = _last_dim_contiguous(weight)
    tensors = dict(x=x, w=w, row_of=row_of, kept_ids=kept_ids, kept_rows=kept_rows)
    if bias is not None:
        tensors["b"] = bias.contiguous()
    batch, dim = x.shape
    num_classes, num_kept = row_of.numel(), kept_ids.numel()
    if num_kept == 0:
        raise ValueError("every class is masked: there is no class left to predict. Keep at least one class.")
    dev = x.device
    if batch == 0:
        if output in ("logits", "probs"):
            return torch.empty((0, num_classes), dtype=x.dtype, device=dev)
        if output == "argmax":
            return torch.empty(0, dtype=torch.int64, device=dev)
        return torch.empty((0, k), dtype=x.dtype, device=dev), torch.empty((0, k), dtype=torch.int64, device=dev)
    on_gpu = dev.type == "cuda"
    plan = plan_launches(
        batch,
        num_classes,
        num_kept,
        dim,
        x.dtype,
        output,
        k,
        bias is not None,
        x.stride(0),
        w.stride(0),
        on_gpu,
        _sm_count(dev),
        config,
    )
    for buf in plan.outputs + plan.scratch:
        tensors[buf.name] = torch.empty(buf.shape, dtype=buf.dtype, device=dev)
    with torch.cuda.device(dev) if on_gpu else contextlib.nullcontext():
        for launch in plan.launches:
            check_grid(launch.grid)
            args = {name: tensors[buf.name] for name, buf in launch.pointers.items()}
            KERNELS[launch.kernel][launch.grid](
                **args, **launch.ints, **launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages
            )
    results = tuple(tensors[buf.name] for buf in plan.outputs)
    return results if len(results) == 2 else results[0]
