"""NHLE's optional backbone step (``backbone_step="last_block"``, issue #15): fine-tune the backbone's last
residual block on the forget samples while *retention anchors* hold the retained classes' features in place.

No retained data is available, so the anchors are synthesised: inputs of the block, started from each
retained class's recorded channel mean at the block's input (the depth statistics) plus noise, and optimised
until the block's BatchNorm layers see batch statistics equal to their running ones, their channel means
stay at the class mean and the head calls them that class (BatchNorm-statistics inversion, as data-free
distillation does for whole networks, restricted to one block so it costs seconds, not hours). The block is
then trained (BatchNorm frozen, head fixed) so the forget samples' features carry the negative-hot target —
or defeat a linear probe refitted on the fly — while the anchors' features stay where the original block put
them. ``benchmarks/probe_gap.py`` measures it against retraining (docs/nhle.md has the figures).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from edge_unlearn.errors import UsageError

BACKBONE_OBJECTIVES = ("nhle", "adversarial", "prototype")


def last_residual_block(backbone: nn.Module) -> nn.Module:
    """The last block of a torchvision-style ResNet backbone (``layer4[-1]``), or one clear error."""
    layer4 = getattr(backbone, "layer4", None)
    if isinstance(layer4, nn.Sequential) and len(layer4) and hasattr(layer4[-1], "conv1"):
        return layer4[-1]
    raise UsageError(
        "backbone_step=last_block needs a ResNet backbone ending in layer4 (cifar_resnet18, "
        "resnet18/34/50); use backbone_step=none for this model"
    )


def pooled_block(block: nn.Module, inputs: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Penultimate features of ``block`` run on its inputs: its output map, globally average-pooled."""
    return torch.cat([block(inputs[i : i + batch]).mean((2, 3)) for i in range(0, len(inputs), batch)])


