"""Triton kernels of the fused masked head, and their launcher.

Imported lazily (only when the Triton path is used): ``TRITON_INTERPRET=1`` must be in the environment before
this module is imported for the kernels to run on CPU tensors through Triton's interpreter.

Three kernels, all tiled over batch x classes, fp32 accumulation:

* ``_reduce_kernel`` walks the *kept* classes only (``kept_rows``/``kept_ids``, K of them), so forgotten rows
  of the weight are never loaded. For each batch tile it keeps an online max/sum-exp (log-sum-exp), a running
  argmax or a running top-k in registers; logits never reach global memory. With several programs per batch
  tile (a split of the classes, for small B and large C) it writes per-split partials.
* ``_merge_kernel`` is the second pass of a split: argmax, log-sum-exp and top-k all decompose over a
  partition of the classes, so partials merge exactly.
* ``_write_kernel`` produces the [B, C] outputs (masked logits, or probabilities from the log-sum-exp) by
  walking the original class columns with ``row_of`` (-1 = forgotten: the weight row is not loaded and the
  column gets -inf or 0), so every output element is written exactly once and nothing is pre-filled.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl

HeadOutput = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]

_BIG_ID = 2**62  # sentinel class id (larger than any real one) used for padding and empty slots

_MODE_ARGMAX, _MODE_TOPK, _MODE_LSE = 0, 1, 2
_WRITE_LOGITS, _WRITE_PROBS = 0, 1


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _tile_logits(
    x_ptr, w_ptr, b_ptr, offs_b, rows, valid_c, B, D, stride_xb, stride_wc,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """fp32 logits of one [BLOCK_B, BLOCK_C] tile; columns with valid_c False are -inf and their rows unread."""
    valid_b = offs_b < B
    rows64 = tl.where(valid_c, rows, 0).to(tl.int64)
    x_row = x_ptr + offs_b.to(tl.int64)[:, None] * stride_xb
    w_row = w_ptr + rows64[:, None] * stride_wc
    acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
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
def _reduce_kernel(
    x_ptr, w_ptr, b_ptr, ids_ptr, rows_ptr,
    part_m_ptr, part_s_ptr, part_v_ptr, part_i_ptr,
    out_v_ptr, out_i_ptr,
    B, D, K, stride_xb, stride_wc, n_tiles, tiles_per_split, n_splits,
    MODE: tl.constexpr, TOPK: tl.constexpr, KP: tl.constexpr, FINAL: tl.constexpr,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Online reduction over the kept classes of one split: argmax, top-k (+ log-sum-exp) or log-sum-exp."""
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    valid_b = offs_b < B
    big = tl.full((BLOCK_B, BLOCK_C), _BIG_ID, tl.int64)

    run_m = tl.full((BLOCK_B,), float("-inf"), tl.float32)
    run_s = tl.zeros((BLOCK_B,), tl.float32)
    arg_v = tl.full((BLOCK_B,), float("-inf"), tl.float32)
    arg_i = tl.full((BLOCK_B,), _BIG_ID, tl.int64)
    kcols = tl.arange(0, KP)
    top_v = tl.full((BLOCK_B, KP), float("-inf"), tl.float32)
    top_i = tl.full((BLOCK_B, KP), _BIG_ID, tl.int64)

    t_start = pid_s * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, n_tiles)
    for t in range(t_start, t_end):
        offs_c = t * BLOCK_C + tl.arange(0, BLOCK_C)
        valid_c = offs_c < K
        rows = tl.load(rows_ptr + offs_c, mask=valid_c, other=0)
        ids = tl.load(ids_ptr + offs_c, mask=valid_c, other=0).to(tl.int64)
        ids = tl.where(valid_c, ids, _BIG_ID)
        acc = _tile_logits(x_ptr, w_ptr, b_ptr, offs_b, rows, valid_c, B, D, stride_xb, stride_wc,
                           HAS_BIAS, IEEE, BLOCK_B, BLOCK_C, BLOCK_D)
        tile_m = tl.max(acc, axis=1)
        if MODE == 0:
            # smallest class id among the tile's maxima, then merge with the running (value, id)
            tile_i = tl.min(tl.where(acc == tile_m[:, None], ids[None, :], big), axis=1)
            arg_i = tl.where(tile_m > arg_v, tile_i,
                             tl.where(tile_m == arg_v, tl.minimum(arg_i, tile_i), arg_i))
            arg_v = tl.maximum(arg_v, tile_m)
        else:
            new_m = tl.maximum(run_m, tile_m)
            run_s = run_s * tl.exp(run_m - new_m) + tl.sum(tl.exp(acc - new_m[:, None]), axis=1)
            run_m = new_m
            if MODE == 1:
                # merge the running top-k with this tile only if some tile value can enter it
                kth = tl.min(tl.where(kcols[None, :] < TOPK, top_v, float("inf")), axis=1)
                if tl.max((tile_m >= kth).to(tl.int32), axis=0) > 0:
                    new_v = tl.full((BLOCK_B, KP), float("-inf"), tl.float32)
                    new_i = tl.full((BLOCK_B, KP), _BIG_ID, tl.int64)
                    cand = acc
                    for j in tl.static_range(TOPK):
                        m_t = tl.max(cand, axis=1)
                        m_r = tl.max(top_v, axis=1)
                        m = tl.maximum(m_t, m_r)
                        i_t = tl.min(tl.where(cand == m[:, None], ids[None, :], big), axis=1)
                        i_r = tl.min(tl.where(top_v == m[:, None], top_i, _BIG_ID), axis=1)
                        pick = tl.minimum(i_t, i_r)
                        pick = tl.where(m == float("-inf"), _BIG_ID, pick)
                        new_v = tl.where(kcols[None, :] == j, m[:, None], new_v)
                        new_i = tl.where(kcols[None, :] == j, pick[:, None], new_i)
                        cand = tl.where(ids[None, :] == pick[:, None], float("-inf"), cand)
                        top_v = tl.where(top_i == pick[:, None], float("-inf"), top_v)
                    top_v = new_v
                    top_i = new_i

    if FINAL:
        if MODE == 0:
            tl.store(out_i_ptr + offs_b, arg_i, mask=valid_b)
        elif MODE == 1:
            lse = run_m + tl.log(run_s)
            probs = tl.exp(top_v - lse[:, None])
            o = offs_b.to(tl.int64)[:, None] * TOPK + kcols[None, :]
            msk = valid_b[:, None] & (kcols[None, :] < TOPK)
            tl.store(out_v_ptr + o, probs.to(out_v_ptr.dtype.element_ty), mask=msk)
            tl.store(out_i_ptr + o, top_i, mask=msk)
        else:
            tl.store(out_v_ptr + offs_b, run_m + tl.log(run_s), mask=valid_b)
    else:
        p = offs_b.to(tl.int64) * n_splits + pid_s
        if MODE == 0:
            tl.store(part_v_ptr + p, arg_v, mask=valid_b)
            tl.store(part_i_ptr + p, arg_i, mask=valid_b)
        else:
            tl.store(part_m_ptr + p, run_m, mask=valid_b)
            tl.store(part_s_ptr + p, run_s, mask=valid_b)
            if MODE == 1:
                o = p[:, None] * KP + kcols[None, :]
                tl.store(part_v_ptr + o, top_v, mask=valid_b[:, None])
                tl.store(part_i_ptr + o, top_i, mask=valid_b[:, None])


