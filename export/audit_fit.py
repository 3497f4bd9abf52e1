"""Host side of the feature-level audit (``edge-unlearn bundle --audit``): torch + scikit-learn, never on the device.

Fits the linear probe on the checkpoint's FP32 penultimate features (the draw and pipeline of
:func:`edge_unlearn.metrics.probe_forget_accuracy`) and the output probe on its FP32 logits of the retained classes
(the draw and pipeline of :data:`edge_unlearn.metrics.RETAINED_LOGITS`), picks the k forget samples of the prototype attack
(:func:`edge_unlearn.data.take_samples`, as :func:`edge_unlearn.attacks.prototype_relearn_attack`), and computes
the FP32 reference figures with the device's own numpy code (:func:`edge_unlearn.deploy.audit.audit_figures`).
With a retrained model (``--retrained``) the thresholds are its figures plus a margin; with the original model
(``--reference``) the weight-step report of :func:`edge_unlearn.deploy.audit.weight_step_report` is added.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_unlearn.checkpoint import Checkpoint, load_checkpoint
from edge_unlearn.data import Dataset, preprocess, take_samples
from edge_unlearn.deploy.audit import (
    PROBE_MARGIN,
    PROTOTYPE_MARGIN,
    AuditConfig,
    AuditData,
    LinearProbe,
    audit_arrays,
    audit_figures,
    retained_log_softmax,
    weight_step_report,
)
from edge_unlearn.deploy.onnx_meta import MASK_VALUE
from edge_unlearn.errors import UsageError
from edge_unlearn.metrics import fit_linear_probe, model_outputs, probe_train_indices


@torch.no_grad()
def _features(model, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    model.eval()
    return torch.cat([model.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def fit_probes(model, data: Dataset, config: AuditConfig, columns: list[int]) -> tuple[LinearProbe, LinearProbe | None]:
    """:func:`edge_unlearn.metrics.fit_linear_probe` (StandardScaler + LogisticRegression(max_iter=500, C=1)) on
    the FP32 penultimate features of the probe's training draw (all classes: retained and forgotten), and on
    their logits ``columns`` (the retained classes; no output probe without any), exported as arrays."""
    idx = probe_train_indices(data, config.probe_train_size, config.seed)
    feats, _ = model_outputs(model, data.x_train[idx], data)
    labels = data.y_train[idx].numpy()
    probe = _as_arrays(fit_linear_probe(feats.numpy(), labels, config.seed))
    if not columns:
        return probe, None
    with torch.no_grad():
        logits = model.head(feats).numpy()[:, columns]
    return probe, _as_arrays(fit_linear_probe(logits, labels, config.seed))


def _as_arrays(pipe) -> LinearProbe:
    scaler, clf = pipe[0], pipe[1]
    return LinearProbe(
        scaler.mean_.astype(np.float64),
        scaler.scale_.astype(np.float64),
        clf.coef_.astype(np.float64),
        clf.intercept_.astype(np.float64),
        clf.classes_.astype(np.int64),
    )


def model_audit(
    model,
    data: Dataset,
    x: torch.Tensor,
    labels: np.ndarray,
    config: AuditConfig,
    proto_x: torch.Tensor,
    proto_y: np.ndarray,
) -> tuple[AuditData, dict[str, Any]]:
    """The audit data of one FP32 model on the bundle's inputs ``x`` and its FP32 figures."""
    forgotten = sorted(model.forgotten_classes)
    w = model.head.weight.detach().double()
    b = model.head.bias.detach().double() if model.head.bias is not None else torch.zeros(w.shape[0]).double()
    retained_rows = [c for c in range(w.shape[0]) if c not in forgotten]
    row_norm = float(w[retained_rows].norm(dim=1).mean()) if retained_rows else 1.0
    feats = _features(model, x)
    with torch.no_grad():
        logits = model.head(torch.from_numpy(feats)).numpy()
    logits[:, forgotten] = MASK_VALUE  # the bundle's reference logits (the model as deployed)
    probe, logit_probe = fit_probes(model, data, config, retained_rows)
    data_ = AuditData(
        probe,
        proto_x.numpy().astype(np.float32),
        proto_y.astype(np.int64),
        w[forgotten].numpy(),
        b[forgotten].numpy(),
        feats.astype(np.float32),
        _features(model, proto_x).astype(np.float32),
        {"config": config.to_json(), "row_norm": row_norm},
        logit_probe,
        np.asarray(retained_rows, np.int64) if logit_probe is not None else None,
    )
    figures = audit_figures(data_.features, logits, data_.proto_features, labels, forgotten, data_)
    return data_, figures


