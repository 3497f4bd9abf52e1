"""``edge-unlearn convert``: a model to another edge runtime's own format: an exported FP32 ONNX model to an
OpenVINO IR, or a checkpoint to a LiteRT ``.tflite`` or an ExecuTorch ``.pte``."""

from __future__ import annotations

import contextlib
import io

import click

from .common import Command
from .options import OUTPUT, RUN_DIR, Output, OutputPath, RunFolder

CONVERT_TARGETS = ("openvino", "litert", "executorch")


@click.command("convert", cls=Command)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--to",
    "target",
    type=click.Choice(CONVERT_TARGETS, case_sensitive=False),
    default="openvino",
    show_default=True,
    help="The runtime's format: openvino = an OpenVINO IR (.xml + .bin) from the exported FP32 .onnx; litert = a "
    ".tflite from the .safetensors checkpoint (needs litert-torch on the host); executorch = a .pte with the XNNPACK "
    "delegate from the checkpoint (needs edge-unlearn[executorch]; its runtime needs torch: validate on the host).",
)
@click.option(
    "--precision",
    type=click.Choice(("fp32", "fp16", "int8"), case_sensitive=False),
    default="fp32",
    show_default=True,
    help="fp32, fp16 (OpenVINO: compressed weights) or int8 (the runtime's own quantizer: NNCF for OpenVINO, "
    "ai-edge-quantizer full integer for LiteRT, PT2E XNNPACKQuantizer for ExecuTorch).",
)
@click.option(
    "--calib",
    default=None,
    help="Calibration dataset spec for INT8 (e.g. npz:data.npz, digits); only its retained-class training "
    "images are used.",
)
@click.option(
    "--calib-samples", type=click.IntRange(min=1), default=300, show_default=True, help="INT8 calibration samples."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="With --calib: folder of torchvision datasets (default ./data).",
)
@click.option("--download", is_flag=True, help="With --calib: download a torchvision dataset (needs internet).")
@click.option(
    "--max-disagreement",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="OpenVINO INT8 only: accuracy-controlled quantization (nncf.quantize_with_accuracy_control), which keeps "
    "in float the layers that cost the most agreement until the INT8 model's top-1 class differs from the FP32 "
    "model's on at most this share of retained-class images (no labels needed; e.g. 0.01).",
)
@click.option(
    "--validation-samples",
    type=click.IntRange(min=1),
    default=None,
    help="With --max-disagreement: the retained-class images of --calib it is measured on, none of them in the "
    "calibration draw (default 300).",
)
@click.option(
    "--audit",
    is_flag=True,
    help="The audit sibling for `validate --audit` (a second output 'features'; not the file to deploy). "
    "openvino: MODEL must be an audit export (`edge-unlearn export CHECKPOINT --audit`), whose features output "
    "every conversion keeps; litert, executorch: the checkpoint is lowered with the features output.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=OutputPath(),
    help="File to write: .xml (its .bin goes beside it), .tflite or .pte.",
)
@OUTPUT
@RUN_DIR
def convert_cmd(
    model: str,
    target: str,
    precision: str,
    calib: str | None,
    calib_samples: int,
    data_dir: str | None,
    download: bool,
    max_disagreement: float | None,
    validation_samples: int | None,
    audit: bool,
    output: str,
    out: Output,
    run: RunFolder,
) -> None:
    """Convert a model to OpenVINO IR (from the FP32 .onnx), LiteRT .tflite or ExecuTorch .pte (from the checkpoint).

    INT8 uses the runtime's own quantizer (NNCF; ai-edge-quantizer), calibrated on retained-class samples only,
    with the class mask (floor, Pad, Gather) kept in float; OpenVINO INT8 with --max-disagreement is NNCF's
    accuracy-controlled quantization (the agreement it reaches is recorded in the IR). The file carries the
    edge-unlearn metadata, is proven by the gate's structural checks and run once before it is written;
    `validate`, `bench` and `report` take it.
    An audit export (`export --audit`) converts to an audit IR (its features output kept); --audit with
    --to litert or --to executorch writes the audit .tflite or .pte; `validate --audit` runs on each.
    """
    from pathlib import Path

    from edge_unlearn.errors import UsageError
    from edge_unlearn.guards import check_needs_flag, check_outputs

    check_needs_flag("--calib", bool(calib), {"--data-dir": data_dir, "--download": download or None})
    check_needs_flag("--max-disagreement", max_disagreement is not None, {"--validation-samples": validation_samples})
    target, precision = target.lower(), precision.lower()
    if max_disagreement is not None and (target, precision) != ("openvino", "int8"):
        raise UsageError(
            f"--max-disagreement is accuracy-controlled INT8 for OpenVINO (NNCF): it needs --to openvino "
            f"--precision int8, not --to {target} --precision {precision}"
        )
    where = {"data_dir": data_dir, "download": download}
    weights = str(Path(output).with_suffix(".bin")) if target == "openvino" else None
    check_outputs({"-o": output, "-o (weights)": weights, "--json-out": out.json_out}, [model], run.path)
    quiet = contextlib.redirect_stdout(io.StringIO()) if out.quiet or out.as_json else contextlib.nullcontext()
    if target == "openvino":
        from edge_unlearn.export.openvino import convert_openvino

        if audit:
            _require_audit_export(model)
        with quiet:
            control = {"max_disagreement": max_disagreement, "validation_samples": validation_samples or 300}
            result = convert_openvino(
                model, output, precision, calib=calib, calib_samples=calib_samples, echo=out.say, **where, **control
            )
    elif target == "executorch":
        if Path(model).suffix.lower() != ".safetensors" or precision == "fp16":
            raise UsageError(
                "--to executorch converts a .safetensors checkpoint (torch.export lowers the torch model) in fp32 or "
                "int8"
                + (
                    "; for the audit file convert the checkpoint with --audit: "
                    f"`edge-unlearn convert CHECKPOINT --to executorch --audit -o {Path(output).stem}.pte`"
                    if audit or Path(model).suffix.lower() == ".onnx"
                    else ""
                )
            )
        from edge_unlearn.export.executorch import convert_executorch

        with quiet:
            result = convert_executorch(
                model, output, precision, calib=calib, calib_samples=calib_samples, echo=out.say, audit=audit, **where
            )
    else:
        if Path(model).suffix.lower() != ".safetensors" or precision == "fp16":
            raise UsageError(
                "--to litert converts a .safetensors checkpoint (litert-torch lowers the torch model) in fp32 or int8"
                + (
                    "; for the audit file convert the checkpoint with --audit: "
                    f"`edge-unlearn convert CHECKPOINT --to litert --audit -o {Path(output).stem}.tflite`"
                    if audit or Path(model).suffix.lower() == ".onnx"
                    else ""
                )
            )
        from edge_unlearn.export.litert import convert_litert

        with quiet:
            result = convert_litert(
                model, output, precision, calib=calib, calib_samples=calib_samples, echo=out.say, audit=audit, **where
            )
    run.record("convert", result.to_json(), [model, output, weights])
    out.emit(result.to_json())
    beside = f" + {Path(weights).name}" if weights else ""
    kept = ", audit file: outputs " + " + ".join(result.outputs) if len(result.outputs) > 1 else ""
    out.say(f"wrote {result.path}{beside} ({target} {result.precision}{kept}, sha256 {result.sha256[:12]}…)")


def _require_audit_export(model: str) -> None:
    """--audit --to openvino: MODEL must be an audit export (the IR keeps the ONNX file's outputs)."""
    from pathlib import Path

    from edge_unlearn.deploy.onnx_meta import read_meta
    from edge_unlearn.errors import UsageError

    if Path(model).suffix.lower() == ".onnx" and not read_meta(model).features_name:
        raise UsageError(
            f"{model} is not an audit export (no features output); export one with `edge-unlearn export CHECKPOINT "
            "--audit -o model.audit.onnx` and convert that"
        )