@triton.jit
def _merge_kernel(
    part_m_ptr, part_s_ptr, part_v_ptr, part_i_ptr, out_v_ptr, out_i_ptr, n_splits,
    MODE: tl.constexpr, TOPK: tl.constexpr, KP: tl.constexpr, S_PAD: tl.constexpr,
):
    """Second pass of a class split, one program per batch row: merge the per-split partials exactly."""
    b = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, S_PAD)
    valid_s = offs_s < n_splits
    base = b * n_splits
    if MODE == 0:
        v = tl.load(part_v_ptr + base + offs_s, mask=valid_s, other=float("-inf"))
        i = tl.load(part_i_ptr + base + offs_s, mask=valid_s, other=_BIG_ID)
        m = tl.max(v, axis=0)
        tl.store(out_i_ptr + b, tl.min(tl.where(v == m, i, _BIG_ID), axis=0))
    else:
        pm = tl.load(part_m_ptr + base + offs_s, mask=valid_s, other=float("-inf"))
        ps = tl.load(part_s_ptr + base + offs_s, mask=valid_s, other=0.0)
        mx = tl.max(pm, axis=0)
        lse = mx + tl.log(tl.sum(ps * tl.exp(pm - mx), axis=0))
        if MODE == 2:
            tl.store(out_v_ptr + b, lse)
        else:
            offs = tl.arange(0, S_PAD * KP)
            valid = offs < n_splits * KP
            v = tl.load(part_v_ptr + base * KP + offs, mask=valid, other=float("-inf"))
            i = tl.load(part_i_ptr + base * KP + offs, mask=valid, other=_BIG_ID)
            for j in tl.static_range(TOPK):
                m = tl.max(v, axis=0)
                pick = tl.min(tl.where(v == m, i, _BIG_ID), axis=0)
                tl.store(out_v_ptr + b * TOPK + j, tl.exp(m - lse).to(out_v_ptr.dtype.element_ty))
                tl.store(out_i_ptr + b * TOPK + j, pick)
                v = tl.where(i == pick, float("-inf"), v)


