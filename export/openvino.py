"""An edge-unlearn FP32 ONNX model -> OpenVINO IR (``.xml`` + ``.bin``) in FP32, FP16 or INT8 (NNCF).

``openvino.convert_model`` reads the ONNX file (the edge-unlearn metadata travels in the IR's ``rt_info``);
FP16 is OpenVINO's weight compression at save time; INT8 is ``nncf.quantize`` calibrated on *retained-class
samples only* (as ``edge-unlearn quantize``), with every op of the class mask after the head -- floor, Pad,
Gather -- in NNCF's ignored scope, so the fill never enters a quantized range. The IR is then proven by the gate
(:mod:`edge_unlearn.deploy.structure_openvino`) and run once (the forgotten columns must be the fill) before
anything is written; both files are written atomically (the ``.bin`` first, the ``.xml`` naming it last).
An audit export (``export --audit``) converts to an audit IR: its second output ``features`` keeps its name and
``edge_unlearn.features_name`` travels in the ``rt_info``; in INT8 the features Result reads the (quantized)
backbone's float output, beside the FakeQuantize NNCF puts on the head's input. The self-check runs both outputs.
Host side (the INT8 calibration set is loaded through ``edge_unlearn.data``); the IR then runs torch-free.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn.deploy.onnx_meta import check_output_path, read_meta
from edge_unlearn.deploy.runners_openvino import import_openvino, read_ir_meta, write_ir_meta
from edge_unlearn.deploy.structure_openvino import analyse_ir, ir_static_checks
from edge_unlearn.errors import DependencyError, ModelFileError, UsageError
from edge_unlearn.fileio import atomic_output, sha256_file

OPENVINO_PRECISIONS = ("fp32", "fp16", "int8")
#: NNCF's calibration batch (the IR keeps a dynamic batch axis)
CALIB_BATCH = 32


@dataclass(frozen=True)
class OpenVinoResult:
    path: Path
    sha256: str
    precision: str
    ignored_ops: tuple[str, ...]
    calib_count: int
    calib_classes: tuple[int, ...]
    #: the IR's outputs by name: the logits, and for an audit IR the features
    outputs: tuple[str, ...] = ("logits",)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "weights": str(self.path.with_suffix(".bin")),
            "sha256": self.sha256,
            "precision": self.precision,
            "ignored_ops": list(self.ignored_ops),
            "calib_count": self.calib_count,
            "calib_classes": list(self.calib_classes),
            "outputs": list(self.outputs),
        }


def _import_nncf() -> Any:
    try:
        import nncf
    except ImportError as exc:
        raise DependencyError(
            "INT8 for OpenVINO needs NNCF, which is not installed here; install pip install 'edge-unlearn[openvino]'"
        ) from exc
    return nncf


def convert_openvino(
    model_path: str | Path,
    output: str | Path,
    precision: str = "fp32",
    calib: str | None = None,
    calib_inputs: np.ndarray | None = None,
    calib_samples: int = 300,
    seed: int = 0,
    echo: Callable[[str], None] | None = None,
    data_dir: str | None = None,
    download: bool = False,
) -> OpenVinoResult:
    """Write ``output`` (``.xml``, with its ``.bin`` beside it) from an edge-unlearn FP32 ONNX file.

    INT8 needs ``calib`` (a dataset spec: its retained classes are used) or ``calib_inputs`` (preprocessed
    float32, retained classes only)."""
    if precision not in OPENVINO_PRECISIONS:
        raise UsageError(f"unsupported precision {precision!r} for OpenVINO; choose one of {OPENVINO_PRECISIONS}")
    model_path, output = Path(model_path), Path(output)
    if output.suffix.lower() != ".xml":
        raise UsageError(f"an OpenVINO IR is an .xml (with its .bin beside it); name the output {output.stem}.xml")
    check_output_path(output, [model_path])
    check_output_path(output.with_suffix(".bin"), [model_path])
    meta = read_meta(model_path)
    if meta.precision != "fp32":
        raise UsageError(f"{model_path} is already {meta.precision}; convert the FP32 model from `edge-unlearn export`")
    ov = import_openvino()
    calib_classes: tuple[int, ...] = ()
    if precision == "int8":
        nncf = _import_nncf()
        if calib_inputs is None:
            if not calib:
                raise UsageError(
                    "INT8 needs calibration data: pass --calib with a dataset spec (e.g. npz:data.npz); "
                    "only its retained classes are used"
                )
            from edge_unlearn.export.quantize import calibration_inputs

            calib_inputs, classes = calibration_inputs(
                calib, meta, calib_samples, seed, data_dir=data_dir, download=download
            )
            calib_classes = tuple(classes)
        calib_inputs = np.ascontiguousarray(calib_inputs, dtype=np.float32)
    try:
        model = ov.convert_model(str(model_path))
    except Exception as exc:  # noqa: BLE001 - the ONNX frontend raises OpConversionFailure & co.
        raise ModelFileError(f"openvino.convert_model cannot read {model_path}: {str(exc).strip()[:300]}") from exc
    ignored: tuple[str, ...] = ()
    if precision == "int8":
        ignored = analyse_ir(model, meta).mask_ops
        if echo:
            echo(f"NNCF INT8 on {len(calib_inputs)} retained-class samples; kept in float: {', '.join(ignored)}")
        batches = [calib_inputs[i : i + CALIB_BATCH] for i in range(0, len(calib_inputs), CALIB_BATCH)]
        model = nncf.quantize(
            model,
            nncf.Dataset(batches),
            subset_size=len(batches),
            ignored_scope=nncf.IgnoredScope(names=list(ignored)),
        )
    info = {
        "tool": "nncf" if precision == "int8" else "openvino",
        "openvino": ov.__version__,
        "source_sha256": sha256_file(model_path),
        **(
            {"calib": calib or "(inputs)", "calib_count": len(calib_inputs), "calib_classes": list(calib_classes)}
            if precision == "int8"
            else {}
        ),
        "ignored_scope": list(ignored),
    }
    new_meta = replace(meta, precision=precision, quantization=info)
    write_ir_meta(model, new_meta)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "model.xml"
        ov.save_model(model, str(staged), compress_to_fp16=precision == "fp16")
        _self_check(ov, staged, new_meta)
        with atomic_output(output.with_suffix(".bin")) as bin_tmp, atomic_output(output) as xml_tmp:
            bin_tmp.write_bytes(staged.with_suffix(".bin").read_bytes())
            xml_tmp.write_bytes(staged.read_bytes())
    count = 0 if calib_inputs is None else len(calib_inputs)
    outputs = (meta.output_name, *((meta.features_name,) if meta.features_name else ()))
    return OpenVinoResult(output, sha256_file(output), precision, ignored, count, calib_classes, outputs)


def _self_check(ov: Any, xml: Path, meta: Any) -> None:
    """The saved IR reads back with its metadata, the gate proves its mask, and on a few inputs the forgotten
    columns are exactly the fill; ModelFileError (nothing written) otherwise."""
    model = ov.Core().read_model(str(xml))
    read_ir_meta(model, str(xml))
    failed = [c.line() for c in ir_static_checks(model, meta, str(xml)) if not c.passed]
    if failed:
        raise ModelFileError(f"the OpenVINO IR fails the gate's structural checks, nothing written: {failed[0]}")
    x = np.random.default_rng(0).standard_normal((4, *meta.input_shape)).astype(np.float32)
    compiled = ov.Core().compile_model(model, "CPU")
    result = compiled(x)
    out = np.asarray(result[compiled.output(meta.output_name)])
    forgotten = list(meta.forgotten_classes)
    if not np.all(np.isfinite(out)) or (forgotten and not np.all(out[:, forgotten] == np.float32(meta.mask_value))):
        raise ModelFileError(
            "the OpenVINO IR changed the forgotten classes' fill value or produces NaN; nothing written"
        )
    if meta.features_name:  # an audit export: its features output must survive the conversion, by name, in float
        names = [sorted(o.get_names()) for o in compiled.outputs]
        if not any(meta.features_name in o.get_names() for o in compiled.outputs):
            raise ModelFileError(
                f"the OpenVINO IR lost the audit export's {meta.features_name!r} output (outputs: {names}); "
                "nothing written"
            )
        features = np.asarray(result[compiled.output(meta.features_name)])
        if features.dtype.kind != "f" or features.ndim != 2 or len(features) != len(x):
            raise ModelFileError(
                f"the OpenVINO IR's {meta.features_name!r} output is {features.dtype} {list(features.shape)}, not "
                "float [batch, D]; nothing written"
            )
        if not np.all(np.isfinite(features)):
            raise ModelFileError(f"the OpenVINO IR's {meta.features_name!r} output produces NaN; nothing written")
