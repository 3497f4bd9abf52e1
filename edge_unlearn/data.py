"""Datasets as in-memory uint8 tensors, plus the normalisation stored with every model.

Spec strings (``--dataset``): ``digits`` (scikit-learn's bundled 8x8 digits, offline), ``mnist``,
``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn`` (torchvision, from ``--data-dir``), ``npz:PATH``
(arrays x_train, y_train, x_test, y_test) and ``folder:PATH`` (ImageFolder with train/ and test/).
"""
from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.utils.data

from .errors import DataError, UsageError
from .guards import check_labels

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
    def from_json(cls, data: dict) -> "Normalization":
        return cls(tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))

    @classmethod
    def of(cls, images: torch.Tensor) -> "Normalization":
        """Compute the statistics of uint8 images [N, C, H, W]."""
        x = images.to(torch.float64) / 255.0
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))


PREPROCESSING_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a raw uint8 image [C, H, W] becomes the model's input; recorded in every checkpoint (version 1).

    Order, as in torchvision's classification presets: convert ``channels`` (grey -> RGB repeats the
    plane; RGB -> grey uses ITU-R 601-2 luma), ``resize`` (None: keep the size; an int: the shorter side
    to this many pixels, aspect kept; (H, W): exactly), bilinear with antialiasing, on uint8; then centre
    ``crop`` to (H, W), the model's input size; then scale to [0, 1] and normalise with ``mean``/``std``.
    :meth:`transforms` gives the same steps as a torchvision.transforms.v2 pipeline for streaming loaders.
    """

    channels: int
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | tuple[int, int] | None = None
    interpolation: str = "bilinear"
    version: int = PREPROCESSING_VERSION

    def __post_init__(self) -> None:
        if self.version != PREPROCESSING_VERSION:
            raise UsageError(f"preprocessing record version {self.version} is not supported (this is version "
                             f"{PREPROCESSING_VERSION}); upgrade edge-unlearn")
        if self.channels not in (1, 3):
            raise UsageError(f"images must have 1 or 3 channels, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise UsageError(f"--mean/--std need {self.channels} values each (one per channel), got "
                             f"{len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise UsageError(f"--std values must be positive, got {list(self.std)}")
        if len(self.crop) != 2 or min(self.crop) < 1:
            raise UsageError(f"the input size must be two positive numbers, got {self.crop}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise UsageError(f"interpolation must be bilinear, bicubic or nearest, got {self.interpolation!r}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.crop)  # type: ignore[return-value]

    @property
    def normalization(self) -> Normalization:
        return Normalization(self.mean, self.std)

    @classmethod
    def plain(cls, input_shape: Sequence[int], norm: Normalization) -> "Preprocessing":
        """No geometry change: what `edge-unlearn train` records (images already at the model's size)."""
        channels, height, width = (int(v) for v in input_shape)
        return cls(channels, (height, width), tuple(norm.mean), tuple(norm.std))

    def to_json(self) -> dict:
        resize = list(self.resize) if isinstance(self.resize, tuple) else self.resize
        return {"version": self.version, "channels": self.channels, "resize": resize, "crop": list(self.crop),
                "interpolation": self.interpolation, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, data: dict) -> "Preprocessing":
        resize = data.get("resize")
        return cls(channels=int(data["channels"]), crop=tuple(int(v) for v in data["crop"]),  # type: ignore[arg-type]
                   mean=tuple(float(v) for v in data["mean"]), std=tuple(float(v) for v in data["std"]),
                   resize=tuple(int(v) for v in resize) if isinstance(resize, list) else  # type: ignore[arg-type]
                   (int(resize) if resize is not None else None),
                   interpolation=str(data.get("interpolation", "bilinear")), version=int(data.get("version", 1)))

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
                raise DataError(f"images are {x.shape[2]}×{x.shape[3]} but the model takes {self.crop[0]}×{self.crop[1]} "
                                "and the checkpoint records no resize; import it with --resize or --image-size")
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
        steps += [v2.CenterCrop(list(self.crop)), v2.ToDtype(torch.float32, scale=True),
                  v2.Normalize(list(self.mean), list(self.std))]
        return v2.Compose(steps)


def prepare_dataset(data: "Dataset", prep: Preprocessing) -> "Dataset":
    """``data`` as the model sees it: images converted to the model's channels and size (uint8) and the
    model's normalisation, so every consumer (training, forgetting, evaluation, bundles, calibration)
    applies one and the same preprocessing. A no-op for a checkpoint trained on ``data``."""
    if data.input_shape == prep.input_shape and prep.resize is None:
        return dataclasses.replace(data, normalization=prep.normalization)

    def convert(images: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        out = torch.empty((len(images), *prep.input_shape), dtype=torch.uint8)
        for i in range(0, len(images), chunk):  # chunks: resizing works in float internally
            out[i:i + chunk] = prep.geometry(images[i:i + chunk])
        return out

    return dataclasses.replace(data, x_train=convert(data.x_train), x_test=convert(data.x_test),
                               normalization=prep.normalization)


def preprocess(images: torch.Tensor | np.ndarray, norm: Normalization) -> torch.Tensor:
    """uint8 [N, C, H, W] -> normalised float32, the model's input."""
    x = torch.as_tensor(images).to(torch.float32) / 255.0
    mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


@dataclass(frozen=True)
class Dataset:
    """Both splits in memory: images uint8 [N, C, H, W], labels int64 [N]."""

    spec: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: tuple[str, ...]
    normalization: Normalization

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.x_train.shape[1:])  # type: ignore[return-value]

    def split(self, name: str, classes: Sequence[int] | None = None) -> "torch.utils.data.Dataset":
        """One split (``"train"`` or ``"test"``) as a ``torch.utils.data.Dataset`` of (uint8 image [C, H, W] at
        the model's input size, int label) items, optionally restricted to ``classes``: what training's
        DataLoader (augmentation, DistributedSampler) reads. The seam between data and training (issue #12)."""
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {name!r}")
        x, y = (self.x_train, self.y_train) if name == "train" else (self.x_test, self.y_test)
        if classes is not None:
            keep = torch.isin(y, torch.tensor(sorted(set(int(c) for c in classes)), dtype=y.dtype))
            x, y = x[keep], y[keep]
        return torch.utils.data.TensorDataset(x, y)

    def subset_classes(self, classes: Sequence[int]) -> "Dataset":
        """The same dataset restricted to ``classes`` (labels unchanged)."""
        keep = torch.tensor(sorted(set(int(c) for c in classes)))
        train = torch.isin(self.y_train, keep)
        test = torch.isin(self.y_test, keep)
        return dataclasses.replace(
            self, x_train=self.x_train[train], y_train=self.y_train[train],
            x_test=self.x_test[test], y_test=self.y_test[test],
        )


def _to_nchw(images: np.ndarray, where: str) -> np.ndarray:
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4:
        if images.shape[1] in (1, 3):
            return images
        if images.shape[3] in (1, 3):
            return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise DataError(f"{where}: images must be N×H×W or N×C×H×W (C = 1 or 3), got shape {images.shape}")


def _finish(spec: str, x_train, y_train, x_test, y_test, class_names: Sequence[str] | None) -> Dataset:
    x_train = _to_nchw(np.asarray(x_train), spec)
    x_test = _to_nchw(np.asarray(x_test), spec)
    if x_train.dtype != np.uint8 or x_test.dtype != np.uint8:
        raise DataError(f"{spec}: images must be uint8 (0-255), got {x_train.dtype}/{x_test.dtype}; convert them with np.uint8")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{spec}: train images {x_train.shape[1:]} and test images {x_test.shape[1:]} differ in shape")
    check_labels(spec, y_train, y_test)  # issue #13: float labels, empty classes, an empty test split
    y_train = np.asarray(y_train).astype(np.int64).reshape(-1)
    y_test = np.asarray(y_test).astype(np.int64).reshape(-1)
    if len(y_train) != len(x_train) or len(y_test) != len(x_test):
        raise DataError(f"{spec}: label count differs from image count")
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    class_names = tuple(str(n) for n in class_names)
    if len(class_names) < num_classes or min(y_train.min(initial=0), y_test.min(initial=0)) < 0:
        raise DataError(f"{spec}: labels must lie in 0..{len(class_names) - 1}")
    xt = torch.from_numpy(np.ascontiguousarray(x_train))
    return Dataset(
        spec=spec, x_train=xt, y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)), y_test=torch.from_numpy(y_test),
        class_names=class_names, normalization=Normalization.of(xt),
    )


