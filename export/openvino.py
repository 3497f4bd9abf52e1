"""An edge-unlearn FP32 ONNX model -> OpenVINO IR (``.xml`` + ``.bin``) in FP32, FP16 or INT8 (NNCF).

``openvino.convert_model`` reads the ONNX file (the edge-unlearn metadata travels in the IR's ``rt_info``);
FP16 is OpenVINO's weight compression at save time; INT8 is ``nncf.quantize`` calibrated on *retained-class
samples only* (as ``edge-unlearn quantize``), with every op of the class mask after the head -- floor, Pad,
Gather -- in NNCF's ignored scope, so the fill never enters a quantized range. The IR is then proven by the gate
(:mod:`edge_unlearn.deploy.structure_openvino`) and run once (the forgotten columns must be the fill) before
anything is written; both files are written atomically (the ``.bin`` first, the ``.xml`` naming it last).
Opt-in accuracy control (``max_disagreement``): ``nncf.quantize_with_accuracy_control`` instead, whose metric needs
no labels -- the share of retained-class images (a draw disjoint from the calibration draw) on which the INT8 IR's
top-1 class is the FP32 IR's -- and which reverts the quantizers that cost the most agreement to float until at most
``max_disagreement`` of those images disagree (absolute drop; same ignored scope). The agreement the written IR
reaches, recomputed here, and the compute ops left in float are recorded in the ``quantization`` metadata.
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
from edge_unlearn.deploy.runners_openvino import compile_for_cpu, import_openvino, read_ir_meta, write_ir_meta
from edge_unlearn.deploy.structure_openvino import analyse_ir, ir_static_checks
from edge_unlearn.errors import DependencyError, ModelFileError, UsageError
from edge_unlearn.fileio import atomic_output, sha256_file

OPENVINO_PRECISIONS = ("fp32", "fp16", "int8")
#: NNCF's calibration batch (the IR keeps a dynamic batch axis)
CALIB_BATCH = 32
#: accuracy control: the validation images NNCF ranks the quantizers on (its worst-agreeing ones, by output error)
RANKING_SUBSET = 100
#: the compute ops whose INT8-or-float state the metadata reports
COMPUTE_OPS = ("Convolution", "GroupConvolution", "MatMul")


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
    max_disagreement: float | None = None,
    validation_samples: int = 300,
    validation_inputs: np.ndarray | None = None,
) -> OpenVinoResult:
    """Write ``output`` (``.xml``, with its ``.bin`` beside it) from an edge-unlearn FP32 ONNX file.

    INT8 needs ``calib`` (a dataset spec: its retained classes are used) or ``calib_inputs`` (preprocessed
    float32, retained classes only). ``max_disagreement`` (INT8 only): accuracy-controlled quantization, validated
    on ``validation_inputs`` or, from ``calib``, ``validation_samples`` retained-class images not in the
    calibration draw (from ``calib_inputs`` alone: on those inputs)."""
    if precision not in OPENVINO_PRECISIONS:
        raise UsageError(f"unsupported precision {precision!r} for OpenVINO; choose one of {OPENVINO_PRECISIONS}")
    if max_disagreement is not None and (precision != "int8" or not 0 <= max_disagreement < 1):
        raise UsageError(
            f"--max-disagreement {max_disagreement} needs --precision int8 and a value in [0, 1): it bounds how "
            "often NNCF's INT8 model may disagree with the FP32 model"
        )
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
            from edge_unlearn.export.quantize import retained_draws

            counts = (calib_samples, validation_samples) if max_disagreement is not None else (calib_samples,)
            draws, classes = retained_draws(calib, meta, counts, seed, data_dir=data_dir, download=download)
            calib_inputs, calib_classes = draws[0], tuple(classes)
            if max_disagreement is not None and validation_inputs is None:
                validation_inputs = draws[1]
                if not len(validation_inputs):
                    raise UsageError(
                        f"{calib} has no retained-class training image left for accuracy control's validation after "
                        f"the {len(calib_inputs)} calibration images; lower --calib-samples"
                    )
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
        scope = nncf.IgnoredScope(names=list(ignored))
        if max_disagreement is None:
            model = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), ignored_scope=scope)
        else:
            if validation_inputs is None:
                validation_inputs = calib_inputs
            validation_inputs = np.ascontiguousarray(validation_inputs, dtype=np.float32)
            if echo:
                echo(
                    f"accuracy control: at most {max_disagreement} disagreement with the FP32 model on "
                    f"{len(validation_inputs)} retained-class images"
                )
            model, control = _quantize_with_accuracy_control(
                nncf, model, batches, scope, validation_inputs, max_disagreement, meta
            )
            control["validation"] = "calibration inputs" if validation_inputs is calib_inputs else (calib or "(inputs)")
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
        **({"accuracy_control": control} if max_disagreement is not None else {}),
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


def _quantize_with_accuracy_control(
    nncf: Any,
    model: Any,
    batches: list[np.ndarray],
    scope: Any,
    images: np.ndarray,
    max_drop: float,
    meta: Any,
) -> tuple[Any, dict[str, Any]]:
    """``nncf.quantize_with_accuracy_control`` on ``model`` (FP32) with a label-free metric: the share of ``images``
    whose INT8 top-1 class is the FP32 IR's (precomputed; each validation item carries it). The INT8 model and
    what the metadata records: max_drop, the agreement the model reaches (recomputed on the same images) and the
    compute ops left in float."""
    output = meta.output_name
    reference = compile_for_cpu(model)
    top1 = np.asarray(reference(images)[reference.output(output)]).argmax(1)
    items = [(images[i : i + 1], int(top1[i])) for i in range(len(images))]

    def agreement(compiled: Any, data: Any) -> tuple[float, list[list[np.ndarray]]]:
        hits, outputs = [], []
        for x, expected in data:
            result = compiled(x)
            hits.append(int(np.asarray(result[compiled.output(output)]).argmax(1)[0]) == expected)
            # every output once per tensor name, in order: the layout NNCF's own inference gives for the ranking
            outputs.append([np.asarray(value) for port, value in result.items() for _ in port.get_names()])
        return float(np.mean(hits)), outputs

    advanced = nncf.AdvancedAccuracyRestorerParameters(ranking_subset_size=min(RANKING_SUBSET, len(items)))
    quantized = nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(batches),
        nncf.Dataset(items, lambda item: item[0]),
        agreement,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(batches),
        ignored_scope=scope,
        advanced_accuracy_restorer_parameters=advanced,
    )
    if not any(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops()):
        raise ModelFileError(
            f"NNCF's accuracy control met --max-disagreement {max_drop} on {len(items)} retained-class images only "
            "by reverting every quantized op to float: no INT8 op is left; nothing written (convert in fp32, or "
            "allow more disagreement)"
        )
    reached, _ = agreement(compile_for_cpu(quantized), items)
    if reached < 1 - max_drop - 1e-9:
        raise ModelFileError(
            f"accuracy-controlled INT8 agrees with the FP32 model on {reached:.4f} of {len(items)} retained-class "
            f"images, below 1 - max_disagreement = {1 - max_drop:.4f}, with every quantizer NNCF could revert "
            "reverted; nothing written"
        )
    floating = float_compute_ops(quantized)
    return quantized, {
        "method": "nncf.quantize_with_accuracy_control",
        "metric": "top-1 agreement with the FP32 model on retained-class images",
        "max_drop": max_drop,
        "drop_type": "absolute",
        "validation_count": len(items),
        "agreement": reached,
        "float_ops": floating,
        "compute_ops": sum(op.get_type_name() in COMPUTE_OPS for op in quantized.get_ops()),
    }


def float_compute_ops(model: Any) -> list[str]:
    """The IR's convolutions and matrix products that run in float: no INT8 weights (NNCF stores a quantized op's
    weights as an 8-bit constant decompressed on the way in, or behind a FakeQuantize before compression) -- the
    ops NNCF left, or put back, in float."""
    return [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in COMPUTE_OPS and not _int8(op)]


def _int8(op: Any) -> bool:
    """Whether ``op``'s weights (input 1) come from an 8-bit constant or a FakeQuantize."""
    stack, seen = [op.input_value(1).get_node()], 0
    while stack and seen < 8:
        node, seen = stack.pop(), seen + 1
        kind = node.get_type_name()
        if kind == "FakeQuantize" or (
            kind == "Constant" and node.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4")
        ):
            return True
        if kind in ("Convert", "Subtract", "Multiply"):
            stack.extend(value.get_node() for value in node.input_values())
        elif kind in ("Reshape", "Transpose", "Unsqueeze", "Squeeze"):
            stack.append(node.input_value(0).get_node())
    return False


def _self_check(ov: Any, xml: Path, meta: Any) -> None:
    """The saved IR reads back with its metadata, the gate proves its mask, and on a few inputs the forgotten
    columns are exactly the fill; ModelFileError (nothing written) otherwise."""
    model = ov.Core().read_model(str(xml))
    read_ir_meta(model, str(xml))
    failed = [c.line() for c in ir_static_checks(model, meta, str(xml)) if not c.passed]
    if failed:
        raise ModelFileError(f"the OpenVINO IR fails the gate's structural checks, nothing written: {failed[0]}")
    x = np.random.default_rng(0).standard_normal((4, *meta.input_shape)).astype(np.float32)
    compiled = compile_for_cpu(model)
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
