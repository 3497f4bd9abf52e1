"""The jobs behind the CLI, as Python functions: train, retrain, forget, evaluate.

Each takes paths and plain values, does the work and returns a JSON-able summary, so the click commands
stay thin and Python users get the same behaviour.
Longer than 500 lines because one function per CLI job (train, retrain, forget, evaluate) with the dataset checks they share; the jobs are defined in one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Checkpoint, CheckpointMeta, load_checkpoint, save_checkpoint
from .core.figures import retain_drop
from .data import (
    Dataset,
    load_dataset,
    load_image_folder,
    preprocess,
    resolve_classes,
    take_samples,
    training_preprocessing,
)
from .errors import CheckpointError, UsageError
from .guards import check_every_class_present
from .metrics import EvalReport, evaluate_model
from .training import TrainConfig, process_group, train_model
from .unlearn import ForgetSet, RetainSet, forget, get_method, method_config


def dataset_for(ck: Checkpoint, spec: str | None, data_dir: str | None = None, download: bool = False) -> Dataset:
    """The checkpoint's dataset (or ``spec``), checked against the model's classes and input shape, read
    lazily through the checkpoint's preprocessing with the model's normalisation (none is computed)."""
    spec = spec or ck.meta.dataset
    if not spec:
        raise UsageError("the checkpoint records no dataset; pass --dataset")
    # an imported model or one trained with --image-size: its own channels, size and normalisation
    data = load_dataset(
        spec,
        data_dir=data_dir,
        download=download,
        preprocessing=ck.meta.preprocessing,
        normalization=ck.meta.normalization,
    )
    if data.num_classes != ck.meta.num_classes:
        raise CheckpointError(
            f"dataset {spec} has {data.num_classes} classes but the checkpoint was trained on "
            f"{ck.meta.num_classes}; pass the --dataset it was trained on ({ck.meta.dataset or '?'})"
        )
    if data.input_shape != tuple(ck.meta.input_shape):
        raise CheckpointError(
            f"dataset {spec} has images of shape {data.input_shape} but the checkpoint expects "
            f"{tuple(ck.meta.input_shape)}; pass the --dataset it was trained on ({ck.meta.dataset or '?'})"
        )
    return data


@dataclass(frozen=True)
class TrainRun:
    """How a training runs, as opposed to what it computes (the recipe): DataLoader workers, periodic
    training-state files (every ``save_every`` steps to ``state_path``, default ``OUTPUT.state.pt``) and the
    file to resume from."""

    workers: int = 0
    save_every: int = 0
    state_path: str | None = None
    resume: str | None = None
    progress: bool = True
    log: Callable[[str], None] | None = None


def _state_path(run: TrainRun, out: str | Path) -> str | None:
    if run.state_path is not None:
        return run.state_path
    if run.resume is not None:
        return run.resume  # a resumed training keeps updating the file it resumed from
    return f"{out}.state.pt" if run.save_every else None


def _check_state_path(run: TrainRun, out: str | Path) -> None:
    from .fileio import check_output_path

    path = _state_path(run, out)
    if run.save_every and path is not None:
        check_output_path(path, inputs=[out], option="--save-every's state file")


def train_checkpoint(
    dataset: str,
    arch: str,
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    data_dir: str | None = None,
    download: bool = False,
    progress: bool = True,
    run: TrainRun | None = None,
    image_size: int | Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train the original model and write its checkpoint (under torchrun: every process trains its shard,
    the first writes the checkpoint, the others wait for it). ``image_size``: resize (shorter side) and
    centre-crop every image to it (a folder of mixed sizes needs it); recorded as the checkpoint's
    preprocessing, so every later command reads the data the same way."""
    run = run or TrainRun(progress=progress)
    _check_state_path(run, out)
    with process_group(config.device) as procs:
        data = load_dataset(dataset, data_dir=data_dir, download=download, image_size=image_size)
        check_every_class_present(data)  # issue #13: labels 5..14 would train 5 empty classes
        result = train_model(
            arch,
            data,
            config,
            progress=run.progress,
            workers=run.workers,
            save_every=run.save_every,
            state_path=_state_path(run, out),
            resume=run.resume,
            procs=procs,
            log=run.log,
        )
        recipe = result.config or config
        summary: dict[str, Any] = {
            "checkpoint": str(out),
            "arch": arch,
            "dataset": dataset,
            "seconds": result.seconds,
            "recipe": recipe.to_json(),
            "steps": result.steps,
            "processes": procs.world_size,
            "rank": procs.rank,
        }
        if procs.is_main:
            report = evaluate_model(result.model, data, [], probe=False)
            meta = CheckpointMeta(
                arch=arch,
                num_classes=data.num_classes,
                class_names=data.class_names,
                input_shape=data.input_shape,
                normalization=data.normalization,
                dataset=dataset,
                train_recipe=recipe.to_json(),
                preprocessing=training_preprocessing(data, image_size),
            )
            summary["sha256"] = save_checkpoint(out, result.model, meta)
            summary.update(test_accuracy=report.accuracy, per_class_accuracy=report.per_class_accuracy)
        procs.barrier()  # the others return once the checkpoint is in place
    return summary


