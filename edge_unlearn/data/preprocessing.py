"""The normalisation and the preprocessing stored with every model, applied on the host (torchvision): how a raw
uint8 image becomes the model's input, and the per-channel statistics measured on a dataset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.preprocessing import PreprocessingRecord
from ..errors import DataError, UsageError
from .sources import ImageSource, as_source

#: Images a lazily read dataset's normalisation statistics are computed from (a seeded random draw).
NORMALIZATION_SAMPLE = 4096


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
    streaming loaders; the deployment side applies the same record with numpy (``edge_unlearn.deploy.preprocessing``).
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


def preprocess(images: ImageSource | torch.Tensor | np.ndarray, norm: Normalization) -> torch.Tensor:
    """uint8 [N, C, H, W] -> normalised float32, the model's input (a source is read whole: small sets only)."""
    if isinstance(images, ImageSource):
        images = images[:]
    x = torch.as_tensor(images).to(torch.float32) / 255.0
    mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std
