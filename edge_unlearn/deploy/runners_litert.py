"""The LiteRT (TFLite) runner: a ``.tflite`` from ``edge-unlearn convert --to litert`` run by the ``ai_edge_litert``
interpreter on the CPU (XNNPACK). Torch-free: ``pip install 'edge-unlearn[litert]'``.

The file carries the edge-unlearn metadata (the ONNX props, as JSON) in the flatbuffer's own ``metadata`` table
under :data:`META_NAME`, so ``validate``, ``bench`` and ``report`` read it as from an ONNX file; the gate reads the
flatbuffer's operators and tensors (:mod:`edge_unlearn.deploy.structure_litert`).

An audit file (``edge-unlearn convert CHECKPOINT --to litert --audit``) has two outputs, named ``logits`` and
``features`` in its signature (the metadata's ``output_name`` / ``features_name``): :meth:`LiteRtRunner.infer`
reads the logits and :meth:`LiteRtRunner.infer_features` both, each found by name; the gate proves the mask on the
logits output (:func:`logits_view`).
"""

from __future__ import annotations

import copy
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


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")


def output_tensor(model: Any, name: str) -> int | None:
    """The subgraph-0 tensor index of the model output called ``name``: by the signature's output names (what
    ``litert_torch.convert`` writes for a dict-returning module), else by the output tensor's own name; None when no
    output has that name."""
    if not model.subgraphs:
        return None
    outputs = [int(i) for i in (model.subgraphs[0].outputs if model.subgraphs[0].outputs is not None else [])]
    for signature in model.signatureDefs or []:
        if int(signature.subgraphIndex or 0) != 0:
            continue
        for entry in signature.outputs or []:
            if _text(entry.name) == name and int(entry.tensorIndex) in outputs:
                return int(entry.tensorIndex)
    tensors = model.subgraphs[0].tensors or []
    named = [i for i in outputs if i < len(tensors) and _text(tensors[i].name) == name]
    return named[0] if named else None


def logits_view(model: Any, meta: OnnxMeta) -> Any:
    """``model`` as the gate reads it: for an audit file (two outputs, one of them the features) a shallow copy
    whose subgraph declares the logits output only -- the mask's proof is about the logits, and the features output
    is the head's input, upstream of the mask; any other model unchanged (the gate then judges it as it is)."""
    graph = model.subgraphs[0] if model.subgraphs else None
    if not meta.features_name or graph is None or graph.outputs is None or len(graph.outputs) != 2:
        return model
    logits, features = output_tensor(model, meta.output_name), output_tensor(model, meta.features_name)
    if logits is None or features is None or logits == features:
        return model
    view, sub = copy.copy(model), copy.copy(graph)
    sub.outputs = np.asarray([logits], dtype=np.int32)
    view.subgraphs = [sub, *model.subgraphs[1:]]
    return view


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
        (logits,) = self._run(inputs, [self._target(self.meta.output_name)])
        return logits.astype(np.float32) if len(logits) else np.zeros((0, self.meta.num_classes), np.float32)

    @property
    def has_features(self) -> bool:
        """Whether the file is an audit file: its metadata names a features output and the file has it."""
        return bool(self.meta.features_name) and output_tensor(self._model, self.meta.features_name) is not None

    def infer_features(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, penultimate features) of the same invokes, both float32, each output found by name (a file
        from ``edge-unlearn convert CHECKPOINT --to litert --audit``); integer features are dequantized."""
        if not self.is_active:
            raise RuntimeError(f"runner {self.name} is not active; use it inside a `with` block")
        if not self.meta.features_name:
            raise ModelFileError(
                f"{self.path} has no features output; convert the checkpoint with "
                "`edge-unlearn convert CHECKPOINT --to litert --audit`"
            )
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        targets = [self._target(self.meta.output_name), self._target(self.meta.features_name)]
        logits, features = self._run(inputs, targets)
        return logits.astype(np.float32), _as_float(features, targets[1])

    def _target(self, name: str) -> dict[str, Any]:
        """The interpreter's output details of the output called ``name`` (a single-output file: its one output,
        the logits of every file converted before outputs were named)."""
        assert self._interpreter is not None
        details = self._interpreter.get_output_details()
        index = output_tensor(self._model, name)
        if index is None and len(details) == 1 and name == self.meta.output_name:
            return details[0]
        found = [d for d in details if int(d["index"]) == index]
        if not found:
            names = [d["name"] for d in details]
            raise ModelFileError(
                f"{self.path} has no output {name!r} (outputs: {names}); the metadata was edited: convert it again"
            )
        return found[0]

    def _run(self, inputs: np.ndarray, targets: list[dict[str, Any]]) -> list[np.ndarray]:
        """One invoke for a model with a dynamic batch axis; a fixed-batch model (the converter's batch 1) is fed
        ``inputs`` in chunks of its batch, the last one padded with zeros. Returns each target's values as stored."""
        interpreter = self._interpreter
        assert interpreter is not None
        if tuple(inputs.shape[1:]) != tuple(self.meta.input_shape):
            raise ModelFileError(
                f"{self.path} takes [batch, {', '.join(map(str, self.meta.input_shape))}], got {list(inputs.shape)}"
            )
        if not len(inputs):
            return [np.zeros((0, 0), np.float32) for _ in targets]
        (source,) = interpreter.get_input_details()
        fixed = int(source["shape_signature"][0]) if len(source["shape_signature"]) else -1
        step = fixed if fixed > 0 else len(inputs)
        if fixed <= 0 and step != self._batch:
            interpreter.resize_tensor_input(source["index"], [step, *inputs.shape[1:]])
            interpreter.allocate_tensors()
            self._batch = step
        outs: list[list[np.ndarray]] = [[] for _ in targets]
        for start in range(0, len(inputs), step):
            chunk = inputs[start : start + step]
            if len(chunk) < step:
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), np.float32)])
            interpreter.set_tensor(source["index"], chunk)
            interpreter.invoke()
            for out, target in zip(outs, targets):
                out.append(np.array(interpreter.get_tensor(target["index"])))
        return [np.concatenate(out)[: len(inputs)] for out in outs]

    def deactivate_impl(self) -> None:
        self._interpreter = None

    def static_checks(self) -> list[Any]:
        """The gate's structural checks of the flatbuffer (``validate`` adds them)."""
        from .structure_litert import tflite_static_checks

        return tflite_static_checks(logits_view(self._model, self.meta), self.meta, self.path)

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


def _as_float(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """An output as float32: a float tensor as it is, an integer one dequantized with its (scale, zero point)
    (a quantizer may leave a quantized tensor at a graph output)."""
    value = np.asarray(value)
    scale, zero = (detail.get("quantization") or (0.0, 0))[:2]
    if value.dtype.kind in "iu" and scale:
        return ((value.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)
    return np.array(value, dtype=np.float32)