def retrain_checkpoint(
    original: str | Path,
    forget_classes: Sequence[str | int],
    out: str | Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    download: bool = False,
    progress: bool = True,
    config: TrainConfig | None = None,
    run: TrainRun | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """The gold standard: the original's arch and recipe, trained on the retained classes only. ``seed``
    replaces the recipe's seed (None: the original's), so several retrained models show the seed spread."""
    run = run or TrainRun(progress=progress)
    _check_state_path(run, out)
    ck = load_checkpoint(original)
    recipe = config or TrainConfig.from_json(ck.meta.train_recipe)
    if seed is not None:
        recipe = replace(recipe, seed=seed)
    with process_group(recipe.device) as procs:
        data = dataset_for(ck, dataset, data_dir, download)
        classes = resolve_classes(forget_classes, ck.meta.class_names)
        if len(classes) >= data.num_classes:
            raise UsageError("that would forget every class; keep at least one class")
        result = train_model(
            ck.meta.arch_spec,
            data,
            recipe,
            forget_classes=classes,
            progress=run.progress,
            workers=run.workers,
            save_every=run.save_every,
            state_path=_state_path(run, out),
            resume=run.resume,
            procs=procs,
            amp_on_cpu="ignore",
            log=run.log,
        )
        recipe = result.config or recipe
        summary: dict[str, Any] = {
            "checkpoint": str(out),
            "forget_classes": classes,
            "seconds": result.seconds,
            "recipe": recipe.to_json(),
            "steps": result.steps,
            "processes": procs.world_size,
            "rank": procs.rank,
        }
        if procs.is_main:
            report = evaluate_model(result.model, data, classes, probe=False)
            step = {
                "method": "retrain",
                "params": recipe.to_json(),
                "forget_classes": classes,
                "seconds": result.seconds,
                "parent_sha256": ck.sha256,
            }
            meta = ck.meta.with_forgetting(classes, step, ck.sha256)
            meta = replace(meta, dataset=dataset or ck.meta.dataset, train_recipe=recipe.to_json())
            summary["sha256"] = save_checkpoint(out, result.model, meta)
            summary.update(retain_acc=report.retain_acc, forget_acc=report.forget_acc)
        procs.barrier()
    return summary


@dataclass(frozen=True)
class ForgetRequest:
    """What `edge-unlearn forget` takes. ``None`` means the default."""

    checkpoint: str
    forget: tuple[str, ...]
    out: str
    method: str = "nhle"
    samples: int = 32
    forget_samples_dir: str | None = None
    params: tuple[tuple[str, Any], ...] = ()
    dataset: str | None = None
    data_dir: str | None = None
    download: bool = False
    seed: int = 0
    device: str = "auto"
    evaluate: bool = True
    retain_samples: int = 0


def _forget_set(req: ForgetRequest, ck: Checkpoint, data: Dataset | None, classes: list[int]) -> ForgetSet:
    norm = ck.meta.normalization
    if req.forget_samples_dir:
        # the checkpoint's full preprocessing (channels, resize, centre crop), as for its dataset
        prep = ck.meta.preprocessing
        if prep is None:  # a model trained at its dataset's size: photos of another size are scaled to it
            channels, height, width = ck.meta.input_shape
            images, folders, owners = load_image_folder(req.forget_samples_dir, channels=channels, size=(height, width))
        else:
            images, folders, owners = load_image_folder(req.forget_samples_dir, prep=prep)
        labels = []
        for owner in owners:
            name = folders[owner] if owner >= 0 else None
            if name is None:
                if len(classes) != 1:
                    raise UsageError(
                        f"--forget-images {req.forget_samples_dir} has images directly in the folder while "
                        "several classes are forgotten; put each class's images in a subfolder named "
                        "after the class"
                    )
                labels.append(classes[0])
            elif name in ck.meta.class_names:
                labels.append(ck.meta.class_names.index(name))
            elif name.isdigit() and int(name) < ck.meta.num_classes:
                labels.append(int(name))
            else:
                raise UsageError(
                    f"--forget-images subfolder {name!r} matches no class of the model; name it after a "
                    f"forgotten class ({', '.join(ck.meta.class_names[c] for c in classes)})"
                )
        bad = sorted({ck.meta.class_names[y] for y in labels if y not in classes})
        if bad:
            raise UsageError(
                f"--forget-images holds images of classes {bad} that are not being forgotten; "
                "remove them or add those classes to --forget"
            )
        return ForgetSet(preprocess(torch.from_numpy(images), norm), torch.tensor(labels), tuple(classes))
    assert data is not None
    images, labels = take_samples(data, classes, req.samples, seed=req.seed)
    return ForgetSet(preprocess(images, norm), labels, tuple(classes))


def forget_checkpoint(req: ForgetRequest, progress: bool = False) -> dict[str, Any]:
    """Unlearn classes from a checkpoint, write the child checkpoint and return the figures."""
    ck = load_checkpoint(req.checkpoint)
    classes = resolve_classes(req.forget, ck.meta.class_names)
    already = sorted(set(classes) & set(ck.meta.forgotten_classes))
    if already:
        raise UsageError(f"class(es) {already} are already forgotten in {req.checkpoint}; forget other classes")
    spec = get_method(req.method)
    config = method_config(req.method, dict(req.params))
    need_data = req.evaluate or not req.forget_samples_dir or spec.needs != "forget"
    data = dataset_for(ck, req.dataset, req.data_dir, req.download) if need_data else None
    forget_set = _forget_set(req, ck, data, classes)
    retain = None
    if spec.needs != "forget":
        assert data is not None
        all_forgotten = set(classes) | set(ck.meta.forgotten_classes)
        keep = torch.tensor([c for c in range(data.num_classes) if c not in all_forgotten])
        sel = torch.nonzero(torch.isin(data.y_train, keep)).flatten()
        if req.retain_samples:  # only the drawn images are read
            sel = sel[torch.randperm(len(sel), generator=torch.Generator().manual_seed(req.seed))[: req.retain_samples]]
        retain = RetainSet(preprocess(data.x_train[sel], ck.meta.normalization), data.y_train[sel])
    result = forget(
        ck.model, forget_set, method=req.method, config=config, retain=retain, device=req.device, progress=progress
    )
    summary: dict[str, Any] = {
        "checkpoint": req.out,
        "parent": str(req.checkpoint),
        "parent_sha256": ck.sha256,
        "method": req.method,
        "params": result.params,
        "forget_classes": classes,
        "forget_class_names": [ck.meta.class_names[c] for c in classes],
        "all_forgotten_classes": sorted(set(classes) | set(ck.meta.forgotten_classes)),
        "samples_used": result.samples_used,
        "seconds": result.seconds,
        **result.details,
    }
    if req.evaluate:
        assert data is not None
        all_forgotten = summary["all_forgotten_classes"]
        t0 = time.perf_counter()
        before = evaluate_model(ck.model, data, all_forgotten, seed=req.seed)
        after = evaluate_model(result.model, data, all_forgotten, seed=req.seed)
        summary.update(figures(before, after))
        summary["evaluation_seconds"] = time.perf_counter() - t0
    step = {
        "method": req.method,
        "params": result.params,
        "forget_classes": classes,
        "samples_used": result.samples_used,
        "seconds": result.seconds,
        "parent_sha256": ck.sha256,
        **result.details,
        **{
            k: summary[k]
            for k in ("forget_acc", "forget_acc_unmasked", "retain_acc", "retain_drop", "probe_forget_acc")
            if k in summary
        },
    }
    meta = ck.meta.with_forgetting(classes, step, ck.sha256)
    summary["sha256"] = save_checkpoint(req.out, result.model, meta)
    return summary


def figures(before: EvalReport, after: EvalReport) -> dict[str, Any]:
    """The comparison figures of issue #2 (after vs before unlearning, same classes)."""
    return {
        "forget_acc": after.forget_acc,
        "forget_acc_unmasked": after.forget_acc_unmasked,
        "retain_acc": after.retain_acc,
        "retain_acc_before": before.retain_acc,
        "retain_drop": retain_drop(before.retain_acc, after.retain_acc),
        "probe_forget_acc": after.probe_forget_acc,
        "probe_forget_acc_before": before.probe_forget_acc,
        "forget_acc_before": before.forget_acc_unmasked,
        "accuracy": after.accuracy,
        "per_class_accuracy": after.per_class_accuracy,
        "per_class_accuracy_before": before.per_class_accuracy,
    }


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: str | None = None,
    forget_classes: Sequence[str | int] = (),
    reference: str | Path | None = None,
    probe: bool = True,
    data_dir: str | None = None,
    seed: int = 0,
    depth: bool = False,
    attacks: bool = False,
    retrained: str | Path | Sequence[str | Path] | None = None,
    audit_config: Any = None,
    download: bool = False,
) -> dict[str, Any]:
    """Figures of one checkpoint; with ``reference`` (the original) also retain_drop against it.

    ``depth`` adds the linear probe after every block, ``attacks`` the prototype attack (mask on and lifted),
    the entropy MIA and relearn time (issue #15) under ``audit`` — each for the checkpoint, the ``reference``
    and the ``retrained`` gold standard where given (same measures, same relearn target). ``retrained`` may name
    several retrained models (seeds: the retrained band): the output figures of the checkpoint and the reference
    are then averaged over them, and the first retrained model's are against the others (the seed-to-seed floor)."""
    ck = load_checkpoint(checkpoint)
    data = dataset_for(ck, dataset, data_dir, download)
    classes = (
        resolve_classes(forget_classes, ck.meta.class_names) if forget_classes else list(ck.meta.forgotten_classes)
    )
    if len(set(classes)) >= ck.meta.num_classes:
        raise UsageError(
            f"evaluating with all {ck.meta.num_classes} classes forgotten leaves no retained class to "
            "measure; forget fewer classes"
        )
    golds_paths = [retrained] if isinstance(retrained, (str, Path)) else list(retrained or [])
    retrained = golds_paths[0] if golds_paths else None
    if (depth or attacks or retrained is not None) and not classes:
        raise UsageError(
            f"{checkpoint} has no forgotten class; pass --forget CLASS to audit (--depth/--attacks/--retrained)"
        )
    if depth and not probe:
        raise UsageError("--depth runs the probe at every depth; drop --no-probe")
    t0 = time.perf_counter()
    report = evaluate_model(ck.model, data, classes, probe=probe, seed=seed)
    out: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "sha256": ck.sha256,
        "dataset": data.spec,
        "class_names": list(data.class_names),
        **report.to_json(),
    }
    ref = _comparison_checkpoint(reference, ck, "--reference", checkpoint) if reference is not None else None
    golds = [_comparison_checkpoint(g, ck, "--retrained", checkpoint) for g in golds_paths]
    gold = golds[0] if golds else None
    for path, other in zip(golds_paths, golds):
        missing = sorted(set(classes) - set(other.meta.forgotten_classes))
        if missing:
            raise UsageError(
                f"--retrained {path} was not retrained without class(es) {missing}; pass the output "
                "of `edge-unlearn retrain --forget` for the same classes"
            )
    if len({g.sha256 for g in golds}) != len(golds):
        raise UsageError("--retrained names the same model twice; give retrained models of different seeds")
    if ref is not None:
        before = evaluate_model(ref.model, data, classes, probe=probe, seed=seed)
        out["retain_acc_before"] = before.retain_acc
        out["retain_drop"] = retain_drop(before.retain_acc, report.retain_acc)
        out["probe_forget_acc_reference"] = before.probe_forget_acc
    if gold is not None:
        gold_report = evaluate_model(gold.model, data, classes, probe=probe, seed=seed)
        out["retrained"] = {
            "checkpoint": str(retrained),
            "sha256": gold.sha256,
            **{
                k: getattr(gold_report, k)
                for k in ("accuracy", "forget_acc", "forget_acc_unmasked", "retain_acc", "probe_forget_acc")
            },
        }
    if depth or attacks:
        out["audit"] = _audits(ck, ref, golds, data, classes, depth, attacks, seed, audit_config)
    out["seconds"] = time.perf_counter() - t0
    out["lineage"] = list(ck.meta.lineage)
    return out


