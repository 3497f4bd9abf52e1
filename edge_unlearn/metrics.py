"""Forgetting figures (docs/design.md §3): accuracy with and without the mask, retained drop, linear probe."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .core.figures import accuracy
from .data import Dataset, ImageSource, image_batches, preprocess
from .models import UnlearnableClassifier

#: Most forgotten-class test images the probe is scored on (a seeded random draw above it), so evaluating a
#: large test split keeps no per-image features beyond this.
PROBE_TEST_SIZE = 10000


@torch.no_grad()
def stream_outputs(
    model: UnlearnableClassifier, images: ImageSource | torch.Tensor, data: Dataset, batch_size: int = 512, indices=None
):
    """(features [B, D], unmasked logits [B, C]) batch by batch for uint8 images (a source is read through
    its loader, ``indices`` selecting and ordering the images), in eval mode on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    for batch in image_batches(images, batch_size, indices):
        f = model.features(preprocess(batch, data.normalization).to(device))
        yield f.cpu(), model.head(f).cpu()


def model_outputs(
    model: UnlearnableClassifier, images: ImageSource | torch.Tensor, data: Dataset, batch_size: int = 512, indices=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, D], unmasked logits [N, C]) for uint8 images: :func:`stream_outputs` gathered (the
    images are read batch by batch; only these outputs are kept)."""
    feats, logits = [], []
    for f, z in stream_outputs(model, images, data, batch_size, indices):
        feats.append(f)
        logits.append(z)
    if not feats:
        return torch.empty(0, 0), torch.empty(0, 0)
    return torch.cat(feats), torch.cat(logits)


def probe_test_indices(
    data: Dataset, forget_classes: Sequence[int], seed: int = 0, limit: int = PROBE_TEST_SIZE
) -> torch.Tensor:
    """The test images the probe is scored on: the forgotten classes' (accuracy is only taken on them), at
    most ``limit`` (seeded random draw, sorted)."""
    idx = torch.nonzero(torch.isin(data.y_test, torch.tensor(sorted(set(int(c) for c in forget_classes))))).flatten()
    if len(idx) > limit:
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:limit]].sort().values
    return idx


def tensor_accuracy(pred: torch.Tensor, labels: torch.Tensor, classes: Sequence[int] | None = None) -> float:
    """:func:`edge_unlearn.core.figures.accuracy` on tensors, NaN where no sample of ``classes`` exists."""
    value = accuracy(pred.numpy(), labels.numpy(), classes)
    return float("nan") if value is None else value


def linear_probe_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    classes: Sequence[int],
    seed: int = 0,
) -> float:
    """Accuracy on ``classes`` of a multinomial logistic-regression probe fitted on labelled features of
    all classes (standardised): can the class still be read out of the representation?"""
    pred = fit_linear_probe(train_features, train_labels, seed).predict(test_features)
    value = accuracy(pred, test_labels, classes)
    return float("nan") if value is None else value


def fit_linear_probe(train_features: np.ndarray, train_labels: np.ndarray, seed: int = 0):
    """The probe of :func:`linear_probe_accuracy`, fitted: standardised multinomial logistic regression
    (predictions are per row, so test features can be scored batch by batch)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=1.0, random_state=seed))
    probe.fit(train_features, train_labels)
    return probe


