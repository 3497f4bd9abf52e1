"""The model contract and the model registry.

Every classifier here is ``backbone(x) -> features [B, D]`` + ``head: Linear(D, C)`` + a boolean
``class_mask`` [C] (True = the class may be predicted, False = forgotten). Masking, probes, export and
the fused kernel use this contract only; adapters split torchvision families into it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UsageError

HEAD_IMPLS = ("auto", "eager", "fused")


class UnlearnableClassifier(nn.Module):
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
        channel means for a conv), as buffers ``depth_stats__<layer>`` [C, D] and ``depth_stats_count`` [C].

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
        return self.num_classes * widths

    @torch.no_grad()
    def depth_stat_sums(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per-class sums ({layer name: [C, D]}, float64, on the model's device) and counts (float64, CPU) of
        every :func:`depth_layers` input over ``batches`` of (inputs, labels): a streaming mean whose parts
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
                self.backbone((transform(batch) if transform is not None else batch).to(device))
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
        """{backbone layer name: per-class mean input [C, D]} recorded by :meth:`record_depth_stats`."""
        keys = {DEPTH_STATS_PREFIX + _buffer_key(name): name for name, _ in self.backbone.named_modules() if name}
        return {keys[k]: b for k, b in self._buffers.items() if k in keys and b is not None}

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


#: Depth statistics (per-class means at every learnable layer's input, issue #15) are recorded at training and import
#: time when they take at most this many floats (16 MiB of float32: every registry model on up to ~100 classes);
#: beyond it (a resnet50 on 1 000 classes: 23 M floats) the checkpoint keeps the edit layer's statistics only.
DEPTH_STATS_MAX_FLOATS = 4 * 1024 * 1024


DEPTH_STATS_PREFIX = "depth_stats__"
DEPTH_STATS_COUNT = "depth_stats_count"


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


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: builds an :class:`UnlearnableClassifier` for (num_classes, input_shape)."""

    name: str
    build: Callable[[int, tuple[int, int, int]], UnlearnableClassifier]
    description: str
    min_size: int = 1


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, description: str, min_size: int = 1):
    """Decorator: add a model builder to the registry (tests are generated from it)."""

    def wrap(fn: Callable[[int, tuple[int, int, int]], UnlearnableClassifier]):
        MODELS[name] = ModelSpec(name, fn, description, min_size)
        return fn

    return wrap


def build_model(arch: str | ArchSpec, num_classes: int, input_shape: Sequence[int]) -> UnlearnableClassifier:
    """Build a fresh, seeded-by-caller model from the registry (or from an :class:`ArchSpec`)."""
    if isinstance(arch, ArchSpec):
        if arch.source != "registry":
            return build_from_spec(arch, num_classes, input_shape)
        arch = arch.name
    if arch not in MODELS:
        raise UsageError(f"unknown arch {arch!r}; choose one of {', '.join(sorted(MODELS))}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise UsageError(f"input shape must be (C, H, W), got {shape}")
    spec = MODELS[arch]
    if min(shape[1:]) < spec.min_size:
        raise UsageError(
            f"{arch} needs images of at least {spec.min_size}×{spec.min_size}, got {shape[1]}×{shape[2]}; "
            f"choose a smaller arch such as lenet"
        )
    if num_classes < 2:
        raise UsageError(f"a classifier needs at least 2 classes, got {num_classes}")
    return spec.build(num_classes, shape)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Built-in models


@register_model("lenet", "small CNN (2 conv + BN blocks, 128-d features) for 28×28 and 8×8 grey or colour images")
def lenet(num_classes: int, input_shape: tuple[int, int, int]) -> UnlearnableClassifier:
    channels, height, width = input_shape
    pooled = (height // 4) * (width // 4)
    if pooled == 0:
        raise UsageError(f"lenet needs images of at least 4×4, got {height}×{width}")
    backbone = nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * pooled, 128),
        nn.ReLU(inplace=True),
    )
    return UnlearnableClassifier(backbone, nn.Linear(128, num_classes))


def _replace_first_conv(conv: nn.Conv2d, channels: int, **overrides) -> nn.Conv2d:
    kwargs = dict(kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding, bias=conv.bias is not None)
    kwargs.update(overrides)
    return nn.Conv2d(channels, conv.out_channels, **kwargs)


