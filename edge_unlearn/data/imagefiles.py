"""Image files: which suffixes count as images, listing them, and decoding one file (or only its header) with
Pillow into the uint8 [C, H, W] tensors every image source works with."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}

GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def decode_image(path: Path) -> torch.Tensor:
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


def image_header(path: Path) -> tuple[int, int, int]:
    """(channels, height, width) of an image file from its header alone (nothing decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return (1 if img.mode in GREY_MODES else 3, img.height, img.width)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); remove or replace it") from exc


def image_files(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursively, sorted)."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        files += [Path(folder) / n for n in sorted(names) if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return files
