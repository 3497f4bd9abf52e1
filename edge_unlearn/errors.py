"""One exception family for the whole project (host and deployment side; imports no torch).

The CLI turns an :class:`EdgeUnlearnError` into one line, ``error: <message>``, and exit code 2.
Every message says what is wrong *and* how to fix it.
"""

from __future__ import annotations


class EdgeUnlearnError(Exception):
    """Base class: bad input or environment that the user can fix."""

    exit_code = 2


class UsageError(EdgeUnlearnError):
    """A wrong argument: unknown class, out-of-range index, bad option combination."""


class DataError(EdgeUnlearnError):
    """A dataset that is missing, unreadable or of the wrong shape."""


class CheckpointError(EdgeUnlearnError):
    """A checkpoint that is corrupt, foreign or incompatible with what was asked."""


class ModelFileError(EdgeUnlearnError):
    """An ONNX model, engine or bundle that is missing, foreign or incompatible."""


class DependencyError(EdgeUnlearnError):
    """An optional dependency (TensorRT, pycuda, a CUDA GPU) that is not available."""
