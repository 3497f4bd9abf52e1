"""Checkpoints: one safetensors file, everything needed to rebuild and audit the model in its header.

Loading never executes code (safetensors holds raw tensors; the metadata is JSON).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .core.formats import CHECKPOINT_FORMAT, read_checkpoint_header
from .data import Normalization, Preprocessing
from .errors import CheckpointError, UsageError
from .fileio import atomic_output, sha256_file
from .guards import check_checkpoint_meta, check_finite_tensors
from .models import ArchSpec, UnlearnableClassifier, build_from_spec

FORMAT = CHECKPOINT_FORMAT


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself (stored as JSON in the safetensors header).

    ``architecture`` says how to rebuild the model (registry, torchvision or timm + constructor arguments;
    None: the registry entry ``arch``); ``preprocessing`` how raw images become its input (None: images
    already of ``input_shape``, normalised with ``normalization``). Both are versioned records.
    """

    arch: str
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    normalization: Normalization
    dataset: str = ""
    forgotten_classes: tuple[int, ...] = ()
    train_recipe: dict[str, Any] = field(default_factory=dict)
    lineage: tuple[dict[str, Any], ...] = ()
    parent_sha256: str | None = None
    version: str = __version__
    architecture: ArchSpec | None = None
    preprocessing: Preprocessing | None = None

    def __post_init__(self) -> None:
        prep = self.preprocessing
        if prep is not None and (
            tuple(prep.input_shape) != tuple(self.input_shape) or prep.normalization != self.normalization
        ):
            raise UsageError(
                f"preprocessing {prep.to_json()} disagrees with input_shape {tuple(self.input_shape)} / "
                f"normalization {self.normalization.to_json()}"
            )

    @property
    def arch_spec(self) -> ArchSpec:
        """How to rebuild the architecture (the registry entry ``arch`` unless recorded otherwise)."""
        return self.architecture or ArchSpec("registry", self.arch)

    @property
    def prep(self) -> Preprocessing:
        """The preprocessing record (explicit, or the plain one of a model trained by edge-unlearn)."""
        return self.preprocessing or Preprocessing.plain(self.input_shape, self.normalization)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["normalization"] = self.normalization.to_json()
        data["architecture"] = self.architecture.to_json() if self.architecture else None
        data["preprocessing"] = self.preprocessing.to_json() if self.preprocessing else None
        data["class_names"] = list(self.class_names)
        data["input_shape"] = list(self.input_shape)
        data["forgotten_classes"] = list(self.forgotten_classes)
        data["lineage"] = list(self.lineage)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointMeta:
        return cls(
            arch=str(data["arch"]),
            num_classes=int(data["num_classes"]),
            class_names=tuple(str(n) for n in data["class_names"]),
            input_shape=tuple(int(v) for v in data["input_shape"]),  # type: ignore[arg-type]
            normalization=Normalization.from_json(data["normalization"]),
            dataset=str(data.get("dataset", "")),
            forgotten_classes=tuple(int(c) for c in data.get("forgotten_classes", ())),
            train_recipe=dict(data.get("train_recipe", {})),
            lineage=tuple(dict(step) for step in data.get("lineage", ())),
            parent_sha256=data.get("parent_sha256"),
            version=str(data.get("version", "?")),
            architecture=ArchSpec.from_json(data["architecture"]) if data.get("architecture") else None,
            preprocessing=Preprocessing.from_json(data["preprocessing"]) if data.get("preprocessing") else None,
        )

    def with_forgetting(self, classes: list[int], step: dict[str, Any], parent_sha256: str | None) -> CheckpointMeta:
        """The metadata of a child checkpoint: masks accumulate, lineage grows."""
        forgotten = tuple(sorted(set(self.forgotten_classes) | set(classes)))
        return replace(
            self,
            forgotten_classes=forgotten,
            lineage=(*self.lineage, step),
            parent_sha256=parent_sha256,
            version=__version__,
        )


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, on CPU), its metadata and its file's sha256."""

    model: UnlearnableClassifier
    meta: CheckpointMeta
    sha256: str | None = None
    path: Path | None = None