def split_torchvision(model: nn.Module) -> UnlearnableClassifier:
    """Split a torchvision classifier into backbone + Linear head (resnet ``fc``, vgg/mobilenet
    ``classifier[-1]``, vit ``heads.head``)."""
    if isinstance(getattr(model, "fc", None), nn.Linear):
        head, model.fc = model.fc, nn.Identity()
    elif isinstance(getattr(model, "classifier", None), nn.Sequential) and isinstance(model.classifier[-1], nn.Linear):
        head, model.classifier[-1] = model.classifier[-1], nn.Identity()
    elif hasattr(model, "heads") and isinstance(getattr(model.heads, "head", None), nn.Linear):
        head, model.heads.head = model.heads.head, nn.Identity()
    else:
        raise UsageError(
            f"cannot find the Linear head of {type(model).__name__}; add an adapter in edge_unlearn.models"
        )
    return UnlearnableClassifier(model, head)


@register_model("cifar_resnet18", "ResNet-18 with a 3×3 stem and no max-pool, for 32×32 images", min_size=8)
def cifar_resnet18(num_classes: int, input_shape: tuple[int, int, int]) -> UnlearnableClassifier:
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=num_classes)
    net.conv1 = _replace_first_conv(net.conv1, input_shape[0], kernel_size=3, stride=1, padding=1)
    net.maxpool = nn.Identity()
    return split_torchvision(net)


@register_model("resnet18", "torchvision ResNet-18 adapted to the input channels and classes", min_size=16)
def resnet18(num_classes: int, input_shape: tuple[int, int, int]) -> UnlearnableClassifier:
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=num_classes)
    net.conv1 = _replace_first_conv(net.conv1, input_shape[0])
    return split_torchvision(net)


@register_model("resnet50", "torchvision ResNet-50 adapted to the input channels and classes", min_size=16)
def resnet50(num_classes: int, input_shape: tuple[int, int, int]) -> UnlearnableClassifier:
    from torchvision.models import resnet50 as tv_resnet50

    net = tv_resnet50(weights=None, num_classes=num_classes)
    net.conv1 = _replace_first_conv(net.conv1, input_shape[0])
    return split_torchvision(net)


@register_model(
    "mobilenet_v3_small", "torchvision MobileNetV3-Small adapted to the input channels and classes", min_size=16
)
def mobilenet_v3_small(num_classes: int, input_shape: tuple[int, int, int]) -> UnlearnableClassifier:
    from torchvision.models import mobilenet_v3_small as tv_mobilenet

    net = tv_mobilenet(weights=None, num_classes=num_classes)
    net.features[0][0] = _replace_first_conv(net.features[0][0], input_shape[0])
    return split_torchvision(net)


@register_model(
    "vgg11_bn", "torchvision VGG-11 with BatchNorm; max-pools dropped so small inputs keep ≥1×1", min_size=8
)
def vgg11_bn(num_classes: int, input_shape: tuple[int, int, int]) -> UnlearnableClassifier:
    from torchvision.models import vgg11_bn as tv_vgg11_bn

    net = tv_vgg11_bn(weights=None, num_classes=num_classes)
    net.features[0] = _replace_first_conv(net.features[0], input_shape[0])
    size, layers = min(input_shape[1:]), []
    pools = sum(isinstance(m, nn.MaxPool2d) for m in net.features)
    keep_pools = max(0, min(pools, size.bit_length() - 1))  # each pool halves; stop before 0×0
    seen = 0
    for module in net.features:
        if isinstance(module, nn.MaxPool2d):
            seen += 1
            if seen > keep_pools:
                continue
        layers.append(module)
    net.features = nn.Sequential(*layers)
    net.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    net.classifier[0] = nn.Linear(512, 4096)
    return split_torchvision(net)


# ---------------------------------------------------------------------------------------------
# Architectures from torchvision and timm (bring your own model)

ARCH_SOURCES = ("registry", "torchvision", "timm", "python")
ARCH_SPEC_VERSION = 1

