"""Datasets read lazily (issue #12), plus the normalisation and preprocessing stored with every model.

Spec strings (``--dataset``): ``digits`` (scikit-learn's bundled 8x8 digits, offline), ``mnist``,
``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn`` (torchvision, from ``--data-dir``), ``npz:PATH``
(arrays x_train, y_train, x_test, y_test; memory-mapped when stored uncompressed) and ``folder:PATH``
(ImageFolder with train/ and test/: JPEG/PNG/WebP/... of any size and mode, decoded per batch).

A :class:`Dataset` holds its labels in memory and its images as :class:`ImageSource` objects that decode
on demand, at the model's input size (the checkpoint's :class:`Preprocessing`), in batches through a
``torch.utils.data.DataLoader`` with ``--workers`` processes: peak memory does not grow with the dataset.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.utils.data

from ..core.preprocessing import PreprocessingRecord
from ..errors import DataError, UsageError
from ..guards import check_labels

TORCHVISION_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn")
DATASET_CHOICES = ("digits", *TORCHVISION_DATASETS, "npz:PATH", "folder:PATH")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std of pixel values scaled to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, data: dict) -> Normalization:
        return cls(tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))

    @classmethod
    def of(cls, images: torch.Tensor | ImageSource, sample: int | None = None, seed: int = 0) -> Normalization:
        """The statistics of uint8 images [N, C, H, W] (a tensor or an :class:`ImageSource`), read in
        batches. A source that decodes files, or any set above ``sample`` images (default
        :data:`NORMALIZATION_SAMPLE` for files, all images of arrays), is measured on a seeded random draw
        of ``sample`` images."""
        source = as_source(images)
        limit = sample if sample is not None else (NORMALIZATION_SAMPLE if source.decodes_files else None)
        indices = None
        if limit is not None and len(source) > limit:
            gen = torch.Generator().manual_seed(seed)
            indices = torch.randperm(len(source), generator=gen)[:limit].sort().values
        count, total, total_sq = 0, None, None
        for batch in source.batches(512, indices):  # sums in float64 (exact enough), bounded memory
            x = batch.to(torch.float64) / 255.0
            s, sq = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
            total = s if total is None else total + s
            total_sq = sq if total_sq is None else total_sq + sq
            count += x.shape[0] * x.shape[2] * x.shape[3]
        if not count:
            raise DataError("no images to compute the normalisation from")
        mean = total / count
        var = ((total_sq - count * mean * mean) / max(count - 1, 1)).clamp_min(0)
        std = var.sqrt().clamp_min(1e-3)
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessing(PreprocessingRecord):
    """How a raw uint8 image [C, H, W] becomes the model's input, on the host (torchvision): the record
    (:mod:`edge_unlearn.core.preprocessing`: channels, resize, centre crop, mean/std; version 1), recorded in every
    checkpoint, and its steps. :meth:`transforms` gives the same steps as a torchvision.transforms.v2 pipeline for
    streaming loaders; the deployment side applies the same record with numpy (``export.preprocessing``).
    """

    def invalid(self, problem: str) -> None:
        raise UsageError(problem)

    @classmethod
    def damaged(cls, reason: str) -> Exception:
        return UsageError(reason)

    @property
    def normalization(self) -> Normalization:
        return Normalization(self.mean, self.std)

    def _interpolation(self):
        from torchvision.transforms import InterpolationMode

        return InterpolationMode(self.interpolation)

    def geometry(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] -> uint8 [N, channels, *crop]: channel conversion, resize, centre crop."""
        from torchvision.transforms.v2 import functional as TF

        x = torch.as_tensor(images)
        if x.dim() != 4:
            raise DataError(f"images must be N×C×H×W, got shape {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            if x.shape[1] == 1 and self.channels == 3:
                x = x.expand(-1, 3, -1, -1)
            elif x.shape[1] == 3 and self.channels == 1:
                x = TF.rgb_to_grayscale(x, num_output_channels=1)
            else:
                raise DataError(f"images have {x.shape[1]} channels; the model takes {self.channels}")
        if self.resize is not None:
            size = [self.resize] if isinstance(self.resize, int) else list(self.resize)
            x = TF.resize(x, size, interpolation=self._interpolation(), antialias=True)
        if tuple(x.shape[2:]) != tuple(self.crop):
            if x.shape[2] < self.crop[0] or x.shape[3] < self.crop[1]:
                raise DataError(
                    f"images are {x.shape[2]}×{x.shape[3]} but the model takes {self.crop[0]}×{self.crop[1]} "
                    "and the checkpoint records no resize; import it with --resize or --image-size"
                )
            x = TF.center_crop(x, list(self.crop))
        return x.contiguous()

    def __call__(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 [N, C, H, W] -> normalised float32 [N, channels, *crop], the model's input."""
        return preprocess(self.geometry(torch.as_tensor(images)), self.normalization)

    def transforms(self):
        """The same steps as a ``torchvision.transforms.v2.Compose`` over uint8 image tensors [.., C, H, W]."""
        from torchvision.transforms import v2

        steps: list = []
        if self.channels == 1:
            steps.append(v2.Grayscale(num_output_channels=1))
        else:
            steps.append(v2.RGB())
        if self.resize is not None:
            size = self.resize if isinstance(self.resize, int) else list(self.resize)
            steps.append(v2.Resize(size, interpolation=self._interpolation(), antialias=True))
        steps += [
            v2.CenterCrop(list(self.crop)),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(self.mean), list(self.std)),
        ]
        return v2.Compose(steps)


#: "not measured" (``load_dataset(measure=False)``): a placeholder normalisation nothing reads
_UNMEASURED = Normalization((0.0,), (1.0,))


# ---------------------------------------------------------------------------------------------
# Image sources: a split's images, read lazily (issue #12)

#: Images a lazily read dataset's normalisation statistics are computed from (a seeded random draw).
NORMALIZATION_SAMPLE = 4096
#: Images of an image folder whose modes decide its channels (1 when all are grey, else 3): headers only.
CHANNEL_SAMPLE = 64
#: Default ``--workers`` of every loader (0: read in the calling process); the CLI's ``--workers`` sets it.
_DEFAULT_WORKERS = 0


def set_default_workers(workers: int) -> None:
    """Loader processes used by every :class:`ImageSource` whose ``workers`` is unset (``--workers``)."""
    global _DEFAULT_WORKERS
    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    _DEFAULT_WORKERS = int(workers)


def default_workers() -> int:
    """The loader processes ``--workers`` asked for (0 unless set)."""
    return _DEFAULT_WORKERS


def _as_indices(key, length: int) -> np.ndarray:
    """An int / slice / bool mask / index sequence or tensor -> int64 positions in 0..length-1."""
    if isinstance(key, slice):
        return np.arange(length, dtype=np.int64)[key]
    array = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    if array.dtype == np.bool_:
        if array.shape != (length,):
            raise IndexError(f"boolean index of shape {array.shape} for {length} images")
        return np.nonzero(array)[0].astype(np.int64)
    array = array.astype(np.int64).reshape(-1)
    if array.size and (array.min() < -length or array.max() >= length):
        raise IndexError(f"image index out of range 0..{length - 1}")
    return np.where(array < 0, array + length, array)


class ImageSource(torch.utils.data.Dataset):
    """A split's images, decoded on demand at the model's input size: ``len(source)``; ``source[i]`` ->
    uint8 [C, H, W]; ``source[indices]`` (slice, index tensor/array, bool mask) -> uint8 [N, C, H, W];
    :meth:`batches` -> uint8 batches through a DataLoader with ``workers`` processes. Nothing is held but
    what a subclass needs to find an image (an array or memory map, or file names), so memory does not grow
    with the dataset. :meth:`subset` and :meth:`with_preprocessing` are views (nothing is read)."""

    image_shape: tuple[int, int, int]
    workers: int | None = None
    #: decoding each item costs enough that worker processes pay off (image files), unlike array slicing
    decodes_files: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def _read(self, positions: np.ndarray) -> torch.Tensor:
        """uint8 [len(positions), C, H, W] of the images at ``positions`` (in that order)."""
        raise NotImplementedError

    def _view(self, positions: np.ndarray | None = None, prep: Preprocessing | None = None) -> ImageSource:
        raise NotImplementedError

    # the tensor-like face: dtype, shape, indexing
    dtype = torch.uint8

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *self.image_shape)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, tuple):  # source[idx, channel, ...]: read the images, then index the rest
            return self[key[0]][(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.dim() == 0):
            return self._read(_as_indices([int(key)], len(self)))[0]
        return self._read(_as_indices(key, len(self)))

    def __iter__(self):
        for batch in self.batches():
            yield from batch

    def numpy(self) -> np.ndarray:
        return self[:].numpy()

    def subset(self, indices) -> ImageSource:
        """The images at ``indices`` (a view: nothing is read)."""
        return self._view(positions=_as_indices(indices, len(self)))

    def with_preprocessing(self, prep: Preprocessing) -> ImageSource:
        """The same images through ``prep``'s geometry (channels, resize, centre crop): a view."""
        return self._view(prep=prep)

    def with_workers(self, workers: int | None) -> ImageSource:
        view = self._view()
        view.workers = workers
        return view

    def batches(self, batch_size: int = 256, indices=None, workers: int | None = None) -> Iterator[torch.Tensor]:
        """uint8 batches [<=batch_size, C, H, W] of the images at ``indices`` (default: all, in order).

        Sources that decode files read through a ``torch.utils.data.DataLoader`` with ``workers`` processes
        (default: the source's, else ``--workers``), each reading whole batches; arrays are sliced directly
        (the in-memory fast path). Order is kept either way, so results do not depend on ``workers``."""
        positions = np.arange(len(self), dtype=np.int64) if indices is None else _as_indices(indices, len(self))
        chunks = [positions[i : i + batch_size] for i in range(0, len(positions), batch_size)]
        workers = workers if workers is not None else (self.workers if self.workers is not None else _DEFAULT_WORKERS)
        if workers <= 0 or not self.decodes_files or len(chunks) <= 1:
            for chunk in chunks:
                yield self._read(chunk)
            return
        loader = torch.utils.data.DataLoader(
            _BatchReads(self, chunks), batch_size=None, shuffle=False, num_workers=min(workers, len(chunks))
        )
        for batch in loader:
            if isinstance(batch, str):  # a DataError in a worker, passed back as its one line
                raise DataError(batch)
            yield batch


class _BatchReads(torch.utils.data.Dataset):
    """Item i = batch i of a source (one inter-process transfer per batch); errors come back as their message."""

    def __init__(self, source: ImageSource, chunks: list[np.ndarray]) -> None:
        self.source, self.chunks = source, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int):
        try:
            return self.source._read(self.chunks[i])
        except DataError as exc:  # else DataLoader re-raises it with the worker's traceback in the message
            return str(exc)


