"""Deployment commands: ``export``, ``quantize``, ``bundle``, ``validate`` (and the demo's deployment leg).

Thin: each builds a config, calls one library function in ``export``, prints. Imports no torch at module
level, so ``edge-unlearn validate`` works on a device with only numpy + onnxruntime.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from ..deploy.runners import PROVIDERS
from ..export.quantize import CALIB_METHODS, QUANT_PRECISIONS
from .common import emit, output_options, say, workers_option

ONNX_PROVIDERS = ("auto", *PROVIDERS)


@contextlib.contextmanager
def _quiet_stdout(quiet: bool) -> Iterator[None]:
    """Swallow third-party chatter on stdout (the exporter's and calibrators' prints) in --quiet mode."""
    if not quiet:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _record(run_dir: str | None, kind: str, payload: dict, artefacts: list[str]) -> None:
    """Append this run to ``--run-dir`` (nothing when it is not given)."""
    if run_dir:
        from .report import record_to_run_dir

        record_to_run_dir(run_dir, kind, payload, [Path(a) for a in artefacts])


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@click.option("--opset", type=int, default=None, help="ONNX opset (>= 17; default 18).")
@click.option(
    "--audit",
    is_flag=True,
    help="Audit export: the penultimate features as a second output "
    "('features') for `validate --audit`. A sibling of the deployed file, not the file to deploy "
    "(docs/audit.md).",
)
@output_options
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Record this run in a folder for `edge-unlearn report`.",
)
def export_cmd(
    checkpoint: str,
    output: str,
    opset: int | None,
    audit: bool,
    as_json: bool,
    json_out: str | None,
    quiet: bool,
    run_dir: str | None,
) -> None:
    """Export a checkpoint to ONNX with the class mask in the graph.

    The graph takes float32 [B, C, H, W] (dynamic batch) and returns logits [B, classes]; forgotten classes
    are a constant fill of -1e4 and their head rows are not in the file. Parity with torch is checked and
    printed; onnx.checker runs with full_check. Metadata carries the classes, forgotten classes,
    normalisation, input shape and the checkpoint's sha256.
    """
    from edge_unlearn.export.onnx_export import ExportConfig, export_onnx
    from edge_unlearn.guards import check_outputs

    check_outputs({"-o": output, "--json-out": json_out}, [checkpoint], run_dir)

    config = ExportConfig(**({"opset": opset} if opset is not None else {}), audit=audit)
    echo = say(quiet, as_json)
    with _quiet_stdout(quiet or as_json):
        result = export_onnx(checkpoint, output, config, echo=echo)
    _record(run_dir, "export", result.to_json(), [checkpoint, output])
    emit(result.to_json(), as_json, json_out)
    echo(f"wrote {result.path} (forgotten classes {list(result.meta.forgotten_classes)}, sha256 {result.sha256[:12]}…)")


@click.command("quantize")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--precision",
    type=click.Choice(QUANT_PRECISIONS, case_sensitive=False),
    default="int8",
    show_default=True,
    help="int8 (static QDQ) or fp16.",
)
@click.option(
    "--target",
    type=click.Choice(["tensorrt", "cpu", "auto"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="Where the model runs: tensorrt (symmetric S8S8 Q/DQ, for build-engine), cpu "
    "(the layout fastest on this CPU: U8S8 + reduce_range without VNNI), auto (cpu unless TensorRT is "
    "named: --target tensorrt or a 'trt'/'tensorrt' part in the output name, e.g. model.trt.onnx).",
)
@click.option(
    "--dynamic",
    is_flag=True,
    help="INT8 weights only, activations quantized at run time (cpu target; no --calib needed).",
)
@click.option(
    "--calib",
    default=None,
    help="Calibration dataset spec for INT8 (e.g. npz:data.npz, digits); "
    "only its retained-class training images are used.",
)
@click.option("--calib-samples", type=int, default=None, help="Calibration images (default 256).")
@click.option(
    "--calib-method", type=click.Choice(CALIB_METHODS), default=None, help="Calibration method (default minmax)."
)
@click.option(
    "--asymmetric-activations",
    is_flag=True,
    help="tensorrt target: activations with a zero point (onnxruntime only; TensorRT needs symmetric "
    "ones). The cpu layouts choose their own.",
)
@click.option("--per-tensor", is_flag=True, help="Per-tensor instead of per-channel weight scales.")
@click.option(
    "--quantize-first-layer/--float-first-layer",
    default=None,
    help="Quantize the first layer too, or keep it in float. Default: float for tensorrt (with symmetric "
    "activations the largest INT8 error source), quantized for the cpu layouts (uint8 activations).",
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@workers_option
@output_options
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Record this run in a folder for `edge-unlearn report`.",
)
def quantize_cmd(
    model: str,
    precision: str,
    target: str,
    dynamic: bool,
    calib: str | None,
    calib_samples: int | None,
    calib_method: str | None,
    asymmetric_activations: bool,
    per_tensor: bool,
    quantize_first_layer: bool | None,
    output: str,
    as_json: bool,
    json_out: str | None,
    quiet: bool,
    run_dir: str | None,
) -> None:
    """Make an INT8 or FP16 version of an exported FP32 model; the mask survives.

    INT8 is onnxruntime static QDQ after quant_pre_process, per-channel weights, calibrated on retained-class
    samples only, in the layout of --target: tensorrt = signed symmetric weights and activations, float biases
    (what TensorRT accepts); cpu = the layout this CPU runs fastest (printed with the reason and recorded in the
    ONNX metadata as edge_unlearn_quant_layout). The two mask nodes and the first layer stay in float.
    FP16 uses onnxruntime's float16 converter with float32 inputs and outputs.
    """
    from edge_unlearn.export.quantize import QuantizeConfig, quantize_model
    from edge_unlearn.guards import check_outputs

    check_outputs({"-o": output, "--json-out": json_out}, [model], run_dir)
    values = {"precision": precision.lower(), "calib_samples": calib_samples, "calib_method": calib_method}
    config = QuantizeConfig(
        **{k: v for k, v in values.items() if v is not None},
        target=target.lower(),
        mode="dynamic" if dynamic else "static",
        symmetric_activations=not asymmetric_activations,
        per_channel=not per_tensor,
        float_first_layer=None if quantize_first_layer is None else not quantize_first_layer,
    )
    echo = say(quiet, as_json)
    with _quiet_stdout(quiet or as_json):
        result = quantize_model(model, output, config, calib=calib, echo=echo)
    _record(run_dir, "quantize", result.to_json(), [model, output])
    emit(result.to_json(), as_json, json_out)
    layout = f", layout {result.layout.name} for {result.layout.target}" if result.layout else ""
    echo(f"wrote {result.path} ({result.meta.precision}{layout}, sha256 {result.sha256[:12]}…)")


@click.command("bundle")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--dataset",
    default=None,
    help="Dataset spec whose test split is bundled (e.g. npz:data.npz, digits); "
    "default: the dataset recorded in the checkpoint.",
)
@click.option("--per-class", type=int, default=None, help="At most this many test images per class (default: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --per-class draw.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help=".npz bundle to write.")
@click.option(
    "--audit",
    is_flag=True,
    help="Add the feature-level audit for `validate --audit`: linear probes "
    "fitted here on the FP32 features and on the retained logits, the prototype attack's forget samples, "
    "the FP32 figures.",
)
@click.option(
    "--retrained",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --audit: the model retrained without the forgotten classes; the audit's thresholds become "
    "its figures + a margin (else documented defaults).",
)
@click.option(
    "--reference",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --audit: the original checkpoint; reports whether the unlearning edits exceed the INT8/FP16 "
    "quantization step.",
)
@click.option("--audit-k", type=int, default=None, help="Forget samples per class of the prototype attack (default 5).")
@click.option(
    "--audit-probe-samples",
    type=int,
    default=None,
    help="Training images the probes are fitted on (default 5000, all classes).",
)
@workers_option
@output_options
def bundle_cmd(
    checkpoint: str,
    dataset: str | None,
    per_class: int | None,
    seed: int,
    output: str,
    audit: bool,
    retrained: str | None,
    reference: str | None,
    audit_k: int | None,
    audit_probe_samples: int | None,
    as_json: bool,
    json_out: str | None,
    quiet: bool,
) -> None:
    """Write a torch-free evaluation bundle: preprocessed test inputs, labels, class names, forgotten
    classes and the checkpoint's FP32 reference logits, so a device without torch can validate."""
    from edge_unlearn.errors import UsageError
    from edge_unlearn.export.bundle import make_bundle
    from edge_unlearn.guards import check_outputs

    check_outputs({"-o": output, "--json-out": json_out}, [checkpoint] + [p for p in (retrained, reference) if p])
    builder = None
    if audit:
        from edge_unlearn.deploy.audit import AuditConfig
        from edge_unlearn.export.audit_fit import audit_builder

        values = {"k": audit_k, "probe_train_size": audit_probe_samples}
        for option, value in (("--audit-k", audit_k), ("--audit-probe-samples", audit_probe_samples)):
            if value is not None and value < 1:
                raise UsageError(f"{option} must be at least 1, got {value}")
        builder = audit_builder(
            AuditConfig(**{k: v for k, v in values.items() if v is not None}, seed=seed),
            retrained=retrained,
            reference=reference,
        )
    elif retrained or reference or audit_k is not None or audit_probe_samples is not None:
        raise UsageError(
            "--retrained, --reference, --audit-k and --audit-probe-samples belong to the audit: add --audit"
        )
    bundle = make_bundle(checkpoint, dataset, output, per_class=per_class, seed=seed, audit=builder)
    info = bundle.audit.info if bundle.audit is not None else None
    emit(
        {
            **bundle.describe(),
            **(
                {"audit": {k: info.get(k) for k in ("fp32", "retrained", "thresholds", "weight_steps")}} if info else {}
            ),
        },
        as_json,
        json_out,
    )
    echo = say(quiet, as_json)
    echo(
        f"wrote {output}: {len(bundle.labels)} samples, {bundle.num_classes} classes, "
        f"forgotten {list(bundle.forgotten_classes)}"
    )
    if info:
        from edge_unlearn.deploy.audit import audit_lines

        for line in audit_lines({"device": {}, **info}):
            echo(line)


