"""Image sources: a split's images, read lazily (issue #12). An :class:`ImageSource` holds only what it needs to
find an image (an array or memory map: :class:`ArrayImages`; file names: :class:`FolderImages`) and decodes
batches on demand, through a ``torch.utils.data.DataLoader`` with ``--workers`` processes for files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.utils.data

from ..errors import DataError, UsageError
from .allocator import pin_malloc_mmap_threshold
from .imagefiles import decode_image

if TYPE_CHECKING:
    from .preprocessing import Preprocessing

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
            image = decode_image(path)
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