def audit_builder(
    config: AuditConfig = AuditConfig(),
    retrained: str | Path | Sequence[str | Path] | None = None,
    reference: str | Path | None = None,
) -> Callable[..., dict[str, np.ndarray]]:
    """The ``audit`` hook of :func:`edge_unlearn.export.bundle.make_bundle`: (checkpoint, dataset, bundle
    inputs, labels, reference logits) -> the bundle's audit arrays. ``retrained``: one or more models retrained
    without the forgotten classes (different seeds: the retrained band); the probe thresholds are the band's
    highest figure + a margin, and their answers on the forgotten classes' images are stored for the output
    checks (:func:`edge_unlearn.deploy.audit.output_band_checks`)."""
    if config.k < 1:
        raise UsageError(f"--audit-samples must be at least 1, got {config.k}")
    paths = [retrained] if isinstance(retrained, (str, Path)) else list(retrained or [])
    golds = [load_checkpoint(p) for p in paths]
    if len({g.sha256 for g in golds}) != len(golds):
        raise UsageError("--retrained names the same model twice; give retrained models of different seeds")
    original = load_checkpoint(reference) if reference else None

    def build(
        ckpt: Checkpoint, data: Dataset, x: torch.Tensor, labels: np.ndarray, reference_logits: np.ndarray
    ) -> dict[str, np.ndarray]:
        model = ckpt.model.eval()
        forgotten = sorted(model.forgotten_classes)
        for other, option in (*((g, "--retrained") for g in golds), (original, "--reference")):
            if other is not None and (
                other.meta.num_classes != ckpt.meta.num_classes
                or tuple(other.meta.input_shape) != tuple(ckpt.meta.input_shape)
                or other.meta.arch != ckpt.meta.arch
            ):
                raise UsageError(
                    f"{option} is a {other.meta.arch} with {other.meta.num_classes} classes and images "
                    f"{tuple(other.meta.input_shape)}; the checkpoint is a {ckpt.meta.arch} with "
                    f"{ckpt.meta.num_classes} classes: give the same architecture and dataset"
                )
        for gold in golds:
            if sorted(gold.model.forgotten_classes) != forgotten:
                raise UsageError(
                    f"--retrained forgot classes {sorted(gold.model.forgotten_classes)} but the checkpoint "
                    f"forgot {forgotten}; retrain without the same classes (`edge-unlearn retrain`)"
                )
        if original is not None and original.sha256 not in _lineage(ckpt):
            raise UsageError(
                "--reference is not an ancestor of the checkpoint (its sha256 is not in the "
                "checkpoint's lineage); give the original the checkpoint was unlearned from"
            )
        proto_images, proto_y = take_samples(data, forgotten, config.k, seed=config.seed)
        proto_x = preprocess(proto_images, ckpt.meta.normalization)
        audit, fp32 = model_audit(model, data, x, labels, config, proto_x, proto_y.numpy())
        if not np.allclose(_as_deployed(fp32, reference_logits, audit, labels, forgotten), 0.0):
            raise UsageError(
                "the bundle's reference logits do not match the checkpoint's features; re-create the bundle"
            )
        info: dict[str, Any] = {**audit.info, "fp32": _plain(fp32), "thresholds": {"sources": {}}}
        band = None
        if golds:
            figs = [model_audit(g.model.eval(), data, x, labels, config, proto_x, proto_y.numpy())[1] for g in golds]
            info["retrained"] = {"sha256": golds[0].sha256, "checkpoint": str(paths[0]), **_plain(figs[0])}
            if len(golds) > 1:
                info["retrained_band"] = [
                    {"sha256": g.sha256, "checkpoint": str(p), **_plain(f)} for g, p, f in zip(golds, paths, figs)
                ]
            for name, key, margin in (
                ("max_probe", "probe_forget_acc", PROBE_MARGIN),
                ("max_prototype", "prototype_forget_acc", PROTOTYPE_MARGIN),
                ("max_logit_probe", "logit_probe_forget_acc", PROBE_MARGIN),
            ):
                values = [(float(f[key]), g.sha256) for f, g in zip(figs, golds) if f.get(key) is not None]
                if values:
                    top, sha = max(values)
                    info["thresholds"][name] = min(1.0, top + margin)
                    info["thresholds"]["sources"][name] = f"retrained model {sha[:12]}…: {top:.4f} + {margin}"
            if audit.logit_columns is not None:
                rows = np.isin(labels, forgotten)
                band = np.stack([_retained_answers(g.model.eval(), x[torch.from_numpy(rows)], audit) for g in golds])
                info["output_band"] = {"images": int(rows.sum()), "retrained_sha256": [g.sha256 for g in golds]}
        if original is not None:
            info["weight_steps"] = weight_step_report(
                _state(original.model), _state(model), _head_rows(model), forgotten
            )
        return audit_arrays(replace(audit, info=info, retrained_log_softmax=band))

    return build


def _retained_answers(model, x: torch.Tensor, audit: AuditData) -> np.ndarray:
    """A model's log-softmax over the retained classes on ``x`` (float32, as stored in the bundle)."""
    with torch.no_grad():
        logits = model.head(torch.from_numpy(_features(model, x))).numpy()
    return retained_log_softmax(logits, audit.logit_columns).astype(np.float32)


def _lineage(ckpt: Checkpoint) -> set[str]:
    """sha256 of every ancestor the checkpoint records (its parent and each unlearning step's parent)."""
    found = {str(s.get("parent_sha256")) for s in ckpt.meta.lineage if isinstance(s, dict) and s.get("parent_sha256")}
    if ckpt.meta.parent_sha256:
        found.add(str(ckpt.meta.parent_sha256))
    return found


def _as_deployed(
    fp32: dict[str, Any], reference_logits: np.ndarray, audit: AuditData, labels: np.ndarray, forgotten: list[int]
) -> float:
    """0.0 when the figures recomputed from the bundle's own reference logits equal ``fp32`` (same model)."""
    again = audit_figures(audit.features, reference_logits, audit.proto_features, labels, forgotten, audit)
    return float(abs((again["prototype_forget_acc"] or 0.0) - (fp32["prototype_forget_acc"] or 0.0)))


def _plain(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items()}


def _state(model) -> dict[str, np.ndarray]:
    """The model's parameters (buffers such as class statistics are not in the deployed file)."""
    return {k: v.detach().cpu().double().numpy() for k, v in model.named_parameters()}


def _head_rows(model) -> dict[str, str]:
    """State-dict names of the head's tensors (their forgotten rows are not exported)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for attr in ("weight", "bias"):
        tensor = getattr(model.head, attr, None)
        if tensor is not None and id(tensor) in names:
            out[names[id(tensor)]] = attr
    return out
