"""NHLE: negative-hot label encoding + class weight masking (Wang, Bie, Jing, Zhi, 2026), config version 6.

Only the paper's abstract is public; this is our reading of it (docs/design.md §2; why each choice, measured
against retraining: docs/nhle.md). From a few forget samples and no retained data, in seconds:

1. **Feature-level class weight masking** (closed form, :func:`retarget_forget_features`). In the input space of
   the backbone's last learnable layer, a rank-one edit sends the forget samples' mean input to ``target_scale``
   times the recorded mean of the nearest retained class, while every retained class mean (class statistics
   recorded at training time) maps exactly as before (:func:`retarget_layer`). The forget samples then stop
   forming a cluster of their own (a prototype written into the head cannot find them again) and are answered
   like an unfamiliar image of a similar class, with about a retrained model's confidence. Without class
   statistics (a model imported without data) the data-free estimate runs instead (``data_free="batchnorm"``:
   :func:`batchnorm_feature_mean`, then :func:`project_forget_directions`).
2. **The head step** (:func:`retarget_head`, ``head_scale``; needs the head's input class statistics). The same
   rank-one edit on the head: the forget samples' mean penultimate features get the retained logits of a point
   between the retained classes' recorded penultimate means, mixed by the model's own answer on the forget
   samples, at most ``head_scale`` of the way out and never sharper than ``head_entropy_ratio`` (3/4) of the
   masked original's entropy on them; every retained class's recorded mean keeps its logits exactly. The
   retained logits stop reading the class (the retained-logit probe) and answer it with the model's own
   confusion, a little more surely than the masked original, as a retrained model does.
3. **Negative-hot label encoding.** Each forget sample's target is −1 on the forgotten classes and the model's
   own distribution over the retained classes; the bounded loss ``−Σ t_r log p_r − log(1 − p_forgotten)``
   trains only the forgotten classes' head rows, so no retained logit moves.
4. **Decision-level class weight masking.** :func:`edge_unlearn.unlearn.forget` sets the class mask: no input can
   ever predict a forgotten class. The forgotten classes' statistics are erased from the model.

Versions 1–3 had 23 parameters; the ones that measured no benefit are gone (docs/nhle.md). Older records still
load: :meth:`NHLEConfig.from_json` migrates a version 1–5 record whose parameters version 6 can honour (version
5 kept the answer no sharper than before the head step; version 4 ran the head step only when asked, toward the
nearest class).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import UsageError
from ..models import UnlearnableClassifier, pool_edit_input
from . import ForgetSet, RetainSet, register_method

DATA_FREE = ("batchnorm", "none")
#: where the head step sends the forget samples' mean penultimate features (a fraction ``head_scale`` of it):
#: the retained classes' recorded means mixed by the model's own mean answer on the forget samples (a retrained
#: model's confusion, TREW-like), the nearest retained class's recorded mean (version 4), or no head step
HEAD_TARGETS = ("mixture", "nearest", "none")
NHLE_CONFIG_VERSION = 6
#: version 1–3 parameters and the only value versions 4–6 implement for each (a record with another value
#: cannot be reproduced by this edge-unlearn: :meth:`NHLEConfig.from_json` says so)
LEGACY_PARAMETERS: dict[str, Any] = {
    "neg_value": 1.0,
    "retain_target": "own",
    "temperature": 1.0,
    "scope": "forgotten_rows",
    "project": True,
    "alpha": 1.0,
    "orthogonalize": True,
    "feature_target": "nearest_class",
    "feature_depth": "edit_layer",
    "feature_metric": "euclidean",
    "pair_weight": 0.5,
    "backbone_step": "none",
    "backbone_objective": "nhle",
    "backbone_steps": 40,
    "backbone_lr": 1e-3,
    "anchor_weight": 10.0,
    "anchors_per_class": 16,
    "anchor_steps": 100,
}
#: what a version 1–2 record implies for parameters it did not write (their defaults then)
LEGACY_DEFAULTS: dict[int, dict[str, Any]] = {
    1: {"feature_target": "retained_mean", "target_scale": 1.0},
    2: {"feature_target": "nearest_pair", "target_scale": 1.0},
    3: {"target_scale": 0.25},
}


@dataclass(frozen=True)
class NHLEConfig:
    """NHLE's parameters (version 6). ``steps`` Adam steps at ``lr`` train the forgotten classes' head rows on
    the negative-hot targets; ``target_scale`` is where the feature step sends the forget samples' mean: that
    fraction of the nearest retained class's recorded mean (1: onto the class mean — confident; smaller: less
    confident); ``entropy_ratio`` (opt-in) sets that fraction per request instead: the one at which the forget
    samples' mean entropy over the retained classes is this ratio of the masked original's (0.7: a retrained
    model's sharpness on digits; fashion measured mixed, docs/nhle.md; the head step then keeps that sharpness,
    version 5's limit, in place of ``head_entropy_ratio``); ``data_free``: the estimate used when the
    model has no class statistics (``none``: skip the feature step); ``head_scale``: how far out the head step
    sends the forget samples' mean penultimate features, as a fraction of its target; ``head_target``: that
    target, ``mixture`` (the retained classes' penultimate means mixed by the model's own answer, the scale
    lowered until the answer is no surer than ``head_entropy_ratio`` allows), ``nearest`` (the nearest retained class's
    mean, version 4's opt-in) or ``none`` (no head step); ``head_entropy_ratio``: how sure the mixture's answer
    may become, as a share of the masked original's mean entropy on the forget samples (a retrained model answers
    a forgotten class more surely than the masked original on digits and fashion; ``None``: no surer than before
    the head step, version 5). Defaults measured against retrained models (docs/nhle.md)."""

    steps: int = 20
    lr: float = 0.05
    target_scale: float = 0.35
    data_free: str = "batchnorm"
    entropy_ratio: float | None = None
    head_scale: float = 0.9
    head_target: str = "mixture"
    head_entropy_ratio: float | None = 0.75
    version: int = NHLE_CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.version != NHLE_CONFIG_VERSION:
            raise UsageError(
                f"nhle config version {self.version} is not supported here (this edge-unlearn writes version "
                f"{NHLE_CONFIG_VERSION}); drop the version parameter"
            )
        if self.data_free not in DATA_FREE:
            raise UsageError(f"nhle data_free must be one of {', '.join(DATA_FREE)}, got {self.data_free!r}")
        if self.steps < 0 or not self.lr > 0:
            raise UsageError(f"nhle needs steps >= 0 and lr > 0, got steps={self.steps}, lr={self.lr}")
        if self.entropy_ratio is not None and not 0 < self.entropy_ratio <= 2:
            raise UsageError(
                f"nhle entropy_ratio must be in (0, 2] (of the masked original's entropy on the forget samples), "
                f"got {self.entropy_ratio}"
            )
        if not 0 < self.head_scale <= 1:
            raise UsageError(
                f"nhle head_scale must be in (0, 1] (1: the head step's target itself), got {self.head_scale}"
            )
        if self.head_entropy_ratio is not None and not 0 < self.head_entropy_ratio <= 2:
            raise UsageError(
                f"nhle head_entropy_ratio must be in (0, 2] (of the masked original's entropy on the forget "
                f"samples) or null, got {self.head_entropy_ratio}"
            )
        if self.head_target not in HEAD_TARGETS:
            raise UsageError(f"nhle head_target must be one of {', '.join(HEAD_TARGETS)}, got {self.head_target!r}")
        if not 0 < self.target_scale <= 1:
            raise UsageError(
                f"nhle target_scale must be in (0, 1] (1: the nearest class mean itself), got {self.target_scale}"
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> NHLEConfig:
        """A config from a lineage record of any version: version 5 keeps its head step's limit (no surer than
        before the step); version 4 keeps its head step (off unless recorded, toward the nearest class); versions
        1–3 are migrated when every parameter version 4 dropped holds the value version 4 implements; otherwise
        one line says which cannot be."""
        version = int(record.get("version", 1))
        fields = {k: record[k] for k in cls.__dataclass_fields__ if k in record and k != "version"}
        if version == NHLE_CONFIG_VERSION:
            return cls(**fields)
        if version == 5:  # its head step: no surer than before the step
            return cls(**{**fields, "head_entropy_ratio": None})
        if version == 4:  # its head step: off unless recorded, then toward the nearest class
            scale = fields.pop("head_scale", None)
            head = {"head_target": "none"} if scale is None else {"head_target": "nearest", "head_scale": scale}
            return cls(**{**fields, **head, "head_entropy_ratio": None})
        if not 1 <= version < NHLE_CONFIG_VERSION:
            raise UsageError(f"nhle config version {version} is unknown to this edge-unlearn")
        record = {**LEGACY_DEFAULTS[version], **record}
        differs = [f"{k}={record[k]!r}" for k, v in LEGACY_PARAMETERS.items() if k in record and record[k] != v]
        if differs:
            raise UsageError(
                f"this nhle version {version} record used {', '.join(differs)}, which version "
                f"{NHLE_CONFIG_VERSION} no longer implements (docs/nhle.md); rerun with the defaults"
            )
        return cls(
            steps=record.get("steps", 20),
            lr=record.get("lr", 0.05),
            target_scale=record["target_scale"],
            data_free=record.get("data_free", "batchnorm"),
            head_target="none",
            head_entropy_ratio=None,
        )


def _following_batchnorm(model: nn.Module, layer: nn.Module) -> nn.BatchNorm2d | None:
    """torchvision blocks name a conv's BatchNorm after it (conv2 -> bn2); used to fold a bias shift."""
    modules = dict(model.named_modules())
    name = next((n for n, m in modules.items() if m is layer), "")
    parent, _, leaf = name.rpartition(".")
    if leaf.startswith("conv"):
        bn = modules.get(f"{parent}.bn{leaf[4:]}" if parent else f"bn{leaf[4:]}")
        if isinstance(bn, nn.BatchNorm2d):
            return bn
    return None