@click.command("validate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--bundle",
    "bundle_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Evaluation bundle from `edge-unlearn bundle`.",
)
@click.option(
    "--max-forget-acc",
    type=float,
    default=0.01,
    show_default=True,
    help="Highest accepted accuracy on forgotten classes.",
)
@click.option(
    "--max-retain-drop",
    type=float,
    default=0.01,
    show_default=True,
    help="Highest accepted retained-accuracy drop against the bundle's FP32 reference.",
)
@click.option(
    "--min-agreement",
    type=float,
    default=0.99,
    show_default=True,
    help="Lowest accepted argmax agreement with the FP32 reference on retained classes.",
)
@click.option(
    "--provider",
    type=click.Choice(ONNX_PROVIDERS),
    default="auto",
    show_default=True,
    help="onnxruntime provider (auto: CUDA when onnxruntime has it, else CPU).",
)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option(
    "--audit",
    is_flag=True,
    help="Also the feature-level audit: the bundle's probe and the prototype attack "
    "on MODEL's own features (MODEL: an `export --audit` file, quantized or not; the bundle from "
    "`bundle --audit`).",
)
@click.option(
    "--audit-max-probe",
    type=float,
    default=None,
    help="Highest accepted probe accuracy on forgotten classes (default: the bundle's, from --retrained).",
)
@click.option(
    "--audit-max-prototype",
    type=float,
    default=None,
    help="Highest accepted prototype-attack recovery (default: the bundle's, from --retrained, else 0.10).",
)
@click.option(
    "--audit-max-logit-probe",
    type=float,
    default=None,
    help="Highest accepted accuracy on forgotten classes of the output probe (the bundle's probe on "
    "MODEL's retained logits; default: the bundle's, from --retrained).",
)
@click.option(
    "--audit-tolerance",
    type=float,
    default=None,
    help="How far this model's audit figures may sit above the FP32 ones (default 0.05).",
)
@output_options
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Record this run in a folder for `edge-unlearn report`.",
)
def validate_cmd(
    model: str,
    bundle_path: str,
    max_forget_acc: float,
    max_retain_drop: float,
    min_agreement: float,
    provider: str,
    batch_size: int,
    audit: bool,
    audit_max_probe: float | None,
    audit_max_prototype: float | None,
    audit_max_logit_probe: float | None,
    audit_tolerance: float | None,
    as_json: bool,
    json_out: str | None,
    quiet: bool,
    run_dir: str | None,
) -> None:
    """Check on this runtime that the forgotten classes stay forgotten and the retained ones still work.

    MODEL is an .onnx (onnxruntime) or a .safetensors checkpoint (torch). Exit 0: every check passed;
    1: a check failed (or a figure could not be measured); 2: bad input.
    """
    from edge_unlearn.deploy.validate import Thresholds, validate_model
    from edge_unlearn.guards import check_number, check_outputs

    check_number("--batch-size", batch_size, minimum=1, maximum=8192, integer=True)
    check_outputs({"--json-out": json_out}, [model, bundle_path], run_dir)
    thresholds = Thresholds(max_forget_acc, max_retain_drop, min_agreement)
    audit_thresholds = None
    if audit:
        from edge_unlearn.deploy.audit import DEFAULT_TOLERANCE, AuditThresholds

        audit_thresholds = AuditThresholds(
            audit_max_probe,
            audit_max_prototype,
            DEFAULT_TOLERANCE if audit_tolerance is None else audit_tolerance,
            audit_max_logit_probe,
        )
    elif any(v is not None for v in (audit_max_probe, audit_max_prototype, audit_max_logit_probe, audit_tolerance)):
        from edge_unlearn.errors import UsageError

        raise UsageError(
            "--audit-max-probe, --audit-max-prototype, --audit-max-logit-probe and --audit-tolerance "
            "belong to the audit: add --audit"
        )
    report = validate_model(
        model,
        bundle_path,
        thresholds,
        provider=None if provider == "auto" else provider,
        batch_size=batch_size,
        audit=audit_thresholds,
    )
    _record(run_dir, "validate", report.to_json(), [model, bundle_path])
    emit(report.to_json(), as_json, json_out)
    if as_json:
        pass
    elif quiet:
        click.echo(f"{'PASS' if report else 'FAIL'} {model}")
    else:
        click.echo(report.summary())
    sys.exit(0 if report else 1)
