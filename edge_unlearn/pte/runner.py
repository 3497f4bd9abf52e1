"""The ExecuTorch runner: a ``.pte`` from ``edge-unlearn convert CHECKPOINT --to executorch`` run by ExecuTorch's
Python runtime (``executorch.runtime``) on the CPU with the XNNPACK delegate.

ExecuTorch's Python runtime needs torch, so this runner runs on the host (``pip install
'edge-unlearn[executorch]'``): validate the ``.pte`` there, then ship it to the device's C++ runtime unchanged.
Nothing here imports torch or executorch at module import (the host side loads this module with the CLI). The file carries the edge-unlearn metadata (the ONNX
props, as JSON) as the program's constant method :data:`META_METHOD` (a uint8 tensor), so ``validate``, ``bench``
and ``report`` read it as from an ONNX file; the gate reads the program's kernel calls, constants and the XNNPACK
delegate's graph (:mod:`edge_unlearn.pte.structure`).

An audit program (``edge-unlearn convert CHECKPOINT --to executorch --audit``) has two outputs, the logits then the
penultimate features (the metadata names ``features_name``): :meth:`ExecuTorchRunner.infer` returns the logits,
:meth:`ExecuTorchRunner.infer_features` both, and the gate proves the mask on the logits output (:func:`logits_view`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn.deploy.onnx_meta import OnnxMeta
from edge_unlearn.deploy.runner import Runner
from edge_unlearn.errors import DependencyError, ModelFileError

EXECUTORCH_SUFFIXES = (".pte",)
#: the constant method holding the edge-unlearn props (JSON bytes as a uint8 tensor)
META_METHOD = "edge_unlearn_meta"
#: the method the runner executes
FORWARD = "forward"
#: the flatbuffer identifier of the ExecuTorch program format this runner reads
PTE_IDENTIFIER = b"ET12"
NEEDS_EXECUTORCH = (
    "this needs ExecuTorch (its Python runtime needs torch, so .pte files are validated on the host), which is not "
    "installed here; install it with pip install 'edge-unlearn[executorch]'"
)


def load_pte(path: str | Path) -> Any:
    """The program of a ``.pte`` file (``executorch.exir.schema.Program``, delegate and constant segments restored);
    one-line ModelFileError for a truncated or foreign file, DependencyError without executorch."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model {path} not found; convert one with `edge-unlearn convert CKPT --to executorch`")
    data = path.read_bytes()
    identifier = data[4:8] if len(data) >= 8 else b""
    if identifier != PTE_IDENTIFIER:
        found = identifier.decode("ascii", "replace") if identifier[:2] == b"ET" else ""
        raise ModelFileError(
            f"{path} is not a readable .pte file "
            + (
                f"(program format {found}, this runtime reads {PTE_IDENTIFIER.decode()}: written by another ExecuTorch "
                "version); convert the checkpoint again with this one"
                if found
                else "(no ExecuTorch program identifier); it may be truncated: copy it again or convert it again"
            )
        )
    try:
        from executorch.exir._serialize._program import deserialize_pte_binary
    except ImportError as exc:
        raise DependencyError(NEEDS_EXECUTORCH) from exc
    try:
        return deserialize_pte_binary(data).program
    except Exception as exc:  # noqa: BLE001 - a truncated flatbuffer raises IndexError/struct.error/ValueError
        detail = (str(exc).strip().splitlines() or [""])[0][:120]
        raise ModelFileError(
            f"{path} is not a readable .pte file ({type(exc).__name__}: {detail}); it may be truncated: "
            "copy it again or convert it again"
        ) from exc


def plan(program: Any, name: str) -> Any | None:
    """The execution plan (method) called ``name``, or None."""
    found = [p for p in program.execution_plan if p.name == name]
    return found[0] if len(found) == 1 else None


def constant_tensor(program: Any, value: Any) -> np.ndarray | None:
    """The data of a constant tensor EValue (stored in the program's constant buffer), or None."""
    from .structure import DTYPES

    tensor = getattr(value, "val", None)
    if type(tensor).__name__ != "Tensor" or tensor.allocation_info is not None or tensor.data_buffer_idx <= 0:
        return None
    if tensor.data_buffer_idx >= len(program.constant_buffer):
        return None
    dtype = DTYPES.get(int(getattr(tensor.scalar_type, "value", tensor.scalar_type)))
    if dtype is None:
        return None
    shape = [int(v) for v in tensor.sizes]
    count = int(np.prod(shape)) if shape else 1
    storage = bytes(program.constant_buffer[tensor.data_buffer_idx].storage)
    if len(storage) < count * np.dtype(dtype).itemsize:
        return None
    return np.frombuffer(storage, dtype, count).reshape(shape)


def read_pte_meta(program: Any, where: str) -> OnnxMeta:
    """The edge-unlearn metadata of a program (its constant method :data:`META_METHOD`)."""
    method = plan(program, META_METHOD)
    if method is None or len(method.outputs) != 1:
        return OnnxMeta.from_props({}, where)  # a foreign program: the one-line "no edge-unlearn metadata" error
    raw = constant_tensor(program, method.values[method.outputs[0]])
    try:
        if raw is None or raw.dtype != np.uint8:
            raise ValueError("not a uint8 constant")
        props = json.loads(raw.tobytes().decode())
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{where}: the edge-unlearn metadata is damaged; convert the model again") from exc
    return OnnxMeta.from_props({str(k): str(v) for k, v in props.items()}, where)