# torchvision family -> where its classification head lives ("[-1]": the last entry of a Sequential).
TORCHVISION_HEADS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("resnet", "resnext", "wide_resnet", "regnet", "shufflenet", "inception", "googlenet"), "fc"),
    (("vgg", "alexnet", "mobilenet", "efficientnet", "mnasnet", "convnext", "maxvit"), "classifier[-1]"),
    (("densenet",), "classifier"),
    (("vit_",), "heads.head"),
    (("swin_",), "head"),
)
# Families whose head cannot be split off as backbone -> [B, D] + Linear(D, C), and why.
TORCHVISION_UNSPLITTABLE: dict[str, str] = {
    "squeezenet": "its classifier is Conv2d(512, C, 1) -> ReLU -> global average pool: the ReLU sits between the "
    "class projection and the pooling, so the logits are not a Linear map of any [B, D] feature",
}
# Constructor arguments applied to every build of a family (recorded in the checkpoint): the auxiliary
# classifiers only act in training mode and would make the backbone return a tuple there.
TORCHVISION_DEFAULT_KWARGS: dict[str, dict[str, Any]] = {
    "inception": {"aux_logits": False, "init_weights": False},
    "googlenet": {"aux_logits": False, "init_weights": False},
}
# State-dict prefixes dropped on import for those families (the auxiliary heads; eval logits never use them).
TORCHVISION_IGNORED_PREFIXES: dict[str, tuple[str, ...]] = {
    "inception": ("AuxLogits.",),
    "googlenet": ("aux1.", "aux2."),
}
CIFAR_STEM_FAMILIES = ("resnet", "resnext", "wide_resnet")


def _family(name: str, table) -> str | None:
    for prefix in table:
        if name.startswith(prefix):
            return prefix
    return None


@dataclass(frozen=True)
class ArchSpec:
    """How to rebuild an architecture without running code from a file: a source (the built-in
    ``registry``, ``torchvision``, ``timm``, or ``python`` for a module the user builds), a name, constructor
    keyword arguments (JSON values) and recorded adaptations (``cifar_stem``: a 3×3 stride-1 first conv and
    no max-pool, for 32×32 images; ``in_channels``: the first conv's input channels)."""

    source: str
    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    adapt: tuple[tuple[str, Any], ...] = ()
    version: int = ARCH_SPEC_VERSION

    def __post_init__(self) -> None:
        if self.source not in ARCH_SOURCES:
            raise UsageError(f"unknown architecture source {self.source!r}; choose one of {', '.join(ARCH_SOURCES)}")
        if self.version != ARCH_SPEC_VERSION:
            raise UsageError(f"architecture record version {self.version} is not supported; upgrade edge-unlearn")
        unknown = sorted(set(dict(self.adapt)) - {"cifar_stem", "in_channels"})
        if unknown:
            raise UsageError(f"unknown adaptation {', '.join(unknown)}; known: cifar_stem, in_channels")

    @property
    def label(self) -> str:
        """``torchvision:resnet18``, ``timm:resnet10t`` or the registry name."""
        return self.name if self.source == "registry" else f"{self.source}:{self.name}"

    @classmethod
    def parse(cls, text: str, kwargs: dict[str, Any] | None = None, adapt: dict[str, Any] | None = None) -> ArchSpec:
        """``torchvision:NAME``, ``timm:NAME`` or a registry name."""
        source, sep, name = text.partition(":")
        if not sep:
            source, name = "registry", text
        if source not in ("registry", "torchvision", "timm") or not name:
            raise UsageError(
                f"unknown arch {text!r}; use torchvision:NAME, timm:NAME or one of {', '.join(sorted(MODELS))}"
            )
        return cls(source, name, tuple(sorted((kwargs or {}).items())), tuple(sorted((adapt or {}).items())))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source": self.source,
            "name": self.name,
            "kwargs": dict(self.kwargs),
            "adapt": dict(self.adapt),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArchSpec:
        return cls(
            str(data["source"]),
            str(data["name"]),
            tuple(sorted(dict(data.get("kwargs", {})).items())),
            tuple(sorted(dict(data.get("adapt", {})).items())),
            int(data.get("version", ARCH_SPEC_VERSION)),
        )


@functools.lru_cache(maxsize=1)
def _torchvision_classifiers() -> tuple[str, ...]:
    import torchvision.models as tvm

    return tuple(sorted(tvm.list_models(module=tvm)))