@torch.no_grad()
def batchnorm_feature_mean(
    model: UnlearnableClassifier, example: torch.Tensor, samples: int = 64, seed: int = 0
) -> torch.Tensor | None:
    """Data-free estimate of the mean input of the edit layer over the training distribution [D].

    The last BatchNorm that runs before the edit layer has, on training data, outputs of mean ``beta`` and
    std ``|gamma|`` per channel; its output is replaced by samples of N(beta, gamma^2) and carried through
    the layers in between (activation, pooling, …). None when no BatchNorm runs before the edit layer."""
    layer = model.edit_layer()
    order: list[nn.Module] = []
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [m.register_forward_hook(lambda mod, _a, _o: order.append(mod)) for m in norms]
    handles.append(layer.register_forward_pre_hook(lambda mod, _a: order.append(mod)))
    was_training = model.training
    model.eval()
    try:
        model.backbone(example[:1])
    finally:
        for h in handles:
            h.remove()
    before = order[: order.index(layer)] if layer in order else []
    bn = next((m for m in reversed(before) if isinstance(m, nn.modules.batchnorm._BatchNorm)), None)
    if bn is None or not bn.affine:
        model.train(was_training)
        return None
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def sample(_mod, _args, out: torch.Tensor) -> torch.Tensor:
        shape = (samples, *out.shape[1:])
        noise = torch.randn(shape, generator=gen).to(out.device, out.dtype)
        view = (1, -1, *([1] * (out.dim() - 2)))
        return bn.bias.view(view) + bn.weight.abs().view(view) * noise

    captured: list[torch.Tensor] = []
    handles = [
        bn.register_forward_hook(sample),
        layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0])),
    ]
    try:
        model.backbone(example[:1].expand(samples, *example.shape[1:]))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return pool_edit_input(captured[0].float(), layer).mean(0)


