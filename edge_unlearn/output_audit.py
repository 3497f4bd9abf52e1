"""What a model's answers on a forgotten class give away, judged against retrained models (issue #28).

Everything here reads the forgotten classes' *test* images through the deployed model (class mask applied), as
its users do: the softmax over the retained classes. Against one or more retrained references (the gold
standard, never trained on the forgotten classes) it reports, per image and averaged:

- ``tv``: total-variation distance between this model's and a retrained model's retained softmax;
- ``kl``: KL(retrained ‖ this model);
- ``auc``: a distinguisher in the spirit of CMIA (Ebrahimpour-Boroojeny et al., ICML 2026): a logistic regression
  fitted to tell this model's retained log-softmax vectors from the retrained model's on the same images,
  cross-validated ROC AUC with each image's two vectors in the same fold (0.5 = indistinguishable);
- ``entropy`` / ``confidence``: mean predictive entropy (nats) and mean top probability (no reference needed).

A distance between two *retrained* models of different seeds is the floor no method can beat: compare with it
(:func:`output_figures` on a retrained model against another).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .data import Dataset
from .errors import UsageError
from .metrics import model_outputs
from .models import UnlearnableClassifier

#: the figures :func:`output_figures` returns, in table order
OUTPUT_FIGURES = ("entropy", "confidence", "tv", "kl", "auc")


def retained_columns(num_classes: int, forget_classes: Sequence[int]) -> list[int]:
    """The classes a forgotten-class image can be answered with: every class but the forgotten ones."""
    forget = set(int(c) for c in forget_classes)
    return [c for c in range(num_classes) if c not in forget]


@torch.no_grad()
def forget_test_log_softmax(
    model: UnlearnableClassifier, data: Dataset, forget_classes: Sequence[int], max_images: int | None = None
) -> torch.Tensor:
    """Log-softmax over the retained classes [N, R] of the forgotten classes' test images (first ``max_images``)."""
    forget = torch.tensor(sorted(set(int(c) for c in forget_classes)))
    idx = torch.nonzero(torch.isin(data.y_test, forget)).flatten()
    if len(idx) == 0:
        raise UsageError("the test split has no image of the forgotten classes; output figures need some")
    if max_images is not None:
        idx = idx[:max_images]
    _, logits = model_outputs(model, data.x_test, data, indices=idx)
    cols = retained_columns(model.num_classes, forget_classes)
    return torch.log_softmax(logits[:, cols].double(), dim=1)


def entropy_of(log_p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) per row of a log-probability matrix."""
    return -(log_p.exp() * log_p).sum(1)


def total_variation(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """0.5 · ‖p − q‖₁ per row."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(1)


def kl_divergence(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ p) per row."""
    return (log_q.exp() * (log_q - log_p)).sum(1)


def distinguisher_auc(log_p: np.ndarray, log_q: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a standardised logistic regression telling rows of ``log_p`` (label 0) from rows
    of ``log_q`` (label 1); row i of both comes from the same image and stays in one fold (no image is both
    trained on and scored). 0.5: the two models' answers cannot be told apart."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(log_p)
    if n < 2 * folds:
        raise UsageError(f"the distinguisher needs at least {2 * folds} forgotten-class test images, got {n}")
    x = np.concatenate([log_p, log_q]).astype(np.float64)
    y = np.concatenate([np.zeros(n), np.ones(n)])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    order = np.random.default_rng(seed).permutation(n)  # GroupKFold is deterministic in group order: shuffle groups
    groups = order[groups]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=1.0))
    scores = cross_val_predict(clf, x, y, groups=groups, cv=GroupKFold(folds), method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def compare_outputs(log_p: torch.Tensor, references: Sequence[torch.Tensor], seed: int = 0) -> dict[str, float]:
    """:data:`OUTPUT_FIGURES` of one model's retained log-softmax ``log_p`` against each reference's (same images,
    same order), averaged over the references; without references only entropy and confidence."""
    out = {"entropy": float(entropy_of(log_p).mean()), "confidence": float(log_p.exp().max(1).values.mean())}
    if references:
        out["tv"] = float(np.mean([float(total_variation(log_p, q).mean()) for q in references]))
        out["kl"] = float(np.mean([float(kl_divergence(q, log_p).mean()) for q in references]))
        out["auc"] = float(np.mean([distinguisher_auc(log_p.numpy(), q.numpy(), seed=seed) for q in references]))
    return out


def output_figures(
    model: UnlearnableClassifier,
    data: Dataset,
    forget_classes: Sequence[int],
    references: Sequence[UnlearnableClassifier] = (),
    seed: int = 0,
) -> dict[str, float]:
    """:data:`OUTPUT_FIGURES` of ``model`` on the forgotten classes' test images against retrained ``references``."""
    log_p = forget_test_log_softmax(model, data, forget_classes)
    refs = [forget_test_log_softmax(r, data, forget_classes) for r in references]
    return compare_outputs(log_p, refs, seed)
