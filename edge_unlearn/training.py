"""Training the original model and the retrain-from-scratch gold standard (same recipe).

The recipe (:class:`TrainConfig`) is recorded in every checkpoint, resolved (``augment="auto"`` is stored as
the augmentation it chose for the dataset), so `retrain` repeats it exactly. Data comes through
``Dataset.split(...)`` and a ``torch.utils.data.DataLoader``; under ``torchrun`` the same code runs as
DistributedDataParallel (one process per GPU or CPU slot, a DistributedSampler per process). A long training
writes its state every ``save_every`` steps and can resume from it.
Longer than 500 lines because the training loop, DDP, resume, mixed precision and the statistics recorded at the end share one state.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.utils.data
from torch import nn
from tqdm.auto import tqdm

from .data import Dataset, preprocess
from .errors import CheckpointError, DataError, UsageError
from .guards import MAX_CLASSES
from .models import DEPTH_STATS_MAX_FLOATS, UnlearnableClassifier, build_model

#: version of the recipe record; records without one (edge-unlearn before issue #12) are version 1:
#: no augmentation, one-cycle AdamW, no label smoothing, full precision
RECIPE_VERSION = 2
AUGMENTS = ("auto", "none", "crop", "crop-flip")
SCHEDULES = ("onecycle", "cosine")
AMP_MODES = ("off", "bf16", "fp16")
#: warm-up share of the cosine schedule (linear from 0 to the peak, then cosine down to 0)
COSINE_WARMUP = 0.05
#: training-state file format (``--save-every`` / ``--resume``)
STATE_FORMAT = "edge-unlearn-train-state/1"


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(device)


def crop_padding_for(height: int, width: int) -> int:
    """Padding of the random crop: 4 pixels at 32×32 (the usual CIFAR recipe), in proportion to the size."""
    return max(1, round(min(height, width) / 8))


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe (version 2); stored in the checkpoint so `retrain` can repeat it exactly.

    Training runs ``epochs`` epochs, or more when needed to reach ``min_steps`` optimiser steps, so a
    small dataset (digits: 10 steps an epoch) still converges with the defaults. AdamW with weight decay;
    ``schedule``: ``onecycle`` (the default) or ``cosine`` (5 % linear warm-up, then cosine to 0), peaking at
    ``lr``. ``augment``: ``auto`` picks ``crop-flip`` for 3-channel images (random crop after ``crop_padding``
    pixels of zero padding + horizontal flip) and ``none`` for 1-channel images (digits, fashion items: a
    flip changes their meaning); the checkpoint records the resolved choice. ``label_smoothing`` in [0, 1).
    ``amp``: autocast in bf16 or fp16 on CUDA (``off`` on CPU). ``batch_size`` is the global batch: under
    torchrun each of N processes takes ``batch_size / N``.
    """

    epochs: int = 3
    min_steps: int = 500
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    augment: str = "auto"
    crop_padding: int | None = None
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    amp: str = "off"
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        if self.version > RECIPE_VERSION:
            raise UsageError(
                f"training recipe version {self.version} is newer than this edge-unlearn's "
                f"({RECIPE_VERSION}); upgrade edge-unlearn"
            )
        if self.augment not in AUGMENTS:
            raise UsageError(f"--augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.amp not in AMP_MODES:
            raise UsageError(f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        smoothing = self.label_smoothing
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
            raise UsageError(f"--label-smoothing must be a number in [0, 1), got {smoothing!r}")
        padding = self.crop_padding
        if padding is not None and (isinstance(padding, bool) or not isinstance(padding, int) or padding < 0):
            raise UsageError(f"crop_padding must be a whole number of pixels >= 0, got {padding!r}")

    def resolved(self, input_shape: Sequence[int]) -> TrainConfig:
        """The recipe with ``augment="auto"`` replaced by the choice for images of ``input_shape`` and the
        crop padding fixed: what the checkpoint records and what runs."""
        channels, height, width = (int(v) for v in input_shape)
        augment = self.augment
        if augment == "auto":
            augment = "crop-flip" if channels == 3 else "none"
        padding = None
        if augment != "none":
            padding = self.crop_padding if self.crop_padding is not None else crop_padding_for(height, width)
        return replace(self, augment=augment, crop_padding=padding, version=RECIPE_VERSION)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """Read a recorded recipe; a record without a version (before issue #12) means today's plain recipe:
        no augmentation (its other new fields default to what it did: one-cycle, no smoothing, fp32)."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "version" not in data:
            known.setdefault("augment", "none")
        known.setdefault("version", RECIPE_VERSION)
        return cls(**known)


@dataclass(frozen=True)
class TrainResult:
    model: UnlearnableClassifier
    seconds: float
    final_loss: float
    config: TrainConfig | None = None  # the resolved recipe that ran
    steps: int = 0
    world_size: int = 1
    rank: int = 0
    resumed_from_step: int = 0


# ----------------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Processes:
    """Where this process sits in a torchrun launch (``world_size`` 1: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def launched_processes() -> Processes:
    """The torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); a single process without it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise UsageError(f"RANK/WORLD_SIZE/LOCAL_RANK are not whole numbers ({exc}); launch with torchrun") from exc
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK {rank} / WORLD_SIZE {world} are inconsistent; launch with torchrun")
    return Processes(rank=rank, world_size=world, local_rank=local)


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[Processes]:
    """Join the torchrun process group for the block (NCCL on CUDA, gloo on CPU), leave it afterwards.

    Outside torchrun (``WORLD_SIZE`` unset or 1) this is a single process and does nothing."""
    procs = launched_processes()
    if not procs.distributed:
        yield procs
        return
    import torch.distributed as dist

    cuda = resolve_device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(procs.local_rank)
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group(backend="nccl" if cuda else "gloo")  # MASTER_ADDR/PORT etc. from torchrun
    try:
        yield procs
    finally:
        if owner and dist.is_initialized():
            dist.destroy_process_group()


def _device_for(config: TrainConfig, procs: Processes) -> torch.device:
    device = resolve_device(config.device)
    if device.type == "cuda" and procs.distributed:
        return torch.device("cuda", procs.local_rank)
    return device


# ------------------------------------------------------------------------------------------- augmentation


def augment_batch(images: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """The recipe's augmentation of a uint8 batch [B, C, H, W] (torchvision.transforms.v2 functionals, their
    random parameters drawn from ``generator`` so a run is reproducible and resumable)."""
    if config.augment == "none":
        return images
    from torchvision.transforms.v2 import functional as TF

    out = images
    if config.augment in ("crop", "crop-flip"):
        pad = int(config.crop_padding or 0)
        height, width = images.shape[-2:]
        padded = TF.pad(images, [pad, pad, pad, pad], fill=0)
        offsets = torch.randint(0, 2 * pad + 1, (len(images), 2), generator=generator).tolist()
        out = torch.stack([TF.crop(padded[i], top, left, height, width) for i, (top, left) in enumerate(offsets)])
    if config.augment == "crop-flip":
        flip = torch.rand(len(out), generator=generator) < 0.5
        out = torch.where(flip[:, None, None, None], TF.horizontal_flip(out), out)
    return out


# ------------------------------------------------------------------------------------------------ schedules


class WarmupCosine:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine from 1 to 0 at ``total`` steps."""

    def __init__(self, total: int, warmup: int) -> None:
        self.total, self.warmup = total, warmup

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    if config.schedule == "cosine":
        warmup = max(1, round(COSINE_WARMUP * total_steps))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup))
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps)


