"""Pure-PyTorch reference of the masked classification head: the specification.

The fused Triton kernel (``kernels.triton_head``) must agree with these functions. They run on any device and
are what ``masked_head(..., impl="reference")`` and the CPU implementation of the custom op use.

Semantics (shared by every implementation):

* logits = features @ weight[kept].T + bias[kept], accumulated in fp32 (or ``compute_dtype``);
  forgotten classes' rows of ``weight`` and ``bias`` are never read (they may hold NaN).
* ``"logits"``: [B, C] in the features' dtype, forgotten classes = -inf.
* ``"probs"``: softmax over the kept classes, [B, C] in the features' dtype, forgotten classes = 0.
* ``"argmax"``: int64 [B] of original class ids; ties go to the smallest class id.
* ``"topk"``: (probabilities [B, k] in the features' dtype, int64 original class ids [B, k]), sorted by
  decreasing logit, ties broken by the smaller class id.
* NaN, as PyTorch treats it on the same masked logits: NaN ranks above every number (argmax returns the
  smallest class id with a NaN logit, top-k lists NaN classes first), and a row with a NaN kept logit has NaN
  probabilities in every column (``torch.softmax``).
"""

from __future__ import annotations

import torch

OUTPUTS = ("logits", "probs", "argmax", "topk")
MAX_TOPK = 16
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

HeadOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def index_maps(class_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a boolean class mask [C] into (kept_ids [K] int32, row_of [C] int32 with -1 for forgotten).

    ``kept_ids`` is sorted ascending; ``row_of[c]`` is the row of the *uncompacted* weight to read for class c.
    Raises ValueError when every class is masked. Synchronises with the device (``nonzero``).
    """
    if class_mask.dtype != torch.bool or class_mask.dim() != 1:
        raise ValueError(
            f"class_mask must be a 1-D bool tensor [C] (True = kept), got dtype={class_mask.dtype} "
            f"shape={tuple(class_mask.shape)}; build it with `mask = torch.ones(C, dtype=torch.bool)` and set "
            "forgotten classes to False."
        )
    kept_ids = class_mask.nonzero().squeeze(1).to(torch.int32)
    if kept_ids.numel() == 0:
        raise ValueError(
            f"every one of the {class_mask.numel()} classes is masked (class_mask is all False): there is no class "
            "left to predict. Keep at least one class (set its entry in class_mask to True)."
        )
    row_of = torch.full_like(class_mask, -1, dtype=torch.int32)
    row_of[kept_ids.long()] = kept_ids
    return kept_ids, row_of


def check_inputs(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    num_classes: int,
    output: str,
    k: int,
    num_kept: int | None = None,
) -> None:
    """Validate shapes, dtypes and the requested output; raise ValueError saying how to fix it."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if features.dim() != 2:
        raise ValueError(
            f"features must be [B, D], got shape {tuple(features.shape)}; flatten the backbone output first "
            "(features.flatten(1))."
        )
    if weight.dim() != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(
            f"weight must be [C, D] with D = features.shape[1] = {features.shape[1]}, got {tuple(weight.shape)}"
        )
    if features.dtype not in FLOAT_DTYPES or weight.dtype != features.dtype:
        raise ValueError(
            f"features and weight must share one dtype among {FLOAT_DTYPES}, got features={features.dtype} "
            f"weight={weight.dtype}; cast the head with head.to(features.dtype)."
        )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"bias must be [{weight.shape[0]}] to match weight, got {tuple(bias.shape)}")
    if features.device != weight.device or (bias is not None and bias.device != weight.device):
        raise ValueError("features, weight and bias must be on the same device")
    if num_kept == 0:
        raise ValueError(
            f"every one of the {num_classes} classes is masked: there is no class left to predict. "
            "Keep at least one class."
        )
    if output == "topk":
        if not 1 <= k <= MAX_TOPK:
            raise ValueError(f"k must be in [1, {MAX_TOPK}] for output='topk', got k={k}")
        if num_kept is not None and k > num_kept:
            raise ValueError(f"k={k} exceeds the {num_kept} kept classes; ask for k <= {num_kept}")


_VALIDATED_MAPS: dict = {}  # (data_ptr, _version, numel, device) of validated index maps -> True