def _load_digits(spec: str) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, bunch.target, test_size=0.3, stratify=bunch.target, random_state=0)
    return _finish(spec, x_train, y_train, x_test, y_test, [str(n) for n in bunch.target_names])


def _load_npz(spec: str, path: str) -> Dataset:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"dataset file {file} not found; give an existing .npz with x_train, y_train, x_test, y_test")
    if not zipfile.is_zipfile(file):  # else numpy's own message suggests unpickling the file
        raise DataError(f"{file} is not a readable .npz archive (not a zip archive: another kind of file?); "
                        "give an .npz with x_train, y_train, x_test, y_test (numpy.savez)")
    try:
        with np.load(file, allow_pickle=False) as arrays:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays.files]
            if missing:
                raise DataError(f"{file} lacks arrays {', '.join(missing)}; it needs x_train, y_train, x_test, y_test")
            names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays.files else None
            return _finish(spec, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], names)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises OSError, EOFError, BadZipFile, TokenError... on damage
        raise DataError(f"{file} is not a readable .npz archive ({exc}); re-create it with numpy.savez") from exc


def _load_torchvision(name: str, data_dir: str | None, download: bool) -> Dataset:
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
        how = ("the download failed (offline?); copy the dataset files into that folder instead"
               if download else "pass --download to fetch it (needs internet), or point --data-dir at a folder holding it")
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
    return _finish(name, x_train, y_train, x_test, y_test, names)