# ---------------------------------------------------------------------------------------------- data order


class ResumableSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler (shuffled by ``seed + epoch``, one shard per process) that can skip the first
    ``skip`` indices of an epoch: how a resumed training continues mid-epoch without reading the skipped images."""

    skip: int = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return self.num_samples - self.skip


@dataclass(frozen=True)
class Plan:
    """How many steps: per-process batch, steps per epoch, epochs, total."""

    per_process_batch: int
    steps_per_epoch: int
    epochs: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def plan_steps(samples: int, config: TrainConfig, world_size: int = 1) -> Plan:
    if config.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {config.epochs}")
    if samples < 1:
        raise UsageError("the training split is empty; give a dataset with training images")
    if config.batch_size % world_size:
        raise UsageError(
            f"--batch-size {config.batch_size} is the global batch and must divide evenly among the "
            f"{world_size} processes; use a multiple of {world_size}"
        )
    per_process = config.batch_size // world_size
    shard = -(-samples // world_size)
    steps_per_epoch = -(-shard // per_process)
    epochs = max(config.epochs, -(-config.min_steps // steps_per_epoch))
    return Plan(per_process, steps_per_epoch, epochs)


# ------------------------------------------------------------------------------------------ training state


def _identity(
    arch: Any, data: Dataset, config: TrainConfig, forget_classes: Sequence[int], world_size: int, samples: int
) -> dict[str, Any]:
    """What a training-state file must match to be resumed by this training."""
    arch_record = arch.to_json() if hasattr(arch, "to_json") else str(arch)
    return {
        "arch": arch_record,
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "recipe": config.to_json(),
        "forget_classes": sorted(int(c) for c in forget_classes),
        "world_size": world_size,
        "train_samples": samples,
    }


def _rng_state(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "augment": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _gather(procs: Processes, value: Any) -> list[Any]:
    if not procs.distributed:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * procs.world_size
    dist.all_gather_object(out, value)
    return out


def save_train_state(
    path: Path,
    procs: Processes,
    identity: dict[str, Any],
    step: int,
    model: nn.Module,
    optimizer,
    scheduler,
    scaler,
    generator: torch.Generator,
    device: torch.device,
) -> None:
    """Write the training state (weights, optimiser, schedule, every process's RNG states, step) atomically;
    the main process writes, the others hand it their RNG states."""
    from .fileio import atomic_output

    rngs = _gather(procs, _rng_state(generator, device))
    if procs.is_main:
        state = {
            "format": STATE_FORMAT,
            "identity": identity,
            "step": step,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rngs,
        }
        with atomic_output(path) as tmp:
            torch.save(state, tmp)
    procs.barrier()


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read a training-state file without executing code (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--resume {path}: no such file; give a training-state file written with --save-every")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip/pickle/unpickler errors on damage
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"--resume {path} is not a readable training-state file ({first[:200]}); it is "
            "corrupt or of another kind: resume from another one or train afresh"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"--resume {path} is not an edge-unlearn training-state file ({STATE_FORMAT}); "
            "give a file written with --save-every"
        )
    return state


def check_resumable(state: dict[str, Any], identity: dict[str, Any], path: str | Path) -> None:
    """Refuse a state of another training: its arch, classes, recipe or number of processes differ."""
    theirs = state.get("identity", {})
    if not isinstance(theirs, dict) or "recipe" not in theirs:
        raise CheckpointError(f"--resume {path} records no training identity; give a file written with --save-every")
    # a key the file lacks (written before it was recorded) is not compared
    differing = sorted(k for k in identity if k in theirs and theirs[k] != identity[k])
    if differing:
        shown = "; ".join(f"{k}: file {theirs.get(k)!r} vs now {identity[k]!r}" for k in differing[:2])
        raise UsageError(
            f"--resume {path} was written by another training ({shown}); resume with the options "
            "it was started with, or train afresh"
        )


# -------------------------------------------------------------------------------------------------- train


def train_model(
    arch: Any,
    data: Dataset,
    config: TrainConfig = TrainConfig(),
    forget_classes: Sequence[int] = (),
    progress: bool = True,
    *,
    workers: int = 0,
    save_every: int = 0,
    state_path: str | Path | None = None,
    resume: str | Path | None = None,
    procs: Processes | None = None,
    amp_on_cpu: str = "refuse",
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``arch`` on ``data``; with ``forget_classes`` the model never sees them (retrain-from-scratch)
    and their outputs are masked from the start, so it is the same contract as an unlearned model.

    ``workers``: DataLoader worker processes. ``save_every``: write the training state to ``state_path``
    every so many steps; ``resume``: continue from such a file (same recipe, arch and process count), giving
    the weights an uninterrupted run gives. ``procs``: this process's place in a torchrun launch (from
    :func:`process_group`); the model is then wrapped in DistributedDataParallel. ``amp_on_cpu``:
    ``refuse`` a mixed-precision recipe on CPU, or ``ignore`` it (retraining a GPU recipe on a CPU).
    ``log``: where a progress line goes every 5 % of the steps (for logs, where no progress bar is drawn)."""
    procs = procs or Processes()
    device = _device_for(config, procs)
    config = config.resolved(data.input_shape)
    amp = config.amp
    if amp != "off" and device.type != "cuda":
        if amp_on_cpu == "refuse":
            raise UsageError(f"--amp {amp} needs a CUDA GPU (this run is on {device.type}); drop --amp")
        warnings.warn(
            f"the recipe's mixed precision ({amp}) needs CUDA; training in float32 on {device.type}", stacklevel=2
        )
        amp = "off"
    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    if save_every < 0:
        raise UsageError(f"--save-every must be 0 (never) or a number of steps, got {save_every}")
    if data.num_classes > MAX_CLASSES:  # before the head and per-class tables are sized by it
        raise DataError(
            f"{data.spec}: {data.num_classes:,} classes; labels must be 0..C-1 with at most {MAX_CLASSES:,} classes"
        )
    retained = None
    if forget_classes:
        retained = [c for c in range(data.num_classes) if c not in set(forget_classes)]
    split = data.split("train", classes=retained)
    identity = _identity(arch, data, config, forget_classes, procs.world_size, len(split))
    state = None
    if resume is not None:
        state = load_train_state(resume)
        check_resumable(state, identity, resume)

    torch.manual_seed(config.seed)
    model = build_model(arch, data.num_classes, data.input_shape)
    if forget_classes:
        model.mask_classes(forget_classes)
    plan = plan_steps(len(split), config, procs.world_size)
    total = plan.total_steps

    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config, total)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    generator = torch.Generator().manual_seed(config.seed + 1_000_003 * procs.rank)
    step = 0
    if state is not None:
        try:
            step = int(state["step"])
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            rng = state["rng"][procs.rank]
            torch.set_rng_state(rng["torch"])
            generator.set_state(rng["augment"])
            if device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"], device)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(
                f"--resume {resume}: the training state does not fit this model ({first}); "
                "the file was edited: resume from another one or train afresh"
            ) from exc
        if not 0 < step < total:
            raise CheckpointError(
                f"--resume {resume}: step {step} is outside this training's 1..{total - 1}; "
                "the file was edited: resume from another one or train afresh"
            )
    resumed_from = step

    net: nn.Module = model
    if procs.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = ResumableSampler(split, num_replicas=procs.world_size, rank=procs.rank, shuffle=True, seed=config.seed)
    loader = torch.utils.data.DataLoader(
        split,
        batch_size=plan.per_process_batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(config.label_smoothing))
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    norm = data.normalization
    state_file = Path(state_path) if state_path is not None else None
    if save_every and state_file is None:
        raise UsageError("--save-every needs a file to write the training state to")

    start = time.perf_counter()
    loss_value = float("nan")
    log_every = max(1, total // 20)
    bar = tqdm(
        total=total,
        initial=step,
        desc=f"train {getattr(arch, 'name', arch)}",
        disable=not (progress and procs.is_main),
        unit="step",
    )
    for epoch in range(step // plan.steps_per_epoch, plan.epochs):
        sampler.set_epoch(epoch)
        sampler.skip = (step - epoch * plan.steps_per_epoch) * plan.per_process_batch
        for images, labels in loader:
            xb = preprocess(augment_batch(images, config, generator), norm).to(device, non_blocking=True)
            yb = labels.to(device, non_blocking=True)
            with (
                torch.autocast(device.type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            ):
                loss = loss_fn(net(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            bar.update(1)
            if step % 20 == 1 or step == total:
                loss_value = loss.item()
                bar.set_postfix(loss=f"{loss_value:.3f}")
            if save_every and step % save_every == 0 and step < total:
                save_train_state(
                    state_file,
                    procs,
                    identity,
                    step,
                    model,
                    optimizer,  # type: ignore[arg-type]
                    scheduler,
                    scaler,
                    generator,
                    device,
                )
            if log is not None and procs.is_main and (step % log_every == 0 or step == total):
                loss_value = loss.item()
                rate = (time.perf_counter() - start) / (step - resumed_from)
                log(
                    f"step {step}/{total} (epoch {epoch + 1}/{plan.epochs}) loss {loss_value:.4f} "
                    f"lr {scheduler.get_last_lr()[0]:.2e}, {rate:.2f} s/step, ~{rate * (total - step) / 60:.0f} min left"
                )
        sampler.skip = 0
    bar.close()
    if math.isnan(loss_value) and step > resumed_from:
        loss_value = loss.item()
    record_training_stats(model, split, norm, procs, workers)  # part of the recipe: retraining pays it too
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.eval().cpu()
    return TrainResult(
        model=model,
        seconds=seconds,
        final_loss=loss_value,
        config=config,
        steps=step,
        world_size=procs.world_size,
        rank=procs.rank,
        resumed_from_step=resumed_from,
    )


def record_training_stats(
    model: UnlearnableClassifier,
    split: torch.utils.data.Dataset,
    norm,
    procs: Processes,
    workers: int = 0,
    batch_size: int = 512,
) -> None:
    """The model's per-class statistics over the (unaugmented) training split, streamed in batches; under
    torchrun every process sums its own share and the sums are all-reduced, so every process (and the
    checkpoint) holds the mean over the whole split. The per-class means at every depth too
    (:meth:`~edge_unlearn.models.UnlearnableClassifier.record_depth_stats`: the research scripts
    use them) where they fit :data:`~edge_unlearn.models.DEPTH_STATS_MAX_FLOATS`."""
    shard = torch.utils.data.Subset(split, range(procs.rank, len(split), procs.world_size))

    def loader():
        return torch.utils.data.DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers)

    def transform(images: torch.Tensor) -> torch.Tensor:
        return preprocess(images, norm)

    if procs.distributed:  # every process measures the checkpoint's model: rank 0's BatchNorm statistics
        import torch.distributed as dist

        for buffer in model.buffers():  # (each rank's last forward updated its own from its own batch)
            dist.broadcast(buffer, 0)
    sums, counts = model.class_stat_sums(loader(), transform=transform)
    depth_stats = model.depth_stats_size() <= DEPTH_STATS_MAX_FLOATS
    depth_sums: dict[str, torch.Tensor] = {}
    if depth_stats:
        depth_sums, _ = model.depth_stat_sums(loader(), transform=transform)
    if procs.distributed:
        counts_dev = counts.to(sums.device)
        dist.all_reduce(sums)
        for total in depth_sums.values():
            dist.all_reduce(total)
        dist.all_reduce(counts_dev)
        counts = counts_dev.cpu()
    model.set_class_stats(sums, counts)
    if depth_stats:
        model.set_depth_stats(depth_sums, counts)
