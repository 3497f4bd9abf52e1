"""NHLE: negative-hot label encoding fine-tuning + class weight masking (Wang, Bie, Jing, Zhi, 2026).

Only the paper's abstract is public; this is our reading of it (docs/design.md §2), with every guessed
detail a parameter whose default was chosen by measurement (docs/nhle.md has the table). Three steps, all
from a few forget samples and no retained data:

1. **Feature-level class weight masking** (closed form). In the input space of the backbone's last
   learnable layer (``feature_depth="every_layer"``: of every learnable layer in turn), a rank-one edit of
   the layer sends the forget samples' mean toward the nearest retained class's recorded mean with a quarter
   of its activations (version 3; version 2 sent it midway between the two nearest), while every retained
   class mean (from the class statistics recorded at training time) maps exactly as before
   (:func:`retarget_layer`). Forget samples thereby stop forming a cluster of
   their own that a 5-sample prototype written into the head could find again (the prototype attack with
   the mask lifted), without being confidently one retained class either (the entropy MIA). Version 1's
   projection (``feature_target="retained_mean"``: the forget direction, orthogonalised against the
   retained means, removed) moved the linear probe but left the cluster.
   A model without class statistics (imported without data) takes a data-free estimate instead
   (``data_free="batchnorm"``): the mean of the edit layer's input over the training distribution is read
   from the BatchNorm running statistics feeding it (its output is sampled as N(beta, gamma^2) and carried
   through the layers in between, as data-free distillation does); the retained mean follows by removing
   the forget samples' share, and no orthogonalisation against retained directions is possible. The run
   reports which feature step ran (``class_stats``, ``batchnorm_estimate`` or ``none``).
2. **NHLE fine-tuning.** Each forget sample gets a negative-hot target: ``-neg_value`` on the forgotten
   classes, the rest of the mass on the retained classes (the model's own distribution over them, or
   uniform). The loss ``-sum_r t_r log p_r - neg_value * log(1 - p_forgotten)`` is bounded and pushes the
   forgotten classes' probability to zero. By default only the forgotten classes' head rows train, so no
   retained logit can move; ``scope`` widens it.
   Opt-in (``backbone_step="last_block"``, ResNets): the backbone's last residual block is then fine-tuned on
   the forget samples while retention anchors synthesised from the BatchNorm statistics hold the retained
   features (:mod:`edge_unlearn.unlearn.anchored`).
3. **Decision-level class weight masking.** The class mask is set (done by :func:`forget`), so no input can
   ever predict a forgotten class, and the forgotten classes' statistics are erased from the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import UsageError
from ..models import DEPTH_STATS_COUNT, UnlearnableClassifier, depth_layers, pool_edit_input
from . import ForgetSet, RetainSet, register_method
from .anchored import BACKBONE_OBJECTIVES, finetune_block, last_residual_block, synthesize_block_inputs

SCOPES = ("forgotten_rows", "head", "edit_layer")
DATA_FREE = ("batchnorm", "none")
RETAIN_TARGETS = ("own", "uniform")
FEATURE_TARGETS = ("nearest_class", "nearest_pair", "retained_mean")
FEATURE_DEPTHS = ("edit_layer", "every_layer")
FEATURE_METRICS = ("euclidean", "forget_variance")
BACKBONE_STEPS = ("none", "last_block")
NHLE_CONFIG_VERSION = 3


@dataclass(frozen=True)
class NHLEConfig:
    """NHLE hyper-parameters. Defaults were chosen by measurement against retraining (docs/nhle.md).

    Feature step (step 1): ``feature_target`` is where the forget samples' mean is sent in the input space of
    each edited layer, with a rank-one edit that keeps every retained class mean where it was
    (:func:`retarget_layer`): ``nearest_class`` (default: toward the retained class whose recorded mean is
    nearest), ``nearest_pair`` (toward the point ``pair_weight`` of the way from the nearest to the second
    nearest; 0.5 = midway, version 2's default), or ``retained_mean`` (version 1's projection: the forget
    direction, orthogonalised against the retained means when ``orthogonalize``, is removed). ``target_scale``
    shrinks that target toward the origin at the edit layer (default 0.25; ``every_layer``'s earlier layers
    keep the unscaled target, their features being shared by every class): the forget samples land in the
    nearest class's direction with a quarter of its activations, as an unfamiliar input would -- inside a
    retained class's region, so a 5-sample prototype cannot claim them without taking that class's images, and
    unconfident, so the entropy MIA does not see members (1 = onto the class mean itself: confident, MIA about
    the original's).
    ``feature_depth``: ``edit_layer`` (the backbone's last learnable layer) or ``every_layer`` (each learnable
    layer in turn, from the class statistics recorded at every depth by
    :meth:`~edge_unlearn.models.UnlearnableClassifier.record_depth_stats`; the edit layer alone when the model
    has none). ``feature_metric``: ``forget_variance`` measures the edit's size in a metric that spares inputs
    varying much within the forget samples. ``alpha`` scales the move (1 = all the way). A model without class
    statistics takes the data-free ``retained_mean`` projection whatever ``feature_target`` says.
    ``backbone_step="last_block"`` (opt-in, ResNets with depth statistics) also fine-tunes the backbone's last
    block on the forget samples (``backbone_objective``: the negative-hot loss, an adversarial probe, or each
    sample toward the prototype of the retained class the original ranks first for it;
    ``backbone_steps`` Adam steps at ``backbone_lr``) while ``anchors_per_class`` synthesised retention anchors
    per retained class (:mod:`edge_unlearn.unlearn.anchored`, ``anchor_steps`` of BatchNorm-statistics
    inversion) keep their features (weight ``anchor_weight``): it lowers the penultimate probe where the
    one-layer edit cannot, at minutes of CPU instead of seconds (docs/nhle.md).
    Version 3 (this one) added ``pair_weight`` and ``target_scale`` and moved the default from v2's midpoint
    (``nearest_pair``, scale 1), which a prototype recovered on digits with the default recipe
    (docs/nhle.md has the table)."""

    steps: int = 20
    lr: float = 0.05
    neg_value: float = 1.0
    retain_target: str = "own"
    temperature: float = 1.0
    scope: str = "forgotten_rows"
    project: bool = True
    alpha: float = 1.0
    orthogonalize: bool = True
    data_free: str = "batchnorm"
    feature_target: str = "nearest_class"
    feature_depth: str = "edit_layer"
    feature_metric: str = "euclidean"
    pair_weight: float = 0.5
    target_scale: float = 0.25
    backbone_step: str = "none"
    backbone_objective: str = "nhle"
    backbone_steps: int = 40
    backbone_lr: float = 1e-3
    anchor_weight: float = 10.0
    anchors_per_class: int = 16
    anchor_steps: int = 100
    version: int = NHLE_CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.version != NHLE_CONFIG_VERSION:
            raise UsageError(
                f"nhle config version {self.version} is not supported (this edge-unlearn writes "
                f"version {NHLE_CONFIG_VERSION}); drop the version parameter"
            )
        for name, value, allowed in (
            ("data_free", self.data_free, DATA_FREE),
            ("scope", self.scope, SCOPES),
            ("retain_target", self.retain_target, RETAIN_TARGETS),
            ("feature_target", self.feature_target, FEATURE_TARGETS),
            ("feature_depth", self.feature_depth, FEATURE_DEPTHS),
            ("feature_metric", self.feature_metric, FEATURE_METRICS),
            ("backbone_step", self.backbone_step, BACKBONE_STEPS),
            ("backbone_objective", self.backbone_objective, BACKBONE_OBJECTIVES),
        ):
            if value not in allowed:
                raise UsageError(f"nhle {name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.steps < 0 or self.lr <= 0 or self.neg_value < 0 or not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise UsageError("nhle needs steps >= 0, lr > 0, neg_value >= 0, 0 <= alpha <= 1, temperature > 0")
        if not 0 < self.target_scale <= 1:
            raise UsageError(
                f"nhle target_scale must be in (0, 1] (1: the target class mean itself), got {self.target_scale}"
            )
        if (
            self.backbone_steps < 0
            or self.backbone_lr <= 0
            or self.anchor_weight < 0
            or self.anchors_per_class < 1
            or self.anchor_steps < 0
        ):
            raise UsageError(
                "nhle needs backbone_steps >= 0, backbone_lr > 0, anchor_weight >= 0, "
                "anchors_per_class >= 1, anchor_steps >= 0"
            )
        if not 0 <= self.pair_weight <= 0.5:
            raise UsageError(
                f"nhle pair_weight must be in [0, 0.5] (0: onto the nearest class, 0.5: midway between "
                f"the two nearest), got {self.pair_weight}"
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
    alpha: float = 1.0,
    orthogonalize: bool = True,
    feature_mean: torch.Tensor | None = None,
) -> int:
    """Step 1: remove the forget-specific input directions of the backbone's last learnable layer.

    With class statistics the retained mean and the retained directions come from them; without, and with
    ``feature_mean`` (a data-free estimate of the mean over all classes, :func:`batchnorm_feature_mean`),
    the retained mean is that minus the forget samples' share (classes assumed balanced) and nothing is
    orthogonalised. Returns the number of directions removed (0: no statistics and no estimate)."""
    keep = model.class_mask.clone()
    keep[forget_classes] = False
    data_free = not model.has_class_stats
    if (data_free and feature_mean is None) or alpha == 0:
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
    if orthogonalize and len(retained_means) > 1:
        basis, _ = torch.linalg.qr(retained_means.T - mu_r[:, None])
        d = d - basis @ (basis.T @ d)
    q, r = torch.linalg.qr(d)
    q = q[:, r.diagonal().abs() > 1e-4 * scale]  # drop directions the retained classes already span
    if q.shape[1] == 0 or scale == 0:
        return 0
    shift_in = alpha * q @ (q.T @ mu_r)  # the input shift the projection applies at the retained mean
    if isinstance(layer, nn.Linear):
        weight = layer.weight
        delta = weight @ shift_in  # output shift to compensate, per output unit
        weight -= alpha * (weight @ q) @ q.T
    else:  # Conv2d: project every kernel tap over the input-channel axis
        taps = layer.weight.permute(2, 3, 0, 1)  # a view [kh, kw, out, in]: edits land in the weight
        delta = (taps @ shift_in).sum((0, 1))
        taps -= alpha * (taps @ q) @ q.T
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
def _layer_input_map(model: UnlearnableClassifier, layer: nn.Module, inputs: torch.Tensor, fix: str) -> torch.Tensor:
    """``layer``'s input for ``inputs``, as it receives it (the forward pass stops at the layer); ``fix`` ends
    the error when the backbone never runs the layer."""
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
        raise UsageError(f"the backbone never runs {type(layer).__name__} on these inputs; {fix}")
    return captured[0]


def _layer_input(model: UnlearnableClassifier, layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``layer``'s pooled input [N, D] for ``inputs``."""
    return pool_edit_input(_layer_input_map(model, layer, inputs, "use feature_depth=edit_layer").float(), layer)


@torch.no_grad()
def _execution_order(model: UnlearnableClassifier, names: list[str], example: torch.Tensor) -> list[str]:
    """``names`` (backbone layers) sorted by when they first run on ``example``; layers that never run are dropped."""
    modules = dict(model.backbone.named_modules())
    order: list[str] = []

    def note(name: str):
        def hook(_m, _args) -> None:
            if name not in order:
                order.append(name)

        return hook

    handles = [modules[n].register_forward_pre_hook(note(n)) for n in names]
    try:
        model.backbone(example[:1])
    finally:
        for h in handles:
            h.remove()
    return order


@torch.no_grad()
def retarget_layer(
    model: UnlearnableClassifier,
    layer: nn.Module,
    forget_mean: torch.Tensor,
    target_mean: torch.Tensor,
    retained_means: torch.Tensor,
    alpha: float = 1.0,
    variance: torch.Tensor | None = None,
) -> bool:
    """Rank-one edit of ``layer`` so that an input at ``forget_mean`` gives the output it gives at
    ``target_mean`` (``alpha`` < 1: part of the way), while an input at any of ``retained_means`` [K, D]
    (and any affine combination of them) gives exactly the output it gave before.

    In homogeneous coordinates x~ = [x; 1] the layer is W~ = [W b]; the edit is W~ += u vᵀ with
    u = alpha · W (target − forget) and v the shortest vector with vᵀ forget~ = 1 and vᵀ r~ = 0 for every
    retained mean r: the component of forget~ orthogonal to the retained means, over its squared norm
    (with ``variance`` [D], per-input variances, "shortest" is measured in the metric that weights each
    input by 1/variance, so the edit leans on inputs that vary little within a class). For a
    conv every kernel tap is edited over the input channels (means are channel means) and a bias shift goes
    to the bias or, without one, into the following BatchNorm. False (nothing changed) when the forget mean
    is, to 1e-4 relative, an affine combination of the retained means."""
    one = forget_mean.new_ones(1)
    retained = torch.cat([retained_means.to(forget_mean), forget_mean.new_ones(len(retained_means), 1)], 1)
    f = torch.cat([forget_mean, one])
    # v = s * w, w the shortest in coordinates scaled by s = 1/std (1 for the bias input): min E[(vᵀ noise)²]
    if variance is not None:  # shrunk toward its mean, so an input that never varied here gets no unbounded weight
        variance = variance.to(forget_mean).clamp_min(0)
        s = torch.cat([(variance + variance.mean()).clamp_min(1e-12).rsqrt(), one])
    else:
        s = torch.ones_like(f)
    basis, r = torch.linalg.qr((retained * s).T)
    basis = basis[:, r.diagonal().abs() > 1e-6 * float(r.diagonal().abs().max())]
    orth = f * s - basis @ (basis.T @ (f * s))
    if float(orth.norm()) <= 1e-4 * float((f * s).norm()):
        return False
    v = s * orth / (orth @ orth)
    move = alpha * (target_mean.to(forget_mean) - forget_mean)
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
    config: NHLEConfig,
) -> dict[str, object]:
    """Step 1 with class statistics, ``feature_target``/``feature_depth`` of ``config``: for each forgotten
    class, send its samples' mean input of each edited layer to the target (the nearest retained class's
    recorded mean, or the retained classes' mean) with :func:`retarget_layer`, layer by layer in execution
    order (each layer sees the inputs the edits before it produced). Returns what ran: the layers edited,
    the target class of each forgotten class (``None`` for ``retained_mean``) and the depth actually used."""
    keep = model.class_mask.clone()
    keep[forget_classes] = False
    edit_name = next(n for n, m in model.backbone.named_modules() if m is model.edit_layer())
    depth = config.feature_depth
    if depth == "every_layer" and model.has_depth_stats:
        stats = {name: s for name, s in model.depth_stats().items()}
        names = _execution_order(model, list(stats), forget_inputs)
    else:
        depth = "edit_layer"
        stats, names = {edit_name: model.class_stats}, [edit_name]
    modules = dict(model.backbone.named_modules())
    labels = forget_labels.to(forget_inputs.device)
    targets: dict[int, list[int] | None] = {}
    edited = 0
    for c in forget_classes:
        x = forget_inputs[labels == c]
        if len(x) == 0:
            continue
        if config.feature_target == "retained_mean":
            targets[c] = None
        else:
            nearest = nearest_retained_classes(model, _layer_input(model, model.edit_layer(), x).mean(0), keep)
            targets[c] = nearest[:2] if config.feature_target == "nearest_pair" else nearest[:1]
        for name in names:
            layer, retained = modules[name], stats[name][keep].float()
            if targets[c] is None:
                target = retained.mean(0)
            elif len(targets[c]) == 2:  # nearest_pair: (1 - w) of the nearest class + w of the second
                target = torch.lerp(
                    stats[name][targets[c][0]].float(), stats[name][targets[c][1]].float(), config.pair_weight
                )
            else:
                target = stats[name][targets[c][0]].float()
            # toward the origin, an unfamiliar input's smaller activations; at the last layer only (earlier
            # layers' features are shared by every class: shrinking them there costs retained accuracy)
            if targets[c] is not None and name == edit_name:
                target = target * config.target_scale
            act = _layer_input(model, layer, x)
            variance = act.var(0) if config.feature_metric == "forget_variance" and len(act) > 1 else None
            edited += retarget_layer(model, layer, act.mean(0), target, retained, config.alpha, variance)
    return {"feature_depth": depth, "layers_edited": edited, "target_classes": targets}


