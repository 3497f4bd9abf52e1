"""Bring your own model: turn a classifier trained elsewhere into an edge-unlearn checkpoint.

:func:`import_checkpoint` reads a state dict (``torch.load(weights_only=True)``, never unpickling code, or a
``.safetensors`` file; ``{"state_dict": …}`` / ``{"model": …}`` wrappers and ``module.`` / ``_orig_mod.``
prefixes are undone), builds the architecture from torchvision, timm or the built-in registry, loads the
weights strictly, splits the model into backbone + Linear head (checking the logits do not change), records
how inputs are preprocessed and, given labelled data, the per-class statistics NHLE's feature step uses.
The checkpoint records the architecture as (source, name, constructor arguments, adaptations), so loading
it rebuilds the model from those libraries and runs no code from any file.
Longer than 500 lines because the import pipeline (architecture, weights, preprocessing record, statistics) is one sequential job with one request type.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CheckpointMeta, save_checkpoint
from .data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Dataset,
    Normalization,
    Preprocessing,
    load_dataset,
    preprocess,
    sample_indices,
)
from .errors import CheckpointError, UsageError
from .fileio import sha256_file
from .models import (
    DEPTH_STATS_MAX_FLOATS,
    MODELS,
    TORCHVISION_IGNORED_PREFIXES,
    ArchSpec,
    UnlearnableClassifier,
    build_model,
    build_original,
    head_path,
    is_depth_stats_key,
    model_family,
    split_classifier,
)

PRESETS = ("imagenet", "dataset", "none")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
PREFIXES = ("module.", "_orig_mod.")
CONTRACT_BUFFERS = ("class_mask", "class_stats", "class_stats_count")


@dataclass(frozen=True)
class ImportRequest:
    """What `edge-unlearn import` takes. ``None`` means: derive it (see :func:`import_checkpoint`)."""

    arch: str
    weights: str
    output: str
    num_classes: int | None = None
    classes_file: str | None = None
    dataset: str | None = None
    image_size: tuple[int, int] | None = None
    resize: int | tuple[int, int] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    preset: str | None = None
    arch_kwargs: tuple[tuple[str, Any], ...] = ()
    cifar_stem: bool = False
    stats_from: str | None = None
    stats_samples: int = 100
    data_dir: str | None = None
    download: bool = False
    seed: int = 0
    train_recipe: tuple[tuple[str, Any], ...] = ()


def resolve_recipe(items: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The training recipe `retrain` repeats (edge-unlearn's TrainConfig keys), checked."""
    from .training import TrainConfig

    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(k for k, _ in items if k not in known)
    if unknown:
        raise UsageError(f"--recipe has no key {', '.join(unknown)}; it takes {', '.join(sorted(known))}")
    try:
        return TrainConfig(**dict(items)).to_json()
    except TypeError as exc:
        raise UsageError(f"--recipe values do not fit ({exc})") from exc


# ---------------------------------------------------------------------------------------------
# Reading weights


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.bin`` (weights only) or ``.safetensors`` file, wrappers undone."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file {path} not found; pass the .pth/.pt/.safetensors your training script saved")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path))
        except Exception as exc:  # SafetensorError and friends
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]}); "
                "re-save it with safetensors.torch.save_file"
            ) from exc
    else:
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"{path} is a pickle that needs code to load (a whole model saved with "
                "torch.save(model)?); edge-unlearn never runs code from a file: save "
                "model.state_dict() instead"
            ) from exc
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise CheckpointError(
                f"{path} is not a readable PyTorch file ({str(exc).splitlines()[0][:160]}); "
                "save it with torch.save(model.state_dict(), path)"
            ) from exc
    return unwrap_state_dict(raw, str(path))


