"""The one definition of the forgetting figures every part of the project reports (docs/design.md §3), in numpy.

- accuracy: the fraction of samples whose prediction equals the label, optionally over the samples of some
  classes only; None when there is no such sample (a figure that cannot be measured is never a number).
- retain drop: the reference's retained accuracy minus the model's, both measured on the retained classes'
  samples with each model's predictions as deployed (its class mask applied). The reference is the original
  model for unlearning figures, the FP32 model for a deployed (quantized) one. Negative = better than it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def accuracy(pred: Iterable, labels: Iterable, classes: Iterable[int] | None = None) -> float | None:
    """Fraction of ``pred == labels`` (over the samples whose label is in ``classes`` when given); None for none."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"predictions {pred.shape} and labels {labels.shape} differ in shape")
    if classes is not None:
        keep = np.isin(labels, np.asarray(list(classes), dtype=labels.dtype if labels.size else np.int64))
        pred, labels = pred[keep], labels[keep]
    return float(np.mean(pred == labels)) if labels.size else None


def retain_drop(reference_retain_acc: float | None, retain_acc: float | None) -> float | None:
    """Reference retained accuracy minus the model's (see the module docstring); None if either is unknown."""
    if reference_retain_acc is None or retain_acc is None:
        return None
    return float(reference_retain_acc) - float(retain_acc)
