"""``edge-unlearn build-engine`` and ``edge-unlearn doctor``: thin click commands (no torch, no TensorRT at import).

The lead adds them to the ``edge-unlearn`` group: ``main.add_command(build_engine_cmd)``,
``main.add_command(doctor_cmd)``.
"""
from __future__ import annotations

import sys

import click

from .cli_common import echo_json, handle_errors


def _err(message: str) -> None:
    click.echo(message, err=True)


@click.command("build-engine")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Engine file to write (.plan or .engine); default: MODEL.plan beside the ONNX. "
                   "Its sidecar MODEL.plan.json is written beside it.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Default: the ONNX's own (FP32, the FP16 ONNX, the Q/DQ INT8 ONNX). 'fp16' on an FP32 ONNX "
                   "uses TensorRT 10's FP16 builder flag; TensorRT 11 takes precision from the ONNX only.")
@click.option("--min-batch", type=int, default=None, help="Smallest batch of the optimisation profile (default 1).")
@click.option("--opt-batch", type=int, default=None, help="Batch TensorRT tunes for (default 8, within min..max).")
@click.option("--max-batch", type=int, default=None, help="Largest batch of the optimisation profile (default 32).")
@click.option("--workspace-mib", type=int, default=None, help="Builder workspace limit in MiB (default 1024).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Timing cache file: read if present, written back after the build (faster rebuilds).")
@click.option("--dla-core", type=int, default=None,
              help="Run on this DLA core (Jetson Orin/Xavier), falling back to the GPU for unsupported layers.")
@click.option("--int8-calibration", type=click.Path(dir_okay=False), default=None,
              help="DEPRECATED implicit INT8 calibration of an FP32 ONNX (TensorRT 10 only) from a .npy/.npz of "
                   "preprocessed retained-class inputs; prefer the Q/DQ ONNX from `edge-unlearn quantize`.")
@click.option("--strongly-typed/--weakly-typed", "strongly_typed", default=None,
              help="TensorRT 10 only: build a strongly typed network (precision from the ONNX). TensorRT 11 is "
                   "always strongly typed.")
@click.option("--range-limit", type=float, default=None,
              help="Widest INT8 activation range accepted before it counts as set by a mask value (default 1000).")
@click.option("--check-only", is_flag=True,
              help="Only check the ONNX for deployment hazards (no TensorRT needed); exit 1 if any.")
@click.option("--verbose", is_flag=True, help="TensorRT's verbose log.")
@click.option("--json", "as_json", is_flag=True, help="Print the result (sidecar or hazard report) as JSON.")
@handle_errors
def build_engine_cmd(onnx_path: str, output: str | None, precision: str | None, min_batch: int | None,
                     opt_batch: int | None, max_batch: int | None, workspace_mib: int | None,
                     timing_cache: str | None, dla_core: int | None, int8_calibration: str | None,
                     strongly_typed: bool | None, range_limit: float | None, check_only: bool, verbose: bool,
                     as_json: bool) -> None:
    """Build a TensorRT engine for THIS device from an edge-unlearn ONNX.

    The ONNX is first checked for the deployment hazards of a masked head (zero per-channel Q/DQ scales,
    non-zero zero points, a mask value that sets an INT8 range, constants that overflow FP16); any one refuses
    the build. TensorRT 10 and 11 are both supported, chosen by the version installed. The engine only runs on
    the TensorRT version and GPU it was built with: build it on the device.
    """
    from edge_unlearn.export.onnx_hazards import DEFAULT_RANGE_LIMIT, check_model, load_onnx, onnx_precision
    from edge_unlearn.export.tensorrt import BuildConfig, build_engine, default_engine_path, hazard_target

    config = BuildConfig(precision=precision, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                         workspace_mib=workspace_mib, timing_cache=timing_cache, dla_core=dla_core,
                         int8_calibration=int8_calibration, strongly_typed=strongly_typed,
                         range_limit=DEFAULT_RANGE_LIMIT if range_limit is None else range_limit, verbose=verbose)
    if check_only:
        model = load_onnx(onnx_path)
        report = check_model(model, path=onnx_path, target_precision=hazard_target(onnx_precision(model), config),
                             range_limit=config.range_limit)
        if as_json:
            echo_json(report.to_dict())
        else:
            click.echo(report.summary())
            for finding in report.findings:
                click.echo(f"  {finding.severity}: {finding.line()}")
        sys.exit(0 if report.ok else 1)
    out = output or str(default_engine_path(onnx_path))
    sidecar = build_engine(onnx_path, out, config, echo=_err if as_json else click.echo)
    if as_json:
        echo_json({"engine": out, **sidecar.to_dict()})


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the probe as JSON.")
@handle_errors
def doctor_cmd(as_json: bool) -> None:
    """What this machine offers: torch and CUDA, Triton, onnxruntime providers, TensorRT, pycuda, the GPU and its
    compute capability, the Jetson model and JetPack release -- and what each missing piece disables."""
    from edge_unlearn.export.doctor import probe, render

    report = probe()
    if as_json:
        echo_json(report)
    else:
        click.echo(render(report))