@triton.jit
def _write_kernel(
    x_ptr, w_ptr, b_ptr, row_of_ptr, lse_ptr, out_ptr,
    B, C, D, stride_xb, stride_wc, stride_ob,
    MODE: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """[B, C] masked logits (forgotten = -inf) or probabilities exp(logit - lse) (forgotten = 0)."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    valid_b = offs_b < B
    in_c = offs_c < C
    rows = tl.load(row_of_ptr + offs_c, mask=in_c, other=-1)
    kept = rows >= 0
    acc = _tile_logits(x_ptr, w_ptr, b_ptr, offs_b, rows, kept, B, D, stride_xb, stride_wc,
                       HAS_BIAS, IEEE, BLOCK_B, BLOCK_C, BLOCK_D)
    if MODE == 1:
        lse = tl.load(lse_ptr + offs_b, mask=valid_b, other=0.0)
        acc = tl.exp(acc - lse[:, None])
    o = offs_b.to(tl.int64)[:, None] * stride_ob + offs_c[None, :]
    tl.store(out_ptr + o, acc.to(out_ptr.dtype.element_ty), mask=valid_b[:, None] & in_c[None, :])


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and class split of one launch; ``None`` fields are chosen by ``choose_config``."""

    block_b: Optional[int] = None
    block_c: Optional[int] = None
    block_d: Optional[int] = None
    num_splits: Optional[int] = None
    num_warps: int = 4


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a few splits so the merge pass is exercised


def choose_config(batch: int, num_kept: int, dim: int, dtype: torch.dtype, device: torch.device,
                  config: Optional[KernelConfig] = None) -> Tuple[int, int, int, int, int, int]:
    """Pick (block_b, block_c, block_d, n_tiles, tiles_per_split, n_splits) for a launch.

    Heuristic, untuned on hardware: tl.dot needs tiles of at least 16; the class split aims at about two
    programs per SM so a small batch still spreads the weight read over the whole GPU.
    """
    config = config or KernelConfig()
    small_c = max(16, _next_pow2(num_kept))
    if device.type == "cuda":
        block_b = config.block_b or (16 if batch <= 16 else 32 if batch <= 32 else 64)
        block_c = config.block_c or min(64, small_c)
        block_d = config.block_d or (32 if dtype == torch.float32 else 64)
    else:
        # interpreter: every op (and every call of a jit helper such as tl.max) has a fixed Python cost, so
        # few, large tiles; the tests also pass small tiles explicitly to cover multi-tile paths
        block_b = config.block_b or min(64, max(16, _next_pow2(batch)))
        block_c = config.block_c or min(128, small_c)
        block_d = config.block_d or 128
    n_tiles = triton.cdiv(max(num_kept, 1), block_c)
    n_btiles = triton.cdiv(max(batch, 1), block_b)
    if config.num_splits is not None:
        want = config.num_splits
    else:
        want = triton.cdiv(2 * _sm_count(device), n_btiles)
    want = max(1, min(want, n_tiles))
    tiles_per_split = triton.cdiv(n_tiles, want)
    n_splits = triton.cdiv(n_tiles, tiles_per_split)
    return block_b, block_c, block_d, n_tiles, tiles_per_split, n_splits


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
    bias: Optional[torch.Tensor],
    row_of: torch.Tensor,
    kept_ids: torch.Tensor,
    kept_rows: torch.Tensor,
    output: str,
    k: int = 1,
    config: Optional[KernelConfig] = None,
) -> HeadOutput:
    """Launch the fused head on index maps (see ``kernels.reference.reference_from_index`` for semantics).

    Inputs are assumed validated (``kernels.reference.check_inputs``); ``kept_ids`` ascending, int32 indices.
    """
    _check_device(features)
    x = _last_dim_contiguous(features)
    w = _last_dim_contiguous(weight)
    b = bias.contiguous() if bias is not None else None
    batch, dim = x.shape
    num_classes = row_of.numel()
    num_kept = kept_ids.numel()
    if num_kept == 0:
        raise ValueError("every class is masked: there is no class left to predict. Keep at least one class.")
    dev = x.device
    block_b, block_c, block_d, n_tiles, tps, n_splits = choose_config(batch, num_kept, dim, x.dtype, dev, config)
    warps = (config or KernelConfig()).num_warps
    ieee = x.dtype == torch.float32
    has_bias = b is not None
    b_arg = b if has_bias else x  # never read when HAS_BIAS is False
    n_btiles = triton.cdiv(batch, block_b)

    if output in ("logits", "probs"):
        out = torch.empty((batch, num_classes), dtype=x.dtype, device=dev)
        if batch == 0:
            return out
        lse = x  # placeholder, unread for logits
        if output == "probs":
            lse = _reduce(x, w, b_arg, kept_ids, kept_rows, _MODE_LSE, 1, has_bias, ieee,
                          block_b, block_c, block_d, n_tiles, tps, n_splits, warps, x.dtype)[0]
        block_cw = choose_config(batch, num_classes, dim, x.dtype, dev, config)[1]  # tiles over all C columns
        grid = (n_btiles, triton.cdiv(num_classes, block_cw))
        _write_kernel[grid](
            x, w, b_arg, row_of, lse, out, batch, num_classes, dim, x.stride(0), w.stride(0), out.stride(0),
            MODE=_WRITE_LOGITS if output == "logits" else _WRITE_PROBS, HAS_BIAS=has_bias, IEEE=ieee,
            BLOCK_B=block_b, BLOCK_C=block_cw, BLOCK_D=block_d, num_warps=warps,
        )
        return out
    mode = _MODE_ARGMAX if output == "argmax" else _MODE_TOPK
    if batch == 0:
        if mode == _MODE_ARGMAX:
            return torch.empty(0, dtype=torch.int64, device=dev)
        return torch.empty((0, k), dtype=x.dtype, device=dev), torch.empty((0, k), dtype=torch.int64, device=dev)
    vals, idx = _reduce(x, w, b_arg, kept_ids, kept_rows, mode, k, has_bias, ieee,
                        block_b, block_c, block_d, n_tiles, tps, n_splits, warps, x.dtype)
    return idx if mode == _MODE_ARGMAX else (vals, idx)