def _comparison_checkpoint(path: str | Path, ck: Checkpoint, option: str, checkpoint: str | Path) -> Checkpoint:
    """A checkpoint to compare with (the original or the retrained model), checked to share the classes."""
    other = load_checkpoint(path)
    if other.meta.num_classes != ck.meta.num_classes:
        raise CheckpointError(f"{option} has {other.meta.num_classes} classes, {checkpoint} has {ck.meta.num_classes}")
    return other


def _audits(
    ck: Checkpoint,
    ref: Checkpoint | None,
    golds: list[Checkpoint],
    data: Dataset,
    classes: list[int],
    depth: bool,
    attacks: bool,
    seed: int,
    audit_config: Any,
) -> dict[str, Any]:
    """{"model", "reference", "retrained": forgetting-audit JSON} for the checkpoints given, one relearn target;
    with retrained models the other two's outputs are compared with theirs (``out_tv``, ``out_kl``, ``out_auc``,
    averaged over them), and the first retrained model's with the other retrained ones (the floor)."""
    from .attacks import ForgettingAuditConfig, default_relearn_target, forgetting_audit

    config = audit_config if audit_config is not None else ForgettingAuditConfig(seed=seed)
    target = source = None
    if attacks:
        target, source = default_relearn_target(ck.model, data, classes, ref.model if ref is not None else None)
    out: dict[str, Any] = {}
    gold = golds[0] if golds else None
    for role, model_ck in (("model", ck), ("reference", ref), ("retrained", gold)):
        if model_ck is not None:
            references = [g.model for g in golds] if role != "retrained" else [g.model for g in golds[1:]]
            out[role] = forgetting_audit(
                model_ck.model,
                data,
                classes,
                depth=depth,
                attacks=attacks,
                relearn_target=target,
                relearn_target_source=source,
                config=config,
                references=references,
            ).to_json()
    return out


def audit_table(summary: dict[str, Any]) -> list[str]:
    """The audit of :func:`evaluate_checkpoint` as text rows: one measure a row, one column per model."""
    from .attacks import ForgettingAudit

    audits = {role: ForgettingAudit.from_json(a).figures() for role, a in summary.get("audit", {}).items()}
    if not audits:
        return []
    roles = list(audits)
    lines = [f"  {'measure (forgotten classes)':30s}" + "".join(f"{r:>11s}" for r in roles)]
    for name in audits["model"]:
        cells = []
        for role in roles:
            value = audits[role].get(name)
            cells.append(f"{'—' if value is None else (str(value) if isinstance(value, int) else f'{value:.4f}'):>11s}")
        lines.append(f"  {name:30s}" + "".join(cells))
    model_audit = summary["audit"]["model"]
    if model_audit.get("relearn_target") is not None:
        lines.append(
            f"  relearn target {model_audit['relearn_target']:.4f} ({model_audit['relearn_target_source']}); "
            f"cap {model_audit['relearn']['max_steps']} steps"
        )
    return lines