def torchvision_classifiers() -> list[str]:
    """Every classification model name in ``torchvision.models``."""
    return list(_torchvision_classifiers())


def torchvision_head_path(name: str) -> str:
    """Where the Linear head of torchvision model ``name`` lives (``fc``, ``classifier[-1]``, …)."""
    if name not in torchvision_classifiers():
        raise UsageError(f"unknown torchvision classifier {name!r}; `edge-unlearn models` lists them")
    blocked = _family(name, TORCHVISION_UNSPLITTABLE)
    if blocked:
        raise UsageError(f"torchvision:{name} cannot be imported: {TORCHVISION_UNSPLITTABLE[blocked]}")
    for prefixes, path in TORCHVISION_HEADS:
        if _family(name, prefixes):
            return path
    raise UsageError(f"torchvision:{name} has no known head location; wrap it with edge_unlearn.wrap(model, head=...)")


def _resolve(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    """(parent module, attribute) of a dotted path whose last part may be ``name[-1]``."""
    parts = path.split(".")
    parent = model
    for part in parts[:-1]:
        parent = getattr(parent, part)
    leaf = parts[-1]
    if leaf.endswith("[-1]"):
        parent = getattr(parent, leaf[:-4])
        if not isinstance(parent, nn.Sequential):
            raise UsageError(f"{path}: {type(parent).__name__} is not a Sequential")
        leaf = str(len(parent) - 1)
    return parent, leaf


def module_path(model: nn.Module, path: str) -> str:
    """A dotted state-dict path for ``path`` (``classifier[-1]`` -> ``classifier.6``)."""
    parent, leaf = _resolve(model, path)
    owner = next(n for n, m in model.named_modules() if m is parent)
    return f"{owner}.{leaf}" if owner else leaf


def _get(model: nn.Module, path: str) -> nn.Module:
    parent, leaf = _resolve(model, path)
    return parent[int(leaf)] if leaf.isdigit() else getattr(parent, leaf)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, leaf = _resolve(model, path)
    if leaf.isdigit():
        parent[int(leaf)] = module
    else:
        setattr(parent, leaf, module)


def _adapt(model: nn.Module, spec: ArchSpec) -> nn.Module:
    adapt = dict(spec.adapt)
    if adapt.get("cifar_stem"):
        if spec.source != "torchvision" or not _family(spec.name, CIFAR_STEM_FAMILIES):
            raise UsageError(
                f"--cifar-stem applies to torchvision {'/'.join(CIFAR_STEM_FAMILIES)} models, not {spec.label}"
            )
        model.conv1 = _replace_first_conv(model.conv1, model.conv1.in_channels, kernel_size=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    channels = adapt.get("in_channels")
    if channels is not None:
        name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
        if conv is None:
            raise UsageError(f"{spec.label} has no Conv2d whose input channels could be set")
        _set(model, name, _replace_first_conv(conv, int(channels)))
    return model


def build_original(spec: ArchSpec, num_classes: int) -> nn.Module:
    """The full classifier as its library builds it (random weights, never downloaded), with the
    recorded constructor arguments and adaptations."""
    kwargs = dict(spec.kwargs)
    if spec.source == "torchvision":
        import torchvision.models as tvm

        torchvision_head_path(spec.name)  # unknown or unsplittable names fail here, with the reason
        family = _family(spec.name, TORCHVISION_DEFAULT_KWARGS)
        kwargs = {**(TORCHVISION_DEFAULT_KWARGS[family] if family else {}), **kwargs}
        try:
            model = tvm.get_model(spec.name, weights=None, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"torchvision:{spec.name} rejects constructor arguments {kwargs} ({exc})") from exc
    elif spec.source == "timm":
        timm = _import_timm()
        if not timm.is_model(spec.name):
            raise UsageError(
                f'unknown timm model {spec.name!r}; list them with python -c "import timm; '
                f"print(timm.list_models('{spec.name[:4]}*'))\""
            )
        try:
            model = timm.create_model(spec.name, pretrained=False, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UsageError(f"timm:{spec.name} rejects constructor arguments {kwargs} ({exc})") from exc
    else:
        raise UsageError(f"{spec.label} is not built from a library")
    return _adapt(model, spec)


def _import_timm():
    try:
        import timm
    except ImportError as exc:
        raise UsageError("timm is not installed; install the extra: pip install 'edge-unlearn[timm]'") from exc
    return timm


class TimmBackbone(nn.Module):
    """A timm model without its classifier: ``forward_head(forward_features(x), pre_logits=True)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def head_path(spec: ArchSpec, model: nn.Module) -> str:
    """The state-dict path of the Linear head of ``model`` (the full classifier built from ``spec``)."""
    if spec.source == "torchvision":
        return module_path(model, torchvision_head_path(spec.name))
    if spec.source == "timm":
        head = model.get_classifier()
        name = next((n for n, m in model.named_modules() if m is head and n), None)
        if name is None or not isinstance(head, nn.Linear):
            raise UsageError(
                f"timm:{spec.name}'s classifier is {type(head).__name__}, not a Linear layer; it cannot "
                "be split into backbone + Linear head"
            )
        return name
    raise UsageError(f"{spec.label} has no library head location")


def split_classifier(spec: ArchSpec, model: nn.Module, head_impl: str = "auto") -> UnlearnableClassifier:
    """Turn the full classifier into the contract: the head becomes ``head``, its place an Identity."""
    path = head_path(spec, model)
    head = _get(model, path)
    if not isinstance(head, nn.Linear):
        raise UsageError(
            f"{spec.label}'s head {path} is {type(head).__name__}, not a Linear layer; it cannot be split "
            "into backbone + Linear head"
        )
    _set(model, path, nn.Identity())
    backbone = TimmBackbone(model) if spec.source == "timm" else model
    return UnlearnableClassifier(backbone, head, head_impl=head_impl)


def build_from_spec(spec: ArchSpec, num_classes: int, input_shape: Sequence[int]) -> UnlearnableClassifier:
    """Rebuild a model from its record: registry, torchvision or timm only (no code from any file)."""
    if spec.source == "registry":
        return build_model(spec.name, num_classes, input_shape)
    if spec.source == "python":
        raise UsageError(
            f"this checkpoint holds a user-built module ({spec.name}); load it in Python with "
            f"load_checkpoint(path, model=edge_unlearn.wrap(YourModule(...), head=...))"
        )
    if num_classes < 2:
        raise UsageError(f"a classifier needs at least 2 classes, got {num_classes}")
    return split_classifier(spec, build_original(spec, num_classes))


def wrap(
    module: nn.Module, head: str | nn.Linear, example_input: torch.Tensor | None = None, head_impl: str = "auto"
) -> UnlearnableClassifier:
    """Python API for a user's own ``nn.Module``: split it into backbone + Linear head.

    ``head`` is the dotted path of the final ``nn.Linear`` (``"fc"``, ``"classifier[-1]"``, ``"heads.head"``) or
    the layer itself; it is replaced by an Identity inside ``module`` (which must therefore end in that layer,
    applied to a [B, D] feature). With ``example_input`` the wrapped model's logits are checked against the
    module's own. The module is changed in place and becomes the backbone.
    """
    if isinstance(head, nn.Module):
        path = next((n for n, m in module.named_modules() if m is head and n), None)
        if path is None:
            raise UsageError("the head given to wrap() is not a submodule of the model")
    else:
        path = head
    try:
        layer = _get(module, path)
    except (AttributeError, IndexError, ValueError) as exc:
        raise UsageError(f"{type(module).__name__} has no submodule {path!r}") from exc
    if not isinstance(layer, nn.Linear):
        raise UsageError(
            f"{path} of {type(module).__name__} is {type(layer).__name__}, not nn.Linear; wrap() needs a Linear head"
        )
    reference = None
    if example_input is not None:
        was_training = module.training
        with torch.no_grad():
            reference = module.eval()(example_input)
        module.train(was_training)
    _set(module, path, nn.Identity())
    model = UnlearnableClassifier(module, layer, head_impl=head_impl)
    if reference is not None:
        with torch.no_grad():
            got = model.eval().logits(example_input, masked=False)
        if got.shape != reference.shape or not torch.allclose(got, reference, rtol=1e-4, atol=1e-5):
            raise UsageError(
                f"wrapping {type(module).__name__} at {path!r} changes its outputs: the head is not the "
                "last operation of forward(); pass the Linear layer that produces the logits"
            )
    return model
