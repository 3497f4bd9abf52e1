"""The LiteRT (TFLite) runner: a ``.tflite`` from ``edge-unlearn convert --to litert`` run by the ``ai_edge_litert``
interpreter on the CPU (XNNPACK). Torch-free: ``pip install 'edge-unlearn[litert]'``.

The file carries the edge-unlearn metadata (the ONNX props, as JSON) in the flatbuffer's own ``metadata`` table
under :data:`META_NAME`, so ``validate``, ``bench`` and ``report`` read it as from an ONNX file; the gate reads the
flatbuffer's operators and tensors (:mod:`edge_unlearn.deploy.structure_litert`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn.errors import DependencyError, ModelFileError

from .onnx_meta import OnnxMeta
from .runner import Runner

LITERT_SUFFIXES = (".tflite",)
#: name of the flatbuffer metadata entry holding the edge-unlearn props
META_NAME = "edge_unlearn"
NEEDS_LITERT = "this needs LiteRT, which is not installed here; install it with pip install 'edge-unlearn[litert]'"


def schema() -> Any:
    """The TFLite flatbuffer schema bundled with ``ai_edge_litert`` (DependencyError when absent)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as exc:
        raise DependencyError(NEEDS_LITERT) from exc
    return schema_py_generated


def load_tflite(path: str | Path) -> Any:
    """The flatbuffer of a ``.tflite`` file as the schema's object tree (``ModelT``); one-line errors."""
    path = Path(path)
    fb = schema()
    if not path.is_file():
        raise ModelFileError(f"model {path} not found; convert one with `edge-unlearn convert MODEL.onnx --to litert`")
    data = path.read_bytes()
    try:
        if len(data) < 8 or not fb.Model.ModelBufferHasIdentifier(data, 0):
            raise ValueError("no TFL3 identifier")
        return inline_buffers(fb.ModelT.InitFromPackedBuf(data, 0), data)
    except Exception as exc:  # noqa: BLE001 - a truncated flatbuffer raises IndexError/struct.error/ValueError
        raise ModelFileError(
            f"{path} is not a readable .tflite file ({type(exc).__name__}: {str(exc)[:120]}); it may be truncated: "
            "copy it again or convert it again"
        ) from exc


def inline_buffers(model: Any, data: bytes) -> Any:
    """Move buffers stored after the flatbuffer (``offset``/``size``: what ai-edge-quantizer writes for larger
    models) into the tables, so the gate reads every constant and the model can be packed again."""
    for buffer in model.buffers:
        if buffer.offset > 1 and buffer.size:
            if buffer.offset + buffer.size > len(data):
                raise ValueError(
                    f"a constant buffer lies past the end of the file ({buffer.offset + buffer.size} bytes)"
                )
            buffer.data = np.frombuffer(data[buffer.offset : buffer.offset + buffer.size], np.uint8)
            buffer.offset = buffer.size = 0
    return model


def read_tflite_meta(model: Any, where: str) -> OnnxMeta:
    """The edge-unlearn metadata of a ``ModelT`` (its ``metadata`` entry :data:`META_NAME`)."""
    for entry in model.metadata or []:
        if (entry.name or b"").decode() == META_NAME:
            try:
                props = json.loads(bytes(np.asarray(model.buffers[entry.buffer].data, np.uint8)).decode())
            except (IndexError, TypeError, ValueError) as exc:
                raise ModelFileError(f"{where}: the edge-unlearn metadata is damaged; convert the model again") from exc
            return OnnxMeta.from_props({str(k): str(v) for k, v in props.items()}, where)
    return OnnxMeta.from_props({}, where)  # a foreign model: the one-line "no edge-unlearn metadata" error


def with_tflite_meta(data: bytes, meta: OnnxMeta) -> bytes:
    """``data`` (a ``.tflite``) with its :data:`META_NAME` metadata entry set to ``meta``."""
    import flatbuffers

    fb = schema()
    model = inline_buffers(fb.ModelT.InitFromPackedBuf(data, 0), data)
    model.metadata = [m for m in (model.metadata or []) if (m.name or b"").decode() != META_NAME]
    buffer = fb.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta.to_props(), sort_keys=True).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = fb.MetadataT()
    entry.name, entry.buffer = META_NAME, len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class LiteRtRunner(Runner):
    """``ai_edge_litert.interpreter.Interpreter`` on the CPU; the batch axis is resized per call."""

    runtime = "litert"

    def __init__(self, path: str | Path, name: str | None = None, threads: int | None = None) -> None:
        super().__init__(str(path), name)
        self.threads = threads
        self._model = load_tflite(path)  # fails early (one line) for a truncated or foreign file
        self.meta = read_tflite_meta(self._model, str(path))
        self._interpreter = None
        self._batch = 0

    def activate_impl(self) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise DependencyError(NEEDS_LITERT) from exc
        try:
            self._interpreter = Interpreter(model_path=self.path, num_threads=self.threads or None)
            self._interpreter.allocate_tensors()
        except Exception as exc:  # noqa: BLE001 - the interpreter raises ValueError/RuntimeError with a C++ log
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ModelFileError(f"LiteRT cannot load {self.path}: {first}") from exc
        self._batch = 0

    def infer_impl(self, inputs: np.ndarray) -> np.ndarray:
        """One invoke for a model with a dynamic batch axis; a fixed-batch model (the converter's batch 1) is fed
        ``inputs`` in chunks of its batch, the last one padded with zeros."""
        interpreter = self._interpreter
        assert interpreter is not None
        if tuple(inputs.shape[1:]) != tuple(self.meta.input_shape):
            raise ModelFileError(
                f"{self.path} takes [batch, {', '.join(map(str, self.meta.input_shape))}], got {list(inputs.shape)}"
            )
        (source,) = interpreter.get_input_details()
        fixed = int(source["shape_signature"][0]) if len(source["shape_signature"]) else -1
        step = fixed if fixed > 0 else len(inputs)
        if fixed <= 0 and step != self._batch:
            interpreter.resize_tensor_input(source["index"], [step, *inputs.shape[1:]])
            interpreter.allocate_tensors()
            self._batch = step
        (target,) = interpreter.get_output_details()
        outs = []
        for start in range(0, len(inputs), step):
            chunk = inputs[start : start + step]
            if len(chunk) < step:
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), np.float32)])
            interpreter.set_tensor(source["index"], chunk)
            interpreter.invoke()
            outs.append(np.array(interpreter.get_tensor(target["index"]), dtype=np.float32))
        return np.concatenate(outs)[: len(inputs)] if outs else np.zeros((0, self.meta.num_classes), np.float32)

    def deactivate_impl(self) -> None:
        self._interpreter = None

    def static_checks(self) -> list[Any]:
        """The gate's structural checks of the flatbuffer (``validate`` adds them)."""
        from .structure_litert import tflite_static_checks

        return tflite_static_checks(self._model, self.meta, self.path)

    def describe_impl(self) -> dict[str, Any]:
        from importlib import metadata

        from .runners import base_environment

        return {
            "provider": "CPU",
            "precision": self.meta.precision,
            "quant_layout": str(self.meta.quantization.get("recipe", "")) if self.meta.precision == "int8" else "",
            "device": "cpu (XNNPACK)",
            "num_classes": self.meta.num_classes,
            "forgotten_classes": list(self.meta.forgotten_classes),
            "source_sha256": self.meta.source_sha256,
            "versions": {**base_environment(), "ai_edge_litert": metadata.version("ai-edge-litert")},
        }
