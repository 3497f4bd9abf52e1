"""The OpenVINO runner: an OpenVINO IR (``.xml`` + ``.bin`` from ``edge-unlearn convert --to openvino``) or an
edge-unlearn ONNX file (``--provider openvino``) compiled for the CPU by ``openvino.Core().compile_model``, in f32
(OpenVINO's default on CPUs with AMX or AVX-512 BF16 is bf16: :data:`CPU_CONFIG`).

The IR carries the ONNX file's edge-unlearn metadata in its ``rt_info`` (``framework`` section, same keys:
``openvino.convert_model`` copies them and the converter rewrites them for the IR's precision), so ``validate``,
``bench`` and ``report`` read it as from an ONNX file. An IR converted from an audit export (``export --audit``)
keeps its second output ``features`` (named by ``edge_unlearn.features_name`` in the ``rt_info``), which
``infer_features`` reads by name for ``validate --audit``. Needs ``pip install 'edge-unlearn[openvino]'``; no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn.errors import DependencyError, ModelFileError

from .onnx_meta import OnnxMeta, read_meta
from .runner import Runner

IR_SUFFIXES = (".xml",)
#: the rt_info section holding the edge-unlearn metadata (where ``convert_model`` puts an ONNX file's props)
META_SECTION = "framework"
NEEDS_OPENVINO = (
    "this needs OpenVINO, which is not installed here; install it with pip install 'edge-unlearn[openvino]'"
)
#: OpenVINO's CPU plugin runs every model in bf16 on CPUs with AMX or AVX-512 BF16 (Sapphire Rapids and later)
#: unless told otherwise; every compile here asks for f32, so a figure is that of the precision the file declares
#: on any Intel CPU (NNCF's own inference does the same). An application should pass the same hint.
CPU_CONFIG: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise DependencyError(NEEDS_OPENVINO) from exc
    return openvino


def compile_for_cpu(model: Any, threads: int | None = None) -> Any:
    """``openvino.Core().compile_model(model, "CPU")`` in f32 (:data:`CPU_CONFIG`), on ``threads`` threads if
    given; ``model``: an ``openvino.Model`` or a file path."""
    config = {**CPU_CONFIG, **({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})}
    return import_openvino().Core().compile_model(model, "CPU", config)


def weights_path(xml: str | Path) -> Path:
    """The ``.bin`` beside an IR's ``.xml``; ModelFileError naming the fix when it is missing."""
    xml = Path(xml)
    weights = xml.with_suffix(".bin")
    if not weights.is_file():
        raise ModelFileError(
            f"OpenVINO IR {xml} has no weights file {weights.name} beside it; copy the .bin written with it "
            "(an IR is the .xml and the .bin together)"
        )
    return weights


def read_ir(path: str | Path) -> Any:
    """The ``openvino.Model`` of an IR; one-line errors for a missing ``.bin`` or an unreadable file."""
    ov = import_openvino()
    weights = weights_path(path)
    try:
        return ov.Core().read_model(str(path), str(weights))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError/generic Exception with C++ traces
        raise ModelFileError(f"{path} is not a readable OpenVINO IR: {_first_line(exc)}; convert it again") from exc


def read_ir_meta(model: Any, where: str) -> OnnxMeta:
    """The edge-unlearn metadata of an ``openvino.Model`` (its ``rt_info`` ``framework`` section)."""
    info = model.get_rt_info()
    section = info[META_SECTION] if META_SECTION in info else {}
    props = {str(key): section[key].astype(str) for key in section}
    return OnnxMeta.from_props(props, where)


def write_ir_meta(model: Any, meta: OnnxMeta) -> None:
    """Set the edge-unlearn metadata of an ``openvino.Model`` (before ``openvino.save_model``)."""
    for key, value in meta.to_props().items():
        model.set_rt_info(value, [META_SECTION, key])


def _first_line(exc: BaseException) -> str:
    """The message of an OpenVINO exception without its C++ 'Exception from src/...' frames."""
    lines = [
        line.strip()
        for line in str(exc).splitlines()
        if line.strip() and not line.strip().startswith("Exception from src/")
    ]
    return (lines[0] if lines else type(exc).__name__)[:300]