def save_checkpoint(path: str | Path, model: UnlearnableClassifier, meta: CheckpointMeta) -> str:
    """Write atomically; returns the new file's sha256."""
    from safetensors.torch import save_file

    if model.num_classes != meta.num_classes:
        raise UsageError(f"model has {model.num_classes} classes but metadata says {meta.num_classes}")
    meta = replace(meta, forgotten_classes=tuple(model.forgotten_classes))
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}
    check_finite_tensors(tensors, str(path), writing=True)  # never write NaN weights (issue #13)
    # One header entry: safetensors keeps metadata in an unordered map, so a second key would make the
    # file's bytes (and sha256) depend on the process's hash seed.
    header = {"edge_unlearn": json.dumps({"format": FORMAT, **meta.to_json()}, sort_keys=True)}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
        digest = sha256_file(tmp)
    return digest


def read_meta(path: str | Path) -> CheckpointMeta:
    """Read only the header (fast, no tensors)."""
    return _open(Path(path), tensors=False)[0]


def _open(path: Path, tensors: bool = True) -> tuple[CheckpointMeta, dict[str, torch.Tensor] | None]:
    """The metadata (through the core's one header reader) and, with ``tensors``, the tensors."""
    data = read_checkpoint_header(path)
    try:
        meta = CheckpointMeta.from_json(data)
        check_checkpoint_meta(meta, str(path))
    except CheckpointError:
        raise
    except (KeyError, ValueError, TypeError, UsageError) as exc:
        raise CheckpointError(
            f"{path} has unreadable edge-unlearn metadata ({exc}); re-create it with `edge-unlearn train`"
        ) from exc
    if not tensors:
        return meta, None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            loaded = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError for corrupt files
        raise CheckpointError(
            f"{path} is not a valid safetensors checkpoint ({exc}); "
            "the file is corrupt or of another format: re-create it with `edge-unlearn train`"
        ) from exc
    check_finite_tensors(loaded, str(path))  # refuse NaN/Inf weights on load (issue #13)
    return meta, loaded


def check_tensor_kinds(tensors: dict[str, torch.Tensor], model: torch.nn.Module, path: Path) -> None:
    """``load_state_dict`` casts silently: int64 head weights would load as float32 (issue 30). A tensor whose kind
    (floating point or not) differs from the model's is refused; a floating tensor of another width (FP16, BF16,
    FP64) is cast to the model's float32 on purpose: the arithmetic is the model's, and FP16/BF16 widen exactly."""
    expected = model.state_dict()
    for name, tensor in tensors.items():
        want = expected.get(name)
        if want is not None and want.is_floating_point() != tensor.is_floating_point():
            raise CheckpointError(
                f"{path}: tensor {name!r} is {str(tensor.dtype).removeprefix('torch.')} where the model holds "
                f"{str(want.dtype).removeprefix('torch.')}; the file was edited: re-create it with `edge-unlearn train`"
            )


def load_checkpoint(path: str | Path, model: UnlearnableClassifier | None = None) -> Checkpoint:
    """Rebuild the model from its architecture record (registry, torchvision or timm: no code from the file)
    and load the tensors (strict). ``model``: a skeleton to load into instead, for checkpoints of a user's
    own module (``edge_unlearn.wrap(MyNet(), head="fc")``), the user's code being what they trust."""
    path = Path(path)
    meta, tensors = _open(path)
    if model is None:
        try:
            model = build_from_spec(meta.arch_spec, meta.num_classes, meta.input_shape)
        except UsageError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
    check_tensor_kinds(tensors, model, path)  # type: ignore[arg-type]
    try:
        model.load_state_dict(tensors, strict=True)  # type: ignore[arg-type]
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: tensors do not match arch {meta.arch} with {meta.num_classes} classes ({first}); "
            "the file was edited or written by another version"
        ) from exc
    if sorted(model.forgotten_classes) != sorted(meta.forgotten_classes):
        raise CheckpointError(f"{path}: class mask and metadata disagree on the forgotten classes; the file was edited")
    model.eval()
    return Checkpoint(model=model, meta=meta, sha256=sha256_file(path), path=path)
