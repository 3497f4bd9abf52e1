"""How far off the recorded class statistics inside the last block are after NHLE's backbone step (issue #15).

``backbone_step=last_block`` fine-tunes the ResNet's last block; its retention anchors hold the block's
*output*, so the activations inside it (conv2's input, which the edit layer's class statistics describe) move.
NHLE shifts each retained class's recorded means there by how far its anchors moved
(:func:`edge_unlearn.unlearn.nhle.anchored_input_shifts`). This script measures, per retained class, the
relative error of the recorded means against the means re-measured on the training split with the tuned block:
left as they were (``stale``) and as NHLE leaves them (``shifted``).

Example::

    python -m benchmarks.research.block_stats_shift --checkpoint cifar_resnet18.safetensors \\
        --dataset npz:../shared/data/cifar10.npz --forget-class 5 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from benchmarks.harness import provenance, run_reporting_errors, use_threads, write_results
from edge_unlearn.checkpoint import load_checkpoint
from edge_unlearn.data import load_dataset, preprocess, take_samples
from edge_unlearn.unlearn import ForgetSet, forget, method_config
from edge_unlearn.unlearn.anchored import last_residual_block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--forget-class", type=int, required=True)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    return run_reporting_errors(run, parser.parse_args(argv))


def _relative_errors(recorded: torch.Tensor, truth: torch.Tensor) -> list[float]:
    return [float(e) for e in (recorded - truth).norm(dim=1) / truth.norm(dim=1)]


def run(args: argparse.Namespace) -> int:
    use_threads(default=1)
    t0 = time.perf_counter()
    data = load_dataset(args.dataset)
    original = load_checkpoint(args.checkpoint).model.eval()

    def prep(images: torch.Tensor) -> torch.Tensor:
        return preprocess(images, data.normalization)

    if not original.has_depth_stats:  # a checkpoint from before `train` recorded them
        original.record_depth_stats(data.x_train, data.y_train, transform=prep)
    cls = args.forget_class
    keep = [c for c in range(data.num_classes) if c != cls]
    x, y = take_samples(data, [cls], args.samples, seed=args.seed)
    result = forget(
        original,
        ForgetSet(prep(x), y, (cls,)),
        method="nhle",
        config=method_config("nhle", {"backbone_step": "last_block"}),
    )
    block = last_residual_block(result.model.backbone)
    name = next(n for n, m in result.model.backbone.named_modules() if m is block) + ".conv2"
    remeasured = copy.deepcopy(result.model)
    remeasured.record_depth_stats(data.x_train, data.y_train, transform=prep)
    truth = remeasured.depth_stats()[name][keep]
    stale = _relative_errors(original.depth_stats()[name][keep], truth)
    shifted = _relative_errors(result.model.depth_stats()[name][keep], truth)
    print(f"| class | stale | shifted |  ({name}'s input, relative error of the recorded class mean)\n|---|---:|---:|")
    for c, a, b in zip(keep, stale, shifted):
        print(f"| {c} | {a:.3f} | {b:.3f} |")
    print(f"| mean | {sum(stale) / len(stale):.3f} | {sum(shifted) / len(shifted):.3f} |")
    report = {
        "schema": "edge_unlearn.bench.block_stats_shift",
        "version": 1,
        "dataset": data.spec,
        "forget_class": cls,
        "layer": name,
        "classes": keep,
        "stale": stale,
        "shifted": shifted,
        **provenance("benchmarks.research.block_stats_shift", started=t0),
    }
    write_results(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
