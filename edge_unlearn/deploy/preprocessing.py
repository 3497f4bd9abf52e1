"""The model's preprocessing record on the deployment side: raw uint8 images -> the model's float32 input, no torch.

Twin of ``edge_unlearn.data.Preprocessing`` (host side, torchvision): both are the one record of
:mod:`edge_unlearn.core.preprocessing` (stored in the ONNX metadata as ``edge_unlearn.preprocessing`` by
``export``); this one applies its steps in numpy: channel conversion (grey -> RGB repeats the plane; RGB ->
grey ITU-R 601-2 luma, truncated to uint8 as torchvision does), resize (the shorter side to ``resize`` with the
aspect kept, or exactly H×W) with antialiasing, centre crop to the model's size, then scaling to [0, 1] and normalising.

The resize is PIL's separable resampling, which torchvision's ``antialias=True`` reproduces: a triangle
(bilinear) or Keys cubic (a = -0.5, bicubic) filter stretched by the scale factor when shrinking, applied
horizontally then vertically, each pass rounded to uint8; ``nearest`` picks ``floor(i * in / out)``.
Both passes use torch's fixed-point uint8 arithmetic (int16 weights, round half up), so the result is
bit-identical to torchvision's native uint8 CPU resize (x86 AVX2/AVX-512; tests/deploy/test_preprocessing.py);
where torchvision resizes in float instead (bicubic/bilinear without that path, e.g. some ARM builds), pixels
differ by at most :data:`GEOMETRY_TOLERANCE` grey level (rounding).
"""

from __future__ import annotations

import numpy as np

from edge_unlearn.core.preprocessing import PreprocessingRecord
from edge_unlearn.errors import DataError, ModelFileError

#: max |host - device| in uint8 grey levels after the geometry (rounding of fixed-point vs float weights)
GEOMETRY_TOLERANCE = 1


