"""``torch.library`` registration of the fused masked head, so ``torch.compile`` and ``torch.export`` see it.

Four custom ops, one per output kind (a custom op has one fixed return type):

* ``edge_unlearn::masked_head_logits``  -> Tensor [B, C]
* ``edge_unlearn::masked_head_probs``   -> Tensor [B, C]
* ``edge_unlearn::masked_head_argmax``  -> Tensor int64 [B]
* ``edge_unlearn::masked_head_topk``    -> (Tensor [B, k], Tensor int64 [B, k])

They take the index-map form of the mask (``row_of`` [C], ``kept_ids`` [K], ``kept_rows`` [K], int32; see
``kernels.reference.index_maps``), so no data-dependent shape appears inside a compiled graph, and ``impl``
("triton" or "reference") resolved by the caller. Each op has a fake (meta) implementation for tracing.
The ops are inference-only: no autograd formula is registered.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import check_index_maps, check_inputs, reference_from_index

IMPLS = ("triton", "reference")


def _run(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    row_of: Tensor,
    kept_ids: Tensor,
    kept_rows: Tensor,
    output: str,
    k: int,
    impl: str,
):
    check_inputs(x, weight, bias, row_of.numel(), output, k, kept_ids.numel())
    # values are checked on real tensors only (not while torch.compile traces with fake ones); cached per version
    check_index_maps(row_of, kept_ids, kept_rows, weight.shape[0], x.device, values=not torch.compiler.is_compiling())
    if impl == "reference":
        return reference_from_index(x, weight, bias, row_of, kept_ids, kept_rows, output, k)
    if impl == "triton":
        from .triton_head import masked_head_triton  # lazy: TRITON_INTERPRET must be set before triton loads

        return masked_head_triton(x, weight, bias, row_of, kept_ids, kept_rows, output, k)
    raise ValueError(f"impl must be one of {IMPLS} at the op level, got {impl!r}")


@torch.library.custom_op("edge_unlearn::masked_head_logits", mutates_args=())
def masked_head_logits(
    x: Tensor, weight: Tensor, bias: Tensor | None, row_of: Tensor, kept_ids: Tensor, kept_rows: Tensor, impl: str
) -> Tensor:
    """Masked logits [B, C]; forgotten classes = -inf."""
    return _run(x, weight, bias, row_of, kept_ids, kept_rows, "logits", 1, impl)


@torch.library.custom_op("edge_unlearn::masked_head_probs", mutates_args=())
def masked_head_probs(
    x: Tensor, weight: Tensor, bias: Tensor | None, row_of: Tensor, kept_ids: Tensor, kept_rows: Tensor, impl: str
) -> Tensor:
    """Softmax over kept classes [B, C]; forgotten classes = 0."""
    return _run(x, weight, bias, row_of, kept_ids, kept_rows, "probs", 1, impl)


@torch.library.custom_op("edge_unlearn::masked_head_argmax", mutates_args=())
def masked_head_argmax(
    x: Tensor, weight: Tensor, bias: Tensor | None, row_of: Tensor, kept_ids: Tensor, kept_rows: Tensor, impl: str
) -> Tensor:
    """Original class id of the largest kept logit, int64 [B]."""
    return _run(x, weight, bias, row_of, kept_ids, kept_rows, "argmax", 1, impl)


@torch.library.custom_op("edge_unlearn::masked_head_topk", mutates_args=())
def masked_head_topk(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    row_of: Tensor,
    kept_ids: Tensor,
    kept_rows: Tensor,
    k: int,
    impl: str,
) -> tuple[Tensor, Tensor]:
    """Top-k probabilities [B, k] and original class ids int64 [B, k]."""
    return _run(x, weight, bias, row_of, kept_ids, kept_rows, "topk", k, impl)


@masked_head_logits.register_fake
def _(x, weight, bias, row_of, kept_ids, kept_rows, impl):
    return x.new_empty((x.shape[0], row_of.shape[0]))


@masked_head_probs.register_fake
def _(x, weight, bias, row_of, kept_ids, kept_rows, impl):
    return x.new_empty((x.shape[0], row_of.shape[0]))


@masked_head_argmax.register_fake
def _(x, weight, bias, row_of, kept_ids, kept_rows, impl):
    return x.new_empty((x.shape[0],), dtype=torch.int64)


@masked_head_topk.register_fake
def _(x, weight, bias, row_of, kept_ids, kept_rows, k, impl):
    return x.new_empty((x.shape[0], k)), x.new_empty((x.shape[0], k), dtype=torch.int64)


OPS = {
    "logits": torch.ops.edge_unlearn.masked_head_logits,
    "probs": torch.ops.edge_unlearn.masked_head_probs,
    "argmax": torch.ops.edge_unlearn.masked_head_argmax,
    "topk": torch.ops.edge_unlearn.masked_head_topk,
}


def call_op(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    row_of: Tensor,
    kept_ids: Tensor,
    kept_rows: Tensor,
    output: str,
    k: int,
    impl: str,
):
    """Dispatch to the custom op of ``output``."""
    if output == "topk":
        return OPS["topk"](x, weight, bias, row_of, kept_ids, kept_rows, k, impl)
    return OPS[output](x, weight, bias, row_of, kept_ids, kept_rows, impl)