@torch.no_grad()
def project_forget_directions(
    model: UnlearnableClassifier,
    forget_inputs: torch.Tensor,
    forget_labels: torch.Tensor,
    forget_classes: list[int],
    feature_mean: torch.Tensor | None = None,
) -> int:
    """Step 1 without class statistics: remove the forget-specific input directions of the backbone's last
    learnable layer.

    With class statistics the retained mean and the retained directions come from them; without, and with
    ``feature_mean`` (a data-free estimate of the mean over all classes, :func:`batchnorm_feature_mean`),
    the retained mean is that minus the forget samples' share (classes assumed balanced) and nothing is
    orthogonalised. Returns the number of directions removed (0: no statistics and no estimate)."""
    keep = model.class_mask.clone()
    keep[forget_classes] = False
    data_free = not model.has_class_stats
    if data_free and feature_mean is None:
        return 0
    layer = model.edit_layer()
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        model.backbone(forget_inputs)
    finally:
        handle.remove()
    act = pool_edit_input(captured[0].float(), layer)
    labels = forget_labels.to(act.device)
    if data_free:
        forget_means = [act[labels == c].mean(0) for c in forget_classes if bool((labels == c).any())]
        total = model.num_classes
        mu_r = (total * feature_mean.to(act) - torch.stack(forget_means).sum(0)) / (total - len(forget_means))
        retained_means = mu_r[None]
    else:
        retained_means = model.class_stats[keep].float()
        mu_r = retained_means.mean(0)
    # one direction per forgotten class that has samples here (multi-class: a low-rank subspace)
    directions = [act[labels == c].mean(0) - mu_r for c in forget_classes if bool((labels == c).any())]
    directions = directions or [act.mean(0) - mu_r]
    d = torch.stack(directions, dim=1)
    scale = float(d.norm())
    if len(retained_means) > 1:
        basis, _ = torch.linalg.qr(retained_means.T - mu_r[:, None])
        d = d - basis @ (basis.T @ d)
    q, r = torch.linalg.qr(d)
    q = q[:, r.diagonal().abs() > 1e-4 * scale]  # drop directions the retained classes already span
    if q.shape[1] == 0 or scale == 0:
        return 0
    shift_in = q @ (q.T @ mu_r)  # the input shift the projection applies at the retained mean
    if isinstance(layer, nn.Linear):
        weight = layer.weight
        delta = weight @ shift_in  # output shift to compensate, per output unit
        weight -= (weight @ q) @ q.T
    else:  # Conv2d: project every kernel tap over the input-channel axis
        taps = layer.weight.permute(2, 3, 0, 1)  # a view [kh, kw, out, in]: edits land in the weight
        delta = (taps @ shift_in).sum((0, 1))
        taps -= (taps @ q) @ q.T
    if layer.bias is not None:
        layer.bias += delta
    else:
        bn = _following_batchnorm(model, layer)
        if bn is not None and bn.running_mean is not None:
            bn.running_mean -= delta
    return int(q.shape[1])