def logits_view(program: Any, meta: OnnxMeta) -> Any:
    """``program`` as the gate reads it: for an audit program (the metadata names a features output and the forward
    method has two outputs, logits then features) a shallow copy whose forward method declares the logits output
    only -- the mask's proof is about the logits, and the features are the head's input, upstream of the mask; any
    other program unchanged (the gate then judges it as it is)."""
    forward = plan(program, FORWARD)
    if not meta.features_name or forward is None or len(forward.outputs) != 2:
        return program
    view, method = copy.copy(program), copy.copy(forward)
    method.outputs = [forward.outputs[0]]
    view.execution_plan = [method if p is forward else p for p in program.execution_plan]
    return view


class ExecuTorchRunner(Runner):
    """``executorch.runtime.Runtime`` on the CPU (XNNPACK delegate); a fixed-batch program is fed in chunks."""

    runtime = "executorch"

    def __init__(self, path: str | Path, name: str | None = None, threads: int | None = None) -> None:
        super().__init__(str(path), name)
        self.threads = threads  # XNNPACK's thread pool is set by the runtime, not per method
        self._program = load_pte(path)  # fails early (one line) for a truncated or foreign file
        self.meta = read_pte_meta(self._program, str(path))
        forward = plan(self._program, FORWARD)
        outputs = 2 if self.meta.features_name else 1  # an audit program: logits, then features
        if forward is None or len(forward.inputs) != 1 or len(forward.outputs) != outputs:
            raise ModelFileError(
                f"{path} has no method {FORWARD!r} with one input and {outputs} output{'s' if outputs > 1 else ''}"
                + (" (logits, features) as its metadata declares; convert it again" if outputs > 1 else "")
            )
        sizes = getattr(forward.values[forward.inputs[0]].val, "sizes", None) or [0]
        self._batch = int(sizes[0])
        self._method: Any = None

    def activate_impl(self) -> None:
        try:
            from executorch.runtime import Runtime
        except ImportError as exc:
            raise DependencyError(NEEDS_EXECUTORCH) from exc
        try:
            self._method = Runtime.get().load_program(Path(self.path)).load_method(FORWARD)
        except Exception as exc:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError with a C++ log
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ModelFileError(f"ExecuTorch cannot load {self.path}: {first}") from exc

    def infer_impl(self, inputs: np.ndarray) -> np.ndarray:
        if not len(inputs):
            return np.zeros((0, self.meta.num_classes), np.float32)
        return self._run(inputs)[0]

    @property
    def has_features(self) -> bool:
        """Whether the program is an audit program: its metadata names a features output (the constructor checked
        that the forward method then has two outputs)."""
        return bool(self.meta.features_name)

    def infer_features(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, penultimate features) of the same executions, both float32 (a program from ``edge-unlearn
        convert CHECKPOINT --to executorch --audit``)."""
        if not self.is_active:
            raise RuntimeError(f"runner {self.name} is not active; use it inside a `with` block")
        if not self.meta.features_name:
            raise ModelFileError(
                f"{self.path} has no features output; convert the checkpoint with "
                "`edge-unlearn convert CHECKPOINT --to executorch --audit`"
            )
        if not len(inputs):
            return np.zeros((0, self.meta.num_classes), np.float32), np.zeros((0, 0), np.float32)
        logits, features = self._run(inputs)
        return logits, features

    def _run(self, inputs: np.ndarray) -> list[np.ndarray]:
        """Every output of the forward method on ``inputs``, fed in chunks of the program's batch (the last one
        padded with zeros), as float32."""
        if tuple(inputs.shape[1:]) != tuple(self.meta.input_shape):
            raise ModelFileError(
                f"{self.path} takes [batch, {', '.join(map(str, self.meta.input_shape))}], got {list(inputs.shape)}"
            )
        step = self._batch if self._batch > 0 else len(inputs)
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        outs: list[list[np.ndarray]] = []
        for start in range(0, len(inputs), step):
            chunk = inputs[start : start + step]
            if len(chunk) < step:
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), np.float32)])
            results = self._method.execute([_as_tensor(chunk.copy())])
            outs.append([out.detach().numpy().astype(np.float32) for out in results])
        return [np.concatenate(column)[: len(inputs)] for column in zip(*outs)]

    def deactivate_impl(self) -> None:
        self._method = None

    def static_checks(self) -> list[Any]:
        """The gate's structural checks of the program (``validate`` adds them)."""
        from .structure import pte_static_checks

        return pte_static_checks(logits_view(self._program, self.meta), self.meta, self.path)

    def describe_impl(self) -> dict[str, Any]:
        from importlib import metadata

        from edge_unlearn.deploy.runners import base_environment

        return {
            "provider": "CPU",
            "precision": self.meta.precision,
            "quant_layout": str(self.meta.quantization.get("recipe", "")) if self.meta.precision == "int8" else "",
            "device": "cpu (XNNPACK delegate)",
            "num_classes": self.meta.num_classes,
            "forgotten_classes": list(self.meta.forgotten_classes),
            "source_sha256": self.meta.source_sha256,
            "versions": {**base_environment(), "executorch": metadata.version("executorch")},
        }


def _as_tensor(array: np.ndarray) -> Any:
    """``array`` as the torch tensor ExecuTorch's Python runtime takes (it refuses numpy arrays)."""
    import torch

    return torch.from_numpy(array)
