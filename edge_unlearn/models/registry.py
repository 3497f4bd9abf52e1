"""The built-in model registry (``--arch``): registered builders, building by name or by architecture record."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..errors import UsageError
from .adapters import ArchSpec, build_original, replace_first_conv, split_classifier
from .classifier import UnlearnableClassifier


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


# ---------------------------------------------------------------------------------------------
# Built-in models


def _split_torchvision(name: str, net: nn.Module) -> UnlearnableClassifier:
    """A torchvision ``name`` network adapted here, split where its family's head lives (:data:`TORCHVISION_HEADS`)."""
    return split_classifier(ArchSpec("torchvision", name), net)


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


@register_model("cifar_resnet18", "ResNet-18 with a 3×3 stem and no max-pool, for 32×32 images", min_size=8)
def cifar_resnet18(num_classes: int, input_shape: tuple[int, int, int]) -> UnlearnableClassifier:
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=num_classes)
    net.conv1 = replace_first_conv(net.conv1, input_shape[0], kernel_size=3, stride=1, padding=1)
    net.maxpool = nn.Identity()
    return _split_torchvision("resnet18", net)


@register_model("resnet18", "torchvision ResNet-18 adapted to the input channels and classes", min_size=16)
def resnet18(num_classes: int, input_shape: tuple[int, int, int]) -> UnlearnableClassifier:
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=num_classes)
    net.conv1 = replace_first_conv(net.conv1, input_shape[0])
    return _split_torchvision("resnet18", net)


@register_model("resnet50", "torchvision ResNet-50 adapted to the input channels and classes", min_size=16)
def resnet50(num_classes: int, input_shape: tuple[int, int, int]) -> UnlearnableClassifier:
    from torchvision.models import resnet50 as tv_resnet50

    net = tv_resnet50(weights=None, num_classes=num_classes)
    net.conv1 = replace_first_conv(net.conv1, input_shape[0])
    return _split_torchvision("resnet50", net)


@register_model(
    "mobilenet_v3_small", "torchvision MobileNetV3-Small adapted to the input channels and classes", min_size=16
)
def mobilenet_v3_small(num_classes: int, input_shape: tuple[int, int, int]) -> UnlearnableClassifier:
    from torchvision.models import mobilenet_v3_small as tv_mobilenet

    net = tv_mobilenet(weights=None, num_classes=num_classes)
    net.features[0][0] = replace_first_conv(net.features[0][0], input_shape[0])
    return _split_torchvision("mobilenet_v3_small", net)


@register_model(
    "vgg11_bn", "torchvision VGG-11 with BatchNorm; max-pools dropped so small inputs keep ≥1×1", min_size=8
)
def vgg11_bn(num_classes: int, input_shape: tuple[int, int, int]) -> UnlearnableClassifier:
    from torchvision.models import vgg11_bn as tv_vgg11_bn

    net = tv_vgg11_bn(weights=None, num_classes=num_classes)
    net.features[0] = replace_first_conv(net.features[0], input_shape[0])
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
    return _split_torchvision("vgg11_bn", net)
