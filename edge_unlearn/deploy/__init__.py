"""The device side: everything that runs where the model is deployed (a Jetson, a GPU server, an Intel box, an ARM
board) on the base install, numpy + onnx + onnxruntime (+ TensorRT/pycuda, or another runtime's extra).

Contract (import-linter, pyproject.toml): this package imports no torch and no host module. It holds the runners
(:mod:`.runner`, :mod:`.runners`, :mod:`.tensorrt`), the gate (:mod:`.validate`, :mod:`.structure`,
:mod:`.onnx_hazards`, :mod:`.onnx_meta`), the audit checks (:mod:`.audit`), the bundle reader (:mod:`.bundle`),
latency (:mod:`.bench`), run folders and their evidence (:mod:`.rundir`), the report (:mod:`.report`) and
:mod:`.doctor`. The host side (``edge_unlearn.export``) writes what this package reads.
"""
