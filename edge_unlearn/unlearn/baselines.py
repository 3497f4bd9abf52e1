"""Baseline unlearning methods from the field, in the same registry and API as NHLE.

Each baseline is written from its paper's description; where this code differs from the authors' code the
method's docstring says so. ``needs`` in the registry states what data a method reads:

- ``forget``: only the :class:`ForgetSet` (``neggrad`` with its default ``retain_weight=0``);
- ``forget+retain``: the forget samples and a (subset of the) retained training data (``finetune``,
  ``random_label``, ``salun``, ``retrain``);
- ``full_train``: the full training set, i.e. forget + retain together (``ssd``).

Baselines are registered with ``masks=False`` (they are compared as the field runs them: no class weight
masking after unlearning), except ``retrain``, which masks the forgotten classes from the start exactly like
:func:`edge_unlearn.training.train_model` with ``forget_classes`` — the gold standard of docs/design.md §3 — so the
registry's ``retrain`` and the one the benchmark trains are the same model contract.
Longer than 500 lines because every registered baseline method is a short function of the same shape; one registry file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import UsageError
from ..models import UnlearnableClassifier
from ..training import TrainConfig
from . import ForgetSet, RetainSet, register_method

# ---------------------------------------------------------------------------------------------
# Shared helpers


def _retain_subset(retain: RetainSet | None, limit: int | None, seed: int, method: str) -> RetainSet:
    """``retain`` itself, or ``limit`` random samples of it (the "retain subset" a method trains on)."""
    if retain is None:
        raise UsageError(
            f"method {method} needs retained training data; pass the dataset it was trained on (--dataset)"
        )
    if limit is None or limit >= len(retain.inputs):
        return retain
    if limit < 1:
        raise UsageError(f"{method}: retain_samples must be at least 1 or None (all), got {limit}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(retain.inputs), generator=gen)[:limit].to(retain.inputs.device)
    return RetainSet(retain.inputs[idx], retain.labels[idx])


def _batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
    """Shuffled index batches covering ``range(n)`` once."""
    order = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size].to(device)


def _remaining_classes(model: UnlearnableClassifier, forget_classes: tuple[int, ...]) -> torch.Tensor:
    """Classes that are neither already masked nor being forgotten now (sorted, on the model's device)."""
    keep = model.class_mask.clone()
    keep[list(forget_classes)] = False
    return torch.nonzero(keep).flatten()


def _random_labels(labels: torch.Tensor, remaining: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A uniformly random remaining class for each sample (never a forgotten one)."""
    pick = torch.randint(len(remaining), (len(labels),), generator=gen)
    return remaining.cpu()[pick].to(labels.device)


def _sgd(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _train_on(
    model: UnlearnableClassifier,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    seed: int,
    desc: str,
    progress: bool,
    after_step=None,
) -> None:
    """Plain cross-entropy epochs over (inputs, labels) in train mode (BatchNorm statistics update)."""
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(inputs) + batch_size - 1) // batch_size)
    model.train()
    with tqdm(total=steps, desc=desc, disable=not progress, unit="step") as bar:
        for _ in range(epochs):
            for idx in _batches(len(inputs), batch_size, gen, inputs.device):
                loss = F.cross_entropy(model(inputs[idx]), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if after_step is not None:
                    after_step()
                bar.update(1)
    model.eval()


def _finish_class_stats(model: UnlearnableClassifier, forget_classes, retain: RetainSet | None) -> None:
    """Keep the checkpoint's class statistics (training-time per-class means, see ``record_class_stats``)
    honest after a baseline: re-record them on the retained data when the method had it (the backbone moved,
    so the old means are stale), and erase the forgotten classes' entries in every case — nothing about a
    forgotten class stays in the checkpoint. Without retained data (neggrad) the retained classes' means are
    left as they were (stale where the backbone moved)."""
    if retain is not None and hasattr(model, "record_class_stats"):
        model.record_class_stats(retain.inputs, retain.labels)
    if hasattr(model, "drop_class_stats"):
        model.drop_class_stats(list(forget_classes))


def _check_positive(method: str, **values) -> None:
    for name, value in values.items():
        if value is None or value <= 0:
            raise UsageError(f"{method}: {name} must be positive, got {value}")


# ---------------------------------------------------------------------------------------------
# retrain — the gold standard


@dataclass(frozen=True)
class RetrainConfig:
    """Retrain-from-scratch on the retained classes with the training recipe of
    :class:`edge_unlearn.training.TrainConfig` (AdamW + one-cycle; the same defaults, read from it)."""

    epochs: int = TrainConfig.epochs
    min_steps: int = getattr(TrainConfig, "min_steps", 0)
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    weight_decay: float = TrainConfig.weight_decay
    seed: int = 0
    retain_samples: int | None = None


def reinitialise(model: nn.Module, seed: int) -> None:
    """Reset every parameter and BatchNorm statistic in place (``reset_parameters`` of each module).

    This uses PyTorch's default initialisers, which differ from a torchvision constructor's (kaiming-normal
    convs, BN γ=1/β=0 are the same; resnet's optional zero-init of the last BN is not applied); for ``lenet``
    it is exactly a fresh model. Buffers that are not statistics (the class mask) are left as they are."""
    torch.manual_seed(seed)
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()


@register_method(
    "retrain",
    RetrainConfig,
    needs="forget+retain",
    masks=True,
    description="Retrain from scratch on the retained classes only (gold standard; forget classes "
    "masked from the start, as train_model does)",
)
def run_retrain(
    model: UnlearnableClassifier,
    forget_set: ForgetSet,
    config: RetrainConfig,
    retain: RetainSet | None,
    device: torch.device,
    progress: bool,
) -> None:
    """Re-initialise the model and train it on the retained data only, repeating ``train_model``'s loop
    (AdamW, one-cycle schedule, cross-entropy, shuffled batches, ``epochs`` or more to reach ``min_steps``).
    The forgotten classes are masked before training, as ``train_model(forget_classes=...)`` does, so their
    head rows never receive a gradient; class statistics are then recorded on the retained data."""
    _check_positive("retrain", epochs=config.epochs, batch_size=config.batch_size, lr=config.lr)
    rs = _retain_subset(retain, config.retain_samples, config.seed, "retrain")
    reinitialise(model, config.seed)
    model.mask_classes(forget_set.classes)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = (len(rs.inputs) + config.batch_size - 1) // config.batch_size
    epochs = max(config.epochs, -(-config.min_steps // steps_per_epoch))  # as train_model: at least min_steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=epochs * steps_per_epoch)
    _train_on(
        model,
        rs.inputs,
        rs.labels,
        epochs,
        config.batch_size,
        opt,
        config.seed,
        "retrain",
        progress,
        after_step=sched.step,
    )
    _finish_class_stats(model, forget_set.classes, rs)  # train_model records them too: part of the recipe


# ---------------------------------------------------------------------------------------------
# finetune


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tune (FT) on retained data: SGD with momentum, as in the SalUn/"sparsity" code's FT baseline."""

    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    retain_samples: int | None = None


@register_method(
    "finetune",
    FinetuneConfig,
    needs="forget+retain",
    masks=False,
    description="Fine-tune on retained data for a few epochs (catastrophic forgetting of the rest)",
)
def run_finetune(
    model: UnlearnableClassifier,
    forget_set: ForgetSet,
    config: FinetuneConfig,
    retain: RetainSet | None,
    device: torch.device,
    progress: bool,
) -> None:
    """FT (Warnecke et al.; the baseline of Jia et al. 2023 and SalUn): a few epochs of cross-entropy on
    the retained data only, at a larger learning rate than the end of training. The forget samples are not
    read. Differs from the authors' code only in the schedule: constant lr (theirs: cosine/step decay)."""
    _check_positive("finetune", epochs=config.epochs, batch_size=config.batch_size, lr=config.lr)
    rs = _retain_subset(retain, config.retain_samples, config.seed, "finetune")
    opt = _sgd(model.parameters(), config.lr, config.momentum, config.weight_decay)
    _train_on(model, rs.inputs, rs.labels, config.epochs, config.batch_size, opt, config.seed, "finetune", progress)
    _finish_class_stats(model, forget_set.classes, rs)


# ---------------------------------------------------------------------------------------------
# neggrad


@dataclass(frozen=True)
class NegGradConfig:
    """Gradient ascent on the forget samples (Adam); ``retain_weight`` > 0 adds a retain term (NegGrad+)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.0
    retain_weight: float = 0.0
    stop_at_zero: bool = True
    seed: int = 0
    retain_samples: int | None = None


@register_method(
    "neggrad",
    NegGradConfig,
    needs="forget",
    masks=False,
    description="Gradient ascent on the forget samples (optionally + a retain cross-entropy term)",
)
def run_neggrad(
    model: UnlearnableClassifier,
    forget_set: ForgetSet,
    config: NegGradConfig,
    retain: RetainSet | None,
    device: torch.device,
    progress: bool,
) -> None:
    """NegGrad / GA (Golatkar et al. 2020; "GA" in Jia et al. 2023 and SalUn): maximise the cross-entropy
    of the forget samples. With ``retain_weight`` = w > 0 it is NegGrad+ (Kurmanji et al. 2023):
    loss = w·CE(retain batch) − (1 − w)·CE(forget batch), which needs retained data.

    Differences from the authors' code: (1) Adam instead of SGD — on a confident model the cross-entropy
    gradient of correctly classified samples is ~1e-5 (softmax saturation) and SGD does not leave that
    plateau at any sane learning rate (measured: lr 0.1, 20 epochs, forget accuracy still 100%); Adam's
    scale-free steps do. (2) ``stop_at_zero`` (default on) stops after the first epoch at whose end no forget
    sample is classified correctly (eval mode) — unbounded ascent otherwise keeps destroying the model; the
    original runs a fixed number of epochs. BatchNorm runs in train mode, as in the original."""
    _check_positive("neggrad", epochs=config.epochs, batch_size=config.batch_size, lr=config.lr)
    if not 0.0 <= config.retain_weight < 1.0:
        raise UsageError(f"neggrad: retain_weight must lie in [0, 1), got {config.retain_weight}")
    rs = None
    if config.retain_weight > 0:
        rs = _retain_subset(retain, config.retain_samples, config.seed, "neggrad with retain_weight > 0")
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    x, y = forget_set.inputs, forget_set.labels
    steps = config.epochs * ((len(x) + config.batch_size - 1) // config.batch_size)
    with tqdm(total=steps, desc="neggrad", disable=not progress, unit="step") as bar:
        for _ in range(config.epochs):
            model.train()
            correct = 0
            for idx in _batches(len(x), config.batch_size, gen, x.device):
                logits = model(x[idx])
                correct += int((logits.argmax(1) == y[idx]).sum())
                loss = -F.cross_entropy(logits, y[idx])
                if rs is not None:
                    ridx = torch.randint(len(rs.inputs), (len(idx),), generator=gen).to(rs.inputs.device)
                    loss = (
                        config.retain_weight * F.cross_entropy(model(rs.inputs[ridx]), rs.labels[ridx])
                        + (1 - config.retain_weight) * loss
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
            if config.stop_at_zero:
                model.eval()
                with torch.no_grad():
                    if not bool((model(x).argmax(1) == y).any()):
                        break
    model.eval()
    _finish_class_stats(model, forget_set.classes, rs)


# ---------------------------------------------------------------------------------------------
# random_label


@dataclass(frozen=True)
class RandomLabelConfig:
    """Random labelling (RL): forget samples relabelled at random, trained together with retained data."""

    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    retain_samples: int | None = None


def _random_label_training(
    model: UnlearnableClassifier,
    forget_set: ForgetSet,
    rs: RetainSet,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    seed: int,
    desc: str,
    progress: bool,
    after_step=None,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    remaining = _remaining_classes(model, forget_set.classes)
    rand = _random_labels(forget_set.labels, remaining, gen)
    inputs = torch.cat([forget_set.inputs, rs.inputs])
    labels = torch.cat([rand, rs.labels])
    _train_on(model, inputs, labels, epochs, batch_size, optimizer, seed + 1, desc, progress, after_step)


@register_method(
    "random_label",
    RandomLabelConfig,
    needs="forget+retain",
    masks=False,
    description="Fine-tune with random labels on the forget samples plus retained data",
)
def run_random_label(
    model: UnlearnableClassifier,
    forget_set: ForgetSet,
    config: RandomLabelConfig,
    retain: RetainSet | None,
    device: torch.device,
    progress: bool,
) -> None:
    """RL (Golatkar et al. 2020; Hayase et al. 2020; the SalUn code's ``RL``): each forget sample gets a
    random label, fixed for the run, and the model is fine-tuned with cross-entropy on the forget samples
    (random labels) mixed with the retained data (true labels), shuffled together.

    Difference from the SalUn code: random labels are drawn from the remaining classes only (the original
    draws from all classes, so a sample can keep its own label); constant lr."""
    _check_positive("random_label", epochs=config.epochs, batch_size=config.batch_size, lr=config.lr)
    rs = _retain_subset(retain, config.retain_samples, config.seed, "random_label")
    opt = _sgd(model.parameters(), config.lr, config.momentum, config.weight_decay)
    _random_label_training(
        model, forget_set, rs, config.epochs, config.batch_size, opt, config.seed, "random_label", progress
    )
    _finish_class_stats(model, forget_set.classes, rs)


# ---------------------------------------------------------------------------------------------
# ssd — Selective Synaptic Dampening


@dataclass(frozen=True)
class SSDConfig:
    """SSD hyper-parameters: α (selection weighting) and λ (dampening constant); paper defaults for ResNets."""

    alpha: float = 10.0
    lam: float = 1.0
    exponent: float = 1.0
    batch_size: int = 128


def _importances(
    model: UnlearnableClassifier, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> list[torch.Tensor]:
    """Mean over batches of the squared gradient of the batch-mean cross-entropy (SSD's ``calc_importance``)."""
    params = [p for p in model.parameters()]
    imp = [torch.zeros_like(p) for p in params]
    batches = 0
    for i in range(0, len(inputs), batch_size):
        loss = F.cross_entropy(model(inputs[i : i + batch_size]), labels[i : i + batch_size])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, g in zip(imp, grads):
            if g is not None:
                acc += g.detach() ** 2
        batches += 1
    return [acc / max(batches, 1) for acc in imp]


@register_method(
    "ssd",
    SSDConfig,
    needs="full_train",
    masks=False,
    description="Selective Synaptic Dampening: dampen parameters far more important to the forget "
    "set than to the full training set (no training)",
)
def run_ssd(
    model: UnlearnableClassifier,
    forget_set: ForgetSet,
    config: SSDConfig,
    retain: RetainSet | None,
    device: torch.device,
    progress: bool,
) -> None:
    """SSD (Foster, Schoepf, Brintrup, AAAI 2024). Importances are the mean squared gradients (diagonal Fisher
    approximation) of the cross-entropy over batches of the full training set (forget + retain) and of the
    forget set, I_D and I_f. Every parameter θ with I_f > α·I_D is multiplied by
    β = min((λ·I_D / I_f)^exponent, 1).

    As in the authors' code: batch-mean gradients squared and averaged over batches, the model in eval mode
    (BatchNorm statistics untouched), every parameter (BN affine and head included) eligible. The full train
    set is the forget samples given plus ``retain`` (the benchmark passes all training data of both)."""
    _check_positive("ssd", alpha=config.alpha, lam=config.lam, batch_size=config.batch_size)
    if retain is None:
        raise UsageError("method ssd needs the full training set (forget + retain); pass --dataset")
    model.eval()
    full_x = torch.cat([forget_set.inputs, retain.inputs])
    full_y = torch.cat([forget_set.labels, retain.labels])
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(full_x), generator=gen).to(full_x.device)  # mixed batches, as a shuffled loader
    full_imp = _importances(model, full_x[order], full_y[order], config.batch_size)
    forget_imp = _importances(model, forget_set.inputs, forget_set.labels, config.batch_size)
    with torch.no_grad():
        for p, imp_d, imp_f in zip(model.parameters(), full_imp, forget_imp):
            select = imp_f > config.alpha * imp_d
            beta = ((config.lam * imp_d) / imp_f.clamp_min(1e-30)).pow(config.exponent).clamp(max=1.0)
            p.copy_(torch.where(select, p * beta, p))
    _finish_class_stats(model, forget_set.classes, retain)


# ---------------------------------------------------------------------------------------------
# salun — saliency unlearning


@dataclass(frozen=True)
class SalUnConfig:
    """SalUn: a weight-saliency mask (top ``sparsity`` fraction of |∇ forget loss|) + random-label training."""

    sparsity: float = 0.5
    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    retain_samples: int | None = None


def saliency_mask(model: UnlearnableClassifier, forget_set: ForgetSet, fraction: float) -> list[torch.Tensor]:
    """Boolean mask per parameter: True for the ``fraction`` of all weights (one global threshold) with the
    largest |gradient of the forget cross-entropy| — SalUn's hard thresholding of the saliency map."""
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"salun: sparsity (the fraction of salient weights) must lie in (0, 1], got {fraction}")
    model.eval()
    params = list(model.parameters())
    loss = F.cross_entropy(model(forget_set.inputs), forget_set.labels, reduction="sum")
    grads = [
        g.abs() if g is not None else torch.zeros_like(p)
        for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))
    ]
    flat = torch.cat([g.flatten() for g in grads])
    keep = max(1, int(round(fraction * flat.numel())))
    threshold = torch.topk(flat, keep, sorted=True).values[-1]
    return [g >= threshold for g in grads]


@register_method(
    "salun",
    SalUnConfig,
    needs="forget+retain",
    masks=False,
    description="SalUn: random-label training restricted to the weights salient for the forget loss",
)
def run_salun(
    model: UnlearnableClassifier,
    forget_set: ForgetSet,
    config: SalUnConfig,
    retain: RetainSet | None,
    device: torch.device,
    progress: bool,
) -> None:
    """SalUn (Fan et al., ICLR 2024): the saliency map is |∇_θ CE(forget samples)|; the top ``sparsity``
    fraction of weights (one global threshold, 0.5 in the paper) form the mask; then RL (random labels on
    the forget samples + retained data) updates only the salient weights.

    Difference from the authors' code: there the gradient is multiplied by the mask before ``optimizer.step``,
    so masked weights still move through weight decay (and momentum). Here masked weights stay exactly
    unchanged: they are restored after every step. BatchNorm running statistics (buffers, not weights) still
    update in train mode, as in the original; random labels come from the remaining classes only."""
    _check_positive("salun", epochs=config.epochs, batch_size=config.batch_size, lr=config.lr)
    rs = _retain_subset(retain, config.retain_samples, config.seed, "salun")
    masks = saliency_mask(model, forget_set, config.sparsity)
    params = list(model.parameters())
    frozen = [p.detach().clone() for p in params]
    opt = _sgd(params, config.lr, config.momentum, config.weight_decay)

    def restore() -> None:
        with torch.no_grad():
            for p, m, f in zip(params, masks, frozen):
                p.copy_(torch.where(m, p, f))

    _random_label_training(
        model, forget_set, rs, config.epochs, config.batch_size, opt, config.seed, "salun", progress, after_step=restore
    )
    _finish_class_stats(model, forget_set.classes, rs)
