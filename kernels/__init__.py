"""Fused masked-head inference: features -> head -> class mask -> logits / probabilities / argmax / top-k.

Public API:

* ``masked_head(features, weight, bias, class_mask, *, output="logits", k=1, impl="auto")``: one call with the
  raw head and mask (derives the index map on every call: one device sync).
* ``CompactHead.from_head(weight, bias, class_mask)``: compacts the kept rows once (at unlearning time) and keeps
  the index map; calling it costs no sync and forgotten rows are not even stored. Cache it.

``impl``: "auto" = Triton on CUDA tensors, the PyTorch reference otherwise; "triton" forces the kernel (on CPU
only with ``TRITON_INTERPRET=1`` set before triton is imported); "reference" forces the PyTorch specification.
Triton is imported lazily, only when the Triton path runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .reference import (
    MAX_TOPK,
    OUTPUTS,
    HeadOutput,
    check_inputs,
    index_maps,
    masked_head_reference,
)

__all__ = [
    "CompactHead",
    "HeadOutput",
    "IMPLS",
    "MAX_TOPK",
    "OUTPUTS",
    "index_maps",
    "masked_head",
    "masked_head_reference",
    "resolve_impl",
]

IMPLS = ("auto", "triton", "reference")


def resolve_impl(impl: str, device: torch.device) -> str:
    """Map ``impl`` to "triton" or "reference" for tensors on ``device``; ValueError on an unusable request."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if device.type == "cuda" else "reference"
    return impl


def _validate_request(output: str, k: int) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if output == "topk" and not 1 <= k <= MAX_TOPK:
        raise ValueError(f"k must be in [1, {MAX_TOPK}] for output='topk', got k={k}")


def masked_head(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    class_mask: torch.Tensor,
    *,
    output: str = "logits",
    k: int = 1,
    impl: str = "auto",
) -> HeadOutput:
    """Masked classification head; forgotten classes (``class_mask`` False) are never read nor predicted.

    Returns logits [B, C] (forgotten = -inf) or probs [B, C] (forgotten = 0) in the features' dtype, argmax
    int64 [B] of original class ids, or for "topk" a (probabilities [B, k], class ids int64 [B, k]) tuple.
    Raises ValueError when every class is masked. Derives the index map each call (a device sync); for repeated
    inference build a ``CompactHead`` once instead.
    """
    from .op import call_op

    _validate_request(output, k)
    if class_mask.shape != (weight.shape[0],):
        raise ValueError(
            f"class_mask must be [C] = [{weight.shape[0]}] (one flag per head row), got {tuple(class_mask.shape)}"
        )
    check_inputs(features, weight, bias, weight.shape[0], output, k)
    kept_ids, row_of = index_maps(class_mask.to(weight.device))
    return call_op(features, weight, bias, row_of, kept_ids, kept_ids, output, k, resolve_impl(impl, features.device))


@dataclass(frozen=True, eq=False)
class CompactHead:
    """A head with only the kept rows, compacted once, plus its index map; immutable, cache it.

    ``weight`` [K, D] and ``bias`` [K] hold the kept classes in ascending class-id order, ``kept_ids`` [K] their
    original class ids, ``row_of`` [C] the compact row of each class (-1 = forgotten), ``kept_rows`` = 0..K-1.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    kept_ids: torch.Tensor
    row_of: torch.Tensor
    kept_rows: torch.Tensor
    num_classes: int

    @classmethod
    def from_head(cls, weight: torch.Tensor, bias: torch.Tensor | None, class_mask: torch.Tensor) -> CompactHead:
        """Copy the kept rows of ``weight``/``bias`` (``class_mask`` True) into a contiguous compact head."""
        if class_mask.shape != (weight.shape[0],):
            raise ValueError(f"class_mask must be [C] = [{weight.shape[0]}], got {tuple(class_mask.shape)}")
        kept_ids, _ = index_maps(class_mask.to(weight.device))
        rows = kept_ids.long()
        w = weight.detach().index_select(0, rows).contiguous()
        b = bias.detach().index_select(0, rows).contiguous() if bias is not None else None
        row_of = torch.full((weight.shape[0],), -1, dtype=torch.int32, device=weight.device)
        compact = torch.arange(kept_ids.numel(), dtype=torch.int32, device=weight.device)
        row_of[rows] = compact
        return cls(w, b, kept_ids, row_of, compact, int(weight.shape[0]))

    @classmethod
    def from_linear(cls, head: torch.nn.Linear, class_mask: torch.Tensor) -> CompactHead:
        """Compact an ``nn.Linear(D, C)`` head."""
        return cls.from_head(head.weight, head.bias, class_mask)

    @property
    def class_mask(self) -> torch.Tensor:
        """Boolean [C] mask (True = kept) this head was built from."""
        return self.row_of >= 0

    def to(self, *args, **kwargs) -> CompactHead:
        """Move/cast like ``Tensor.to``; index tensors keep int32."""
        w = self.weight.to(*args, **kwargs)
        b = self.bias.to(*args, **kwargs) if self.bias is not None else None
        dev = w.device
        return CompactHead(w, b, self.kept_ids.to(dev), self.row_of.to(dev), self.kept_rows.to(dev), self.num_classes)

    def __call__(self, features: torch.Tensor, *, output: str = "logits", k: int = 1, impl: str = "auto") -> HeadOutput:
        """Same outputs as ``masked_head`` with this head's mask; no device sync."""
        from .op import call_op

        _validate_request(output, k)
        if output == "topk" and k > self.kept_ids.numel():
            raise ValueError(f"k={k} exceeds the {self.kept_ids.numel()} kept classes; ask for a smaller k")
        return call_op(
            features,
            self.weight,
            self.bias,
            self.row_of,
            self.kept_ids,
            self.kept_rows,
            output,
            k,
            resolve_impl(impl, features.device),
        )
