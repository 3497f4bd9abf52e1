"""The preprocessing record: how a raw uint8 image [C, H, W] becomes a model's input (version 1).

One definition of the record's fields, its checks and its JSON, read by both sides: the host's
``edge_unlearn.data.Preprocessing`` applies it with torchvision transforms, the deployment side's
``edge_unlearn.deploy.preprocessing.ImagePreprocessing`` with numpy. Order, as in torchvision's classification
presets: convert ``channels`` (grey -> RGB repeats the plane; RGB -> grey uses ITU-R 601-2 luma), ``resize``
(None: keep the size; an int: the shorter side to this many pixels, aspect kept; (H, W): exactly) with
antialiasing, on uint8; then centre ``crop`` to (H, W), the model's input size; then scale to [0, 1] and
normalise with ``mean``/``std``. Checkpoints store it in their header, ONNX files in their metadata.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PREPROCESSING_VERSION = 1
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
#: the largest side a record may name (a damaged record must not ask for a gigapixel buffer)
MAX_SIDE = 1 << 14


@dataclass(frozen=True)
class PreprocessingRecord:
    """The record's fields and checks; subclasses add the steps and say which error a bad record raises."""

    channels: int
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | tuple[int, int] | None = None
    interpolation: str = "bilinear"
    version: int = PREPROCESSING_VERSION

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            self.invalid(problem)

    def invalid(self, problem: str) -> None:
        """Raise the error of this side for a record that fails :meth:`problem` (ValueError here)."""
        raise ValueError(problem)

    @classmethod
    def damaged(cls, reason: str) -> Exception:
        """The error of this side for a record that cannot even be parsed (ValueError here)."""
        return ValueError(reason)

    def problem(self) -> str:
        """What is wrong with the record, in one phrase a user can act on ("" when nothing is)."""
        if self.version != PREPROCESSING_VERSION:
            return (
                f"preprocessing record version {self.version} is not supported (this edge-unlearn reads version "
                f"{PREPROCESSING_VERSION}); upgrade edge-unlearn"
            )
        if self.channels not in (1, 3):
            return f"images must have 1 or 3 channels, got {self.channels}"
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            return (
                f"--mean/--std need {self.channels} values each (one per channel), got {len(self.mean)} and "
                f"{len(self.std)}"
            )
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)) or any(s <= 0 for s in self.std):
            return f"--mean/--std must be finite and --std positive, got mean {list(self.mean)}, std {list(self.std)}"
        if len(self.crop) != 2 or not all(1 <= s <= MAX_SIDE for s in self.crop):
            return f"the input size must be two numbers in 1..{MAX_SIDE}, got {list(self.crop)}"
        sizes = () if self.resize is None else (self.resize,) if isinstance(self.resize, int) else self.resize
        if (isinstance(self.resize, tuple) and len(sizes) != 2) or not all(1 <= s <= MAX_SIDE for s in sizes):
            return f"the resize must be one or two numbers in 1..{MAX_SIDE}, got {self.resize}"
        if self.interpolation not in INTERPOLATIONS:
            return f"interpolation must be {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
        return ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.crop)  # type: ignore[return-value]

    @property
    def changes_geometry(self) -> bool:
        """True when raw images are resized (not just centre-cropped): images of any size are accepted."""
        return self.resize is not None

    @classmethod
    def plain(cls, input_shape: Sequence[int], normalization: Any):
        """No geometry change (images already at the model's size): what `edge-unlearn train` records.
        ``normalization``: a ``{"mean", "std"}`` mapping or an object with ``mean``/``std``."""
        channels, height, width = (int(v) for v in input_shape)
        mean = normalization["mean"] if isinstance(normalization, Mapping) else normalization.mean
        std = normalization["std"] if isinstance(normalization, Mapping) else normalization.std
        return cls(channels, (height, width), tuple(float(v) for v in mean), tuple(float(v) for v in std))

    def to_json(self) -> dict[str, Any]:
        resize = list(self.resize) if isinstance(self.resize, tuple) else self.resize
        return {
            "version": self.version,
            "channels": self.channels,
            "resize": resize,
            "crop": list(self.crop),
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]):
        """Parse :meth:`to_json`'s record; :meth:`damaged` (one line) when it cannot be read."""
        try:
            resize = data.get("resize")
            fields = dict(
                channels=int(data["channels"]),
                crop=tuple(int(v) for v in data["crop"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                resize=(
                    tuple(int(v) for v in resize)
                    if isinstance(resize, list)
                    else int(resize)
                    if resize is not None
                    else None
                ),
                interpolation=str(data.get("interpolation", "bilinear")),
                version=int(data.get("version", PREPROCESSING_VERSION)),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise cls.damaged(f"the preprocessing record is damaged ({type(exc).__name__}: {exc})") from exc
        return cls(**fields)