def _geometry_in_chunks(images: torch.Tensor, prep: Preprocessing | None, chunk: int = 512) -> torch.Tensor:
    if prep is None:
        return images
    if len(images) <= chunk:
        return prep.geometry(images)
    out = torch.empty((len(images), *prep.input_shape), dtype=torch.uint8)
    for i in range(0, len(images), chunk):  # resizing works in float internally: bound it
        out[i : i + chunk] = prep.geometry(images[i : i + chunk])
    return out


class ArrayImages(ImageSource):
    """Images in an array [N, C, H, W] (in memory or a memory map), optionally through a preprocessing."""

    def __init__(
        self,
        array: np.ndarray | torch.Tensor,
        prep: Preprocessing | None = None,
        positions: np.ndarray | None = None,
        workers: int | None = None,
    ) -> None:
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        if array.ndim != 4:
            raise DataError(f"images must be N×C×H×W, got shape {tuple(array.shape)}")
        self.array, self.prep, self.positions, self.workers = array, prep, positions, workers
        self.image_shape = tuple(prep.input_shape) if prep is not None else tuple(int(v) for v in array.shape[1:])

    def __len__(self) -> int:
        return len(self.array) if self.positions is None else len(self.positions)

    def _read(self, positions: np.ndarray) -> torch.Tensor:
        rows = positions if self.positions is None else self.positions[positions]
        if len(rows) and np.all(np.diff(rows) == 1):  # a contiguous run: a view, one copy
            raw = self.array[int(rows[0]) : int(rows[-1]) + 1]
        else:
            raw = self.array[rows]
        images = torch.from_numpy(np.array(raw, dtype=np.uint8, copy=True))
        return _geometry_in_chunks(images, self.prep)

    def _view(self, positions: np.ndarray | None = None, prep: Preprocessing | None = None) -> ArrayImages:
        if positions is not None and self.positions is not None:
            positions = self.positions[positions]
        elif positions is None:
            positions = self.positions
        if prep is not None and prep.resize is None and prep.input_shape == tuple(self.array.shape[1:]):
            prep = None  # nothing to change: keep the fast path
        return ArrayImages(self.array, prep if prep is not None else self.prep, positions, self.workers)


GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _decode(path: Path) -> torch.Tensor:
    """One image file -> uint8 [C, H, W]: C = 1 for grey modes, else 3 (RGBA drops alpha, palette and CMYK
    convert to RGB). A file that cannot be decoded raises DataError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit/float grey: scale to 8 bits
                array = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
                array = np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8)
            else:
                array = np.array(img.convert("L" if img.mode in GREY_MODES else "RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); remove or replace it") from exc
    return torch.from_numpy(np.ascontiguousarray(array[None] if array.ndim == 2 else array.transpose(2, 0, 1)))


def _header(path: Path) -> tuple[int, int, int]:
    """(channels, height, width) of an image file from its header alone (nothing decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return (1 if img.mode in GREY_MODES else 3, img.height, img.width)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); remove or replace it") from exc


#: glibc's mmap threshold, fixed while image files are decoded. glibc raises the threshold each time it frees a
#: large mmapped block ("dynamic threshold"); decode buffers of varying size then come from the heap and fragment
#: it, and `evaluate`'s peak RSS grew ×1.7 from 2k to 32k JPEGs of mixed sizes. Fixed at glibc's own default
#: (128 KiB) it stays flat (benchmarks/data_scale.py, docs/data-scale.md).
MALLOC_MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
_malloc_pinned = False


