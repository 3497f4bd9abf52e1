"""``edge-unlearn bench``, ``report`` and ``verify``, the run-folder hook of the other commands, and the demo's
last step. Imports no torch (a torch checkpoint given to ``bench`` loads it in its runner).

The lead registers the commands: ``main.add_command(bench_cmd)``, ``main.add_command(report_cmd)``,
``main.add_command(verify_cmd)``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from .cli_common import echo_json, handle_errors


def record_to_run_dir(run_dir: str | Path | None, kind: str, summary: dict[str, Any],
                      artefacts: Sequence[str | Path] = ()) -> Path | None:
    """Append a record of one command (its JSON summary and the artefacts it read or wrote, hashed) to
    ``run_dir``; nothing when ``run_dir`` is None. Returns the record's path. ``None`` entries of ``artefacts``
    are skipped; a path that does not exist raises ModelFileError (a record never silently drops evidence)."""
    if run_dir is None:
        return None
    from edge_unlearn.export.rundir import record

    return record(run_dir, kind, summary, [Path(a) for a in artefacts if a is not None])


@click.command("bench")
@click.argument("artefacts", nargs=-1, required=True, type=click.Path(dir_okay=False), metavar="ARTIFACT...")
@click.option("--batch", "batch", default="1,8,64", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed calls before each batch size.")
@click.option("--iterations", type=int, default=None, help="Timed calls per batch size (default 50).")
@click.option("--duration", type=float, default=None,
              help="Instead of --iterations: seconds of timed calls per batch size (at least 5 calls).")
@click.option("--threads", type=int, default=None,
              help="CPU threads of onnxruntime (intra-op) and torch (default: the runtime's own).")
@click.option("--provider", default="auto", show_default=True,
              help="Comma-separated: cpu, cuda, tensorrt, cuda-fused (checkpoints: fused masked head). auto: ONNX on "
                   "every onnxruntime provider present, "
                   "checkpoints on CPU (and CUDA when torch sees a GPU).")
@click.option("--name", "names", multiple=True, help="Label of each artefact, in order (default: file names).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Write one CSV row per artefact and batch.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG: latency and throughput vs batch, one line per artefact.")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None, help="Also record the results in this run folder.")
@click.option("--keep-going", is_flag=True, help="Skip an artefact/provider that cannot run here instead of stopping.")
@click.option("-q", "--quiet", is_flag=True, help="Only the table.")
@handle_errors
def bench_cmd(artefacts: tuple[str, ...], batch: str, warmup: int, iterations: int | None, duration: float | None,
              threads: int | None, provider: str, names: tuple[str, ...], seed: int, json_path: str | None,
              csv_path: str | None, plot_path: str | None, run_dir: str | None, keep_going: bool, quiet: bool) -> None:
    """Measure latency and throughput of checkpoints (torch), ONNX models (onnxruntime FP32/FP16/INT8) and
    TensorRT engines over a batch sweep.

    Per artefact and batch: mean, p50, p90, p99 latency, images/s, peak process RSS (and GPU memory for torch
    on CUDA), with the machine and library versions. INT8/FP16/torch rows are also given as a ratio to the
    onnxruntime FP32 model of the same checkpoint.
    """
    from edge_unlearn.export.bench import BenchConfig, bench_artefacts, parse_batches
    from edge_unlearn.guards import check_batches, check_outputs

    check_batches(parse_batches(batch))
    check_outputs({"--json": json_path, "--csv": csv_path, "--plot": plot_path}, artefacts, run_dir)

    config = BenchConfig(batches=parse_batches(batch), warmup=warmup, iterations=iterations, duration=duration,
                         threads=threads, seed=seed)
    report = bench_artefacts(artefacts, config, provider=provider, names=list(names) or None, keep_going=keep_going,
                             echo=None if quiet else click.echo)
    click.echo(report.table())
    if json_path:
        report.write_json(json_path)
    if csv_path:
        report.write_csv(csv_path)
    if plot_path:
        report.plot(plot_path)
    record_to_run_dir(run_dir, "bench", report.to_json(), [Path(a) for a in artefacts])


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write (default RUN_DIR/report.html).")
@handle_errors
def report_cmd(run_dir: str, output: str | None) -> None:
    """Render a run folder as one self-contained HTML file (plots embedded): lineage with checkpoint hashes,
    unlearning figures against the original and the retrained model, per-class accuracy, validation verdicts
    per backend and precision, latency. Then write RUN_DIR/manifest.json with the sha256 of every file."""
    from edge_unlearn.export.report import render_report

    path = render_report(run_dir, output)
    click.echo(f"wrote {path} and {Path(run_dir) / 'manifest.json'}")


@click.command("verify")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--key", "key", type=click.Path(dir_okay=False), default=None,
              help="Ed25519 public key (PEM): also check RUN_DIR/manifest.sig (see `edge-unlearn sign`).")
@handle_errors
def verify_cmd(run_dir: str, as_json: bool, key: str | None) -> None:
    """Re-hash every file listed in RUN_DIR/manifest.json and every recorded artefact; with --key check the
    signature. Exit 0: all present and unchanged, nothing unlisted, signature valid; 1: any of those fails;
    2: no readable manifest or key."""
    from edge_unlearn.export.rundir import verify

    result = verify(run_dir, public_key=key)
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(result.summary())
    sys.exit(0 if result else 1)


def demo_bench_and_report(out_dir: Path, artefacts: Sequence[Path], echo: Callable[[str], None] = click.echo,
                          iterations: int = 20, threads: int | None = 1) -> dict[str, Any]:
    """The demo's last step: bench the artefacts on CPU (batches 1/8/64; one thread by default, which is fair
    between runtimes and stable on a busy machine), validate any not yet validated against the demo's bundle,
    record it all in ``out_dir``, render ``report.html`` and write the manifest. Call it after demo.json is
    written (the report reads the figures from it)."""
    from edge_unlearn.export.bench import BenchConfig, bench_artefacts
    from edge_unlearn.export.report import render_report
    from edge_unlearn.export.rundir import read_records, record

    out_dir = Path(out_dir)
    artefacts = [Path(a) for a in artefacts if Path(a).is_file()]
    result: dict[str, Any] = {}
    bundle = out_dir / "eval.npz"
    validated = {Path(str(r["payload"].get("model"))).name for r in read_records(out_dir, "validate")}
    if bundle.is_file():
        from edge_unlearn.export.validate import validate_model

        for path in artefacts:
            if path.name in validated or path.suffix.lower() not in (".onnx", ".safetensors"):
                continue
            report = validate_model(path, bundle, provider="cpu")
            json_path = out_dir / f"validate-{path.stem.replace('.', '-')}.json"
            report.write_json(json_path)
            record(out_dir, "validate", report.to_json(), [path, bundle])
            echo(f"validate {path.name} [{report.environment.get('runtime')}/{report.environment.get('precision')}]: "
                 f"{'PASS' if report else 'FAIL'}")
    echo(f"bench {', '.join(a.name for a in artefacts)} on CPU, batches 1/8/64, threads {threads or 'default'}")
    config = BenchConfig(batches=(1, 8, 64), warmup=3, iterations=iterations, threads=threads)
    bench = bench_artefacts(artefacts, config, provider="cpu", keep_going=True)
    echo(bench.table())
    bench.write_json(out_dir / "bench.json")
    bench.write_csv(out_dir / "bench.csv")
    bench.plot(out_dir / "latency.png")
    record(out_dir, "bench", bench.to_json(), artefacts)
    html = render_report(out_dir)
    echo(f"report -> {html} (manifest.json beside it; check it later with `edge-unlearn verify {out_dir}`)")
    result.update(bench=str(out_dir / "bench.json"), report=str(html), manifest=str(out_dir / "manifest.json"),
                  ratios=bench.ratios())
    return result