def load_image_folder(folder: str | Path, channels: int | None = None,
                      size: tuple[int, int] | None = None) -> tuple[np.ndarray, list[str], list[int]]:
    """Read every image under ``folder`` (recursively) as uint8 [N, C, H, W].

    Returns the images, the class-folder names found (sorted) and each image's index into them
    (-1 for images lying directly in ``folder``). ``channels``/``size`` convert and resize to a model's input.
    """
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; give a folder of image files")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    class_dirs = sorted({p.parent.relative_to(root).parts[0] for p in files if p.parent != root})
    images, owners = [], []
    for file in files:
        try:
            with Image.open(file) as img:
                mode = "L" if channels == 1 else "RGB" if channels == 3 else ("L" if img.mode in ("L", "1", "I;16") else "RGB")
                img = img.convert(mode)
                if size is not None and img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except OSError as exc:
            raise DataError(f"cannot read image {file} ({exc}); remove or replace it") from exc
        images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        owners.append(class_dirs.index(file.parent.relative_to(root).parts[0]) if file.parent != root else -1)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"images under {root} differ in size/channels {sorted(shapes)[:3]}; resize them to one size")
    return np.stack(images), class_dirs, owners


def _load_folder(spec: str, path: str) -> Dataset:
    root = Path(path)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root} needs train/ and test/ subfolders with one folder per class (ImageFolder layout)")
    x_train, names, y_train = load_image_folder(root / "train")
    x_test, test_names, y_test = load_image_folder(root / "test", channels=x_train.shape[1], size=x_train.shape[2:])
    if test_names != names:
        raise DataError(f"{root}: class folders differ between train/ ({names}) and test/ ({test_names})")
    if min(y_train) < 0 or min(y_test) < 0:
        raise DataError(f"{root}: images must sit inside class folders, not directly in train/ or test/")
    return _finish(spec, x_train, y_train, x_test, y_test, names)


def load_dataset(spec: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    """Load a dataset by spec string (see the module docstring)."""
    name = spec.strip()
    if name == "digits":
        return _load_digits(name)
    if name in TORCHVISION_DATASETS:
        return _load_torchvision(name, data_dir, download)
    if name.startswith("npz:"):
        return _load_npz(name, name[4:])
    if name.startswith("folder:"):
        return _load_folder(name, name[7:])
    raise UsageError(f"unknown dataset {spec!r}; choose one of {', '.join(DATASET_CHOICES)}")


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
                raise UsageError(f"unknown class {token!r}; use an index 0..{len(names) - 1} or one of the names {shown}")
    if not out:
        raise UsageError("no class to forget was given; pass --forget with a class index or name")
    return sorted(out)


def take_samples(data: Dataset, classes: Sequence[int], per_class: int, seed: int = 0,
                 exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` random training images of each class in ``classes`` (uint8 images, labels)."""
    if per_class < 1:
        raise UsageError(f"--samples must be at least 1, got {per_class}")
    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in classes:
        idx = torch.nonzero(data.y_train == c).flatten()
        if len(idx) < per_class:
            raise UsageError(f"class {c} ({data.class_names[c]}) has only {len(idx)} training samples, "
                             f"fewer than --samples {per_class}; ask for at most {len(idx)}")
        pick = idx[torch.randperm(len(idx), generator=gen)[:per_class]]
        xs.append(data.x_train[pick])
        ys.append(data.y_train[pick])
    return torch.cat(xs), torch.cat(ys)
