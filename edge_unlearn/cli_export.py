"""Deployment commands: ``export``, ``quantize``, ``bundle``, ``validate`` (and the demo's deployment leg).

Thin: each builds a config, calls one library function in ``export``, prints. Imports no torch at module
level, so ``edge-unlearn validate`` works on a device with only numpy + onnxruntime.
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from .cli_common import handle_errors, to_json_text
from .fileio import atomic_output


@contextlib.contextmanager
def _quiet_stdout(quiet: bool) -> Iterator[None]:
    """Swallow third-party chatter on stdout (the exporter's and calibrators' prints) in --quiet mode."""
    if not quiet:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _write_json(path: str | None, data: Any) -> None:
    if path:
        with atomic_output(path) as tmp:
            Path(tmp).write_text(to_json_text(data) + "\n")


def _record(run_dir: str | None, kind: str, payload: dict, artefacts: list[str]) -> None:
    """Append this run to ``--run-dir`` (nothing when it is not given)."""
    if run_dir:
        from .cli_report import record_to_run_dir

        record_to_run_dir(run_dir, kind, payload, [Path(a) for a in artefacts])


def _say(quiet: bool) -> Callable[[str], None]:
    return (lambda _msg: None) if quiet else click.echo


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@click.option("--opset", type=int, default=None, help="ONNX opset (>= 17; default 18).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the export summary (parity figures, sha256) as JSON here.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Record this run in a folder for `edge-unlearn report`.")
@handle_errors
def export_cmd(checkpoint: str, output: str, opset: int | None, json_path: str | None, quiet: bool,
               run_dir: str | None) -> None:
    """Export a checkpoint to ONNX with the class mask in the graph.

    The graph takes float32 [B, C, H, W] (dynamic batch) and returns logits [B, classes]; forgotten classes
    are a constant fill of -1e4 and their head rows are not in the file. Parity with torch is checked and
    printed; onnx.checker runs with full_check. Metadata carries the classes, forgotten classes,
    normalisation, input shape and the checkpoint's sha256.
    """
    from edge_unlearn.export.onnx_export import ExportConfig, export_onnx
    from edge_unlearn.guards import check_outputs

    check_outputs({"-o": output, "--json": json_path}, [checkpoint], run_dir)

    config = ExportConfig(**({"opset": opset} if opset is not None else {}))
    say = _say(quiet)
    with _quiet_stdout(quiet):
        result = export_onnx(checkpoint, output, config, echo=say)
    _write_json(json_path, result.to_json())
    _record(run_dir, "export", result.to_json(), [checkpoint, output])
    say(f"wrote {result.path} (forgotten classes {list(result.meta.forgotten_classes)}, sha256 {result.sha256[:12]}…)")


@click.command("quantize")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--precision", default="int8", show_default=True, help="int8 (static QDQ) or fp16.")
@click.option("--calib", default=None, help="Calibration dataset spec for INT8 (e.g. npz:data.npz, digits); "
              "only its retained-class training images are used.")
@click.option("--calib-samples", type=int, default=None, help="Calibration images (default 256).")
@click.option("--calib-method", default=None, help="minmax (default), entropy, percentile or distribution.")
@click.option("--asymmetric-activations", is_flag=True,
              help="Activations with a zero point (onnxruntime only; TensorRT needs the default symmetric ones).")
@click.option("--per-tensor", is_flag=True, help="Per-tensor instead of per-channel weight scales.")
@click.option("--quantize-first-layer", is_flag=True,
              help="Quantize the first layer too (by default it stays in float: the largest INT8 error source).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write a JSON summary here.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Record this run in a folder for `edge-unlearn report`.")
@handle_errors
def quantize_cmd(model: str, precision: str, calib: str | None, calib_samples: int | None, calib_method: str | None,
                 asymmetric_activations: bool, per_tensor: bool, quantize_first_layer: bool, output: str,
                 json_path: str | None, quiet: bool, run_dir: str | None) -> None:
    """Make an INT8 or FP16 version of an exported FP32 model; the mask survives.

    INT8 is onnxruntime static QDQ (signed symmetric 8-bit weights and activations, per-channel weights,
    float biases: what TensorRT accepts) after quant_pre_process, calibrated on retained-class samples
    only; the two mask nodes and the first layer stay in float.
    FP16 uses onnxruntime's float16 converter with float32 inputs and outputs.
    """
    from edge_unlearn.export.quantize import QuantizeConfig, quantize_model
    from edge_unlearn.guards import check_outputs

    check_outputs({"-o": output, "--json": json_path}, [model], run_dir)
    values = {"precision": precision.lower(), "calib_samples": calib_samples, "calib_method": calib_method}
    config = QuantizeConfig(**{k: v for k, v in values.items() if v is not None},
                            symmetric_activations=not asymmetric_activations, per_channel=not per_tensor,
                            float_first_layer=not quantize_first_layer)
    say = _say(quiet)
    with _quiet_stdout(quiet):
        result = quantize_model(model, output, config, calib=calib, echo=say)
    _write_json(json_path, result.to_json())
    _record(run_dir, "quantize", result.to_json(), [model, output])
    say(f"wrote {result.path} ({result.meta.precision}, sha256 {result.sha256[:12]}…)")


@click.command("bundle")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--dataset", required=True, help="Dataset spec whose test split is bundled (e.g. npz:data.npz, digits).")
@click.option("--per-class", type=int, default=None, help="At most this many test images per class (default: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --per-class draw.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help=".npz bundle to write.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write a JSON summary here.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@handle_errors
def bundle_cmd(checkpoint: str, dataset: str, per_class: int | None, seed: int, output: str,
               json_path: str | None, quiet: bool) -> None:
    """Write a torch-free evaluation bundle: preprocessed test inputs, labels, class names, forgotten
    classes and the checkpoint's FP32 reference logits, so a device without torch can validate."""
    from edge_unlearn.export.bundle import make_bundle
    from edge_unlearn.guards import check_outputs

    check_outputs({"-o": output, "--json": json_path}, [checkpoint])
    bundle = make_bundle(checkpoint, dataset, output, per_class=per_class, seed=seed)
    _write_json(json_path, bundle.describe())
    _say(quiet)(f"wrote {output}: {len(bundle.labels)} samples, {bundle.num_classes} classes, "
                f"forgotten {list(bundle.forgotten_classes)}")