def pin_malloc_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold (once per process; loader workers forked later inherit it). A no-op off
    glibc, or where the user set ``MALLOC_MMAP_THRESHOLD_`` themselves. Returns whether it is in force."""
    global _malloc_pinned
    if _malloc_pinned or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return _malloc_pinned or "MALLOC_MMAP_THRESHOLD_" in os.environ
    import ctypes
    import ctypes.util
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _malloc_pinned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
    return _malloc_pinned


class FolderImages(ImageSource):
    """Image files (JPEG, PNG, WebP, BMP, TIFF, PGM/PPM; any size, grey/RGB/RGBA/palette), decoded one at a
    time and brought to the model's input by ``prep`` (channels, resize, centre crop). File names are held
    as one numpy bytes array (no per-file Python objects, so forked loader workers share it untouched).

    Without a resize the images must all have the size of the input: a different one is refused with a
    message pointing at ``--image-size`` (a folder of one size needs no option)."""

    decodes_files = True

    def __init__(
        self,
        root: Path,
        files: np.ndarray,
        prep: Preprocessing,
        strict: bool,
        positions: np.ndarray | None = None,
        workers: int | None = None,
    ) -> None:
        self.root, self.files, self.prep, self.strict = root, files, prep, strict
        self.positions, self.workers = positions, workers
        pin_malloc_mmap_threshold()
        self.image_shape = tuple(prep.input_shape)  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.files) if self.positions is None else len(self.positions)

    def path(self, i: int) -> Path:
        row = i if self.positions is None else int(self.positions[i])
        return self.root / os.fsdecode(self.files[row])

    def _read(self, positions: np.ndarray) -> torch.Tensor:
        threads = torch.get_num_threads()
        if threads > 1:  # per-image ops are too small for a thread pool: 1 thread is several times faster
            torch.set_num_threads(1)
        try:
            return self._decode_all(positions)
        finally:
            if threads > 1:
                torch.set_num_threads(threads)

    def _decode_all(self, positions: np.ndarray) -> torch.Tensor:
        out = torch.empty((len(positions), *self.image_shape), dtype=torch.uint8)
        for k, i in enumerate(positions):
            path = self.path(int(i))
            image = _decode(path)
            if self.strict and tuple(image.shape[1:]) != tuple(self.prep.crop):
                raise DataError(
                    f"image {path} is {image.shape[1]}×{image.shape[2]} but the folder's first image is "
                    f"{self.prep.crop[0]}×{self.prep.crop[1]}; pass --image-size N to resize and centre-crop "
                    "every image to N×N"
                )
            try:
                out[k] = self.prep.geometry(image[None])[0]
            except DataError as exc:
                raise DataError(f"image {path}: {exc}") from exc
        return out

    def _view(self, positions: np.ndarray | None = None, prep: Preprocessing | None = None) -> FolderImages:
        if positions is not None and self.positions is not None:
            positions = self.positions[positions]
        elif positions is None:
            positions = self.positions
        strict = self.strict and prep is None
        return FolderImages(self.root, self.files, prep or self.prep, strict, positions, self.workers)


class SplitItems(torch.utils.data.Dataset):
    """(uint8 image [C, H, W], int64 label) items of a source: what :meth:`Dataset.split` returns."""

    def __init__(self, images: ImageSource, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[int(i)], self.labels[int(i)]

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image and label at once (``TensorDataset``'s face): for small sets only."""
        return self.images[:], self.labels