class _Captured(Exception):
    """Raised by a pre-hook once it has the input it wanted: the rest of the forward pass is skipped."""


@torch.no_grad()
def _layer_input(model: UnlearnableClassifier, layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``layer``'s pooled input [N, D] for ``inputs`` (the forward pass stops at the layer)."""
    captured: list[torch.Tensor] = []

    def grab(_m, args):
        captured.append(args[0])
        raise _Captured

    handle = layer.register_forward_pre_hook(grab)
    try:
        model.backbone(inputs)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise UsageError(
            f"the backbone never runs its edit layer ({type(layer).__name__}) on these inputs; NHLE's feature step "
            "needs a backbone whose last learnable layer runs on every input"
        )
    return pool_edit_input(captured[0].float(), layer)


@torch.no_grad()
def retarget_layer(
    model: UnlearnableClassifier,
    layer: nn.Module,
    forget_mean: torch.Tensor,
    target_mean: torch.Tensor,
    retained_means: torch.Tensor,
) -> bool:
    """Rank-one edit of ``layer`` so that an input at ``forget_mean`` gives the output it gives at
    ``target_mean``, while an input at any of ``retained_means`` [K, D]
    (and any affine combination of them) gives exactly the output it gave before.

    In homogeneous coordinates x~ = [x; 1] the layer is W~ = [W b]; the edit is W~ += u vᵀ with
    u = W (target − forget) and v the shortest vector with vᵀ forget~ = 1 and vᵀ r~ = 0 for every
    retained mean r: the component of forget~ orthogonal to the retained means, over its squared norm. For a
    conv every kernel tap is edited over the input channels (means are channel means) and a bias shift goes
    to the bias or, without one, into the following BatchNorm. False (nothing changed) when the forget mean
    is, to 1e-4 relative, an affine combination of the retained means."""
    one = forget_mean.new_ones(1)
    retained = torch.cat([retained_means.to(forget_mean), forget_mean.new_ones(len(retained_means), 1)], 1)
    f = torch.cat([forget_mean, one])
    basis, r = torch.linalg.qr(retained.T)
    basis = basis[:, r.diagonal().abs() > 1e-6 * float(r.diagonal().abs().max())]
    orth = f - basis @ (basis.T @ f)
    if float(orth.norm()) <= 1e-4 * float(f.norm()):
        return False
    v = orth / (orth @ orth)
    move = target_mean.to(forget_mean) - forget_mean
    width = forget_mean.numel()
    if isinstance(layer, nn.Linear):
        u = layer.weight.float() @ move
        layer.weight += (u[:, None] * v[None, :width]).to(layer.weight.dtype)
        delta = u * v[width]
    else:
        taps = layer.weight.permute(2, 3, 0, 1)  # a view [kh, kw, out, in]: edits land in the weight
        u = taps.float() @ move
        taps += (u[..., None] * v[:width]).to(taps.dtype)
        delta = u.sum((0, 1)) * v[width]
    if layer.bias is not None:
        layer.bias += delta.to(layer.bias.dtype)
    else:
        bn = _following_batchnorm(model, layer)
        if bn is None or bn.running_mean is None:
            return True  # no place for the bias shift: the retained means move by the (small) constant part
        bn.running_mean -= delta.to(bn.running_mean.dtype)
    return True


@torch.no_grad()
def nearest_retained_classes(model: UnlearnableClassifier, forget_mean: torch.Tensor, keep: torch.Tensor) -> list[int]:
    """Retained classes by the distance of their recorded edit-layer mean to ``forget_mean`` (Euclidean), nearest first."""
    kept = torch.nonzero(keep).flatten()
    dist = (model.class_stats[kept].float() - forget_mean.to(model.class_stats.device)).norm(dim=1)
    return [int(kept[i]) for i in dist.argsort()]


@torch.no_grad()
def retarget_forget_features(
    model: UnlearnableClassifier,
    forget_inputs: torch.Tensor,
    forget_labels: torch.Tensor,
    forget_classes: list[int],
    target_scale: float,
    entropy_ratio: float | None = None,
) -> dict[str, object]:
    """Step 1 with class statistics: for each forgotten class, :func:`retarget_layer` sends its samples' mean
    input of the edit layer to ``target_scale`` × the nearest retained class's recorded mean. Returns what
    ran: the number of edits and the target class of each forgotten class."""
    keep = model.class_mask.clone()
    keep[forget_classes] = False
    layer = model.edit_layer()
    retained = model.class_stats[keep].float()
    labels = forget_labels.to(forget_inputs.device)
    targets: dict[int, int] = {}
    scales: dict[int, float] = {}
    edited = 0
    for c in forget_classes:
        x = forget_inputs[labels == c]
        if len(x) == 0:
            continue
        act = _layer_input(model, layer, x).mean(0)
        targets[c] = nearest_retained_classes(model, act, keep)[0]
        direction = model.class_stats[targets[c]].float()
        if entropy_ratio is not None:  # that share of the entropy the model (the masked original) has now
            goal = entropy_ratio * _retained_entropy(model, x, ~keep)
            scales[c] = _scale_for_entropy(model, layer, x, act, direction, retained, ~keep, goal)
        edited += retarget_layer(model, layer, act, direction * scales.get(c, target_scale), retained)
    return {"layers_edited": edited, "target_classes": targets, **({"target_scales": scales} if scales else {})}


@torch.no_grad()
def retarget_head(
    model: UnlearnableClassifier,
    forget_inputs: torch.Tensor,
    forget_labels: torch.Tensor,
    forget_classes: list[int],
    scale: float,
    target: str = "nearest",
    entropy_floors: dict[int, float] | None = None,
) -> dict[str, object]:
    """The head step: for each forgotten class, :func:`retarget_layer` on the head sends its samples' mean
    penultimate features to the logits of ``scale`` × a target built from the retained classes' recorded
    penultimate means (:meth:`~edge_unlearn.models.UnlearnableClassifier.head_input_stats`), while every retained
    class's recorded mean keeps its logits exactly. ``target`` (:data:`HEAD_TARGETS`): the means mixed by the
    model's own mean answer over the retained classes on the class's samples, with ``scale`` lowered until the
    answer's mean entropy on them is not below ``entropy_floors[c]`` (default: its entropy before the step;
    :func:`_scale_for_entropy`), or the nearest class's mean. A
    retrained model answers a forgotten class like an unsure image of the similar classes; the original's
    retained head rows, trained against the class, still read it (the retained-logit probe). Returns the target
    weights (mixture) or class (nearest) and the scale used for each forgotten class, or why the step did not run."""
    means = model.head_input_stats()
    if means is None:
        return {"head_step": "none (no class statistics of the head's input: record them with train or import)"}
    keep = model.class_mask.clone()
    keep[forget_classes] = False
    retained = means[keep].float()
    kept = torch.nonzero(keep).flatten()
    labels = forget_labels.to(forget_inputs.device)
    targets: dict[int, Any] = {}
    scales: dict[int, float] = {}
    for c in forget_classes:
        x = forget_inputs[labels == c]
        if len(x) == 0:
            continue
        feats = model.features(x).float().flatten(1)
        mean = feats.mean(0)
        scales[c] = scale
        if target == "mixture":  # never sharper than the floor (default: the answer before the head step)
            answer = torch.softmax(model.head(feats).float()[:, keep], dim=1).mean(0).to(retained)
            goal = answer @ retained
            targets[c] = {int(k): round(float(w), 4) for k, w in zip(kept, answer)}
            head_feats = feats.to(x.dtype)
            floor = (entropy_floors or {}).get(c)
            floor = _retained_entropy(model, x, ~keep, head_feats) if floor is None else floor
            scales[c] = _scale_for_entropy(
                model, model.head, x, mean, goal, retained, ~keep, floor, hi=scale, feats=head_feats
            )
        else:
            targets[c] = int(kept[(retained - mean.to(retained)).norm(dim=1).argmin()])
            goal = means[targets[c]].float()
        retarget_layer(model, model.head, mean, scales[c] * goal, retained)
    key = "head_target_weights" if target == "mixture" else "head_target_classes"
    return {"head_step": "class_stats", key: targets, "head_scales": {c: round(s, 4) for c, s in scales.items()}}


@torch.no_grad()
def _retained_entropy(
    model: UnlearnableClassifier, x: torch.Tensor, masked: torch.Tensor, feats: torch.Tensor | None = None
) -> float:
    """Mean entropy (nats) of the softmax over the classes not in ``masked`` on ``x`` (on its penultimate
    features ``feats`` where given: only the head is run)."""
    feats = model.features(x) if feats is None else feats
    logp = torch.log_softmax(model.head(feats).float().masked_fill(masked, float("-inf")), dim=1)
    return float(-(logp.exp() * logp.masked_fill(masked, 0)).sum(1).mean())


@torch.no_grad()
def _scale_for_entropy(
    model: UnlearnableClassifier,
    layer: nn.Module,
    x: torch.Tensor,
    forget_mean: torch.Tensor,
    direction: torch.Tensor,
    retained_means: torch.Tensor,
    masked: torch.Tensor,
    goal: float,
    lo: float = 0.05,
    hi: float = 2.0,
    iterations: int = 12,
    feats: torch.Tensor | None = None,
) -> float:
    """The target scale at which the edited model's mean entropy over the retained classes on the forget
    samples ``x`` is ``goal`` (nats; the largest scale in [``lo``, ``hi``] not below it): bisection on a log
    scale (entropy falls as the target moves out along ``direction``). The layer is left unedited. ``feats``:
    the penultimate features of ``x`` when ``layer`` is the head (they do not change; only the head is rerun)."""
    saved = {k: v.clone() for k, v in _edit_state(model, layer).items()}

    def entropy_at(scale: float) -> float:
        retarget_layer(model, layer, forget_mean, direction * scale, retained_means)
        try:
            return _retained_entropy(model, x, masked, feats)
        finally:
            for k, v in _edit_state(model, layer).items():
                v.copy_(saved[k])

    return largest_scale_above(entropy_at, goal, lo, hi, iterations)


def largest_scale_above(
    entropy_at: Callable[[float], float], goal: float, lo: float, hi: float, iterations: int = 12
) -> float:
    """The largest scale in [``lo``, ``hi``] at which ``entropy_at`` (falling as the scale grows) is not below
    ``goal``: ``hi`` or ``lo`` when the whole range is on one side, else bisection on a log scale."""
    if entropy_at(hi) >= goal:
        return hi
    if entropy_at(lo) <= goal:
        return lo
    for _ in range(iterations):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if entropy_at(mid) > goal else (lo, mid)
    return (lo * hi) ** 0.5


def _edit_state(model: UnlearnableClassifier, layer: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors :func:`retarget_layer` may change: the layer's, and the running mean of the BatchNorm after it."""
    out = {f"layer.{n}": t for n, t in layer.named_parameters()}
    bn = _following_batchnorm(model, layer)
    if bn is not None and bn.running_mean is not None:
        out["bn.running_mean"] = bn.running_mean
    return out


def _nhle_loss(logits: torch.Tensor, keep: torch.Tensor, forget: list[int], targets: torch.Tensor) -> torch.Tensor:
    """``-sum_r t_r log p_r - log(1 - p_forgotten)``, mean over samples (bounded below)."""
    logp = F.log_softmax(logits, dim=1)
    p_forgotten = logp[:, forget].exp().sum(1).clamp(max=1 - 1e-6)
    return -(targets * logp.masked_fill(~keep, 0)).sum(1).mean() - torch.log1p(-p_forgotten).mean()


def _train_forgotten_rows(
    model: UnlearnableClassifier,
    x: torch.Tensor,
    keep: torch.Tensor,
    forget: list[int],
    targets: torch.Tensor,
    config: NHLEConfig,
    progress: bool,
) -> None:
    """Step 2: Adam on the masked classes' head rows only. The features and
    the retained logits cannot change, so they are computed once and only the trained rows' logits are
    recomputed each step (the same updates as masking the other rows' gradients, at a fraction of the cost)."""
    head = model.head
    rows = torch.nonzero(~keep).flatten()
    with torch.no_grad():
        feats = model.features(x)
        fixed = head(feats)
    weight = head.weight.detach()[rows].clone().requires_grad_(True)
    bias = (
        (head.bias.detach()[rows] if head.bias is not None else weight.new_zeros(len(rows)))
        .clone()
        .requires_grad_(True)
    )
    optimizer = torch.optim.Adam([weight, bias] if head.bias is not None else [weight], lr=config.lr)
    for _ in tqdm(range(config.steps), desc="nhle", disable=not progress, unit="step"):
        logits = fixed.index_copy(1, rows, feats @ weight.T + bias)
        loss = _nhle_loss(logits, keep, forget, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        head.weight[rows] = weight.detach()
        if head.bias is not None:
            head.bias[rows] = bias.detach()


@register_method(
    "nhle",
    NHLEConfig,
    needs="forget",
    description="NHLE: feature-level class weight masking + the head step toward the model's own confusion + "
    "negative-hot label fine-tuning + decision-level masking, from a few forget samples, no retained data",
)
def run_nhle(
    model: UnlearnableClassifier,
    forget_set: ForgetSet,
    config: NHLEConfig,
    retain: RetainSet | None,
    device: torch.device,
    progress: bool,
) -> dict[str, object]:
    """Returns which feature step ran (``feature_step``, ``feature_directions``) for the output and lineage."""
    model.eval()  # BatchNorm statistics stay frozen: only forget samples are seen
    forget = list(forget_set.classes)
    keep = model.class_mask.clone()
    keep[forget] = False
    x = forget_set.inputs
    with torch.no_grad():  # the targets: the original's own distribution over the retained classes
        targets = torch.softmax(model.head(model.features(x)).masked_fill(~keep, float("-inf")), dim=1)
    floors = None  # the head step's limit; with entropy_ratio (the asked sharpness) it keeps the feature step's
    if config.head_entropy_ratio is not None and config.entropy_ratio is None:  # of the masked original's entropy
        labels = forget_set.labels.to(targets.device)
        entropy = -(targets * targets.clamp_min(1e-30).log()).sum(1)
        floors = {
            c: config.head_entropy_ratio * float(entropy[labels == c].mean()) for c in forget if (labels == c).any()
        }
    details: dict[str, object] = {}
    if model.has_class_stats:
        step = "class_stats"
        report = retarget_forget_features(
            model, x, forget_set.labels, forget, config.target_scale, config.entropy_ratio
        )
        edited = int(report.pop("layers_edited"))
        details.update(report)
    elif config.data_free == "batchnorm" and (estimate := batchnorm_feature_mean(model, x)) is not None:
        step = "batchnorm_estimate"
        edited = project_forget_directions(model, x, forget_set.labels, forget, feature_mean=estimate)
    else:
        step = f"none (no class statistics{'; data_free=none' if config.data_free == 'none' else ', no BatchNorm before the edit layer'})"
        edited = 0
    if config.head_target != "none":
        details.update(
            retarget_head(model, x, forget_set.labels, forget, config.head_scale, config.head_target, floors)
        )
    _train_forgotten_rows(model, x, keep, forget, targets, config, progress)
    model.drop_class_stats(forget)
    return {"feature_step": step, "feature_directions": edited, **details}
