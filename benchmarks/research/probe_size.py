"""How much the probe figure depends on the probe's training set (issue #15): the forgotten class's probe accuracy
on the penultimate features and on the retained logits, for the original, the retrained model and NHLE's default,
at several probe training sizes and draws.

``benchmarks/forgetting_depth.py`` fits its probe on ``--probe-train-size`` training images (the CIFAR-10 runs used 2 000 of
4 660 to save time), ``bundle --audit`` on up to 5 000 (every CIFAR-10 image here). A probe with more data is the
stronger auditor, and the gap between NHLE and the retrained model need not be the same at every size: this
script measures it side by side, on the same features (each model's features are computed once; each cell is one
probe fit, exactly the probe of :func:`edge_unlearn.metrics.probe_forget_accuracy_by_depth` with that
``train_size`` and ``seed``). Every figure has its 95 % Wilson interval over the class's test images.

Example::

    python -m benchmarks.research.probe_size --checkpoint cifar_resnet18.safetensors --retrained retrain_c5.safetensors \\
        --dataset npz:../shared/data/cifar10.npz --forget-class 5 --sizes 1000,2000,all --probe-seeds 0,1,2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import provenance, run_reporting_errors, use_threads, wilson, write_results
from edge_unlearn.checkpoint import load_checkpoint
from edge_unlearn.data import Dataset, load_dataset, preprocess, take_samples
from edge_unlearn.errors import UsageError
from edge_unlearn.metrics import (
    PENULTIMATE,
    RETAINED_LOGITS,
    fit_linear_probe,
    model_outputs,
    probe_test_indices,
    probe_train_indices,
    retained_logit_columns,
)
from edge_unlearn.models import UnlearnableClassifier
from edge_unlearn.unlearn import ForgetSet, forget


def readouts(model: UnlearnableClassifier, data: Dataset, cls: int) -> dict[str, dict[str, np.ndarray]]:
    """{"train"/"test": {PENULTIMATE: features, RETAINED_LOGITS: logits of the classes neither ``cls`` nor
    masked}} for every training image and the forgotten class's probe test images."""
    kept = retained_logit_columns(model, [cls])
    out = {}
    for split, images, idx in (("train", data.x_train, None), ("test", data.x_test, probe_test_indices(data, [cls]))):
        feats, logits = model_outputs(model, images, data, indices=idx)
        out[split] = {PENULTIMATE: feats.numpy(), RETAINED_LOGITS: logits[:, kept].numpy()}
    return out


def probe_cell(
    reads: dict[str, dict[str, np.ndarray]], data: Dataset, cls: int, depth: str, size: int, seed: int
) -> int:
    """Hits of the probe fitted on the training draw of ``size`` (``seed``) on the class's test images."""
    idx = probe_train_indices(data, size, seed).numpy()
    probe = fit_linear_probe(reads["train"][depth][idx], data.y_train.numpy()[idx], seed)
    return int((probe.predict(reads["test"][depth]) == cls).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the original model (edge-unlearn checkpoint)")
    parser.add_argument("--retrained", type=Path, required=True, help="the model retrained without the class")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--forget-class", type=int, required=True)
    parser.add_argument("--samples", type=int, default=32, help="NHLE forget samples (the CLI default)")
    parser.add_argument("--sizes", default="500,1000,2000,all", help="probe training sizes ('all': every image)")
    parser.add_argument("--probe-seeds", default="0", help="comma-separated seeds of the probe's training draw")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    return run_reporting_errors(run, parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    data = load_dataset(args.dataset)
    cls, n_train = args.forget_class, len(data.y_train)
    try:
        sizes = [n_train if s.strip() == "all" else int(s) for s in args.sizes.split(",") if s.strip()]
        seeds = [int(s) for s in args.probe_seeds.split(",") if s.strip()]
    except ValueError as exc:
        raise UsageError(f"--sizes / --probe-seeds: comma-separated integers ('all' for every image): {exc}") from exc
    if not sizes or not seeds or any(not 2 * data.num_classes <= s <= n_train for s in sizes):
        raise UsageError(f"--sizes: each between {2 * data.num_classes} and {n_train} (the training images) or 'all'")
    if not 0 <= cls < data.num_classes:
        raise UsageError(f"--forget-class: 0..{data.num_classes - 1}, got {cls}")
    original = load_checkpoint(args.checkpoint).model.eval()
    gold = load_checkpoint(args.retrained).model.eval()
    if sorted(gold.forgotten_classes) != [cls]:
        raise UsageError(
            f"--retrained forgot {sorted(gold.forgotten_classes)}, not [{cls}]: give the model retrained "
            "without --forget-class"
        )
    x, y = take_samples(data, [cls], args.samples, seed=0)
    nhle = forget(original, ForgetSet(preprocess(x, data.normalization), y, (cls,)), method="nhle").model.eval()
    models = {"original": original, "retrain": gold, "nhle": nhle}
    n_test = len(probe_test_indices(data, [cls]))
    cells: list[dict[str, Any]] = []
    for name, model in models.items():
        reads = readouts(model, data, cls)
        for depth in (PENULTIMATE, RETAINED_LOGITS):
            for size in sizes:
                for seed in seeds:
                    hits = probe_cell(reads, data, cls, depth, size, seed)
                    cells.append(
                        {
                            "model": name,
                            "depth": depth,
                            "size": size,
                            "seed": seed,
                            "hits": hits,
                            "n": n_test,
                            "accuracy": hits / n_test,
                            "ci95": list(wilson(hits, n_test)),
                        }
                    )
                    print(f"{name:8s} {depth:16s} size {size:5d} seed {seed}: {hits / n_test:.3f}", flush=True)

    def mean(name: str, depth: str, size: int) -> float:
        return float(
            np.mean([c["accuracy"] for c in cells if (c["model"], c["depth"], c["size"]) == (name, depth, size)])
        )

    lines = [
        f"### probe size: {args.checkpoint.name} on {data.spec}, class {cls} ({n_test} test images), "
        f"probe draws {seeds}",
        "",
        "| depth | probe training images | original | retrain | NHLE default | NHLE − retrain |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for depth in (PENULTIMATE, RETAINED_LOGITS):
        for size in sizes:
            o, r, n = (mean(m, depth, size) for m in models)
            lines.append(f"| {depth} | {size} | {o:.3f} | {r:.3f} | {n:.3f} | {n - r:+.3f} |")
    lines += ["", "Each figure is the mean over the probe draws; the JSON has every cell with its 95 % interval."]
    text = "\n".join(lines)
    print(text)
    report = {
        "schema": "edge_unlearn.bench.probe_size",
        "version": 1,
        "dataset": data.spec,
        "forget_class": cls,
        "samples": args.samples,
        "sizes": sizes,
        "probe_seeds": seeds,
        "test_images": n_test,
        "cells": cells,
        **provenance("benchmarks.research.probe_size", started=t0),
    }
    write_results(report, args.json, text, args.md)
    return 0


if __name__ == "__main__":
    use_threads(default=1)
    sys.exit(main())