def as_source(images: ImageSource | torch.Tensor | np.ndarray) -> ImageSource:
    return images if isinstance(images, ImageSource) else ArrayImages(torch.as_tensor(images))


def image_batches(images: ImageSource | torch.Tensor, batch_size: int = 256, indices=None) -> Iterator[torch.Tensor]:
    """uint8 batches of a source (through its loader) or of an in-memory tensor."""
    if isinstance(images, ImageSource):
        yield from images.batches(batch_size, indices)
        return
    images = torch.as_tensor(images)
    if indices is not None:
        images = images[torch.as_tensor(_as_indices(indices, len(images)))]
    for i in range(0, len(images), batch_size):
        yield images[i : i + batch_size]


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


def preprocess(images: ImageSource | torch.Tensor | np.ndarray, norm: Normalization) -> torch.Tensor:
    """uint8 [N, C, H, W] -> normalised float32, the model's input (a source is read whole: small sets only)."""
    if isinstance(images, ImageSource):
        images = images[:]
    x = torch.as_tensor(images).to(torch.float32) / 255.0
    mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


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

    def subset_classes(self, classes: Sequence[int]) -> Dataset:
        """The same dataset restricted to ``classes`` (labels unchanged; images stay lazy)."""
        keep = torch.tensor(sorted(set(int(c) for c in classes)))
        train = torch.isin(self.y_train, keep)
        test = torch.isin(self.y_test, keep)
        return dataclasses.replace(
            self,
            x_train=self.x_train.subset(train),
            y_train=self.y_train[train],
            x_test=self.x_test.subset(test),
            y_test=self.y_test[test],
        )

    def with_workers(self, workers: int | None) -> Dataset:
        """The same dataset read with ``workers`` loader processes."""
        return dataclasses.replace(
            self, x_train=self.x_train.with_workers(workers), x_test=self.x_test.with_workers(workers)
        )


def _nchw_layout(shape: tuple[int, ...], where: str) -> str:
    if len(shape) == 3:
        return "nhw"
    if len(shape) == 4:
        if shape[1] in (1, 3):
            return "nchw"
        if shape[3] in (1, 3):
            return "nhwc"
    raise DataError(f"{where}: images must be N×H×W or N×C×H×W (C = 1 or 3), got shape {tuple(shape)}")


def _to_nchw(images: np.ndarray, where: str) -> np.ndarray:
    """A view [N, C, H, W] of images in any of the accepted layouts (a memory map stays one)."""
    layout = _nchw_layout(images.shape, where)
    if layout == "nhw":
        return images[:, None]
    if layout == "nhwc":
        return images.transpose(0, 3, 1, 2)
    return images


def _finish(
    spec: str,
    x_train,
    y_train,
    x_test,
    y_test,
    class_names: Sequence[str] | None,
    prep: Preprocessing | None = None,
    norm: Normalization | None = None,
) -> Dataset:
    x_train = _to_nchw(x_train if isinstance(x_train, np.ndarray) else np.asarray(x_train), spec)
    x_test = _to_nchw(x_test if isinstance(x_test, np.ndarray) else np.asarray(x_test), spec)
    if x_train.dtype != np.uint8 or x_test.dtype != np.uint8:
        raise DataError(
            f"{spec}: images must be uint8 (0-255), got {x_train.dtype}/{x_test.dtype}; convert them with np.uint8"
        )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{spec}: train images {x_train.shape[1:]} and test images {x_test.shape[1:]} differ in shape")
    names, y_train, y_test = _labels(spec, y_train, y_test, len(x_train), len(x_test), class_names)
    train, test = ArrayImages(x_train), ArrayImages(x_test)
    if prep is not None:
        train, test = train.with_preprocessing(prep), test.with_preprocessing(prep)
    return Dataset(
        spec=spec,
        x_train=train,
        y_train=y_train,
        x_test=test,
        y_test=y_test,
        class_names=names,
        normalization=prep.normalization if prep is not None else norm or Normalization.of(train),
    )


def _labels(
    spec: str, y_train, y_test, n_train: int, n_test: int, class_names: Sequence[str] | None
) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor]:
    check_labels(spec, y_train, y_test)  # issue #13: float labels, empty classes, an empty test split
    y_train = np.asarray(y_train).astype(np.int64).reshape(-1)
    y_test = np.asarray(y_test).astype(np.int64).reshape(-1)
    if len(y_train) != n_train or len(y_test) != n_test:
        raise DataError(f"{spec}: label count differs from image count")
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    names = tuple(str(n) for n in class_names)
    if len(names) < num_classes or min(y_train.min(initial=0), y_test.min(initial=0)) < 0:
        raise DataError(f"{spec}: labels must lie in 0..{len(names) - 1}")
    return names, torch.from_numpy(y_train), torch.from_numpy(y_test)