def unwrap_state_dict(raw: Any, where: str = "the weights") -> dict[str, torch.Tensor]:
    """Undo the common wrappers: ``{"state_dict": …}``, ``{"model": …}`` (Lightning, timm, torchvision
    references scripts) and ``module.`` (DataParallel/DDP) / ``_orig_mod.`` (torch.compile) prefixes."""
    for _ in range(3):
        if not isinstance(raw, dict):
            break
        inner = next((raw[k] for k in WRAPPER_KEYS if isinstance(raw.get(k), dict)), None)
        if inner is None or all(isinstance(v, torch.Tensor) for v in raw.values()):
            break
        raw = inner
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        kind = type(raw).__name__ if not isinstance(raw, dict) else f"dict with keys {sorted(map(str, raw))[:5]}"
        raise CheckpointError(f"{where} holds a {kind}, not a state dict of tensors; save model.state_dict()")
    state = {str(k): v for k, v in raw.items()}
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _shape(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.shape]


def check_state_dict(
    expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], label: str, hint: str = ""
) -> None:
    """One line naming the first key that is missing, extra or of another shape."""
    for key, tensor in expected.items():
        if key not in got:
            raise CheckpointError(
                f"the weights do not fit {label}: key {key} (shape {_shape(tensor)}) is missing from "
                f"the file; pass the --arch they were trained with{hint}"
            )
        if tuple(got[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"the weights do not fit {label}: first mismatching key {key}: file has shape "
                f"{_shape(got[key])}, {label} has {_shape(tensor)}{hint}"
            )
    extra = [k for k in got if k not in expected]
    if extra:
        raise CheckpointError(
            f"the weights do not fit {label}: the file has key {extra[0]} (shape {_shape(got[extra[0]])}) "
            f"that {label} lacks; pass the --arch they were trained with{hint}"
        )


# ---------------------------------------------------------------------------------------------
# Building the model


def _skeleton(spec: ArchSpec) -> nn.Module:
    """The full classifier without allocating weights where the library allows (meta device)."""
    try:
        with torch.device("meta"):
            return build_original(spec, 1000)
    except (NotImplementedError, RuntimeError):
        return build_original(spec, 1000)  # a few builders (regnet) compute on their tensors while building


def _stem_hint(spec: ArchSpec, key: str) -> str:
    if (
        spec.source == "torchvision"
        and key.startswith("conv1.")
        and not dict(spec.adapt).get("cifar_stem")
        and model_family(spec.name, ("resnet", "resnext", "wide_resnet"))
    ):
        return "; if the training script replaced the stem with a 3×3 conv and no max-pool (CIFAR), pass --cifar-stem"
    return ""


def load_user_model(
    spec: ArchSpec,
    state: dict[str, torch.Tensor],
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
) -> UnlearnableClassifier:
    """The user's classifier with their weights, split into the contract (logits unchanged)."""
    if spec.source == "registry":
        if spec.name not in MODELS:
            raise UsageError(
                f"unknown arch {spec.name!r}; use torchvision:NAME, timm:NAME or one of {', '.join(sorted(MODELS))}"
            )
        if "head.weight" not in state:
            raise CheckpointError(
                f"the weights have no head.weight: they are not a state dict of {spec.name} "
                f"(first keys: {', '.join(list(state)[:3])})"
            )
        classes = num_classes or int(state["head.weight"].shape[0])
        if input_shape is None:
            raise UsageError(f"{spec.name} needs the input size: pass --image-size (and --channels) or --dataset")
        model = build_model(spec.name, classes, input_shape)
        expected = model.state_dict()
        filled = {**{k: expected[k] for k in CONTRACT_BUFFERS}, **state}
        # an edge-unlearn checkpoint's optional depth statistics load with it (like its class statistics)
        check_state_dict(expected, {k: v for k, v in filled.items() if not is_depth_stats_key(k)}, spec.name)
        model.load_state_dict(filled, strict=True)
        return model.eval()
    skeleton = _skeleton(spec)
    path = head_path(spec, skeleton)
    key = f"{path}.weight"
    family = model_family(spec.name, TORCHVISION_IGNORED_PREFIXES) if spec.source == "torchvision" else None
    if family:
        state = {k: v for k, v in state.items() if not k.startswith(TORCHVISION_IGNORED_PREFIXES[family])}
    if key not in state:
        raise CheckpointError(
            f"the weights have no {key}, the head of {spec.label}: they are of another architecture "
            f"(first keys: {', '.join(list(state)[:3])}); pass the --arch they were trained with"
        )
    classes = num_classes or int(state[key].shape[0])
    original = build_original(spec, classes).eval()
    expected = original.state_dict()
    first_bad = next((k for k, t in expected.items() if k not in state or tuple(state[k].shape) != tuple(t.shape)), "")
    check_state_dict(expected, state, spec.label, _stem_hint(spec, first_bad))
    original.load_state_dict(state, strict=True)
    if input_shape is None:
        return split_classifier(spec, original).eval()
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            reference = original(x)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise UsageError(
            f"{spec.label} cannot run on {'×'.join(map(str, input_shape))} inputs "
            f"({str(exc).splitlines()[0][:120]}); pass the --image-size it was trained at"
        ) from exc
    model = split_classifier(spec, original).eval()
    with torch.no_grad():
        got = model.logits(x, masked=False)
    if not torch.equal(got, reference):  # the split is exact by construction; this guards the adapters
        raise CheckpointError(
            f"splitting {spec.label} changed its logits (max difference "
            f"{float((got - reference).abs().max()):.3g}); report this as a bug"
        )
    return model


def head_classes(spec: ArchSpec, state: dict[str, torch.Tensor]) -> tuple[str, int]:
    """(head weight key, number of classes) read from the weights."""
    if spec.source == "registry":
        key = "head.weight"
    else:
        path = head_path(spec, _skeleton(spec))
        key = f"{path}.weight"
    if key not in state:
        raise CheckpointError(
            f"the weights have no {key}, the head of {spec.label}: they are of another architecture "
            f"(first keys: {', '.join(list(state)[:3])}); pass the --arch they were trained with"
        )
    return key, int(state[key].shape[0])


# ---------------------------------------------------------------------------------------------
# Preprocessing, classes, statistics


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    values = tuple(int(v) for v in size)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])  # type: ignore[return-value]


