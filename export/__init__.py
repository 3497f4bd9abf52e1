"""Deployment side: ONNX export, quantization, TensorRT, runners, validators, latency bench.

Runners, the evaluation bundle, validators and the bench import no torch, so they run on a device with
only numpy + onnxruntime (or TensorRT + pycuda). Only ``edge_unlearn.export.onnx_export`` and the torch runner need torch.
"""