@click.command("validate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--bundle", "bundle_path", required=True, type=click.Path(dir_okay=False),
              help="Evaluation bundle from `edge-unlearn bundle`.")
@click.option("--max-forget-acc", type=float, default=0.01, show_default=True,
              help="Highest accepted accuracy on forgotten classes.")
@click.option("--max-retain-drop", type=float, default=0.01, show_default=True,
              help="Highest accepted retained-accuracy drop against the bundle's FP32 reference.")
@click.option("--min-agreement", type=float, default=0.99, show_default=True,
              help="Lowest accepted argmax agreement with the FP32 reference on retained classes.")
@click.option("--provider", default=None, help="onnxruntime provider: auto (default), cpu, cuda or tensorrt.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the full report here.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the verdict line.")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Record this run in a folder for `edge-unlearn report`.")
@handle_errors
def validate_cmd(model: str, bundle_path: str, max_forget_acc: float, max_retain_drop: float, min_agreement: float,
                 provider: str | None, batch_size: int, json_path: str | None, quiet: bool, run_dir: str | None) -> None:
    """Check on this runtime that the forgotten classes stay forgotten and the retained ones still work.

    MODEL is an .onnx (onnxruntime) or a .safetensors checkpoint (torch). Exit 0: every check passed;
    1: a check failed (or a figure could not be measured); 2: bad input.
    """
    from edge_unlearn.export.validate import Thresholds, validate_model
    from edge_unlearn.guards import check_number, check_outputs

    check_number("--batch-size", batch_size, minimum=1, maximum=8192, integer=True)
    check_outputs({"--json": json_path}, [model, bundle_path], run_dir)
    thresholds = Thresholds(max_forget_acc, max_retain_drop, min_agreement)
    report = validate_model(model, bundle_path, thresholds, provider=provider, batch_size=batch_size)
    _write_json(json_path, report.to_json())
    _record(run_dir, "validate", report.to_json(), [model, bundle_path])
    if quiet:
        click.echo(f"{'PASS' if report else 'FAIL'} {model}")
    else:
        click.echo(report.summary())
    sys.exit(0 if report else 1)


def deployment_demo(checkpoint_path: Path, dataset_spec: str, out_dir: Path,
                    echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    """export -> INT8 (calibrated on retained classes) -> bundle -> validate FP32 and INT8; returns the verdicts."""
    from edge_unlearn.export.bundle import make_bundle
    from edge_unlearn.export.onnx_export import export_onnx
    from edge_unlearn.export.quantize import QuantizeConfig, quantize_model
    from edge_unlearn.export.validate import validate_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32, int8, bundle = out_dir / "model.onnx", out_dir / "model.int8.onnx", out_dir / "eval.npz"
    with _quiet_stdout(True):
        exported = export_onnx(checkpoint_path, fp32, echo=None)
    echo(f"export  -> {fp32}: {exported.parity.line()}")
    with _quiet_stdout(True):
        quantize_model(fp32, int8, QuantizeConfig(precision="int8"), calib=dataset_spec)
    echo(f"quantize -> {int8} (INT8 QDQ, calibrated on retained classes)")
    made = make_bundle(checkpoint_path, dataset_spec, bundle)
    echo(f"bundle  -> {bundle}: {len(made.labels)} test samples")
    results: dict[str, Any] = {"artifacts": {"fp32": str(fp32), "int8": str(int8), "bundle": str(bundle)}}
    for name, path in (("fp32", fp32), ("int8", int8)):
        report = validate_model(path, bundle, provider="cpu")
        results[name] = {"verdict": "pass" if report else "fail", "forget_acc": report.figure("forget_acc"),
                         "retain_drop": report.figure("retain_drop"),
                         "retain_agreement": report.figure("retain_agreement"),
                         "failed": [c.name for c in report.failed]}
        echo(f"validate {name}: {'PASS' if report else 'FAIL'}  forget_acc {report.figure('forget_acc')}  "
             f"retain_drop {report.figure('retain_drop')}  agreement {report.figure('retain_agreement')}")
    results["passed"] = all(results[k]["verdict"] == "pass" for k in ("fp32", "int8"))
    return results