def _load_digits(spec: str, prep: Preprocessing | None, norm: Normalization | None) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, bunch.target, test_size=0.3, stratify=bunch.target, random_state=0
    )
    return _finish(spec, x_train, y_train, x_test, y_test, [str(n) for n in bunch.target_names], prep, norm)


def _npz_member(file: Path, archive: zipfile.ZipFile, name: str, arrays) -> np.ndarray:
    """Array ``name`` of an .npz: a read-only memory map when stored uncompressed (``numpy.savez``), so
    its images are read on demand; else (``savez_compressed``) decompressed into memory."""
    info = archive.getinfo(name + ".npy")
    if info.compress_type == zipfile.ZIP_STORED:
        with open(file, "rb") as handle:
            handle.seek(info.header_offset)
            local = handle.read(30)
            if local[:4] == b"PK\x03\x04":
                name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
                handle.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(handle)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(handle, max_header_size=1 << 20)
                if not dtype.hasobject and not fortran and math.prod(shape) > 0:
                    return np.memmap(file, dtype=dtype, mode="r", offset=handle.tell(), shape=shape)
    return arrays[name]


def _load_npz(spec: str, path: str, prep: Preprocessing | None, norm: Normalization | None) -> Dataset:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"dataset file {file} not found; give an existing .npz with x_train, y_train, x_test, y_test")
    if not zipfile.is_zipfile(file):  # else numpy's own message suggests unpickling the file
        raise DataError(
            f"{file} is not a readable .npz archive (not a zip archive: another kind of file?); "
            "give an .npz with x_train, y_train, x_test, y_test (numpy.savez)"
        )
    try:
        with np.load(file, allow_pickle=False) as arrays, zipfile.ZipFile(file) as archive:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays.files]
            if missing:
                raise DataError(f"{file} lacks arrays {', '.join(missing)}; it needs x_train, y_train, x_test, y_test")
            names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays.files else None
            return _finish(
                spec,
                _npz_member(file, archive, "x_train", arrays),
                arrays["y_train"],
                _npz_member(file, archive, "x_test", arrays),
                arrays["y_test"],
                names,
                prep,
                norm,
            )
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises OSError, EOFError, BadZipFile, TokenError... on damage
        raise DataError(f"{file} is not a readable .npz archive ({exc}); re-create it with numpy.savez") from exc


def _load_torchvision(
    name: str, data_dir: str | None, download: bool, prep: Preprocessing | None, norm: Normalization | None
) -> Dataset:
    """torchvision's MNIST/FashionMNIST/CIFAR/SVHN classes (which hold their arrays in memory themselves):
    the images are sliced from those arrays per batch."""
    import torchvision.datasets as tvd

    root = Path(data_dir or "data")
    makers: dict[str, Callable[[bool], object]] = {
        "mnist": lambda train: tvd.MNIST(root, train=train, download=download),
        "fashion_mnist": lambda train: tvd.FashionMNIST(root, train=train, download=download),
        "cifar10": lambda train: tvd.CIFAR10(root, train=train, download=download),
        "cifar100": lambda train: tvd.CIFAR100(root, train=train, download=download),
        "svhn": lambda train: tvd.SVHN(root, split="train" if train else "test", download=download),
    }
    try:
        train_set, test_set = makers[name](True), makers[name](False)
    except (RuntimeError, OSError) as exc:
        how = (
            "the download failed (offline?); copy the dataset files into that folder instead"
            if download
            else "pass --download to fetch it (needs internet), or point --data-dir at a folder holding it"
        )
        raise DataError(f"dataset {name} not found under {root.resolve()}: {how}") from exc

    def arrays(ds) -> tuple[np.ndarray, np.ndarray]:
        data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        labels = getattr(ds, "targets", None)
        if labels is None:
            labels = ds.labels
        labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        return data, labels

    x_train, y_train = arrays(train_set)
    x_test, y_test = arrays(test_set)
    names = getattr(train_set, "classes", None)
    return _finish(name, x_train, y_train, x_test, y_test, names, prep, norm)


def _image_files(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursively, sorted)."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        files += [Path(folder) / n for n in sorted(names) if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return files


