"""Latency across backends and precisions on CPU (issue #7's acceptance run): torch eager vs onnxruntime FP32
vs onnxruntime INT8, batches 1/8/64, p50/p99 and throughput, INT8/FP32 ratio.

For each model: train briefly (latency does not depend on how well the weights are trained), mask class 3
(the deployed contract: compact head + mask), write the checkpoint, export FP32 ONNX, quantize to INT8 (static
QDQ, calibrated on retained classes), then bench all three with ``edge_unlearn.deploy.bench`` — the same loop as
``edge-unlearn bench``. Writes the table (stdout), JSON, CSV and a latency plot.

    python -m benchmarks.backend_latency                            # the full run, into bench_out/backend_latency
    python -m benchmarks.backend_latency --quick --out-dir /tmp/bl  # smoke test, ~1 min

The JSON of a full run is committed as ``benchmarks/results/backend_latency/backend_latency.json``.

Equivalent CLI for one model: ``edge-unlearn bench ckpt.safetensors model.onnx model.int8.onnx --batches 1,8,64
--provider cpu --json-out out.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import sys
import time
from pathlib import Path

from benchmarks.harness import SCRATCH, SHARED_DATA, provenance, use_threads

#: arch, dataset file, training images (None: all), epochs
PLAN = [("lenet", "mnist.npz", None, 1), ("resnet18", "fashion_mnist.npz", 5120, 1)]
FORGET = (3,)


def prepare(
    arch: str, dataset_file: str, train_samples: int | None, epochs: int, folder: Path, calib_samples: int, log
) -> tuple[Path, Path, Path]:
    """Train (on a subset when ``train_samples``), mask FORGET, export FP32 and INT8; returns the three paths."""
    import torch

    from edge_unlearn.checkpoint import CheckpointMeta, save_checkpoint
    from edge_unlearn.data import load_dataset
    from edge_unlearn.export.onnx_export import export_onnx
    from edge_unlearn.export.quantize import QuantizeConfig, quantize_model
    from edge_unlearn.training import TrainConfig, train_model

    spec = f"npz:{SHARED_DATA / dataset_file}"
    data = load_dataset(spec)
    if train_samples is not None and train_samples < len(data.y_train):
        idx = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(0))[:train_samples]
        data = dataclasses.replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx])
    recipe = TrainConfig(epochs=epochs, min_steps=20, device="cpu")
    t0 = time.perf_counter()
    model = train_model(arch, data, recipe, progress=False).model
    log(f"{arch}: trained on {len(data.y_train)} images of {dataset_file} in {time.perf_counter() - t0:.0f} s")
    model.mask_classes(FORGET)
    meta = CheckpointMeta(
        arch=arch,
        num_classes=data.num_classes,
        class_names=data.class_names,
        input_shape=data.input_shape,
        normalization=data.normalization,
        dataset=spec,
        train_recipe=recipe.to_json(),
    )
    ckpt, fp32, int8 = folder / f"{arch}.safetensors", folder / f"{arch}.onnx", folder / f"{arch}.int8.onnx"
    save_checkpoint(ckpt, model, meta)
    with contextlib.redirect_stdout(io.StringIO()):
        exported = export_onnx(ckpt, fp32)
        quantize_model(fp32, int8, QuantizeConfig(precision="int8", calib_samples=calib_samples), calib=spec)
    log(f"{arch}: exported {fp32.name} ({exported.parity.line()}) and {int8.name}")
    return ckpt, fp32, int8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=SCRATCH / "backend_latency")
    parser.add_argument("--batches", "--batch", default="1,8,64", help="comma-separated batch sizes")
    parser.add_argument("--iterations", type=int, default=None, help="Timed calls per batch (default 100; quick 5).")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads of onnxruntime and torch (default: theirs)."
    )
    parser.add_argument(
        "--archs", default=",".join(p[0] for p in PLAN), help="Comma-separated subset of lenet,resnet18."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke test: 512 training images, 64 calibration images, 5 iterations, batches 1,8.",
    )
    args = parser.parse_args(argv)

    if args.threads is not None:
        use_threads(args.threads)
    from edge_unlearn import torch_runners  # noqa: F401  (registers the torch runner the eager rows use)
    from edge_unlearn.deploy.bench import BenchConfig, BenchReport, bench_artefacts, parse_batches, plot_latency

    quick = args.quick
    batches = parse_batches("1,8" if quick and args.batches == "1,8,64" else args.batches)
    iterations = args.iterations or (5 if quick else 100)
    config = BenchConfig(
        batches=batches, warmup=2 if quick else args.warmup, iterations=iterations, threads=args.threads
    )
    out = args.out_dir
    (out / "models").mkdir(parents=True, exist_ok=True)
    wanted = [a.strip() for a in args.archs.split(",") if a.strip()]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - progress on stderr, table on stdout
    reports: list[BenchReport] = []
    for arch, dataset_file, train_samples, epochs in PLAN:
        if arch not in wanted:
            continue
        ckpt, fp32, int8 = prepare(
            arch, dataset_file, 512 if quick else train_samples, epochs, out / "models", 64 if quick else 256, log
        )
        names = [f"{arch} torch eager", f"{arch} onnx fp32", f"{arch} onnx int8"]
        reports.append(bench_artefacts([ckpt, fp32, int8], config, provider="cpu", names=names, echo=log))
    merged = BenchReport(
        [row for r in reports for row in r.rows],
        config,
        reports[-1].environment,
        [e for r in reports for e in r.errors],
    )
    print(merged.table())
    ratios = merged.ratios()
    print("INT8 / FP32 onnxruntime p50 latency ratio (< 1: INT8 faster):")
    for q in ratios:
        if q["precision"] == "int8":
            print(
                f"  {q['name']:<20} batch {q['batch']:>3}: p50 x{q['p50_ratio']:.2f}, p99 x{q['p99_ratio']:.2f}, "
                f"throughput x{q['throughput_ratio']:.2f}"
            )
    data = merged.to_json()
    made = provenance("benchmarks.backend_latency", argv)
    data["command"], data["environment"] = made["command"], {**made["environment"], **data["environment"]}
    data["quick"] = quick
    data["models"] = {
        arch: {"dataset": ds, "train_samples": 512 if quick else n, "epochs": ep}
        for arch, ds, n, ep in PLAN
        if arch in wanted
    }
    from edge_unlearn.core.jsontext import to_json_text

    (out / "backend_latency.json").write_text(to_json_text(data) + "\n")
    merged.write_csv(out / "backend_latency.csv")
    plot_latency([r.to_json() for r in merged.rows], out / "backend_latency.png", title="CPU latency vs batch")
    log(f"wrote {out / 'backend_latency.json'}, .csv and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
