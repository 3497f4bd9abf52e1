"""``edge-unlearn build-engine`` and ``edge-unlearn doctor``: thin click commands (no torch, no TensorRT at import).

Registered in the ``edge-unlearn`` group by :mod:`.app`: build-engine, inspect-engine, doctor (each also runs on its
own, with the group's error handling through ``handle_errors``).
"""

from __future__ import annotations

import sys

import click

from ..guards import MAX_BATCH
from .common import Command, handle_errors
from .options import FiniteRange, Output, OutputGroup, OutputPath

OUTPUT = OutputGroup(quiet_help="No progress messages.")


@click.command("build-engine", cls=Command, renamed={"--batch": "--batch-size"})
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=OutputPath(),
    default=None,
    help="Engine file to write (.plan or .engine); default: MODEL.plan beside the ONNX. "
    "Its sidecar MODEL.plan.json (and the layer report MODEL.plan.layers.json) is written beside it.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8"]),
    default=None,
    help="Default: the ONNX's own (FP32, the FP16 ONNX, the Q/DQ INT8 ONNX). 'fp16' on an FP32 ONNX "
    "uses TensorRT 10's FP16 builder flag; TensorRT 11 takes precision from the ONNX only.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH),
    default=None,
    help="One static batch size (min = opt = max), like trtexec --shapes; required with --dla-core.",
)
@click.option(
    "--min-batch", type=click.IntRange(1, MAX_BATCH), default=None, help="Smallest batch of the profile (default 1)."
)
@click.option(
    "--opt-batch",
    type=click.IntRange(1, MAX_BATCH),
    default=None,
    help="Batch TensorRT tunes for (default 8, within min..max).",
)
@click.option(
    "--max-batch", type=click.IntRange(1, MAX_BATCH), default=None, help="Largest batch of the profile (default 32)."
)
@click.option(
    "--workspace-mib", type=click.IntRange(min=1), default=None, help="Builder workspace limit in MiB (default 1024)."
)
@click.option(
    "--timing-cache",
    type=OutputPath(),
    default=None,
    help="Timing cache file: read if present (a cache from another TensorRT/GPU is replaced), written "
    "back after the build; locked while in use.",
)
@click.option(
    "--builder-optimization-level",
    "optimization_level",
    type=click.IntRange(0, 5),
    default=None,
    help="0-5 (TensorRT default 3): higher searches longer for faster kernels.",
)
@click.option(
    "--version-compatible",
    is_flag=True,
    help="Build a version-compatible engine (runs on newer TensorRT of the same major, TensorRT 10 "
    "engines also on 11); may be slower.",
)
@click.option(
    "--hardware-compatibility",
    type=click.Choice(["ampere-plus", "same-compute-capability"]),
    default=None,
    help="Engine runs on other discrete GPUs of this level (not on Jetson or DLA).",
)
@click.option(
    "--dla-core",
    type=click.IntRange(min=0),
    default=None,
    help="Build for this DLA core (Jetson AGX Orin / Orin NX): static --batch-size, FP16 on TensorRT 10; "
    "fails when no layer can run on the DLA.",
)
@click.option(
    "--no-gpu-fallback",
    is_flag=True,
    help="With --dla-core: fail the build instead of running unsupported layers on the GPU.",
)
@click.option(
    "--int8-calibration",
    type=click.Path(dir_okay=False),
    default=None,
    help="DEPRECATED implicit INT8 calibration of an FP32 ONNX (TensorRT 10 only) from a .npy/.npz of "
    "preprocessed retained-class inputs; prefer the Q/DQ ONNX from `edge-unlearn quantize`.",
)
@click.option(
    "--strongly-typed/--weakly-typed",
    "strongly_typed",
    default=None,
    help="TensorRT 10 only: build a strongly typed network (precision from the ONNX). TensorRT 11 is "
    "always strongly typed.",
)
@click.option(
    "--range-limit",
    type=FiniteRange(0, min_open=True),
    default=None,
    help="Widest INT8 activation range accepted before it counts as set by a mask value (default 1000).",
)
@click.option(
    "--check-only", is_flag=True, help="Only check the ONNX for deployment hazards (no TensorRT needed); exit 1 if any."
)
@click.option("--verbose", is_flag=True, help="TensorRT's verbose log (stderr) and the equivalent trtexec command.")
@OUTPUT
@handle_errors
def build_engine_cmd(
    onnx_path: str,
    output: str | None,
    precision: str | None,
    batch_size: int | None,
    min_batch: int | None,
    opt_batch: int | None,
    max_batch: int | None,
    workspace_mib: int | None,
    timing_cache: str | None,
    optimization_level: int | None,
    version_compatible: bool,
    hardware_compatibility: str | None,
    dla_core: int | None,
    no_gpu_fallback: bool,
    int8_calibration: str | None,
    strongly_typed: bool | None,
    range_limit: float | None,
    check_only: bool,
    verbose: bool,
    out: Output,
) -> None:
    """Build a TensorRT engine for THIS device from an edge-unlearn ONNX.

    The ONNX is first checked for the deployment hazards of a masked head (zero per-channel Q/DQ scales,
    non-zero zero points, a mask value that sets an INT8 range, constants that overflow FP16); any one refuses
    the build, as does an ONNX quantized for the CPU. TensorRT 10 and 11 are both supported, chosen by the
    version installed. The engine only runs on the TensorRT version and GPU (and Jetson module) it was built
    with: build it on the device.
    """
    from edge_unlearn.deploy.onnx_hazards import DEFAULT_RANGE_LIMIT, check_model, load_onnx, onnx_precision
    from edge_unlearn.deploy.tensorrt.plan import BuildConfig, default_engine_path, hazard_target, refuse_cpu_layout
    from edge_unlearn.deploy.tensorrt.preflight import check_onnx_loads
    from edge_unlearn.export.engine import build_engine

    config = BuildConfig(
        precision=precision,
        batch=batch_size,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        workspace_mib=workspace_mib,
        timing_cache=timing_cache,
        dla_core=dla_core,
        gpu_fallback=not no_gpu_fallback,
        int8_calibration=int8_calibration,
        strongly_typed=strongly_typed,
        optimization_level=optimization_level,
        version_compatible=version_compatible,
        hardware_compatibility=hardware_compatibility,
        range_limit=DEFAULT_RANGE_LIMIT if range_limit is None else range_limit,
        verbose=verbose,
    )
    if check_only:
        check_onnx_loads(onnx_path)  # issue 30: an empty file or one onnxruntime cannot load is refused (exit 2)
        model = load_onnx(onnx_path)
        refuse_cpu_layout({p.key: p.value for p in model.metadata_props}, onnx_path)
        report = check_model(
            model,
            path=onnx_path,
            target_precision=hazard_target(onnx_precision(model), config),
            range_limit=config.range_limit,
        )
        out.emit(report.to_dict())
        if not out.as_json:
            click.echo(report.summary())
            for finding in report.findings:
                click.echo(f"  {finding.severity}: {finding.line()}")
        sys.exit(0 if report.ok else 1)
    engine = output or str(default_engine_path(onnx_path))
    sidecar = build_engine(onnx_path, engine, config, echo=out.say)
    out.emit({"engine": engine, **sidecar.to_dict()})


