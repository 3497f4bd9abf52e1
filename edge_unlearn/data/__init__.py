"""Datasets read lazily (issue #12), plus the normalisation and preprocessing stored with every model.

A :class:`Dataset` holds its labels in memory and its images as :class:`ImageSource` objects that decode
on demand, at the model's input size (the checkpoint's :class:`Preprocessing`), in batches through a
``torch.utils.data.DataLoader`` with ``--workers`` processes: peak memory does not grow with the dataset.

The package, one concern a module (this file names the public API):

- :mod:`.preprocessing` -- :class:`Normalization`, :class:`Preprocessing`, :func:`preprocess` (the model's input);
- :mod:`.sources` -- image sources read lazily (arrays, memory maps, image files) and the ``--workers`` default;
- :mod:`.imagefiles` -- image files: listing, decoding, headers; :mod:`.allocator` -- glibc's mmap threshold;
- :mod:`.dataset` -- :class:`Dataset` and what is asked of one (splits, forget classes and samples);
- :mod:`.loaders` -- :func:`load_dataset` by spec string (``--dataset``), one loader per kind.
"""

from .dataset import Dataset, prepare_dataset, resolve_classes, sample_indices, take_samples
from .loaders import (
    load_dataset,
    load_dataset_at,
    load_image_folder,
    training_preprocessing,
)
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Normalization, Preprocessing, preprocess
from .sources import (
    ArrayImages,
    FolderImages,
    ImageSource,
    default_workers,
    image_batches,
    set_default_workers,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayImages",
    "Dataset",
    "FolderImages",
    "ImageSource",
    "Normalization",
    "Preprocessing",
    "default_workers",
    "image_batches",
    "load_dataset",
    "load_dataset_at",
    "load_image_folder",
    "prepare_dataset",
    "preprocess",
    "resolve_classes",
    "sample_indices",
    "set_default_workers",
    "take_samples",
    "training_preprocessing",
]
