"""Before an ONNX is analysed, quantized or handed to TensorRT: does it load at all? The ONNX checker (full check:
types and shapes inferred) and onnxruntime's CPU session must both accept it, so a zero-byte file, an unknown
operator, a cycle or an unreleased opset is one line saying so, not a pass (``build-engine --check-only`` used to
pass them) or a traceback from deep inside a converter. No TensorRT, no torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from edge_unlearn.errors import ModelFileError

_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_ORT_LOAD = re.compile(r"Load model from .*? failed:\s*")
_SOURCE_LOCATION = re.compile(r"/onnxruntime_src/\S+:\d+ .*?\)\s+")
#: onnx.TensorProto.FLOAT16
FLOAT16 = 10
REEXPORT = "re-export it with `edge-unlearn export` (or fix the graph)"


def error_line(exc: BaseException, limit: int = 240) -> str:
    """The first line of an onnx/onnxruntime error without onnxruntime's code prefix, the file it loaded and the
    C++ source location: what a user can act on, at most ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    for pattern in (_ORT_PREFIX, _ORT_LOAD, _SOURCE_LOCATION):
        text = pattern.sub("", text)
    text = text.strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def newest_released_opset() -> int:
    """The newest ``ai.onnx`` opset this onnx release defines (``onnx.defs.onnx_opset_version``)."""
    import onnx.defs

    return int(onnx.defs.onnx_opset_version())


def unreleased_opset(opsets: dict[str, int], newest: int) -> int | None:
    """The model's ``ai.onnx`` opset when it is newer than ``newest`` (runtimes refuse such models), else None."""
    version = opsets.get("", opsets.get("ai.onnx"))
    return int(version) if version is not None and int(version) > newest else None


def check_onnx_loads(path: str | os.PathLike) -> None:
    """Refuse (:class:`ModelFileError`, one line) an ONNX file that is empty, that the ONNX checker rejects with
    its full check, that uses an opset newer than any released one, or that onnxruntime cannot load on the CPU."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"ONNX file {p} does not exist; export one with `edge-unlearn export`")
    if p.stat().st_size == 0:
        raise ModelFileError(f"{p} is empty (0 bytes); {REEXPORT}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - DecodeError / OSError / ValueError depending on the damage
        raise ModelFileError(f"{p} is not a readable ONNX model ({error_line(exc)}); {REEXPORT}") from exc
    if not len(model.graph.node):
        raise ModelFileError(f"{p} holds no graph (no node); {REEXPORT}")
    newest = newest_released_opset()
    version = unreleased_opset({o.domain: o.version for o in model.opset_import}, newest)
    if version is not None:
        raise ModelFileError(
            f"{p} uses ONNX opset {version}, newer than any released one (this onnx knows up to {newest}); "
            "re-export with a released opset"
        )
    try:
        onnx.checker.check_model(str(p), full_check=True)
    except Exception as exc:  # noqa: BLE001 - ValidationError, InferenceError, and protobuf errors
        raise ModelFileError(f"{p} fails the ONNX checker: {error_line(exc)}; {REEXPORT}") from exc
    check_onnxruntime_loads(p, missing_kernels_ok=any(t.data_type == FLOAT16 for t in model.graph.initializer))


def check_onnxruntime_loads(path: str | os.PathLike, missing_kernels_ok: bool = False) -> None:
    """onnxruntime's CPU session must load ``path`` (graph resolution, type checks, acyclicity). With
    ``missing_kernels_ok`` (an FP16 graph) a kernel this CPU build lacks is no refusal: the target runtime decides."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the refusal below says what failed
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        if missing_kernels_ok and ("NOT_IMPLEMENTED" in str(exc) or "Could not find an implementation" in str(exc)):
            return
        raise ModelFileError(f"onnxruntime cannot load {path}: {error_line(exc)}; {REEXPORT}") from exc
