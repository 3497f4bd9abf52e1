"""The model contract and the model registry.

Every classifier here is ``backbone(x) -> features [B, D]`` + ``head: Linear(D, C)`` + a boolean
``class_mask`` [C] (True = the class may be predicted, False = forgotten). Masking, probes, export and
the fused kernel use this contract only; adapters split torchvision families into it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .errors import UsageError

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
    def record_class_stats(self, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> None:
        """Record per-class means of the edit layer's input (channel means for a conv layer)."""
        layer, sums = self.edit_layer(), torch.zeros_like(self.class_stats, dtype=torch.float64)
        counts = torch.zeros(self.num_classes, dtype=torch.float64)
        captured: list[torch.Tensor] = []
        handle = layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        was_training = self.training
        self.eval()
        try:
            device = self.class_stats.device
            for i in range(0, len(inputs), batch_size):
                captured.clear()
                self.backbone(inputs[i:i + batch_size].to(device))
                act = captured[0]
                act = act.flatten(2).mean(2) if act.dim() == 4 else act
                y = labels[i:i + batch_size].to(device)
                sums.index_add_(0, y, act.to(torch.float64))
                counts.index_add_(0, y.cpu(), torch.ones(len(y), dtype=torch.float64))
        finally:
            handle.remove()
            self.train(was_training)
        seen = counts > 0
        self.class_stats[seen] = (sums[seen] / counts[seen].to(sums.device)[:, None]).to(self.class_stats.dtype)
        self.class_stats_count.copy_(counts.to(self.class_stats_count))

    def drop_class_stats(self, classes: Iterable[int]) -> None:
        """Erase the statistics of forgotten classes: nothing about them stays in the checkpoint."""
        idx = list(classes)
        self.class_stats[idx] = 0
        self.class_stats_count[idx] = 0

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
        from .kernels import CompactHead

        key = (self.head.weight.data_ptr(), self.head.weight._version, getattr(self.head.bias, "_version", None),
               self.class_mask._version, self.class_mask.data_ptr(), self.head.weight.device, self.head.weight.dtype)
        cached = getattr(self, "_compact_head_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, CompactHead.from_linear(self.head, self.class_mask))
            self._compact_head_cache = cached
        return cached[1]


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


def build_model(arch: str, num_classes: int, input_shape: Sequence[int]) -> UnlearnableClassifier:
    """Build a fresh, seeded-by-caller model from the registry."""
    if arch not in MODELS:
        raise UsageError(f"unknown arch {arch!r}; choose one of {', '.join(sorted(MODELS))}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise UsageError(f"input shape must be (C, H, W), got {shape}")
    spec = MODELS[arch]
    if min(shape[1:]) < spec.min_size:
        raise UsageError(f"{arch} needs images of at least {spec.min_size}×{spec.min_size}, got {shape[1]}×{shape[2]}; "
                         f"choose a smaller arch such as lenet")
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
        nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * pooled, 128), nn.ReLU(inplace=True),
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
        raise UsageError(f"cannot find the Linear head of {type(model).__name__}; add an adapter in edge_unlearn.models")
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


@register_model("mobilenet_v3_small", "torchvision MobileNetV3-Small adapted to the input channels and classes",
                min_size=16)
def mobilenet_v3_small(num_classes: int, input_shape: tuple[int, int, int]) -> UnlearnableClassifier:
    from torchvision.models import mobilenet_v3_small as tv_mobilenet

    net = tv_mobilenet(weights=None, num_classes=num_classes)
    net.features[0][0] = _replace_first_conv(net.features[0][0], input_shape[0])
    return split_torchvision(net)


@register_model("vgg11_bn", "torchvision VGG-11 with BatchNorm; max-pools dropped so small inputs keep ≥1×1",
                min_size=8)
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