@click.command("inspect-engine", cls=Command)
@click.argument("engine_path", metavar="MODEL.plan", type=click.Path(dir_okay=False))
@click.option("--layers", "show_layers", is_flag=True, help="List every layer (name, type, precision, device).")
@OutputGroup(quiet_help="Only the summary line.")
@handle_errors
def inspect_engine_cmd(engine_path: str, show_layers: bool, out: Output) -> None:
    """Per-layer precision and device of a built engine, from TensorRT's engine inspector (detailed for engines
    built by `build-engine`, which uses detailed profiling verbosity), like trtexec --dumpLayerInfo."""
    from edge_unlearn.export.engine import inspect_engine

    info = inspect_engine(engine_path)
    out.emit(info)
    if out.as_json:
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(info["precision_counts"].items())) or "unknown"
    click.echo(
        f"{engine_path}: {info['num_layers']} layers; output precision: {counts}; "
        f"on DLA: {info['dla_layers']}"
        + ("" if info["detailed"] else " (layer names only: rebuild with build-engine for details)")
    )
    if show_layers and not out.quiet:
        for row in info["layers"]:
            click.echo(
                f"  {row['device'] or '?':3}  {row['precision'] or '?':5}  {row['type'] or '?':16} {row['name']}"
            )


@click.command("doctor", cls=Command)
@OutputGroup(quiet_help="Print nothing but the JSON (if asked).")
@handle_errors
def doctor_cmd(out: Output) -> None:
    """What this machine offers: torch and CUDA, Triton, onnxruntime providers, TensorRT, pycuda, the GPU and its
    compute capability, the Jetson model, JetPack release, power mode and DLA cores -- and what each missing
    piece disables."""
    from edge_unlearn.deploy.doctor import probe, render

    report = probe()
    out.emit(report)
    if not out.as_json and not out.quiet:
        click.echo(render(report))
