"""Training the original model and the retrain-from-scratch gold standard (same recipe)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import Dataset, preprocess
from .errors import UsageError
from .models import UnlearnableClassifier, build_model


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(device)


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe; stored in the checkpoint so `retrain` can repeat it exactly.

    Training runs ``epochs`` epochs, or more when needed to reach ``min_steps`` optimiser steps, so a
    small dataset (digits: 10 steps an epoch) still converges with the defaults.
    """

    epochs: int = 3
    min_steps: int = 500
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass(frozen=True)
class TrainResult:
    model: UnlearnableClassifier
    seconds: float
    final_loss: float


def train_model(arch: str, data: Dataset, config: TrainConfig = TrainConfig(),
                forget_classes: Sequence[int] = (), progress: bool = True) -> TrainResult:
    """Train ``arch`` on ``data``; with ``forget_classes`` the model never sees them (retrain-from-scratch)
    and their outputs are masked from the start, so it is the same contract as an unlearned model."""
    if config.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {config.epochs}")
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = build_model(arch, data.num_classes, data.input_shape)
    if forget_classes:
        model.mask_classes(forget_classes)
        data = data.subset_classes([c for c in range(data.num_classes) if c not in set(forget_classes)])
    model.to(device).train()
    x = preprocess(data.x_train, data.normalization)
    y = data.y_train
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = (len(x) + config.batch_size - 1) // config.batch_size
    epochs = max(config.epochs, -(-config.min_steps // steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                    total_steps=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    loss_value = float("nan")
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"train {arch}", disable=not progress, unit="step")
    for _epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * config.batch_size:(i + 1) * config.batch_size]
            xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update(1)
            if i % 20 == 0:
                loss_value = loss.item()
                bar.set_postfix(loss=f"{loss_value:.3f}")
    bar.close()
    model.record_class_stats(x, y)  # one eval pass; part of the recipe, so retraining pays it too
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.eval().cpu()
    return TrainResult(model=model, seconds=seconds, final_loss=loss_value)