def batch_stat_gap(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """How far a batch's channel mean and variance before ``bn`` are from its running ones (relative)."""
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    return (mean - bn.running_mean).norm() / bn.running_mean.norm().clamp(min=1e-6) + (
        var - bn.running_var
    ).norm() / bn.running_var.norm().clamp(min=1e-6)


def synthesize_block_inputs(
    block: nn.Module,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
    class_means: torch.Tensor,
    classes: list[int],
    spatial: tuple[int, int],
    per_class: int = 16,
    steps: int = 100,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Retention anchors without retained data: ``per_class`` post-ReLU inputs of ``block`` for each of
    ``classes`` (``class_means`` [C, channels]: their recorded channel means at the block's input), optimised so
    every BatchNorm in the block sees its running statistics, their channel means stay at their class's and the
    head calls them that class. The block is left as it was. Returns (inputs [N, channels, *spatial], labels)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(per_class).to(class_means.device)
    base = class_means[labels].float()[:, :, None, None]
    noise = torch.randn((len(labels), base.shape[1], *spatial), generator=gen).to(base.device)
    raw = (base * (1 + 0.5 * noise)).requires_grad_(True)
    if steps == 0:
        return torch.relu(raw).detach(), labels
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    seen: list[torch.Tensor] = []
    handles = [bn.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for bn in norms]
    frozen = [p.requires_grad for p in block.parameters()]
    for p in block.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.Adam([raw], lr=0.05 * float(class_means[classes].abs().mean()))
    try:
        for _ in range(steps):
            seen.clear()
            z = torch.relu(raw)
            out = block(z).mean((2, 3))
            loss = (
                sum(batch_stat_gap(x, bn) for x, bn in zip(seen, norms))
                + F.cross_entropy(out @ head_weight.T + head_bias, labels)
                + ((z.mean((2, 3)) - base[:, :, 0, 0]) ** 2).sum(1).mean() / (base**2).sum(1).mean()
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(block.parameters(), frozen):
            p.requires_grad_(flag)
    return torch.relu(raw).detach(), labels


def finetune_block(
    block: nn.Module,
    forget_inputs: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
    forget_classes: list[int],
    anchors: torch.Tensor | None,
    objective: str = "nhle",
    steps: int = 40,
    lr: float = 1e-3,
    anchor_weight: float = 10.0,
    anchor_labels: torch.Tensor | None = None,
    refit_every: int = 10,
    seed: int = 0,
) -> nn.Module:
    """A copy of ``block`` trained on the forget samples' block inputs (BatchNorm frozen, head fixed):

    - ``objective="nhle"``: the negative-hot loss through the head (each sample toward its own distribution over
      the retained classes, the forgotten classes' probability to 0);
    - ``objective="adversarial"``: a logistic probe refitted every ``refit_every`` steps on the current features
      of the anchors (their labels) and of the forget samples must not find the forget samples
      ("feature-indistinguishable" taken literally);
    - ``objective="prototype"``: each forget sample's pooled feature goes to the prototype of the retained class
      the original head ranks first for it (the mean feature of that class's anchors: no retained data), so the
      forgotten images land inside the retained classes' clusters rather than beside them.

    ``anchors`` (block inputs), if given, keep their pooled features where ``block`` put them (squared error
    relative to their energy, weight ``anchor_weight``)."""
    if objective not in BACKBONE_OBJECTIVES:
        raise UsageError(f"backbone objective must be one of {', '.join(BACKBONE_OBJECTIVES)}, got {objective!r}")
    if objective in ("adversarial", "prototype") and (anchors is None or anchor_labels is None):
        raise UsageError(f"the {objective} objective needs labelled anchors")
    from edge_unlearn.unlearn.nhle import _nhle_loss  # NHLE's own loss

    tuned = copy.deepcopy(block).eval()
    for p in tuned.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(tuned.parameters(), lr=lr)
    keep = torch.ones(head_weight.shape[0], dtype=torch.bool, device=head_weight.device)
    keep[forget_classes] = False
    with torch.no_grad():
        anchor_target = pooled_block(block, anchors) if anchors is not None else None
        logits = pooled_block(block, forget_inputs) @ head_weight.T + head_bias
        own = torch.softmax(logits.masked_fill(~keep, float("-inf")), 1)
        if objective == "prototype":
            prototypes = torch.zeros(head_weight.shape[0], anchor_target.shape[1], device=anchor_target.device)
            for c in anchor_labels.unique():
                prototypes[c] = anchor_target[anchor_labels == c].mean(0)
            goal = prototypes[own.argmax(1)]
            goal_energy = (goal**2).sum(1).mean().clamp(min=1e-12)
    for step in range(steps):
        feats = tuned(forget_inputs).mean((2, 3))
        if objective == "nhle":
            loss = _nhle_loss(feats @ head_weight.T + head_bias, keep, forget_classes, own)
        elif objective == "prototype":
            loss = ((feats - goal) ** 2).sum(1).mean() / goal_energy
        else:
            if step % refit_every == 0:
                probe_w, probe_b, centre, scale, columns = _refit_probe(
                    pooled_block(tuned, anchors).detach(), anchor_labels, feats.detach(), forget_classes, seed
                )
            logp = F.log_softmax(((feats - centre) / scale) @ probe_w.T + probe_b, 1)
            loss = -torch.log1p(-logp[:, columns].exp().sum(1).clamp(max=1 - 1e-6)).mean()
        if anchors is not None:
            out = tuned(anchors).mean((2, 3))
            loss = loss + anchor_weight * ((out - anchor_target) ** 2).sum(1).mean() / (anchor_target**2).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for p in tuned.parameters():
        p.requires_grad_(False)
    return tuned


def _refit_probe(
    anchor_feats: torch.Tensor,
    anchor_labels: torch.Tensor,
    forget_feats: torch.Tensor,
    forget_classes: list[int],
    seed: int,
):
    """A standardised logistic probe on anchors (their labels) + forget samples (label: the first forgotten
    class); returns its weights, the standardisation and the forget column(s)."""
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([anchor_feats, forget_feats])
    y = torch.cat([anchor_labels.cpu(), torch.full((len(forget_feats),), forget_classes[0], dtype=torch.long)])
    centre, scale = x.mean(0), x.std(0) + 1e-6
    probe = LogisticRegression(max_iter=300, random_state=seed).fit(((x - centre) / scale).cpu().numpy(), y.numpy())
    weight = torch.tensor(probe.coef_, dtype=torch.float32, device=x.device)
    bias = torch.tensor(probe.intercept_, dtype=torch.float32, device=x.device)
    if len(probe.classes_) == 2:  # binary: one logit for classes_[1]; softmax over (0, it) is the same probability
        weight, bias = torch.cat([torch.zeros_like(weight), weight]), torch.cat([torch.zeros_like(bias), bias])
    return weight, bias, centre, scale, [list(probe.classes_).index(forget_classes[0])]
