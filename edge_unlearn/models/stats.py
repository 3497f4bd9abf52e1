"""Class statistics: per-class means of a layer's input, recorded at training time (aggregates, not samples), and
the layers they describe. Feature-level class weight masking uses the edit layer's means in place of retained
data; NHLE's deeper steps use the means at every depth (issue #15)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

#: Depth statistics (per-class means at every learnable layer's input, issue #15) are recorded at training and import
#: time when they take at most this many floats (16 MiB of float32: every registry model on up to ~100 classes);
#: beyond it (a resnet50 on 1 000 classes: 23 M floats) the checkpoint keeps the edit layer's statistics only.
DEPTH_STATS_MAX_FLOATS = 4 * 1024 * 1024


DEPTH_STATS_PREFIX = "depth_stats__"
DEPTH_STATS_COUNT = "depth_stats_count"
#: The depth statistics' name for the head's input (the penultimate features): NHLE's opt-in head step edits the
#: retained head rows against these means (issue #28).
HEAD_INPUT = "head_input"


def is_depth_stats_key(key: str) -> bool:
    """A state-dict key of the optional depth statistics (top-level buffers of the classifier)."""
    return key.startswith(DEPTH_STATS_PREFIX) or key == DEPTH_STATS_COUNT


def _buffer_key(layer_name: str) -> str:
    return layer_name.replace(".", "_")


def depth_layers(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's learnable layers whose inputs :meth:`UnlearnableClassifier.record_depth_stats`
    describes: every ``nn.Linear`` and non-grouped ``nn.Conv2d``, as (name, module), in registration order
    (which is execution order for the built-in and torchvision models; editors re-order by a forward pass)."""
    return [
        (name, m)
        for name, m in backbone.named_modules()
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
    ]