class OpenVinoRunner(Runner):
    """``openvino.Core().compile_model(model, "CPU")`` in f32 (:data:`CPU_CONFIG`) on an IR or an edge-unlearn
    ONNX file."""

    runtime = "openvino"

    def __init__(self, path: str | Path, name: str | None = None, threads: int | None = None) -> None:
        super().__init__(str(path), name)
        self.threads = threads
        self.is_ir = Path(path).suffix.lower() in IR_SUFFIXES
        if self.is_ir:
            self._model = read_ir(path)  # fails early (one line) for a missing .bin or a foreign model
            self.meta = read_ir_meta(self._model, str(path))
        else:
            import_openvino()
            self._model = None
            self.meta = read_meta(path)
        self._compiled = None
        self._request = None

    def activate_impl(self) -> None:
        try:
            self._compiled = compile_for_cpu(self._model or self.path, self.threads)
        except Exception as exc:  # noqa: BLE001 - OpenVINO's errors carry C++ frames
            raise ModelFileError(f"OpenVINO cannot compile {self.path} for the CPU: {_first_line(exc)}") from exc
        self._request = self._compiled.create_infer_request()

    def infer_impl(self, inputs: np.ndarray) -> np.ndarray:
        result = self._run(inputs)
        return np.asarray(result[self._output(self.meta.output_name)], dtype=np.float32)

    @property
    def has_features(self) -> bool:
        """Whether the model is an audit file: its metadata names a features output and the model has it."""
        name = self.meta.features_name
        if not name:
            return False
        if self._model is None:  # an ONNX file on OpenVINO: the graph's own output names
            from .onnx_meta import load_onnx

            return name in {o.name for o in load_onnx(self.path, load_weights=False).graph.output}
        return any(name in output.get_names() for output in self._model.outputs)

    def infer_features(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, penultimate features) of one run, both float32, each output found by its name (an IR converted
        from an audit export: ``edge-unlearn export --audit`` then ``edge-unlearn convert --to openvino``)."""
        if not self.is_active:
            raise RuntimeError(f"runner {self.name} is not active; use it inside a `with` block")
        if not self.meta.features_name:
            raise ModelFileError(
                f"{self.path} has no features output; convert an audit export (`edge-unlearn export CHECKPOINT "
                "--audit`) with `edge-unlearn convert MODEL.audit.onnx --to openvino`"
            )
        result = self._run(np.ascontiguousarray(inputs, dtype=np.float32))
        return (
            np.asarray(result[self._output(self.meta.output_name)], dtype=np.float32),
            np.asarray(result[self._output(self.meta.features_name)], dtype=np.float32),
        )

    def _run(self, inputs: np.ndarray) -> Any:
        assert self._request is not None and self._compiled is not None
        try:
            return self._request.infer({0: inputs})
        except Exception as exc:  # noqa: BLE001 - a wrong input shape is a RuntimeError with C++ frames
            raise ModelFileError(
                f"OpenVINO cannot run {self.path} on inputs of shape {list(inputs.shape)} (the model takes "
                f"[batch, {', '.join(map(str, self.meta.input_shape))}]): {_first_line(exc)}"
            ) from exc

    def _output(self, name: str) -> Any:
        """The compiled model's output called ``name``; ModelFileError naming the outputs it has otherwise."""
        assert self._compiled is not None
        try:
            return self._compiled.output(name)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with C++ frames
            names = [sorted(o.get_names()) for o in self._compiled.outputs]
            raise ModelFileError(
                f"{self.path} has no output {name!r} (outputs: {names}); the metadata was edited: convert it again"
            ) from exc

    def deactivate_impl(self) -> None:
        self._request = None
        self._compiled = None

    def static_checks(self) -> list[Any]:
        """The gate's structural checks of the IR (``validate`` adds them); an ONNX file has its own."""
        from .structure_openvino import ir_static_checks

        return ir_static_checks(self._model, self.meta, self.path) if self.is_ir else []

    def describe_impl(self) -> dict[str, Any]:
        from .runners import base_environment

        ov = import_openvino()
        core = ov.Core()
        compiled = self._compiled
        return {
            "provider": "CPU",
            "precision": self.meta.precision,
            "quant_layout": "nncf" if self.is_ir and self.meta.precision == "int8" else "",
            "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string() if compiled else None,
            "device": str(core.get_property("CPU", "FULL_DEVICE_NAME")),
            "num_classes": self.meta.num_classes,
            "forgotten_classes": list(self.meta.forgotten_classes),
            "source_sha256": self.meta.source_sha256,
            "versions": {**base_environment(), "openvino": ov.__version__},
        }
