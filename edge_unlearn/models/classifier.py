"""The model contract: every classifier here is ``backbone(x) -> features [B, D]`` + ``head: Linear(D, C)`` + a
boolean ``class_mask`` [C] (True = the class may be predicted, False = forgotten). Masking, probes, export and
the fused kernel use this contract only."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..errors import UsageError
from .stats import ClassStatistics, edit_layer

HEAD_IMPLS = ("auto", "eager", "fused")


class UnlearnableClassifier(ClassStatistics):
    """backbone -> features, head -> logits, class_mask -> forgotten classes can never win."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, head_impl: str = "auto") -> None:
        super().__init__()
        if not isinstance(head, nn.Linear):
            raise TypeError("the head must be an nn.Linear(D, C)")
        self.backbone = backbone
        self.head = head
        self.register_buffer("class_mask", torch.ones(head.out_features, dtype=torch.bool))
        # Class statistics recorded at training time (aggregates, not samples): the mean input of the
        # backbone's last learnable layer per class, and how many samples each mean came from (0 = unknown).
        # Feature-level class weight masking uses them in place of retained data.
        layer = edit_layer(backbone)
        width = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        self.register_buffer("class_stats", torch.zeros(head.out_features, width))
        self.register_buffer("class_stats_count", torch.zeros(head.out_features))
        self.head_impl = head_impl

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    @property
    def forgotten_classes(self) -> list[int]:
        return [int(i) for i in torch.nonzero(~self.class_mask).flatten()]

    def mask_classes(self, classes: Iterable[int]) -> None:
        """Class weight masking at the decision level: these classes can never be predicted again."""
        classes = sorted(set(int(c) for c in classes))
        for c in classes:
            if not 0 <= c < self.num_classes:
                raise UsageError(f"class index {c} is out of range; the model has classes 0..{self.num_classes - 1}")
        mask = self.class_mask.clone()
        mask[classes] = False
        if not bool(mask.any()):
            raise UsageError("that would forget every class; keep at least one class")
        self.class_mask.copy_(mask)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, D]."""
        return self.backbone(x)

    def logits(self, x: torch.Tensor, masked: bool = True) -> torch.Tensor:
        """Head output; with ``masked`` the forgotten classes are -inf (probability exactly 0)."""
        out = self.head(self.features(x))
        return out.masked_fill(~self.class_mask, float("-inf")) if masked else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x, masked=True)

    def predict(self, x: torch.Tensor, output: str = "argmax", k: int = 1):
        """Masked-head inference: ``argmax`` (class ids), ``topk`` ((probs, ids)), ``probs`` or ``logits``.

        ``head_impl`` picks the path: ``fused`` runs the fused Triton kernel of ``kernels/`` (it never reads
        the forgotten rows of the head and, for argmax/top-k/probs, never writes B×C logits); ``eager`` is
        plain PyTorch; ``auto`` (default) is fused on CUDA and eager elsewhere.
        """
        if self.head_impl not in HEAD_IMPLS:
            raise UsageError(f"head_impl must be one of {', '.join(HEAD_IMPLS)}, got {self.head_impl!r}")
        if output not in ("logits", "probs", "argmax", "topk"):
            raise UsageError(f"unknown output {output!r}; choose logits, probs, argmax or topk")
        feats = self.features(x)
        if self.head_impl == "fused" or (self.head_impl == "auto" and feats.is_cuda):
            return self.compact_head()(feats, output=output, k=k, impl="auto")
        logits = self.head(feats).masked_fill(~self.class_mask, float("-inf"))
        if output == "logits":
            return logits
        if output == "argmax":
            return logits.argmax(dim=1)
        probs = torch.softmax(logits, dim=1)
        return probs if output == "probs" else probs.topk(k, dim=1)

    def compact_head(self):
        """The kept rows of the head and their class ids, built once and cached until the head or mask changes."""
        from ..kernels import CompactHead

        key = (
            self.head.weight.data_ptr(),
            self.head.weight._version,
            getattr(self.head.bias, "_version", None),
            self.class_mask._version,
            self.class_mask.data_ptr(),
            self.head.weight.device,
            self.head.weight.dtype,
        )
        cached = getattr(self, "_compact_head_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, CompactHead.from_linear(self.head, self.class_mask))
            self._compact_head_cache = cached
        return cached[1]