def _folder_split(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(class folders, relative file names as a bytes array, class index per file) of an ImageFolder split."""
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; give a folder of image files")
    files = _image_files(root)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    if any(f.parent == root for f in files):
        raise DataError(f"{root.parent}: images must sit inside class folders, not directly in {root.name}/")
    names = sorted({f.relative_to(root).parts[0] for f in files})
    index = {n: i for i, n in enumerate(names)}
    rel = np.array([os.fsencode(f.relative_to(root)) for f in files])
    labels = np.fromiter((index[f.relative_to(root).parts[0]] for f in files), dtype=np.int64, count=len(files))
    return names, rel, labels


def _folder_channels(root: Path, files: np.ndarray) -> int:
    """1 when every one of up to CHANNEL_SAMPLE evenly spread images is grey, else 3 (headers only)."""
    picks = np.unique(np.linspace(0, len(files) - 1, min(CHANNEL_SAMPLE, len(files))).astype(np.int64))
    return 1 if all(_header(root / os.fsdecode(files[i]))[0] == 1 for i in picks) else 3


def _load_folder(
    spec: str, path: str, prep: Preprocessing | None, image_size: int | Sequence[int] | None, norm: Normalization | None
) -> Dataset:
    """An ImageFolder layout (train/ and test/, one folder per class): files listed, nothing decoded."""
    root = Path(path)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root} needs train/ and test/ subfolders with one folder per class (ImageFolder layout)")
    names, train_files, y_train = _folder_split(root / "train")
    test_names, test_files, y_test = _folder_split(root / "test")
    if test_names != names:
        raise DataError(f"{root}: class folders differ between train/ ({names}) and test/ ({test_names})")
    names_t, y_train_t, y_test_t = _labels(spec, y_train, y_test, len(train_files), len(test_files), names)
    strict = False
    if prep is None:
        channels = _folder_channels(root / "train", train_files)
        if image_size is not None:
            size = _image_size(image_size)
            geometry = Preprocessing(
                channels, size, (0.0,) * channels, (1.0,) * channels, resize=size[0] if size[0] == size[1] else size
            )
        else:  # no size given: the first image's, and every other image must match it
            _, height, width = _header(root / "train" / os.fsdecode(train_files[0]))
            geometry = Preprocessing(channels, (height, width), (0.0,) * channels, (1.0,) * channels)
            strict = True
    else:
        geometry = prep
    train = FolderImages(root / "train", train_files, geometry, strict)
    test = FolderImages(root / "test", test_files, geometry, strict)
    norm = prep.normalization if prep is not None else norm or Normalization.of(train)
    return Dataset(
        spec=spec,
        x_train=train,
        y_train=y_train_t,
        x_test=test,
        y_test=y_test_t,
        class_names=names_t,
        normalization=norm,
    )


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    values = (int(image_size),) * 2 if isinstance(image_size, (int, np.integer)) else tuple(int(v) for v in image_size)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1 or max(values) > 4096:
        raise UsageError(f"--image-size must be one or two sizes in 1..4096 pixels, got {image_size}")
    return values  # type: ignore[return-value]


def training_preprocessing(data: Dataset, image_size: int | Sequence[int] | None) -> Preprocessing | None:
    """The preprocessing `train` records: None for a dataset used at its own size (nothing to record), else
    resize (shorter side, or both sides when not square) + centre crop to ``image_size`` with the dataset's
    statistics at that size."""
    if image_size is None and not (isinstance(data.x_train, FolderImages) and data.x_train.prep.resize is not None):
        return None
    if isinstance(data.x_train, FolderImages) and data.x_train.prep.resize is not None:
        geometry = data.x_train.prep
    else:
        size = _image_size(image_size)  # type: ignore[arg-type]
        channels = data.input_shape[0]
        geometry = Preprocessing(
            channels, size, (0.0,) * channels, (1.0,) * channels, resize=size[0] if size[0] == size[1] else size
        )
    return dataclasses.replace(geometry, mean=tuple(data.normalization.mean), std=tuple(data.normalization.std))


def load_image_folder(
    folder: str | Path,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    prep: Preprocessing | None = None,
) -> tuple[np.ndarray, list[str], list[int]]:
    """Read every image under ``folder`` (recursively) as uint8 [N, C, H, W]: a small folder, e.g. the
    forget samples of ``forget --forget-samples``.

    Returns the images, the class-folder names found (sorted) and each image's index into them
    (-1 for images lying directly in ``folder``). ``prep`` brings every image to a model's input (channels,
    resize, centre crop: the checkpoint's preprocessing); without it ``channels``/``size`` convert and scale
    straight to that size, and with neither the images must share one size."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; give a folder of image files")
    files = _image_files(root)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    class_dirs = sorted({p.parent.relative_to(root).parts[0] for p in files if p.parent != root})
    images, owners = [], []
    for file in files:
        image = _decode(file)
        if prep is not None:
            try:
                image = prep.geometry(image[None])[0]
            except DataError as exc:
                raise DataError(f"image {file}: {exc}") from exc
        elif channels is not None or size is not None:
            step = Preprocessing(
                channels or image.shape[0],
                tuple(size or image.shape[1:]),  # type: ignore[arg-type]
                (0.0,) * (channels or image.shape[0]),
                (1.0,) * (channels or image.shape[0]),
                resize=tuple(size) if size is not None else None,
            )  # type: ignore[arg-type]
            image = step.geometry(image[None])[0]
        images.append(image.numpy())
        owners.append(class_dirs.index(file.parent.relative_to(root).parts[0]) if file.parent != root else -1)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"images under {root} differ in size/channels {sorted(shapes)[:3]}; resize them to one size")
    return np.stack(images), class_dirs, owners


