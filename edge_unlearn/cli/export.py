"""Deployment commands: ``export``, ``quantize``, ``bundle``, ``validate`` (and the demo's deployment leg).

Thin: each builds a config, calls one library function in ``export``, prints. Imports no torch at module
level, so ``edge-unlearn validate`` works on a device with only numpy + onnxruntime.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterator

import click

from ..deploy.runners import PROVIDERS, RUNTIME_PROVIDERS
from ..export.quantize import CALIB_METHODS, QUANT_PRECISIONS
from ..guards import MAX_BATCH
from .common import Command
from .options import GATE, OUTPUT, RUN_DIR, DataGroup, DataSource, Gate, Output, OutputPath, RunFolder

ONNX_PROVIDERS = ("auto", *PROVIDERS, *RUNTIME_PROVIDERS)


@contextlib.contextmanager
def _quiet_stdout(quiet: bool) -> Iterator[None]:
    """Swallow third-party chatter on stdout (the exporter's and calibrators' prints) in --quiet mode."""
    if not quiet:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _output_option(help: str) -> Callable:
    return click.option("-o", "--output", required=True, type=OutputPath(), help=help)


@click.command("export", cls=Command)
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@_output_option("ONNX file to write.")
@click.option("--opset", type=click.IntRange(min=17), default=None, help="ONNX opset (>= 17; default 18).")
@click.option(
    "--audit",
    is_flag=True,
    help="Audit export: the penultimate features as a second output "
    "('features') for `validate --audit`. A sibling of the deployed file, not the file to deploy "
    "(docs/audit.md).",
)
@OUTPUT
@RUN_DIR
def export_cmd(checkpoint: str, output: str, opset: int | None, audit: bool, out: Output, run: RunFolder) -> None:
    """Export a checkpoint to ONNX with the class mask in the graph.

    The graph takes float32 [B, C, H, W] (dynamic batch) and returns logits [B, classes]; forgotten classes
    are a constant fill of -1e4 and their head rows are not in the file. Parity with torch is checked and
    printed; onnx.checker runs with full_check. Metadata carries the classes, forgotten classes,
    normalisation, input shape and the checkpoint's sha256.
    """
    from edge_unlearn.export.onnx_export import ExportConfig, export_onnx
    from edge_unlearn.guards import check_outputs

    check_outputs({"-o": output, "--json-out": out.json_out}, [checkpoint], run.path)
    config = ExportConfig(**({"opset": opset} if opset is not None else {}), audit=audit)
    with _quiet_stdout(out.quiet or out.as_json):
        result = export_onnx(checkpoint, output, config, echo=out.say)
    run.record("export", result.to_json(), [checkpoint, output])
    out.emit(result.to_json())
    out.say(
        f"wrote {result.path} (forgotten classes {list(result.meta.forgotten_classes)}, sha256 {result.sha256[:12]}…)"
    )


@click.command("quantize", cls=Command)
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
@click.option(
    "--calib-samples",
    type=click.IntRange(min=1),
    default=None,
    help="Calibration samples: retained-class images in all (default 256).",
)
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
@_output_option("ONNX file to write.")
@DataGroup(dataset=False)
@OUTPUT
@RUN_DIR
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
    data: DataSource,
    out: Output,
    run: RunFolder,
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

    check_outputs({"-o": output, "--json-out": out.json_out}, [model], run.path)
    values = {"precision": precision.lower(), "calib_samples": calib_samples, "calib_method": calib_method}
    config = QuantizeConfig(
        **{k: v for k, v in values.items() if v is not None},
        target=target.lower(),
        mode="dynamic" if dynamic else "static",
        symmetric_activations=not asymmetric_activations,
        per_channel=not per_tensor,
        float_first_layer=None if quantize_first_layer is None else not quantize_first_layer,
    )
    with _quiet_stdout(out.quiet or out.as_json):
        result = quantize_model(
            model, output, config, calib=calib, echo=out.say, data_dir=data.data_dir, download=data.download
        )
    run.record("quantize", result.to_json(), [model, output])
    out.emit(result.to_json())
    layout = f", layout {result.layout.name} for {result.layout.target}" if result.layout else ""
    out.say(f"wrote {result.path} ({result.meta.precision}{layout}, sha256 {result.sha256[:12]}…)")


@click.command("bundle", cls=Command, renamed={"--audit-k": "--audit-samples"})
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@DataGroup(
    help="Dataset spec whose test split is bundled (e.g. npz:data.npz, digits); default: the dataset recorded in "
    "the checkpoint.",
)
@click.option(
    "--per-class",
    type=click.IntRange(min=1),
    default=None,
    help="Test images per class kept in the bundle, at most (default: all).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --per-class draw.")
@_output_option(".npz bundle to write.")
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
    multiple=True,
    help="With --audit: a model retrained without the forgotten classes; the audit's thresholds become "
    "its figures + a margin (else documented defaults), and validate --audit compares the deployed answers on "
    "the forgotten classes with its. Give it twice (two seeds) for the TV check against their seed-to-seed floor.",
)
@click.option(
    "--reference",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --audit: the original checkpoint; reports whether the unlearning edits exceed the INT8/FP16 "
    "quantization step.",
)
@click.option(
    "--audit-samples",
    type=click.IntRange(min=1),
    default=None,
    help="With --audit: forget samples of the prototype attack, images per forgotten class (default 5).",
)
@click.option(
    "--audit-probe-samples",
    type=click.IntRange(min=1),
    default=None,
    help="With --audit: training images the probes are fitted on, in all (default 5000, every class).",
)
@OUTPUT
@RUN_DIR
def bundle_cmd(
    checkpoint: str,
    data: DataSource,
    per_class: int | None,
    seed: int,
    output: str,
    audit: bool,
    retrained: tuple[str, ...],
    reference: str | None,
    audit_samples: int | None,
    audit_probe_samples: int | None,
    out: Output,
    run: RunFolder,
) -> None:
    """Write a torch-free evaluation bundle: preprocessed test inputs, labels, class names, forgotten
    classes and the checkpoint's FP32 reference logits, so a device without torch can validate."""
    from edge_unlearn.export.bundle import make_bundle
    from edge_unlearn.guards import check_needs_flag, check_outputs

    check_outputs({"-o": output, "--json-out": out.json_out}, [checkpoint, *retrained, reference], run.path)
    check_needs_flag(
        "--audit",
        audit,
        {
            "--retrained": retrained or None,
            "--reference": reference,
            "--audit-samples": audit_samples,
            "--audit-probe-samples": audit_probe_samples,
        },
    )
    builder = None
    if audit:
        from edge_unlearn.deploy.audit import AuditConfig
        from edge_unlearn.export.audit_fit import audit_builder

        values = {"k": audit_samples, "probe_train_size": audit_probe_samples}
        builder = audit_builder(
            AuditConfig(**{k: v for k, v in values.items() if v is not None}, seed=seed),
            retrained=retrained,
            reference=reference,
        )
    bundle = make_bundle(
        checkpoint,
        data.dataset,
        output,
        per_class=per_class,
        seed=seed,
        audit=builder,
        data_dir=data.data_dir,
        download=data.download,
    )
    info = bundle.audit.info if bundle.audit is not None else None
    summary = {
        **bundle.describe(),
        **(
            {"audit": {k: info.get(k) for k in ("fp32", "retrained", "retrained_band", "thresholds", "weight_steps")}}
            if info
            else {}
        ),
    }
    run.record("bundle", summary, [checkpoint, *retrained, reference, output])
    out.emit(summary)
    out.say(
        f"wrote {output}: {len(bundle.labels)} samples, {bundle.num_classes} classes, "
        f"forgotten {list(bundle.forgotten_classes)}"
    )
    if info:
        from edge_unlearn.deploy.audit import audit_lines

        for line in audit_lines({"device": {}, **info}):
            out.say(line)