def resolve_preprocessing(req: ImportRequest, data: Dataset | None) -> Preprocessing:
    """The preprocessing record from the options (see the CLI help); errors say what to add."""
    if req.preset is not None and req.preset not in PRESETS:
        raise UsageError(f"unknown --preset {req.preset!r}; choose one of {', '.join(PRESETS)}")
    channels = req.channels or (data.input_shape[0] if data is not None and req.preset != "imagenet" else 3)
    if req.image_size is not None:
        crop = _pair(req.image_size)
    elif req.preset == "imagenet":
        crop = (224, 224)
    elif data is not None:
        crop = tuple(data.input_shape[1:])  # type: ignore[assignment]
    else:
        raise UsageError("the input size is unknown: pass --image-size (or --dataset, or --preset imagenet)")
    resize = req.resize
    if resize is None and req.preset == "imagenet":
        resize = round(min(crop) * 256 / 224)
    if resize is None and data is not None and tuple(data.input_shape[1:]) != tuple(crop):
        resize = crop  # the dataset's images are scaled straight to the model's size
    if req.mean is not None or req.std is not None:
        if req.mean is None or req.std is None:
            raise UsageError("pass both --mean and --std")
        mean, std = tuple(req.mean), tuple(req.std)
    elif req.preset == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif req.preset == "none":
        mean, std = (0.0,) * channels, (1.0,) * channels
    elif req.preset == "dataset":
        if data is None:
            raise UsageError(
                "--preset dataset needs --dataset (the normalisation is computed from its training images)"
            )
        geometry = Preprocessing(channels, crop, (0.0,) * channels, (1.0,) * channels, resize=resize)
        norm = Normalization.of(data.x_train.with_preprocessing(geometry), sample=4096)  # a bounded, seeded draw
        mean, std = norm.mean, norm.std
    else:
        raise UsageError(
            "the normalisation your model was trained with is unknown: pass --mean and --std "
            "(per channel, on pixels scaled to [0, 1]) or --preset imagenet|dataset|none"
        )
    if len(mean) == 1 and channels == 3:
        mean, std = mean * 3, std * 3
    return Preprocessing(
        channels=int(channels),
        crop=crop,
        mean=tuple(float(v) for v in mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in std),
        resize=resize,
    )


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """One class name per line (blank lines ignored)."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"class list {file} not found; give a text file with one class name per line")
    names = tuple(line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(set(names)) != len(names):
        raise UsageError(f"class list {file} repeats a name; every class needs its own name")
    return names


@torch.no_grad()
def record_stats_from(
    model: UnlearnableClassifier, data: Dataset, prep: Preprocessing, per_class: int, seed: int = 0
) -> int:
    """Per-class statistics from ``per_class`` training images of each class of ``data``, streamed through
    the preprocessing in batches. Returns the samples per class used."""
    if per_class < 1:
        raise UsageError(f"--stats-samples must be at least 1, got {per_class}")
    counts = torch.bincount(data.y_train, minlength=model.num_classes)
    missing = [c for c in range(model.num_classes) if int(counts[c]) == 0]
    if missing:
        raise UsageError(
            f"dataset {data.spec} has no training images of classes {missing[:5]}; class statistics need every class"
        )
    used = min(per_class, int(counts.min()))
    idx = sample_indices(data, list(range(model.num_classes)), used, seed=seed)
    # read batch by batch through the full preprocessing (channels, resize, crop: any image size), then normalised
    images = data.x_train.with_preprocessing(prep).subset(idx)

    def normalise(batch: torch.Tensor) -> torch.Tensor:
        return preprocess(batch, prep.normalization)

    model.record_class_stats(images, data.y_train[idx], batch_size=128, transform=normalise)
    if model.depth_stats_size() <= DEPTH_STATS_MAX_FLOATS:  # every depth too, where they are small (issue #15)
        model.record_depth_stats(images, data.y_train[idx], batch_size=128, transform=normalise)
    return used


# ---------------------------------------------------------------------------------------------
# The job


def import_checkpoint(req: ImportRequest) -> dict[str, Any]:
    """Write an edge-unlearn checkpoint from a classifier trained elsewhere; returns a JSON-able summary.

    Nothing is written unless every check passes."""
    torch.manual_seed(req.seed)
    recipe = resolve_recipe(req.train_recipe)
    adapt: dict[str, Any] = {"cifar_stem": True} if req.cifar_stem else {}
    spec = ArchSpec.parse(req.arch, dict(req.arch_kwargs), adapt)
    if spec.source == "timm" and req.channels not in (None, 3):
        spec = ArchSpec(
            spec.source, spec.name, tuple(sorted({**dict(spec.kwargs), "in_chans": req.channels}.items())), spec.adapt
        )
    elif spec.source == "torchvision" and req.channels not in (None, 3):
        spec = ArchSpec(
            spec.source, spec.name, spec.kwargs, tuple(sorted({**adapt, "in_channels": req.channels}.items()))
        )
    if spec.source != "registry":
        head_path(spec, _skeleton(spec))  # unknown names and non-Linear heads fail before any file is read
    state = read_state_dict(req.weights)
    key, num_classes = head_classes(spec, state)
    names_from = ""
    class_names: tuple[str, ...] | None = None
    if req.classes_file:
        class_names, names_from = read_class_names(req.classes_file), f"--classes {req.classes_file}"
    # nothing measured or decoded here: the preprocessing decides what is read, and how
    data = (
        load_dataset(req.dataset, data_dir=req.data_dir, download=req.download, measure=False) if req.dataset else None
    )
    stats_data = (
        (
            data
            if req.stats_from == req.dataset
            else load_dataset(req.stats_from, data_dir=req.data_dir, download=req.download, measure=False)
        )
        if req.stats_from
        else None
    )
    if class_names is None and (data or stats_data) is not None:
        source = data or stats_data
        class_names, names_from = source.class_names, f"dataset {source.spec}"  # type: ignore[union-attr]
    if req.num_classes is not None and req.num_classes != num_classes:
        raise UsageError(f"the weights' head {key} has {num_classes} classes but --num-classes says {req.num_classes}")
    if class_names is not None and len(class_names) != num_classes:
        raise UsageError(f"the weights' head {key} has {num_classes} classes but {names_from} names {len(class_names)}")
    for other in (data, stats_data):
        if other is not None and other.num_classes != num_classes:
            raise UsageError(
                f"the weights' head {key} has {num_classes} classes but dataset {other.spec} has {other.num_classes}"
            )
    class_names = class_names or tuple(str(i) for i in range(num_classes))
    prep = resolve_preprocessing(req, data or stats_data)
    model = load_user_model(spec, state, num_classes, prep.input_shape)
    stats_note = "none: NHLE's feature step will use the data-free BatchNorm estimate"
    if stats_data is not None:
        used = record_stats_from(model, stats_data, prep, req.stats_samples, req.seed)
        depth = "at every depth" if model.has_depth_stats else "at the edit layer only (too large for every depth)"
        stats_note = f"{used} training images per class of {stats_data.spec}, {depth}"
    step = {
        "method": "import",
        "arch": spec.to_json(),
        "weights": Path(req.weights).name,
        "weights_sha256": sha256_file(Path(req.weights)),
        "class_stats": stats_note,
    }
    meta = CheckpointMeta(
        arch=spec.label,
        num_classes=num_classes,
        class_names=class_names,
        input_shape=prep.input_shape,
        normalization=prep.normalization,
        dataset=(req.dataset or req.stats_from or ""),
        lineage=(step,),
        architecture=spec,
        preprocessing=prep,
        train_recipe=recipe,
    )
    digest = save_checkpoint(req.output, model, meta)
    return {
        "checkpoint": str(req.output),
        "sha256": digest,
        "arch": spec.label,
        "architecture": spec.to_json(),
        "num_classes": num_classes,
        "class_names": list(class_names),
        "head": key,
        "feature_dim": model.feature_dim,
        "preprocessing": prep.to_json(),
        "class_stats": stats_note,
        "weights_sha256": step["weights_sha256"],
    }


def importable_models() -> list[tuple[str, str]]:
    """(what, how) lines for `edge-unlearn models`: what `import --arch` accepts."""
    from .models import TORCHVISION_HEADS, TORCHVISION_UNSPLITTABLE, torchvision_classifiers

    names = torchvision_classifiers()
    out = []
    for prefixes, path in TORCHVISION_HEADS:
        family = [n for n in names if model_family(n, prefixes)]
        if family:
            out.append((f"torchvision:{{{','.join(family)}}}", f"head {path}"))
    for prefix, why in TORCHVISION_UNSPLITTABLE.items():
        family = [n for n in names if n.startswith(prefix)]
        out.append((f"torchvision:{{{','.join(family)}}}", f"cannot be imported: {why}"))
    try:
        import timm

        out.append(
            (
                "timm:NAME",
                f"any of timm {timm.__version__}'s {len(timm.list_models())} models whose "
                "get_classifier() is a Linear layer",
            )
        )
    except ImportError:
        out.append(("timm:NAME", "needs the timm extra: pip install 'edge-unlearn[timm]'"))
    out.append(("python", "your own nn.Module: edge_unlearn.wrap(module, head='fc') (Python API)"))
    return out