def load_dataset(
    spec: str,
    data_dir: str | None = None,
    download: bool = False,
    preprocessing: Preprocessing | None = None,
    image_size: int | Sequence[int] | None = None,
    workers: int | None = None,
    normalization: Normalization | None = None,
    measure: bool = True,
) -> Dataset:
    """Load a dataset by spec string (see the module docstring); images stay where they are until read.

    ``preprocessing``: bring the images to a model's input (a checkpoint's record; its normalisation is used,
    none is computed). ``image_size``: resize (shorter side) and centre-crop to that size, statistics computed
    at that size (``train --image-size``). ``workers``: loader processes (default ``--workers``).
    ``normalization``: the model's, taken instead of computing the dataset's (which reads images);
    ``measure=False``: neither (the identity, for a caller that brings its own: nothing is decoded)."""
    if preprocessing is not None and image_size is not None:
        raise UsageError("give either a preprocessing record or --image-size, not both")
    if not measure and normalization is None:
        normalization = _UNMEASURED
    name = spec.strip()
    if name.startswith("folder:"):
        data = _load_folder(name, name[7:], preprocessing, image_size, normalization)
    else:
        prep, norm = preprocessing, normalization if image_size is None else None
        if name == "digits":
            data = _load_digits(name, prep, norm)
        elif name in TORCHVISION_DATASETS:
            data = _load_torchvision(name, data_dir, download, prep, norm)
        elif name.startswith("npz:"):
            data = _load_npz(name, name[4:], prep, norm)
        else:
            raise UsageError(f"unknown dataset {spec!r}; choose one of {', '.join(DATASET_CHOICES)}")
        if image_size is not None and tuple(_image_size(image_size)) != tuple(data.input_shape[1:]):
            channels = data.input_shape[0]
            size = _image_size(image_size)
            geometry = Preprocessing(
                channels, size, (0.0,) * channels, (1.0,) * channels, resize=size[0] if size[0] == size[1] else size
            )
            data = dataclasses.replace(
                data, x_train=data.x_train.with_preprocessing(geometry), x_test=data.x_test.with_preprocessing(geometry)
            )
            data = dataclasses.replace(data, normalization=Normalization.of(data.x_train))
    return data.with_workers(workers) if workers is not None else data


def load_dataset_at(
    spec: str, input_shape: Sequence[int], normalization: Normalization | None, data_dir: str | None = None
) -> Dataset:
    """``spec`` at a model's input when only its shape and normalisation are known (an exported ONNX model):
    a folder's images are resized (shorter side) and centre-cropped to it, as ``train --image-size`` does;
    any other dataset is taken as it is (its shape is checked by the caller; ``normalization`` None: the
    dataset's own is computed)."""
    channels, height, width = (int(v) for v in input_shape)
    if spec.strip().startswith("folder:"):
        if normalization is None:
            raise UsageError("a folder dataset needs the model's normalisation to be read at its input size")
        prep = Preprocessing(
            channels,
            (height, width),
            tuple(normalization.mean),
            tuple(normalization.std),
            resize=height if height == width else (height, width),
        )
        return load_dataset(spec, data_dir=data_dir, preprocessing=prep)
    return load_dataset(spec, data_dir=data_dir, normalization=normalization)


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
    data: Dataset, classes: Sequence[int], per_class: int, seed: int = 0, exclude: torch.Tensor | None = None
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