def finetune_last_block(
    model: UnlearnableClassifier, forget_inputs: torch.Tensor, forget: list[int], keep: torch.Tensor, config: NHLEConfig
) -> dict[str, object]:
    """``backbone_step="last_block"``: the backbone's last residual block fine-tuned on the forget samples with
    synthesised retention anchors (:mod:`.anchored`), in place. Needs the class means at the block's input
    (depth statistics). The anchors hold the block's output, not its inner activations, so the retained
    classes' recorded means at layers inside the block (its conv2: the edit layer's class statistics) are moved
    by :func:`anchored_input_shifts` for a later request to edit from. Returns what ran, for the method's
    details."""
    block = last_residual_block(model.backbone)
    block_name = next(n for n, m in model.backbone.named_modules() if m is block)
    means = model.depth_stats().get(f"{block_name}.conv1")
    if means is None or not model.has_depth_stats:
        raise UsageError(
            "backbone_step=last_block needs class statistics at every depth, which `edge-unlearn "
            "train` and `edge-unlearn import --stats-from` record; use one of those checkpoints, "
            "or backbone_step=none"
        )
    inputs = _layer_input_map(model, block, forget_inputs, "use backbone_step=none").detach()
    with torch.no_grad():
        matches = torch.allclose(block(inputs).mean((2, 3)), model.features(forget_inputs), atol=1e-4, rtol=1e-4)
    if not matches:
        raise UsageError(
            "backbone_step=last_block needs the backbone to end in its last block and global "
            "average pooling; use backbone_step=none"
        )
    counts = getattr(model, DEPTH_STATS_COUNT)
    retained = [int(c) for c in torch.nonzero(keep).flatten() if counts[c] > 0]
    weight = model.head.weight.detach()
    bias = model.head.bias.detach() if model.head.bias is not None else weight.new_zeros(weight.shape[0])
    anchors, labels = synthesize_block_inputs(
        block,
        weight,
        bias,
        means.detach(),
        retained,
        tuple(inputs.shape[2:]),
        config.anchors_per_class,
        config.anchor_steps,
    )
    tuned = finetune_block(
        block,
        inputs,
        weight,
        bias,
        forget,
        anchors,
        config.backbone_objective,
        config.backbone_steps,
        config.backbone_lr,
        config.anchor_weight,
        labels,
    )
    shifts = anchored_input_shifts(block, tuned, anchors, labels, retained)
    with torch.no_grad():
        for target, source in zip(block.parameters(), tuned.parameters()):
            target.copy_(source)
        # statistics of layers inside the block (its conv2, the edit layer's class statistics when it is that
        # layer) describe the old block: move each retained class's mean as far as its anchors moved
        edit = model.edit_layer()
        for sub, shift in shifts.items():
            stats = model.depth_stats().get(f"{block_name}.{sub}")
            if stats is not None:
                stats[retained] += shift.to(stats)
            if block.get_submodule(sub) is edit:
                model.class_stats[retained] += shift.to(model.class_stats)
    return {"block": block_name, "anchors": len(anchors), "objective": config.backbone_objective}


