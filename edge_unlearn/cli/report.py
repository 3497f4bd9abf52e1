"""``edge-unlearn bench``, ``report`` and ``verify``, and the run-folder hook of the other commands.
Imports no torch (a torch checkpoint given to ``bench`` loads it in its runner)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ..deploy.runners import PROVIDERS, RUNTIME_PROVIDERS
from .common import Command
from .options import OUTPUT, RUN_DIR, BatchList, FiniteRange, Output, OutputPath, RunFolder

#: onnxruntime providers, plus cuda-fused: a checkpoint with the fused masked head (Triton) on CUDA
BENCH_PROVIDERS = ("auto", *PROVIDERS, *RUNTIME_PROVIDERS, "cuda-fused")


def record_to_run_dir(
    run_dir: str | Path | None, kind: str, summary: dict[str, Any], artefacts: Sequence[str | Path] = ()
) -> Path | None:
    """Append a record of one command (its JSON summary and the artefacts it read or wrote, hashed) to
    ``run_dir``; nothing when ``run_dir`` is None. Returns the record's path. ``None`` entries of ``artefacts``
    are skipped; a path that does not exist raises ModelFileError (a record never silently drops evidence)."""
    return RunFolder(None if run_dir is None else str(run_dir)).record(kind, summary, artefacts)


@click.command("bench", cls=Command, renamed={"--batch": "--batches"})
@click.argument("artefacts", nargs=-1, required=True, type=click.Path(dir_okay=False), metavar="ARTIFACT...")
@click.option(
    "--batches",
    type=BatchList(),
    default="1,8,64",
    show_default=True,
    help="The batch-size sweep, comma-separated (each run on every artefact).",
)
@click.option(
    "--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed calls before each batch size."
)
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Timed calls per batch size (default 50).")
@click.option(
    "--duration",
    type=FiniteRange(0, min_open=True),
    default=None,
    help="Instead of --iterations: seconds of timed calls per batch size (at least 5 calls).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads of onnxruntime (intra-op) and torch (default: the runtime's own).",
)
@click.option(
    "--provider",
    "providers",
    type=click.Choice(BENCH_PROVIDERS),
    multiple=True,
    help="Repeatable: cpu, cuda, tensorrt, cuda-fused (checkpoints: fused masked head). Default auto: ONNX "
    "on every onnxruntime provider present, checkpoints on CPU (and CUDA when torch sees a GPU).",
)
@click.option("--name", "names", multiple=True, help="Label of each artefact, in order (default: file names).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option(
    "--gpu-timing/--no-gpu-timing",
    default=True,
    show_default=True,
    help="Also time engines that support it (TensorRT) on the GPU alone: CUDA events, no host copies.",
)
@click.option(
    "--cuda-graph",
    is_flag=True,
    help="GPU-only timing replays a captured CUDA graph (like trtexec "
    "--useCudaGraph); each row says whether it was used.",
)
@OUTPUT
@click.option("--csv", "csv_path", type=OutputPath(), default=None, help="Write one CSV row per artefact and batch.")
@click.option(
    "--plot",
    "plot_path",
    type=OutputPath(),
    default=None,
    help="Write a PNG: latency and throughput vs batch, one line per artefact.",
)
@RUN_DIR
@click.option("--keep-going", is_flag=True, help="Skip an artefact/provider that cannot run here instead of stopping.")
@click.option(
    "--bundle",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also validate every artefact against this bundle (validate's default thresholds) and name the fastest "
    "runtime and precision that passes, per batch size.",
)
def bench_cmd(
    artefacts: tuple[str, ...],
    batches: tuple[int, ...],
    warmup: int,
    iterations: int | None,
    duration: float | None,
    threads: int | None,
    providers: tuple[str, ...],
    names: tuple[str, ...],
    seed: int,
    gpu_timing: bool,
    cuda_graph: bool,
    out: Output,
    csv_path: str | None,
    plot_path: str | None,
    run: RunFolder,
    keep_going: bool,
    bundle: str | None,
) -> None:
    """Measure latency and throughput of checkpoints (torch), ONNX models (onnxruntime FP32/FP16/INT8) and
    TensorRT engines over a batch sweep.

    Per artefact and batch: mean, p50, p90, p99 latency, images/s, peak process RSS (and GPU memory for torch
    on CUDA), with the machine and library versions. INT8/FP16/torch rows are also given as a ratio to the
    onnxruntime FP32 model of the same checkpoint. Each ONNX row names the model's quantization layout
    (metadata key edge_unlearn_quant_layout) when the model records one. Engines that support it (TensorRT)
    are also timed on the GPU alone (GPU p50/p99 beside the end-to-end figures; --cuda-graph replays a CUDA
    graph); on a Jetson the model and nvpmodel power mode are recorded. --quiet prints only the table.
    """
    from edge_unlearn.deploy.bench import BenchConfig, bench_artefacts
    from edge_unlearn.guards import check_outputs

    check_outputs({"--json-out": out.json_out, "--csv": csv_path, "--plot": plot_path}, artefacts, run.path)

    if plot_path:
        import matplotlib  # noqa: F401  - the `report` extra: say so before measuring, not after

    config = BenchConfig(
        batches=batches,
        warmup=warmup,
        iterations=iterations,
        duration=duration,
        threads=threads,
        seed=seed,
        gpu_timing=gpu_timing,
        cuda_graph=cuda_graph,
    )
    report = bench_artefacts(
        artefacts,
        config,
        provider=list(providers) or None,
        names=list(names) or None,
        keep_going=keep_going,
        echo=None if out.quiet else out.say,
        bundle=bundle,
    )
    if not out.as_json:
        click.echo(report.table())
    out.emit(report.to_json())
    if csv_path:
        report.write_csv(csv_path)
    if plot_path:
        report.plot(plot_path)
    run.record("bench", report.to_json(), artefacts)


@click.command("report", cls=Command)
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "-o", "--output", type=OutputPath(), default=None, help="HTML file to write (default RUN_DIR/report.html)."
)
@OUTPUT
def report_cmd(run_dir: str, output: str | None, out: Output) -> None:
    """Render a run folder as one self-contained HTML file (plots embedded): lineage with checkpoint hashes,
    unlearning figures against the original and the retrained model, per-class accuracy, validation verdicts
    per backend and precision, latency. Then write RUN_DIR/manifest.json with the sha256 of every file."""
    from edge_unlearn.deploy.report import render_report

    path = render_report(run_dir, output)
    out.emit({"report": str(path), "manifest": str(Path(run_dir) / "manifest.json")})
    out.say(f"wrote {path} and {Path(run_dir) / 'manifest.json'}")


@click.command("verify", cls=Command)
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--key",
    "key",
    type=click.Path(dir_okay=False),
    default=None,
    help="Ed25519 public key (PEM): also check RUN_DIR/manifest.sig (see `edge-unlearn sign`).",
)
@OUTPUT
def verify_cmd(run_dir: str, key: str | None, out: Output) -> None:
    """Re-hash every file listed in RUN_DIR/manifest.json and every recorded artefact; with --key check the
    signature. Exit 0: all present and unchanged, nothing unlisted, signature valid; 1: any of those fails;
    2: no readable manifest or key."""
    from edge_unlearn.deploy.rundir import verify

    result = verify(run_dir, public_key=key)
    out.emit(result.to_json())
    if out.quiet:
        click.echo(f"{'OK' if result else 'CHANGED'} {run_dir}")
    elif not out.as_json:
        click.echo(result.summary())
    sys.exit(0 if result else 1)
