"""NHLE: negative-hot label encoding fine-tuning + class weight masking (Wang, Bie, Jing, Zhi, 2026).

Only the paper's abstract is public; this is our reading of it (../shared/DESIGN.md §1), with every guessed
detail a parameter whose default was chosen by measurement (docs/nhle.md has the table). Three steps, all
from a few forget samples and no retained data:

1. **Feature-level class weight masking** (closed form). In the input space of the backbone's last
   learnable layer, the forget direction is the forget samples' mean minus the retained classes' mean
   (from the class statistics recorded at training time), made orthogonal to the directions that separate
   the retained classes from each other. The layer's weights are projected off that direction, and the bias
   compensated so that an input at the retained mean maps exactly as before. Forget samples thereby land
   on the retained mean along the direction that singled them out: their features stop forming a class of
   their own (the linear-probe figure), while the retained classes keep every direction they use.
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
from ..models import UnlearnableClassifier, pool_edit_input
from . import ForgetSet, RetainSet, register_method

SCOPES = ("forgotten_rows", "head", "edit_layer")
DATA_FREE = ("batchnorm", "none")
RETAIN_TARGETS = ("own", "uniform")


@dataclass(frozen=True)
class NHLEConfig:
    """NHLE hyper-parameters. Defaults were chosen on mnist.npz with lenet (docs/nhle.md)."""

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

    def __post_init__(self) -> None:
        if self.data_free not in DATA_FREE:
            raise UsageError(f"nhle data_free must be one of {', '.join(DATA_FREE)}, got {self.data_free!r}")
        if self.scope not in SCOPES:
            raise UsageError(f"nhle scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if self.retain_target not in RETAIN_TARGETS:
            raise UsageError(f"nhle retain_target must be one of {', '.join(RETAIN_TARGETS)}, got {self.retain_target!r}")
        if self.steps < 0 or self.lr <= 0 or self.neg_value < 0 or not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise UsageError("nhle needs steps >= 0, lr > 0, neg_value >= 0, 0 <= alpha <= 1, temperature > 0")


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
def batchnorm_feature_mean(model: UnlearnableClassifier, example: torch.Tensor, samples: int = 64,
                           seed: int = 0) -> torch.Tensor | None:
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
    before = order[:order.index(layer)] if layer in order else []
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
    handles = [bn.register_forward_hook(sample),
               layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))]
    try:
        model.backbone(example[:1].expand(samples, *example.shape[1:]))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return pool_edit_input(captured[0].float(), layer).mean(0)


@torch.no_grad()
def project_forget_directions(model: UnlearnableClassifier, forget_inputs: torch.Tensor, forget_labels: torch.Tensor,
                              forget_classes: list[int], alpha: float = 1.0, orthogonalize: bool = True,
                              feature_mean: torch.Tensor | None = None) -> int:
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


def _targets(logits: torch.Tensor, keep: torch.Tensor, config: NHLEConfig) -> torch.Tensor:
    if config.retain_target == "uniform":
        return keep.float().expand_as(logits) / keep.sum()
    return torch.softmax(logits.masked_fill(~keep, float("-inf")) / config.temperature, dim=1)


@register_method("nhle", NHLEConfig, needs="forget",
                 description="NHLE: feature-level class weight masking + negative-hot label fine-tuning + "
                             "decision-level masking, from a few forget samples, no retained data")
def run_nhle(model: UnlearnableClassifier, forget_set: ForgetSet, config: NHLEConfig, retain: RetainSet | None,
             device: torch.device, progress: bool) -> dict[str, object]:
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
    if config.project and config.alpha > 0:
        estimate = None
        if model.has_class_stats:
            step = "class_stats"
        elif config.data_free == "batchnorm":
            estimate = batchnorm_feature_mean(model, x)
            step = "batchnorm_estimate" if estimate is not None else "none (no class statistics, no BatchNorm before the edit layer)"
        else:
            step = "none (no class statistics; data_free=none)"
        if step in ("class_stats", "batchnorm_estimate"):
            removed = project_forget_directions(model, x, forget_set.labels, forget, config.alpha, config.orthogonalize,
                                                feature_mean=estimate)
    for p in model.parameters():
        p.requires_grad_(False)
    head = model.head
    if config.scope == "edit_layer":
        params = [*model.edit_layer().parameters(), head.weight, head.bias]
    else:
        params = [head.weight, head.bias]
    for p in params:
        p.requires_grad_(True)
    row_filter = None
    if config.scope == "forgotten_rows":
        row_filter = (~keep).float()
    cached = None if config.scope == "edit_layer" else model.features(x).detach()
    optimizer = torch.optim.Adam(params, lr=config.lr)
    for _ in tqdm(range(config.steps), desc="nhle", disable=not progress, unit="step"):
        feats = model.features(x) if cached is None else cached
        logp = F.log_softmax(head(feats), dim=1)
        p_forgotten = logp[:, forget].exp().sum(1).clamp(max=1 - 1e-6)
        loss = -(targets * logp.masked_fill(~keep, 0)).sum(1).mean() - config.neg_value * torch.log1p(-p_forgotten).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if row_filter is not None:
            head.weight.grad.mul_(row_filter[:, None])
            head.bias.grad.mul_(row_filter)
        optimizer.step()
    for p in model.parameters():
        p.requires_grad_(True)
    model.drop_class_stats(forget)
    return {"feature_step": step, "feature_directions": removed}
