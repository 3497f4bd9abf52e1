"""edge-unlearn: make an image classifier forget classes, export it, and prove it stayed forgotten.

This package's top level imports no torch, so the deployment side (``export``) can use the shared
errors and file helpers on a device that has only numpy and onnxruntime or TensorRT.
"""
__version__ = "0.1.0"