def _reduce(x, w, b_arg, kept_ids, kept_rows, mode, k, has_bias, ieee,
            block_b, block_c, block_d, n_tiles, tps, n_splits, warps, out_dtype):
    """Run the reduction (and, when split, the merge); returns (values, ids) of the final result."""
    batch, dim = x.shape
    dev = x.device
    kp = max(2, _next_pow2(k))
    if mode == _MODE_ARGMAX:
        out_v, out_i = x, torch.empty(batch, dtype=torch.int64, device=dev)
    elif mode == _MODE_TOPK:
        out_v = torch.empty((batch, k), dtype=out_dtype, device=dev)
        out_i = torch.empty((batch, k), dtype=torch.int64, device=dev)
    else:
        out_v, out_i = torch.empty(batch, dtype=torch.float32, device=dev), x
    final = n_splits == 1
    if final:
        part_m = part_s = part_v = part_i = x  # unread
    else:
        part_m = torch.empty((batch, n_splits), dtype=torch.float32, device=dev)
        part_s = torch.empty_like(part_m)
        width = kp if mode == _MODE_TOPK else 1
        part_v = torch.empty((batch, n_splits, width), dtype=torch.float32, device=dev)
        part_i = torch.empty((batch, n_splits, width), dtype=torch.int64, device=dev)
    grid = (triton.cdiv(batch, block_b), n_splits)
    _reduce_kernel[grid](
        x, w, b_arg, kept_ids, kept_rows, part_m, part_s, part_v, part_i, out_v, out_i,
        batch, dim, kept_ids.numel(), x.stride(0), w.stride(0), n_tiles, tps, n_splits,
        MODE=mode, TOPK=k, KP=kp, FINAL=final, HAS_BIAS=has_bias, IEEE=ieee,
        BLOCK_B=block_b, BLOCK_C=block_c, BLOCK_D=block_d, num_warps=warps,
    )
    if not final:
        _merge_kernel[(batch,)](
            part_m, part_s, part_v, part_i, out_v, out_i, n_splits,
            MODE=mode, TOPK=k, KP=kp, S_PAD=max(2, _next_pow2(n_splits)), num_warps=warps,
        )
    return out_v, out_i
