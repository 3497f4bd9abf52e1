"""The Python API: the command line's jobs as plain functions (docs/python-api.md has a worked example).

    from edge_unlearn import api
    api.train("digits", "lenet", "model.safetensors")
    api.forget("model.safetensors", [3], out="forgotten.safetensors")

Each function is a thin call into the library module that does the work (:mod:`edge_unlearn.workflows`,
:mod:`edge_unlearn.export`, :mod:`edge_unlearn.deploy.validate`), so Python and the CLI behave the same and
raise the same errors (:mod:`edge_unlearn.errors`). Imports happen inside the functions: importing this module
loads no torch, and :func:`validate` runs on a device that has only numpy and onnxruntime or TensorRT.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    from .deploy.bundle import Bundle
    from .deploy.validate import ValidationReport
    from .export.onnx_export import ExportResult
    from .export.quantize import QuantizeResult
    from .models import UnlearnableClassifier
    from .unlearn import ForgetResult

__all__ = ["wrap", "train", "retrain", "forget", "evaluate", "export", "quantize", "bundle", "validate"]


def wrap(module: Any, head: Any, example_input: Any = None, head_impl: str = "auto") -> UnlearnableClassifier:
    """Your own ``nn.Module`` as edge-unlearn's model contract (backbone + Linear head + class mask); ``head``
    is the dotted path of its final ``nn.Linear``. See :func:`edge_unlearn.models.wrap`."""
    from .models import wrap as wrap_module

    return wrap_module(module, head, example_input=example_input, head_impl=head_impl)


def train(
    dataset: str, arch: str, out: str | Path, *, progress: bool = False, image_size: int | None = None, **recipe: Any
) -> dict[str, Any]:
    """Train the original model on ``dataset`` (a ``--dataset`` spec such as ``"digits"`` or ``"npz:PATH"``)
    and write its checkpoint to ``out``; ``recipe``: fields of :class:`edge_unlearn.training.TrainConfig`
    (``epochs``, ``min_steps``, ``lr``, ``seed``, ...). Returns the summary `edge-unlearn train --json` prints."""
    from .training import TrainConfig
    from .workflows import train_checkpoint

    return train_checkpoint(dataset, arch, out, TrainConfig(**recipe), progress=progress, image_size=image_size)


def retrain(
    original: str | Path,
    classes: Sequence[str | int],
    out: str | Path,
    *,
    dataset: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """The gold standard: ``original``'s architecture and recorded recipe, trained without ``classes``
    (``seed``: another training seed than the recorded one, for the gold standard's own spread)."""
    from .workflows import retrain_checkpoint

    return retrain_checkpoint(original, classes, out, dataset=dataset, progress=False, seed=seed)


def forget(
    checkpoint_or_model: str | Path | UnlearnableClassifier,
    classes: Sequence[str | int],
    samples: int | Any = 32,
    method: str = "nhle",
    *,
    out: str | Path | None = None,
    params: dict[str, Any] | None = None,
    dataset: str | None = None,
    evaluate: bool = True,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, Any] | ForgetResult:
    """Make a checkpoint or a model forget ``classes`` (indices or class names).

    A checkpoint path: ``samples`` forget samples per class are drawn from its dataset, the unlearned checkpoint
    is written to ``out`` and the figures `edge-unlearn forget --json` prints are returned. A model in memory
    (:func:`wrap` or :func:`edge_unlearn.models.build_model`): ``samples`` is the preprocessed images of the
    forgotten classes, as a tensor (one class) or an ``(images, labels)`` pair, and the
    :class:`edge_unlearn.unlearn.ForgetResult` is returned (its ``model`` is an unlearned copy). ``params``:
    the method's parameters (`edge-unlearn methods` lists them)."""
    params = dict(params or {})
    if isinstance(checkpoint_or_model, (str, Path)):
        from .workflows import ForgetRequest, forget_checkpoint

        if out is None:
            raise UsageError("forget(checkpoint, ...) writes a new checkpoint; pass out='forgotten.safetensors'")
        if not isinstance(samples, int) or isinstance(samples, bool):
            raise UsageError("forget(checkpoint, ...) draws its samples from the dataset; pass samples=N (per class)")
        request = ForgetRequest(
            checkpoint=str(checkpoint_or_model),
            forget=tuple(str(c) for c in classes),
            out=str(out),
            method=method,
            samples=samples,
            params=tuple(params.items()),
            dataset=dataset,
            seed=seed,
            device=device,
            evaluate=evaluate,
        )
        return forget_checkpoint(request)
    return _forget_model(checkpoint_or_model, classes, samples, method, params, device)


def _forget_model(
    model: UnlearnableClassifier, classes: Sequence[str | int], samples: Any, method: str, params: dict, device: str
) -> ForgetResult:
    """:func:`forget` on a model in memory: the samples are given, nothing is read or written."""
    import torch

    from .unlearn import ForgetSet, method_config
    from .unlearn import forget as forget_classes

    if not all(isinstance(c, int) or str(c).isdigit() for c in classes):
        raise UsageError("a model in memory has no class names: pass the classes to forget as indices")
    indices = sorted({int(c) for c in classes})
    if isinstance(samples, torch.Tensor):
        if len(indices) != 1:
            raise UsageError("several classes are forgotten: pass samples=(images, labels) so each image has its class")
        images, labels = samples, torch.full((len(samples),), indices[0], dtype=torch.long)
    elif isinstance(samples, (tuple, list)) and len(samples) == 2:
        images, labels = samples[0], torch.as_tensor(samples[1], dtype=torch.long)
    else:
        raise UsageError("a model in memory has no dataset: pass samples=images (a tensor) or (images, labels)")
    forget_set = ForgetSet(images, labels, tuple(indices))
    return forget_classes(model, forget_set, method=method, config=method_config(method, params), device=device)


def evaluate(
    checkpoint: str | Path,
    *,
    reference: str | Path | None = None,
    retrained: str | Path | Sequence[str | Path] | None = None,
    dataset: str | None = None,
    classes: Sequence[str | int] = (),
    probe: bool = True,
    depth: bool = False,
    attacks: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """The figures of `edge-unlearn evaluate --json`: accuracy, forget_acc with and without the mask,
    retain_acc, the linear probe; ``reference`` (the original) adds retain_drop, ``retrained`` the gold
    standard's figures (several paths: retrained seeds, the band), ``depth`` / ``attacks`` the forgetting audit. ``classes`` default: the forgotten ones."""
    from .workflows import evaluate_checkpoint

    return evaluate_checkpoint(
        checkpoint,
        dataset=dataset,
        forget_classes=classes,
        reference=reference,
        retrained=retrained,
        probe=probe,
        depth=depth,
        attacks=attacks,
        seed=seed,
    )


def export(checkpoint: str | Path, out: str | Path, *, audit: bool = False, **config: Any) -> ExportResult:
    """ONNX with the class mask in the graph (compact head, Pad, Gather); ``audit`` adds the features output
    that ``validate(..., audit=...)`` reads; ``config``: fields of :class:`edge_unlearn.export.onnx_export.ExportConfig`."""
    from .export.onnx_export import ExportConfig, export_onnx

    return export_onnx(checkpoint, out, ExportConfig(audit=audit, **config))


def quantize(
    model: str | Path, out: str | Path, precision: str = "int8", *, calib: str | None = None, **config: Any
) -> QuantizeResult:
    """INT8 (calibrated on the retained classes of the ``calib`` dataset spec) or FP16 copy of an exported
    ONNX model. ``target`` defaults to ``auto`` as in the CLI: the layout this CPU runs fastest unless TensorRT
    is named (``target="tensorrt"`` or ``trt`` in the output name); ``config``: fields of
    :class:`edge_unlearn.export.quantize.QuantizeConfig`."""
    from .export.quantize import QuantizeConfig, quantize_model

    config.setdefault("target", "auto")
    return quantize_model(model, out, QuantizeConfig(precision=precision, **config), calib=calib)


def bundle(
    checkpoint: str | Path, out: str | Path, *, dataset: str | None = None, per_class: int | None = None
) -> Bundle:
    """The torch-free evaluation bundle (preprocessed test images, labels, the checkpoint's FP32 logits) that
    :func:`validate` judges a deployed model against; ``per_class`` caps the images of each class."""
    from .export.bundle import make_bundle

    return make_bundle(checkpoint, dataset, out, per_class=per_class)


def validate(
    model: str | Path,
    bundle: str | Path,
    *,
    provider: str | None = None,
    max_forget_acc: float = 0.01,
    max_retain_drop: float = 0.01,
    min_agreement: float = 0.99,
) -> ValidationReport:
    """The gate `edge-unlearn validate` runs: the structural checks of the mask and the accuracy thresholds of
    a ``.onnx``, ``.plan``/``.engine`` or ``.safetensors`` model against ``bundle``. ``bool(report)`` is the
    verdict; ``report.summary()`` the text, ``report.to_json()`` every figure. Torch-free for ONNX and engines."""
    from .deploy.validate import Thresholds, validate_model

    if Path(model).suffix.lower() == ".safetensors":
        from . import torch_runners  # noqa: F401  (registers the torch runner of checkpoints)
    thresholds = Thresholds(max_forget_acc=max_forget_acc, max_retain_drop=max_retain_drop, min_agreement=min_agreement)
    return validate_model(model, bundle, thresholds, provider=provider)
