"""Forgetting figures (DESIGN.md §2): accuracy with and without the mask, retained drop, linear probe."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .core.figures import accuracy
from .data import Dataset, preprocess
from .models import UnlearnableClassifier


@torch.no_grad()
def model_outputs(model: UnlearnableClassifier, images: torch.Tensor, data: Dataset,
                  batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, D], unmasked logits [N, C]) for uint8 images, in eval mode on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
        x = preprocess(images[i:i + batch_size], data.normalization).to(device)
        f = model.features(x)
        feats.append(f.cpu())
        logits.append(model.head(f).cpu())
    return torch.cat(feats), torch.cat(logits)


def tensor_accuracy(pred: torch.Tensor, labels: torch.Tensor, classes: Sequence[int] | None = None) -> float:
    """:func:`edge_unlearn.core.figures.accuracy` on tensors, NaN where no sample of ``classes`` exists."""
    value = accuracy(pred.numpy(), labels.numpy(), classes)
    return float("nan") if value is None else value


def linear_probe_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                          test_labels: np.ndarray, classes: Sequence[int], seed: int = 0) -> float:
    """Accuracy on ``classes`` of a multinomial logistic-regression probe fitted on labelled features of
    all classes (standardised): can the class still be read out of the representation?"""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=1.0, random_state=seed))
    probe.fit(train_features, train_labels)
    pred = probe.predict(test_features)
    value = accuracy(pred, test_labels, classes)
    return float("nan") if value is None else value


def probe_forget_accuracy(model: UnlearnableClassifier, data: Dataset, forget_classes: Sequence[int],
                          train_size: int = 5000, seed: int = 0, test_features: torch.Tensor | None = None) -> float:
    """probe_forget_acc (DESIGN.md §2): can a linear read-out recover the forgotten classes? Fits
    :func:`linear_probe_accuracy` on penultimate features of up to ``train_size`` labelled training images of
    *all* classes (random draw, ``seed``) and returns its accuracy on the forgotten classes' test images. The
    mask plays no part (features only). Compare with ``retrain``, never with chance. ``test_features``: the
    test split's features when the caller already has them."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=gen)[:train_size]
    train_feats, _ = model_outputs(model, data.x_train[idx], data)
    if test_features is None:
        test_features, _ = model_outputs(model, data.x_test, data)
    return linear_probe_accuracy(train_feats.numpy(), data.y_train[idx].numpy(), test_features.numpy(),
                                 data.y_test.numpy(), sorted(set(int(c) for c in forget_classes)), seed=seed)


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


def evaluate_model(model: UnlearnableClassifier, data: Dataset, forget_classes: Sequence[int],
                   probe: bool = True, probe_train_size: int = 5000, seed: int = 0) -> EvalReport:
    """Evaluate on the test split; the probe is fitted on up to ``probe_train_size`` training images."""
    forget = sorted(set(int(c) for c in forget_classes))
    retained = [c for c in range(data.num_classes) if c not in forget]
    feats, logits = model_outputs(model, data.x_test, data)
    masked_pred = logits.masked_fill(~model.class_mask.cpu(), float("-inf")).argmax(1)
    unmasked_pred = logits.argmax(1)
    y = data.y_test
    per_class = [tensor_accuracy(masked_pred, y, [c]) for c in range(data.num_classes)]
    probe_acc = None
    if probe and forget:
        probe_acc = probe_forget_accuracy(model, data, forget, probe_train_size, seed, test_features=feats)
    return EvalReport(
        forget_classes=forget,
        accuracy=accuracy(masked_pred.numpy(), y.numpy()),
        per_class_accuracy=per_class,
        forget_acc=tensor_accuracy(masked_pred, y, forget) if forget else float("nan"),
        forget_acc_unmasked=tensor_accuracy(unmasked_pred, y, forget) if forget else float("nan"),
        retain_acc=tensor_accuracy(masked_pred, y, retained),
        probe_forget_acc=probe_acc,
    )
