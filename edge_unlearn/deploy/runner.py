"""The one Runner protocol every engine implements (after Polygraphy's BaseRunner). No torch imports.

A runner allocates nothing before ``__enter__``; inside the ``with`` block ``infer`` maps preprocessed
float32 inputs [B, C, H, W] to raw logits [B, num_classes] float32 (forgotten classes carry the graph's
mask value). Validators and the bench take runners and never know the engine.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np


class Runner(abc.ABC):
    """Context manager around one inference engine. Subclasses implement the ``*_impl`` hooks."""

    #: short engine name, e.g. "onnxruntime", "tensorrt", "torch"
    runtime: str = "?"

    def __init__(self, path: str, name: str | None = None) -> None:
        self.path = str(path)
        self.name = name or self.path
        self.is_active = False

    def __enter__(self) -> Runner:
        self.activate_impl()
        self.is_active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.is_active = False
        self.deactivate_impl()

    def infer(self, inputs: np.ndarray) -> np.ndarray:
        """Run a batch; ``inputs`` float32 [B, C, H, W] -> logits float32 [B, num_classes]."""
        if not self.is_active:
            raise RuntimeError(f"runner {self.name} is not active; use it inside a `with` block")
        return self.infer_impl(np.ascontiguousarray(inputs, dtype=np.float32))

    def describe(self) -> dict[str, Any]:
        """Runtime, provider, precision, device and versions, for reports."""
        return {"runtime": self.runtime, "path": self.path, **self.describe_impl()}

    @abc.abstractmethod
    def activate_impl(self) -> None:
        """Load the model and allocate buffers."""

    @abc.abstractmethod
    def infer_impl(self, inputs: np.ndarray) -> np.ndarray:
        """The actual inference."""

    def deactivate_impl(self) -> None:
        """Free what ``activate_impl`` allocated."""

    def describe_impl(self) -> dict[str, Any]:
        return {}
