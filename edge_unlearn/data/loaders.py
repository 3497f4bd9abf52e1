"""Loading a dataset by spec string (``--dataset``), one loader per kind: ``digits`` (scikit-learn's bundled 8x8
digits, offline), ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn`` (torchvision, from
``--data-dir``), ``npz:PATH`` (arrays x_train, y_train, x_test, y_test; memory-mapped when stored uncompressed)
and ``folder:PATH`` (ImageFolder with train/ and test/: JPEG/PNG/WebP/... of any size and mode, decoded per
batch); plus a small folder of images read whole (:func:`load_image_folder`)."""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, UsageError
from ..guards import check_labels
from .dataset import Dataset
from .imagefiles import IMAGE_SUFFIXES, decode_image, image_files, image_header
from .preprocessing import Normalization, Preprocessing
from .sources import ArrayImages, FolderImages

TORCHVISION_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn")
DATASET_CHOICES = ("digits", *TORCHVISION_DATASETS, "npz:PATH", "folder:PATH")

#: Images of an image folder whose modes decide its channels (1 when all are grey, else 3): headers only.
CHANNEL_SAMPLE = 64

#: "not measured" (``load_dataset(measure=False)``): a placeholder normalisation nothing reads
_UNMEASURED = Normalization((0.0,), (1.0,))


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


def _folder_split(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(class folders, relative file names as a bytes array, class index per file) of an ImageFolder split."""
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; give a folder of image files")
    files = image_files(root)
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
    return 1 if all(image_header(root / os.fsdecode(files[i]))[0] == 1 for i in picks) else 3


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
            _, height, width = image_header(root / "train" / os.fsdecode(train_files[0]))
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
    forget samples of ``forget --forget-images``.

    Returns the images, the class-folder names found (sorted) and each image's index into them
    (-1 for images lying directly in ``folder``). ``prep`` brings every image to a model's input (channels,
    resize, centre crop: the checkpoint's preprocessing); without it ``channels``/``size`` convert and scale
    straight to that size, and with neither the images must share one size."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; give a folder of image files")
    files = image_files(root)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    class_dirs = sorted({p.parent.relative_to(root).parts[0] for p in files if p.parent != root})
    images, owners = [], []
    for file in files:
        image = decode_image(file)
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
    spec: str,
    input_shape: Sequence[int],
    normalization: Normalization | None,
    data_dir: str | None = None,
    download: bool = False,
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
        return load_dataset(spec, data_dir=data_dir, download=download, preprocessing=prep)
    return load_dataset(spec, data_dir=data_dir, download=download, normalization=normalization)
