"""A dataset's two splits (:class:`Dataset`: lazy images, labels in memory) and what is asked of one: the split
as a ``torch.utils.data.Dataset`` (optionally of some classes), the model's preprocessing, forget classes by name or
index and random samples of them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.utils.data

from ..errors import UsageError
from .preprocessing import Normalization, Preprocessing
from .sources import FolderImages, ImageSource, as_source


@dataclass(frozen=True)
class Dataset:
    """Both splits: images as :class:`ImageSource` (read lazily at the model's input size; a uint8 tensor
    [N, C, H, W] given here is wrapped), labels int64 [N] in memory."""

    spec: str
    x_train: ImageSource
    y_train: torch.Tensor
    x_test: ImageSource
    y_test: torch.Tensor
    class_names: tuple[str, ...]
    normalization: Normalization

    def __post_init__(self) -> None:
        for name in ("x_train", "x_test"):
            value = getattr(self, name)
            if not isinstance(value, ImageSource):
                object.__setattr__(self, name, as_source(value))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.x_train.image_shape)  # type: ignore[return-value]

    def split(self, name: str, classes: Sequence[int] | None = None) -> torch.utils.data.Dataset:
        """One split (``"train"`` or ``"test"``) as a ``torch.utils.data.Dataset`` of (uint8 image [C, H, W] at
        the model's input size, int64 label) items, optionally restricted to ``classes``: what training's
        DataLoader (augmentation, DistributedSampler) reads. Lazy: an item is decoded when it is read. The
        seam between data and training (issue #12)."""
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {name!r}")
        x, y = (self.x_train, self.y_train) if name == "train" else (self.x_test, self.y_test)
        if classes is not None:
            keep = torch.isin(y, torch.tensor(sorted(set(int(c) for c in classes)), dtype=y.dtype))
            x, y = x.subset(keep), y[keep]
        return SplitItems(x, y)

    def with_workers(self, workers: int | None) -> Dataset:
        """The same dataset read with ``workers`` loader processes."""
        return dataclasses.replace(
            self, x_train=self.x_train.with_workers(workers), x_test=self.x_test.with_workers(workers)
        )


class SplitItems(torch.utils.data.Dataset):
    """(uint8 image [C, H, W], int64 label) items of a source: what :meth:`Dataset.split` returns."""

    def __init__(self, images: ImageSource, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[int(i)], self.labels[int(i)]


def prepare_dataset(data: Dataset, prep: Preprocessing) -> Dataset:
    """``data`` as the model sees it: images converted to the model's channels and size (uint8) and the
    model's normalisation, so every consumer (training, forgetting, evaluation, bundles, calibration)
    applies one and the same preprocessing. Lazy: the conversion runs per batch as images are read. A
    no-op for a checkpoint trained on ``data``."""
    if data.input_shape == prep.input_shape and prep.resize is None and not isinstance(data.x_train, FolderImages):
        return dataclasses.replace(data, normalization=prep.normalization)
    return dataclasses.replace(
        data,
        x_train=data.x_train.with_preprocessing(prep),
        x_test=data.x_test.with_preprocessing(prep),
        normalization=prep.normalization,
    )


def resolve_classes(requested: Sequence[str | int], class_names: Sequence[str]) -> list[int]:
    """Turn class indices or names into sorted unique indices, with errors that list the valid choices."""
    out: set[int] = set()
    names = list(class_names)
    for item in requested:
        for token in str(item).split(","):
            token = token.strip()
            if not token:
                continue
            if token in names:
                out.add(names.index(token))
            elif token.lstrip("-").isdigit():
                index = int(token)
                if not 0 <= index < len(names):
                    raise UsageError(f"class index {index} is out of range; the model has classes 0..{len(names) - 1}")
                out.add(index)
            else:
                shown = ", ".join(json.dumps(n) for n in names[:12]) + (" …" if len(names) > 12 else "")
                raise UsageError(
                    f"unknown class {token!r}; use an index 0..{len(names) - 1} or one of the names {shown}"
                )
    if not out:
        raise UsageError("no class to forget was given; pass --forget with a class index or name")
    return sorted(out)


def take_samples(
    data: Dataset, classes: Sequence[int], per_class: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` random training images of each class in ``classes`` (uint8 images, labels): the images
    of :func:`sample_indices`, read."""
    idx = sample_indices(data, classes, per_class, seed)
    return data.x_train[idx], data.y_train[idx]


def sample_indices(data: Dataset, classes: Sequence[int], per_class: int, seed: int = 0) -> torch.Tensor:
    """Positions of ``per_class`` random training images of each class in ``classes`` (class by class)."""
    if per_class < 1:
        raise UsageError(f"--samples must be at least 1, got {per_class}")
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in classes:
        idx = torch.nonzero(data.y_train == c).flatten()
        if len(idx) < per_class:
            raise UsageError(
                f"class {c} ({data.class_names[c]}) has only {len(idx)} training samples, "
                f"fewer than --samples {per_class}; ask for at most {len(idx)}"
            )
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(picks)