class ImagePreprocessing(PreprocessingRecord):
    """The record (:mod:`edge_unlearn.core.preprocessing`, the same JSON as the host's) and its steps in numpy
    (see the module docstring); a bad record is a damaged model file."""

    def invalid(self, problem: str) -> None:
        raise ModelFileError(f"the preprocessing record is invalid ({problem}); re-export the model")

    @classmethod
    def damaged(cls, reason: str) -> Exception:
        return ModelFileError(f"{reason}; re-export the model")

    @property
    def normalization(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    # -- the steps ------------------------------------------------------------------------------

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The size after the resize step (torchvision's rule: the long side is truncated, not rounded)."""
        if self.resize is None:
            return height, width
        if isinstance(self.resize, tuple):
            return self.resize  # type: ignore[return-value]
        short, long = (height, width) if height <= width else (width, height)
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def geometry(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, C, H, W] -> uint8 [N, channels, *crop]: channel conversion, resize, centre crop."""
        x = np.asarray(images)
        if x.ndim != 4 or x.dtype != np.uint8:
            raise DataError(f"images must be uint8 N×C×H×W, got {x.dtype} of shape {tuple(x.shape)}")
        x = convert_channels(x, self.channels)
        height, width = self.resized_size(x.shape[2], x.shape[3])
        if (height, width) != tuple(x.shape[2:]):
            x = resize_uint8(x, height, width, self.interpolation)
        crop_h, crop_w = self.crop
        if height < crop_h or width < crop_w:
            raise DataError(
                f"images are {height}×{width} but the model takes {crop_h}×{crop_w} and its preprocessing "
                "record has no resize; use images of the model's size (the dataset it was trained on)"
            )
        top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))  # torchvision's rule
        return np.ascontiguousarray(x[:, :, top : top + crop_h, left : left + crop_w])

    def normalize(self, images_uint8: np.ndarray) -> np.ndarray:
        """uint8 [N, C, H, W] at the model's size -> normalised float32 (numpy twin of ``data.preprocess``)."""
        x = images_uint8.astype(np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return (x - mean) / std

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, C, H, W] of any size -> normalised float32 [N, channels, *crop], the model's input."""
        return self.normalize(self.geometry(images))


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [N, C, H, W] -> [N, channels, H, W]: grey -> RGB repeats; RGB -> grey is torchvision's
    ``rgb_to_grayscale`` (0.2989 R + 0.587 G + 0.114 B in float32, truncated to uint8)."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=1)
    if have == 3 and channels == 1:
        r, g, b = (images[:, i].astype(np.float32) for i in range(3))
        grey = r * np.float32(0.2989) + g * np.float32(0.587) + b * np.float32(0.114)
        return grey.astype(np.uint8)[:, None]
    raise DataError(f"images have {have} channels; the model takes {channels}")


def _filter(name: str):
    if name == "bilinear":
        return 1.0, lambda t: np.clip(1.0 - np.abs(t), 0.0, None)

    def cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:  # Keys, a = -0.5 (PIL and torchvision's antialias)
        t = np.abs(t)
        near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
        far = (((t - 5.0) * t + 8.0) * t - 4.0) * a
        return np.where(t < 1.0, near, np.where(t < 2.0, far, 0.0))

    return 2.0, cubic


def resample_weights(size_in: int, size_out: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """One axis's taps: (source index [size_out, K], float weight [size_out, K]), PIL's ``precompute_coeffs``
    (torchvision's antialias path); unused taps have weight 0."""
    scale = size_in / size_out
    if interpolation == "nearest":
        index = np.minimum((np.arange(size_out) * scale).astype(np.int64), size_in - 1)
        return index[:, None], np.ones((size_out, 1))
    support, kernel = _filter(interpolation)
    stretch = max(scale, 1.0)
    support *= stretch
    spans = []
    for i in range(size_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), size_in)
        w = kernel((np.arange(lo, hi) - center + 0.5) / stretch)
        total = w.sum()
        spans.append((lo, w / total if total != 0 else w))
    taps = max(len(w) for _, w in spans)
    index = np.zeros((size_out, taps), dtype=np.int64)
    weight = np.zeros((size_out, taps))
    for i, (lo, w) in enumerate(spans):
        index[i] = np.minimum(lo + np.arange(taps), size_in - 1)
        weight[i, : len(w)] = w
    return index, weight


def _fixed_point(weight: np.ndarray) -> tuple[np.ndarray, int]:
    """torch's uint8 resampling weights: int16 with the most precision bits that keep the largest weight below
    2**15 (ATen's ``_compute_index_ranges_int16_weights``), each rounded half away from zero."""
    largest = float(np.abs(weight).max())
    bits = 0
    while bits < 22 and int(0.5 + largest * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    scaled = weight * (1 << bits)
    return np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5)).astype(np.int64), bits


def _resample_axis(x: np.ndarray, size_out: int, axis: int, interpolation: str) -> np.ndarray:
    index, weight = resample_weights(x.shape[axis], size_out, interpolation)
    if interpolation == "nearest":
        return np.take(x, index[:, 0], axis=axis)
    weight, bits = _fixed_point(weight)
    moved = np.moveaxis(x, axis, -1).astype(np.int64)  # [..., size_in]
    acc = (moved[..., index] * weight).sum(axis=-1)  # [..., size_out]: only the taps, not a dense matrix
    out = np.clip((acc + (1 << (bits - 1))) >> bits, 0, 255).astype(np.uint8)
    return np.moveaxis(out, -1, axis)


def resize_uint8(images: np.ndarray, height: int, width: int, interpolation: str = "bilinear") -> np.ndarray:
    """uint8 [N, C, H, W] -> uint8 [N, C, height, width]: horizontal pass then vertical, each in torch's
    fixed-point arithmetic and rounded to uint8 (bit-exact with torchvision's native uint8 CPU path)."""
    x = images
    if x.shape[3] != width:
        x = _resample_axis(x, width, 3, interpolation)
    if x.shape[2] != height:
        x = _resample_axis(x, height, 2, interpolation)
    return np.ascontiguousarray(x)
