"""The model contract and the model registry.

Every classifier here is ``backbone(x) -> features [B, D]`` + ``head: Linear(D, C)`` + a boolean
``class_mask`` [C] (True = the class may be predicted, False = forgotten). Masking, probes, export and
the fused kernel use this contract only; adapters split torchvision and timm families into it.

The package, one concern a module (this file names the public API):

- :mod:`.classifier` -- :class:`UnlearnableClassifier`, the contract (masking, masked inference);
- :mod:`.stats` -- the class statistics it records (per-class means at the edit layer and at every depth);
- :mod:`.registry` -- the built-in models (``--arch``) and building a model by name or architecture record;
- :mod:`.adapters` -- torchvision and timm architectures (:class:`ArchSpec`) and the user's own modules (:func:`wrap`).
"""

from .adapters import (
    TORCHVISION_HEADS,
    TORCHVISION_IGNORED_PREFIXES,
    TORCHVISION_UNSPLITTABLE,
    ArchSpec,
    build_original,
    head_path,
    model_family,
    split_classifier,
    torchvision_classifiers,
    torchvision_head_path,
    wrap,
)
from .classifier import UnlearnableClassifier
from .registry import MODELS, build_from_spec, build_model, register_model
from .stats import (
    DEPTH_STATS_COUNT,
    DEPTH_STATS_MAX_FLOATS,
    HEAD_INPUT,
    depth_layers,
    edit_layer,
    is_depth_stats_key,
    pool_edit_input,
)

__all__ = [
    "DEPTH_STATS_COUNT",
    "DEPTH_STATS_MAX_FLOATS",
    "HEAD_INPUT",
    "MODELS",
    "TORCHVISION_HEADS",
    "TORCHVISION_IGNORED_PREFIXES",
    "TORCHVISION_UNSPLITTABLE",
    "ArchSpec",
    "UnlearnableClassifier",
    "build_from_spec",
    "build_model",
    "build_original",
    "depth_layers",
    "edit_layer",
    "head_path",
    "is_depth_stats_key",
    "model_family",
    "pool_edit_input",
    "register_model",
    "split_classifier",
    "torchvision_classifiers",
    "torchvision_head_path",
    "wrap",
]