def pool_edit_input(act: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """The edit layer's input per sample [B, D]: channel means for a conv, token means for a Linear that
    sees tokens ([B, N, D] in a ViT, [B, H, W, D] in a Swin block)."""
    if isinstance(layer, nn.Conv2d):
        return act.flatten(2).mean(2)
    return act.reshape(act.shape[0], -1, act.shape[-1]).mean(1)


def edit_layer(backbone: nn.Module) -> nn.Module:
    """The backbone's last learnable layer: its last ``nn.Linear``, else its last ``nn.Conv2d``.

    Feature-level class weight masking edits this layer's weights along forget-specific directions of
    its input space, and the class statistics describe that input space.
    """
    linears = [m for m in backbone.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    if convs:
        return convs[-1]
    raise TypeError(f"{type(backbone).__name__} has no Linear or Conv2d layer to edit")


class ClassStatistics(nn.Module):
    """The class-statistics half of :class:`~edge_unlearn.models.UnlearnableClassifier`: recording, storing and
    erasing the per-class means. Expects ``backbone``, ``class_mask``, ``num_classes`` and the buffers
    ``class_stats`` [C, D] / ``class_stats_count`` [C] that the classifier registers."""

    def edit_layer(self) -> nn.Module:
        """The backbone layer whose input the class statistics describe (see :func:`edit_layer`)."""
        return edit_layer(self.backbone)

    @property
    def has_class_stats(self) -> bool:
        kept = self.class_mask
        return bool((self.class_stats_count[kept] > 0).all())

    @torch.no_grad()
    def record_class_stats(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int = 512,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Record per-class means of the edit layer's input (channel means for a conv layer).

        ``transform`` turns each batch of ``inputs`` into model inputs (raw images are then streamed
        through the preprocessing batch by batch)."""
        batches = ((inputs[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(inputs), batch_size))
        self.set_class_stats(*self.class_stat_sums(batches, transform))

    @torch.no_grad()
    def class_stat_sums(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class sums (float64, on the model's device) and counts (float64, CPU) of the edit layer's
        input over ``batches`` of (inputs, labels), e.g. a DataLoader: a streaming mean, whose parts
        several processes can add up (all-reduce) before :meth:`set_class_stats`."""
        layer, sums = self.edit_layer(), torch.zeros_like(self.class_stats, dtype=torch.float64)
        counts = torch.zeros(self.num_classes, dtype=torch.float64)
        captured: list[torch.Tensor] = []
        handle = layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        was_training = self.training
        self.eval()
        try:
            device = self.class_stats.device
            for batch, batch_labels in batches:
                captured.clear()
                self.backbone((transform(batch) if transform is not None else batch).to(device))
                act = pool_edit_input(captured[0], layer)
                y = torch.as_tensor(batch_labels).to(device)
                sums.index_add_(0, y, act.to(torch.float64))
                counts.index_add_(0, y.cpu(), torch.ones(len(y), dtype=torch.float64))
        finally:
            handle.remove()
            self.train(was_training)
        return sums, counts

    def set_class_stats(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Store the means ``sums / counts`` of the classes seen (the others keep what they had)."""
        seen = counts.cpu() > 0
        self.class_stats[seen] = (sums[seen.to(sums.device)] / counts[seen].to(sums)[:, None]).to(self.class_stats)
        self.class_stats_count.copy_(counts.to(self.class_stats_count))

    def drop_class_stats(self, classes: Iterable[int]) -> None:
        """Erase the statistics of forgotten classes: nothing about them stays in the checkpoint."""
        idx = list(classes)
        self.class_stats[idx] = 0
        self.class_stats_count[idx] = 0
        for name in self.depth_stats():
            getattr(self, DEPTH_STATS_PREFIX + _buffer_key(name))[idx] = 0
        if hasattr(self, DEPTH_STATS_COUNT):
            getattr(self, DEPTH_STATS_COUNT)[idx] = 0

    # -- class statistics at every depth (issue #15): retention anchors for feature-level forgetting --

    @torch.no_grad()
    def record_depth_stats(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int = 512,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Record per-class means of the input of every learnable layer of the backbone (:func:`depth_layers`;
        channel means for a conv) and of the head (:data:`HEAD_INPUT`: the penultimate features), as buffers
        ``depth_stats__<layer>`` [C, D] and ``depth_stats_count`` [C].

        Aggregates like :meth:`record_class_stats` (whose edit-layer means they extend to every depth), not
        samples: :meth:`depth_stats_size` floats. Checkpoints without them still load
        (:meth:`has_depth_stats` is then False)."""
        batches = ((inputs[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(inputs), batch_size))
        self.set_depth_stats(*self.depth_stat_sums(batches, transform))

    def depth_stats_size(self) -> int:
        """How many floats the depth statistics take: classes × the summed input widths of :func:`depth_layers`."""
        widths = sum(
            m.in_features if isinstance(m, nn.Linear) else m.in_channels for _, m in depth_layers(self.backbone)
        )
        return self.num_classes * (widths + self.head.in_features)

    @torch.no_grad()
    def depth_stat_sums(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per-class sums ({layer name: [C, D]}, float64, on the model's device) and counts (float64, CPU) of
        every :func:`depth_layers` input and the head's (:data:`HEAD_INPUT`) over ``batches`` of (inputs,
        labels): a streaming mean whose parts
        several processes can add up (all-reduce) before :meth:`set_depth_stats`."""
        layers = depth_layers(self.backbone)
        device = self.class_stats.device
        sums: dict[str, torch.Tensor] = {}
        counts = torch.zeros(self.num_classes, dtype=torch.float64)
        captured: dict[str, torch.Tensor] = {}

        def hook(name: str, layer: nn.Module):
            return lambda _m, args: captured.__setitem__(name, pool_edit_input(args[0].to(torch.float64), layer))

        handles = [layer.register_forward_pre_hook(hook(name, layer)) for name, layer in layers]
        was_training = self.training
        self.eval()
        try:
            for batch, batch_labels in batches:
                captured.clear()
                features = self.backbone((transform(batch) if transform is not None else batch).to(device))
                captured[HEAD_INPUT] = features.flatten(1).to(torch.float64)
                y = torch.as_tensor(batch_labels).to(device)
                for name, act in captured.items():
                    if name not in sums:
                        sums[name] = torch.zeros(self.num_classes, act.shape[1], dtype=torch.float64, device=device)
                    sums[name].index_add_(0, y, act)
                counts.index_add_(0, y.cpu(), torch.ones(len(y), dtype=torch.float64))
        finally:
            for h in handles:
                h.remove()
            self.train(was_training)
        return sums, counts

    def set_depth_stats(self, sums: dict[str, torch.Tensor], counts: torch.Tensor) -> None:
        """Store the means ``sums / counts`` of every depth layer (classes never seen: zero, count 0)."""
        seen = counts.cpu() > 0
        for name, total in sums.items():
            means = torch.zeros(total.shape, dtype=self.class_stats.dtype, device=total.device)
            means[seen.to(total.device)] = (total[seen.to(total.device)] / counts[seen].to(total)[:, None]).to(
                means.dtype
            )
            self.register_buffer(DEPTH_STATS_PREFIX + _buffer_key(name), means.to(self.class_stats.device))
        self.register_buffer(DEPTH_STATS_COUNT, counts.to(self.class_stats_count))

    def depth_stats(self) -> dict[str, torch.Tensor]:
        """{backbone layer name, or :data:`HEAD_INPUT`: per-class mean input [C, D]} recorded by
        :meth:`record_depth_stats`."""
        keys = {DEPTH_STATS_PREFIX + _buffer_key(name): name for name, _ in self.backbone.named_modules() if name}
        keys[DEPTH_STATS_PREFIX + HEAD_INPUT] = HEAD_INPUT
        return {keys[k]: b for k, b in self._buffers.items() if k in keys and b is not None}

    def head_input_stats(self) -> torch.Tensor | None:
        """Per-class means of the head's input [C, D] where every class the model predicts has them (a
        checkpoint recorded before they were, or without depth statistics: None)."""
        counts = getattr(self, DEPTH_STATS_COUNT, None)
        means = self.depth_stats().get(HEAD_INPUT)
        if means is None or counts is None or not bool((counts[self.class_mask] > 0).all()):
            return None
        return means

    @property
    def has_depth_stats(self) -> bool:
        counts = getattr(self, DEPTH_STATS_COUNT, None)
        return counts is not None and bool(self.depth_stats()) and bool((counts[self.class_mask] > 0).all())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 (torch's signature)
        # depth statistics are optional buffers: create them from the checkpoint when it has them
        for key, value in state_dict.items():
            if (
                key.startswith(prefix)
                and "." not in key[len(prefix) :]
                and key not in self._buffers
                and (key[len(prefix) :].startswith(DEPTH_STATS_PREFIX) or key[len(prefix) :] == DEPTH_STATS_COUNT)
            ):
                self.register_buffer(key[len(prefix) :], torch.zeros_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