@click.command("validate", cls=Command)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--bundle",
    "bundle_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Evaluation bundle from `edge-unlearn bundle`.",
)
@GATE
@click.option(
    "--provider",
    type=click.Choice(ONNX_PROVIDERS),
    default="auto",
    show_default=True,
    help="onnxruntime provider (auto: CUDA when onnxruntime has it, else CPU).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH),
    default=64,
    show_default=True,
    help="Images per inference call.",
)
@OUTPUT
@RUN_DIR
def validate_cmd(
    model: str, bundle_path: str, gate: Gate, provider: str, batch_size: int, out: Output, run: RunFolder
) -> None:
    """Check on this runtime that the forgotten classes stay forgotten and the retained ones still work.

    MODEL is an .onnx (onnxruntime) or a .safetensors checkpoint (torch). Exit 0: every check passed;
    1: a check failed (or a figure could not be measured); 2: bad input.
    """
    from edge_unlearn.deploy.validate import validate_model
    from edge_unlearn.guards import check_outputs

    check_outputs({"--json-out": out.json_out}, [model, bundle_path], run.path)
    report = validate_model(
        model,
        bundle_path,
        gate.thresholds,
        provider=None if provider == "auto" else provider,
        batch_size=batch_size,
        audit=gate.audit,
    )
    run.record("validate", report.to_json(), [model, bundle_path])
    out.emit(report.to_json())
    if out.as_json:
        pass
    elif out.quiet:
        click.echo(f"{'PASS' if report else 'FAIL'} {model}")
    else:
        click.echo(report.summary())
    sys.exit(0 if report else 1)