def probe_train_indices(data: Dataset, train_size: int, seed: int) -> torch.Tensor:
    """The probe's training draw: up to ``train_size`` random training images of all classes (``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(len(data.y_train), generator=gen)[:train_size]


def probe_forget_accuracy(
    model: UnlearnableClassifier, data: Dataset, forget_classes: Sequence[int], train_size: int = 5000, seed: int = 0
) -> float:
    """probe_forget_acc (docs/design.md §3): can a linear read-out recover the forgotten classes? Fits
    :func:`linear_probe_accuracy` on penultimate features of up to ``train_size`` labelled training images of
    *all* classes (random draw, ``seed``) and returns its accuracy on the forgotten classes' test images. The
    mask plays no part (features only). Compare with ``retrain``, never with chance. It is scored on every
    forgotten-class test image, streamed (features are predicted batch by batch, never gathered).
    :func:`probe_forget_accuracy_by_depth` is the same probe after every block (its ``penultimate`` entry
    equals this figure up to :data:`PROBE_TEST_SIZE` forgotten-class test images)."""
    forget = sorted(set(int(c) for c in forget_classes))
    probe = fit_forget_probe(model, data, train_size, seed)
    test_idx = torch.nonzero(torch.isin(data.y_test, torch.tensor(forget))).flatten()
    preds = [probe.predict(f.numpy()) for f, _ in stream_outputs(model, data.x_test, data, indices=test_idx)]
    value = accuracy(np.concatenate(preds) if preds else np.empty(0, np.int64), data.y_test[test_idx].numpy(), forget)
    return float("nan") if value is None else value


def fit_forget_probe(model: UnlearnableClassifier, data: Dataset, train_size: int = 5000, seed: int = 0):
    """The probe of :func:`probe_forget_accuracy`, fitted on the penultimate features of its training draw."""
    idx = probe_train_indices(data, train_size, seed)
    train_feats, _ = model_outputs(model, data.x_train, data, indices=idx)
    return fit_linear_probe(train_feats.numpy(), data.y_train[idx].numpy(), seed)


# ---------------------------------------------------------------------------------------------
# the probe at depth (issue #15)

#: Name of the last depth: the backbone's output, the head's input.
PENULTIMATE = "penultimate"
#: Name of the output "depth": the logits of the classes the model still predicts, what a deployed (masked)
#: model returns; a probe there is what an auditor querying it as a black box can read.
RETAINED_LOGITS = "retained_logits"


def _is_map(out: Any) -> bool:
    """A feature map [N, C, H, W]."""
    return isinstance(out, torch.Tensor) and out.dim() == 4


@torch.no_grad()
def _block_ends(
    container: nn.Module, probe_input: torch.Tensor, run: nn.Module, prefix: str
) -> list[tuple[str, nn.Module]]:
    """Children of ``container`` that end a block: a child whose output is a feature map and whose successor
    (in execution order) outputs no map or a map of another channel count. Found with forward hooks on one
    dry run of ``run``, so it follows the real execution order, not the registration order."""
    calls: list[tuple[str, nn.Module, Any]] = []
    seen: set[int] = set()
    handles = []
    for name, child in container.named_children():

        def hook(module, _args, out, name=name):
            if id(module) not in seen:  # a module called twice counts at its first call
                seen.add(id(module))
                calls.append((name, module, tuple(out.shape) if _is_map(out) else None))

        handles.append(child.register_forward_hook(hook))
    try:
        run(probe_input)
    finally:
        for handle in handles:
            handle.remove()
    ends = []
    for i, (name, module, shape) in enumerate(calls):
        if shape is None:
            continue
        nxt = calls[i + 1][2] if i + 1 < len(calls) else None
        if nxt is None or nxt[1] != shape[1]:
            ends.append((prefix + name, module))
    return ends


def probe_blocks(model: UnlearnableClassifier, input_shape: Sequence[int]) -> list[tuple[str, nn.Module]]:
    """The backbone's blocks whose outputs the depth probe reads, in execution order, as (name, module).

    ResNets (``layer1``..``layer4`` attributes): those four stages. Any other backbone: its top-level
    children that output a feature map and end a run of equal channel count (lenet: each conv block, ending
    at its max-pool); when that finds at most one block, the rule is applied inside the child with the most
    sub-modules (VGG's or MobileNet's ``features``). The penultimate features are not a block:
    :func:`probe_forget_accuracy_by_depth` adds them as :data:`PENULTIMATE`."""
    backbone = model.backbone
    stages = [(f"layer{i}", getattr(backbone, f"layer{i}", None)) for i in range(1, 5)]
    if all(isinstance(m, nn.Module) for _, m in stages):
        return stages
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        probe_input = torch.zeros(1, *input_shape, device=device)
        ends = _block_ends(backbone, probe_input, backbone, "")
        if len(ends) <= 1:  # one container holds the maps (VGG / MobileNet ``features``): look inside it
            name, container = max(backbone.named_children(), key=lambda item: len(list(item[1].children())))
            inner = _block_ends(container, probe_input, backbone, name + ".")
            ends = inner if len(inner) > 1 else ends
    finally:
        model.train(was_training)
    # purely numeric names (children of an nn.Sequential) read better with the container's name
    return [(name if not name.split(".")[0].isdigit() else f"backbone.{name}", module) for name, module in ends]


def retained_logit_columns(model: UnlearnableClassifier, forget_classes: Sequence[int]) -> list[int]:
    """The logits the :data:`RETAINED_LOGITS` probe reads: classes neither in ``forget_classes`` nor masked."""
    return [c for c in range(model.num_classes) if c not in forget_classes and c not in model.forgotten_classes]


@torch.no_grad()
def depth_features(
    model: UnlearnableClassifier,
    images: ImageSource | torch.Tensor,
    data: Dataset,
    blocks: Sequence[tuple[str, nn.Module]],
    batch_size: int = 256,
    indices=None,
) -> dict[str, torch.Tensor]:
    """Global-average-pooled outputs [N, C] of each block (forward hooks) and the penultimate features
    [N, D], for uint8 images (``indices``: those of a source), in eval mode; keys in depth order,
    :data:`PENULTIMATE` last."""
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {name: [] for name, _ in blocks}
    out[PENULTIMATE] = []
    handles = []
    for name, module in blocks:

        def hook(_module, _args, act, name=name):
            # pool at once: a later in-place op must not change what was captured
            out[name].append(act.mean(dim=(2, 3)).cpu() if act.dim() == 4 else act.flatten(1).cpu())

        handles.append(module.register_forward_hook(hook))
    try:
        for batch in image_batches(images, batch_size, indices):
            x = preprocess(batch, data.normalization).to(device)
            out[PENULTIMATE].append(model.features(x).cpu())
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in out.items()}


def probe_forget_accuracy_by_depth(
    model: UnlearnableClassifier,
    data: Dataset,
    forget_classes: Sequence[int],
    train_size: int = 5000,
    seed: int = 0,
    blocks: Sequence[tuple[str, nn.Module]] | None = None,
) -> dict[str, float]:
    """The linear probe of :func:`probe_forget_accuracy` (same draw, same probe) fitted on the
    average-pooled activations after every block of :func:`probe_blocks`, on the penultimate features and on
    the logits of the classes the model still predicts (:data:`RETAINED_LOGITS`: neither in
    ``forget_classes`` nor masked): {depth name: accuracy on the forgotten classes' test images}, in depth
    order. Forgetting that only misaligns the head leaves the earlier figures where the original model had
    them; a retrained model gives the reference at each depth. The retained-logit figure is what the deployed
    model's outputs give away; a method that keeps the original's retained responses to the forgotten class's
    images keeps it too."""
    forget = sorted(set(int(c) for c in forget_classes))
    blocks = probe_blocks(model, data.input_shape) if blocks is None else blocks
    idx = probe_train_indices(data, train_size, seed)
    test_idx = probe_test_indices(data, forget, seed)
    train = depth_features(model, data.x_train, data, blocks, indices=idx)
    test = depth_features(model, data.x_test, data, blocks, indices=test_idx)
    kept = retained_logit_columns(model, forget)
    if kept:
        device = next(model.parameters()).device
        with torch.no_grad():
            for feats in (train, test):
                feats[RETAINED_LOGITS] = model.head(feats[PENULTIMATE].to(device)).cpu()[:, kept]
    y_train, y_test = data.y_train[idx].numpy(), data.y_test[test_idx].numpy()
    return {
        name: linear_probe_accuracy(train[name].numpy(), y_train, test[name].numpy(), y_test, forget, seed=seed)
        for name in train
    }


@dataclass(frozen=True)
class EvalReport:
    """Figures of one model on a dataset's test split, for one set of forgotten classes."""

    forget_classes: list[int]
    accuracy: float
    per_class_accuracy: list[float]
    forget_acc: float
    forget_acc_unmasked: float
    retain_acc: float
    probe_forget_acc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_model(
    model: UnlearnableClassifier,
    data: Dataset,
    forget_classes: Sequence[int],
    probe: bool = True,
    probe_train_size: int = 5000,
    seed: int = 0,
) -> EvalReport:
    """Evaluate on the test split, streamed (only the predictions and the probe's bounded features are
    kept); the probe is fitted on up to ``probe_train_size`` training images."""
    forget = sorted(set(int(c) for c in forget_classes))
    retained = [c for c in range(data.num_classes) if c not in forget]
    mask = ~model.class_mask.cpu()
    y = data.y_test
    probe_fit = fit_forget_probe(model, data, probe_train_size, seed) if probe and forget else None
    in_forget = torch.isin(y, torch.tensor(forget, dtype=y.dtype))
    masked_parts, unmasked_parts, probe_preds, start = [], [], [], 0
    for f, logits in stream_outputs(model, data.x_test, data):  # one pass: predictions and the probe's scores
        masked_parts.append(logits.masked_fill(mask, float("-inf")).argmax(1))
        unmasked_parts.append(logits.argmax(1))
        keep = in_forget[start : start + len(f)]
        if probe_fit is not None and keep.any():
            probe_preds.append(probe_fit.predict(f[keep].numpy()))
        start += len(f)
    masked_pred, unmasked_pred = torch.cat(masked_parts), torch.cat(unmasked_parts)
    per_class = [tensor_accuracy(masked_pred, y, [c]) for c in range(data.num_classes)]
    probe_acc = None
    if probe_fit is not None:
        value = accuracy(
            np.concatenate(probe_preds) if probe_preds else np.empty(0, np.int64), y[in_forget].numpy(), forget
        )
        probe_acc = float("nan") if value is None else value
    return EvalReport(
        forget_classes=forget,
        accuracy=accuracy(masked_pred.numpy(), y.numpy()),
        per_class_accuracy=per_class,
        forget_acc=tensor_accuracy(masked_pred, y, forget) if forget else float("nan"),
        forget_acc_unmasked=tensor_accuracy(unmasked_pred, y, forget) if forget else float("nan"),
        retain_acc=tensor_accuracy(masked_pred, y, retained),
        probe_forget_acc=probe_acc,
    )
