"""Unlearning methods behind one registry, and :func:`forget`, the one entry point.

A method changes a copy of the model in place from a :class:`ForgetSet` (a few samples of the forgotten
classes) and, only if it says it needs them, retained data. :func:`forget` times it, applies class weight
masking and returns the figures a checkpoint's lineage records.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UsageError
from ..guards import check_params
from ..models import UnlearnableClassifier
from ..training import resolve_device

DATA_NEEDS = ("forget", "forget+retain", "full_train")


@dataclass(frozen=True)
class ForgetSet:
    """Preprocessed samples of the forgotten classes (float [N, C, H, W]) and their labels."""

    inputs: torch.Tensor
    labels: torch.Tensor
    classes: tuple[int, ...]


@dataclass(frozen=True)
class RetainSet:
    """Preprocessed retained-class training samples, for baselines that need them (never NHLE's default)."""

    inputs: torch.Tensor
    labels: torch.Tensor


MethodFn = Callable[
    [UnlearnableClassifier, ForgetSet, Any, "RetainSet | None", torch.device, bool], "dict[str, Any] | None"
]


@dataclass(frozen=True)
class MethodSpec:
    """A registry entry. ``run(model, forget_set, config, retain, device, progress)`` edits ``model`` in place."""

    name: str
    config_cls: type
    run: MethodFn
    needs: str
    description: str
    masks: bool = True


METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, needs: str, description: str, masks: bool = True):
    """Decorator: add an unlearning method (tests are generated from the registry)."""
    if needs not in DATA_NEEDS:
        raise ValueError(f"needs must be one of {DATA_NEEDS}")

    def wrap(fn: MethodFn) -> MethodFn:
        METHODS[name] = MethodSpec(name, config_cls, fn, needs, description, masks)
        return fn

    return wrap


def method_config(method: str, overrides: dict[str, Any] | None = None) -> Any:
    """The method's config dataclass with ``overrides`` (None values keep the default). A ``version`` override
    asks for an earlier version of the method: its record is migrated by the config's ``from_json`` (NHLE:
    ``--set version=5`` runs version 5's head step), or refused in one line where it cannot be."""
    spec = get_method(method)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    values = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise UsageError(f"method {method} has no parameter {', '.join(unknown)}; it takes {', '.join(sorted(fields))}")
    check_params(spec.config_cls, values)  # issue #13: --set steps=abc / lr=NaN are one-line errors
    if "version" in values and hasattr(spec.config_cls, "from_json"):
        return spec.config_cls.from_json(values)
    return spec.config_cls(**values)


def get_method(name: str) -> MethodSpec:
    _load_builtin_methods()
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def _load_builtin_methods() -> None:
    from . import baselines, nhle  # noqa: F401  (register themselves)


@dataclass(frozen=True)
class ForgetResult:
    """The unlearned model (CPU, eval mode) and what the lineage records of the run."""

    model: UnlearnableClassifier
    method: str
    params: dict[str, Any]
    forget_classes: list[int]
    samples_used: int
    seconds: float
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # what the method reports (e.g. feature_step)


def forget(
    model: UnlearnableClassifier,
    forget_set: ForgetSet,
    method: str = "nhle",
    config: Any = None,
    retain: RetainSet | None = None,
    device: str | None = "auto",
    progress: bool = False,
) -> ForgetResult:
    """Unlearn ``forget_set.classes`` from a copy of ``model``; the input model is left untouched.

    Already-forgotten classes stay masked (sequential forgetting accumulates masks)."""
    spec = get_method(method)
    config = config if config is not None else spec.config_cls()
    classes = sorted(set(int(c) for c in forget_set.classes))
    for c in classes:
        if not 0 <= c < model.num_classes:
            raise UsageError(f"class index {c} is out of range; the model has classes 0..{model.num_classes - 1}")
    remaining = set(range(model.num_classes)) - set(model.forgotten_classes) - set(classes)
    if not remaining:
        raise UsageError("that would forget every class; keep at least one class")
    if len(forget_set.inputs) == 0:
        raise UsageError("no forget samples were given; pass --samples N or --forget-images DIR")
    if spec.needs != "forget" and retain is None:
        raise UsageError(
            f"method {method} needs retained training data ({spec.needs}); it runs only where the "
            "training set is available (pass --dataset)"
        )
    dev = resolve_device(device)
    work = copy.deepcopy(model).to(dev)
    fs = ForgetSet(forget_set.inputs.to(dev), forget_set.labels.to(dev), tuple(classes))
    rs = RetainSet(retain.inputs.to(dev), retain.labels.to(dev)) if retain is not None else None
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    details = spec.run(work, fs, config, rs, dev, progress)
    if spec.masks:
        work.mask_classes(classes)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    work.eval().cpu()
    params = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}
    return ForgetResult(work, method, params, classes, int(len(forget_set.inputs)), seconds, dict(details or {}))


def list_methods() -> Sequence[str]:
    _load_builtin_methods()
    return sorted(METHODS)