@torch.no_grad()
def anchored_input_shifts(
    block: nn.Module, tuned: nn.Module, anchors: torch.Tensor, labels: torch.Tensor, classes: list[int]
) -> dict[str, torch.Tensor]:
    """{learnable layer inside the block whose input the fine-tuning moved: [len(classes), D] shift of each
    class's mean input}, measured on the class's anchors (which stand in for its data, as in the fine-tuning)."""

    def means(module: nn.Module) -> dict[str, torch.Tensor]:
        seen: dict[str, torch.Tensor] = {}
        layers = depth_layers(module)
        handles = [
            layer.register_forward_pre_hook(
                lambda _m, args, name=name, layer=layer: seen.__setitem__(name, pool_edit_input(args[0], layer))
            )
            for name, layer in layers
        ]
        try:
            module(anchors)
        finally:
            for h in handles:
                h.remove()
        return {name: torch.stack([act[labels == c].mean(0) for c in classes]) for name, act in seen.items()}

    before, after = means(block), means(tuned)
    return {name: after[name] - before[name] for name in before if not torch.equal(after[name], before[name])}


def _targets(logits: torch.Tensor, keep: torch.Tensor, config: NHLEConfig) -> torch.Tensor:
    if config.retain_target == "uniform":
        return keep.float().expand_as(logits) / keep.sum()
    return torch.softmax(logits.masked_fill(~keep, float("-inf")) / config.temperature, dim=1)


