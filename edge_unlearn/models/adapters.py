"""Architectures from torchvision and timm, and the user's own modules (bring your own model): the record that
rebuilds one without running code from a file (:class:`ArchSpec`), building it, and splitting a full classifier
into the contract's backbone + Linear head."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from .classifier import UnlearnableClassifier

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


def model_family(name: str, table) -> str | None:
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
                f"unknown arch {text!r}; use torchvision:NAME, timm:NAME or a built-in name (`edge-unlearn models` lists them)"
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
    blocked = model_family(name, TORCHVISION_UNSPLITTABLE)
    if blocked:
        raise UsageError(f"torchvision:{name} cannot be imported: {TORCHVISION_UNSPLITTABLE[blocked]}")
    for prefixes, path in TORCHVISION_HEADS:
        if model_family(name, prefixes):
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
        if spec.source != "torchvision" or not model_family(spec.name, CIFAR_STEM_FAMILIES):
            raise UsageError(
                f"--cifar-stem applies to torchvision {'/'.join(CIFAR_STEM_FAMILIES)} models, not {spec.label}"
            )
        model.conv1 = replace_first_conv(model.conv1, model.conv1.in_channels, kernel_size=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    channels = adapt.get("in_channels")
    if channels is not None:
        name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
        if conv is None:
            raise UsageError(f"{spec.label} has no Conv2d whose input channels could be set")
        _set(model, name, replace_first_conv(conv, int(channels)))
    return model


def build_original(spec: ArchSpec, num_classes: int) -> nn.Module:
    """The full classifier as its library builds it (random weights, never downloaded), with the
    recorded constructor arguments and adaptations."""
    kwargs = dict(spec.kwargs)
    if spec.source == "torchvision":
        import torchvision.models as tvm

        torchvision_head_path(spec.name)  # unknown or unsplittable names fail here, with the reason
        family = model_family(spec.name, TORCHVISION_DEFAULT_KWARGS)
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


def replace_first_conv(conv: nn.Conv2d, channels: int, **overrides) -> nn.Conv2d:
    kwargs = dict(kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding, bias=conv.bias is not None)
    kwargs.update(overrides)
    return nn.Conv2d(channels, conv.out_channels, **kwargs)


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