def check_index_maps(
    row_of: torch.Tensor,
    kept_ids: torch.Tensor,
    kept_rows: torch.Tensor,
    num_rows: int,
    device: torch.device,
    values: bool = True,
) -> None:
    """Validate the index-map form of a mask; raise ValueError saying how to build valid maps.

    Structure (always, no device sync): 1-D int32 tensors on ``device``, ``kept_ids`` and ``kept_rows`` of one
    length K <= C. Values (when ``values``; one device sync, then cached per tensor version): ``kept_ids``
    strictly ascending in [0, C), ``kept_rows`` in [0, num_rows), ``row_of[kept_ids] == kept_rows`` and every
    other entry of ``row_of`` -1. A kernel given out-of-range rows would read outside the weight.
    """
    hint = "build them with kernels.index_maps(class_mask) or CompactHead.from_head"
    for name, t in (("row_of", row_of), ("kept_ids", kept_ids), ("kept_rows", kept_rows)):
        if t.dim() != 1 or t.dtype != torch.int32:
            raise ValueError(f"{name} must be a 1-D int32 tensor, got dtype={t.dtype} shape={tuple(t.shape)}; {hint}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but the features are on {device}; move the head with .to()")
    if kept_ids.numel() != kept_rows.numel() or kept_ids.numel() > row_of.numel():
        raise ValueError(
            f"kept_ids ({kept_ids.numel()}) and kept_rows ({kept_rows.numel()}) must have one length "
            f"K <= C = {row_of.numel()}; {hint}"
        )
    if not values or kept_ids.numel() == 0:
        return
    key = tuple((t.data_ptr(), t._version, t.numel(), str(t.device)) for t in (row_of, kept_ids, kept_rows))
    if _VALIDATED_MAPS.get(key) == num_rows:
        return
    ids, rows = kept_ids.long(), kept_rows.long()
    num_classes = row_of.numel()
    problems = []
    if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
        problems.append("kept_ids is not strictly ascending")
    if int(ids.min()) < 0 or int(ids.max()) >= num_classes:
        problems.append(f"kept_ids outside [0, {num_classes})")
    elif int(rows.min()) < 0 or int(rows.max()) >= num_rows:
        problems.append(f"kept_rows outside [0, {num_rows}) (the weight has {num_rows} rows)")
    else:
        expect = torch.full_like(row_of, -1)
        expect[ids] = kept_rows
        if not torch.equal(expect, row_of):
            problems.append("row_of does not map exactly the kept classes to kept_rows (-1 elsewhere)")
    if problems:
        raise ValueError(f"invalid index maps: {'; '.join(problems)}; {hint}")
    if len(_VALIDATED_MAPS) > 64:
        _VALIDATED_MAPS.clear()
    _VALIDATED_MAPS[key] = num_rows


def kept_logits(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kept_rows: torch.Tensor,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Logits [B, K] of the kept classes only, computed in ``compute_dtype``; forgotten rows are not read.

    ``kept_rows`` is ascending and unique, so K == weight.shape[0] means every row in order (a compacted head,
    or nothing forgotten): then the weight is used as is, without a gather copy.
    """
    if kept_rows.numel() == weight.shape[0]:
        w, b = weight, bias
    else:
        rows = kept_rows.long()
        w = weight.index_select(0, rows)
        b = bias.index_select(0, rows) if bias is not None else None
    out = features.to(compute_dtype) @ w.to(compute_dtype).T
    if b is not None:
        out = out + b.to(compute_dtype)
    return out


def reference_from_index(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    row_of: torch.Tensor,
    kept_ids: torch.Tensor,
    kept_rows: torch.Tensor,
    output: str,
    k: int = 1,
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: torch.dtype | None = None,
) -> HeadOutput:
    """Reference on the index-map form used by the custom op (``row_of`` [C], ``kept_ids``/``kept_rows`` [K])."""
    num_classes = row_of.numel()
    check_inputs(features, weight, bias, num_classes, output, k, kept_ids.numel())
    out_dtype = features.dtype if out_dtype is None else out_dtype
    logits_k = kept_logits(features, weight, bias, kept_rows, compute_dtype)
    ids = kept_ids.long()
    batch = features.shape[0]
    if output == "argmax":
        # torch.argmax returns the first maximum; kept_ids is ascending, so that is the smallest class id.
        return ids[logits_k.argmax(dim=1)] if batch else torch.empty(0, dtype=torch.int64, device=features.device)
    if output == "topk":
        probs_k = torch.softmax(logits_k, dim=1)
        # A stable sort keeps equal values in ascending class-id order: deterministic tie-breaking.
        vals, pos = torch.sort(logits_k, dim=1, descending=True, stable=True)
        pos = pos[:, :k]
        return probs_k.gather(1, pos).to(out_dtype), ids[pos]
    full = torch.full((batch, num_classes), float("-inf"), dtype=compute_dtype, device=features.device)
    full[:, ids] = logits_k
    if output == "probs":
        # softmax of the masked logits, as eager PyTorch computes it: forgotten classes get exactly 0, and a row
        # with a NaN kept logit is NaN everywhere (forgotten columns included)
        full = torch.softmax(full, dim=1)
    return full.to(out_dtype)


def masked_head_reference(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    class_mask: torch.Tensor,
    *,
    output: str = "logits",
    k: int = 1,
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: torch.dtype | None = None,
) -> HeadOutput:
    """The specification of ``kernels.masked_head`` (same signature); ``compute_dtype=float64`` gives ground truth."""
    if class_mask.shape != (weight.shape[0],):
        raise ValueError(f"class_mask must be [C] = [{weight.shape[0]}], got {tuple(class_mask.shape)}")
    kept_ids, row_of = index_maps(class_mask)
    return reference_from_index(features, weight, bias, row_of, kept_ids, kept_ids, output, k, compute_dtype, out_dtype)