def _nhle_loss(
    logits: torch.Tensor, keep: torch.Tensor, forget: list[int], targets: torch.Tensor, neg_value: float
) -> torch.Tensor:
    """``-sum_r t_r log p_r - neg_value * log(1 - p_forgotten)``, mean over samples (bounded below)."""
    logp = F.log_softmax(logits, dim=1)
    p_forgotten = logp[:, forget].exp().sum(1).clamp(max=1 - 1e-6)
    return -(targets * logp.masked_fill(~keep, 0)).sum(1).mean() - neg_value * torch.log1p(-p_forgotten).mean()


def _train_forgotten_rows(
    model: UnlearnableClassifier,
    x: torch.Tensor,
    keep: torch.Tensor,
    forget: list[int],
    targets: torch.Tensor,
    config: NHLEConfig,
    progress: bool,
) -> None:
    """Step 2 with ``scope="forgotten_rows"``: Adam on the masked classes' head rows only. The features and
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
        loss = _nhle_loss(logits, keep, forget, targets, config.neg_value)
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
    description="NHLE: feature-level class weight masking + negative-hot label fine-tuning + "
    "decision-level masking, from a few forget samples, no retained data",
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
    with torch.no_grad():
        original_logits = model.head(model.features(x))
        targets = _targets(original_logits, keep, config)
    step, removed = "none", 0
    details: dict[str, object] = {}
    if config.project and config.alpha > 0:
        estimate = None
        if model.has_class_stats:
            step = "class_stats"
        elif config.data_free == "batchnorm":
            estimate = batchnorm_feature_mean(model, x)
            step = (
                "batchnorm_estimate"
                if estimate is not None
                else "none (no class statistics, no BatchNorm before the edit layer)"
            )
        else:
            step = "none (no class statistics; data_free=none)"
        if step == "class_stats" and (config.feature_target != "retained_mean" or config.feature_depth != "edit_layer"):
            report = retarget_forget_features(model, x, forget_set.labels, forget, config)
            removed = int(report.pop("layers_edited"))
            details.update(report)
        elif step in ("class_stats", "batchnorm_estimate"):
            removed = project_forget_directions(
                model, x, forget_set.labels, forget, config.alpha, config.orthogonalize, feature_mean=estimate
            )
    if config.backbone_step == "last_block":
        details["backbone_step"] = finetune_last_block(model, x, forget, keep, config)
    head = model.head
    if config.scope == "forgotten_rows":
        _train_forgotten_rows(model, x, keep, forget, targets, config, progress)
        model.drop_class_stats(forget)
        return {"feature_step": step, "feature_directions": removed, **details}
    for p in model.parameters():
        p.requires_grad_(False)
    if config.scope == "edit_layer":
        params = [*model.edit_layer().parameters(), head.weight, head.bias]
    else:
        params = [head.weight, head.bias]
    for p in params:
        p.requires_grad_(True)
    cached = None if config.scope == "edit_layer" else model.features(x).detach()
    optimizer = torch.optim.Adam(params, lr=config.lr)
    for _ in tqdm(range(config.steps), desc="nhle", disable=not progress, unit="step"):
        feats = model.features(x) if cached is None else cached
        loss = _nhle_loss(head(feats), keep, forget, targets, config.neg_value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for p in model.parameters():
        p.requires_grad_(True)
    model.drop_class_stats(forget)
    return {"feature_step": step, "feature_directions": removed, **details}
