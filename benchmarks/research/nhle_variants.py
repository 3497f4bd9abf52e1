"""NHLE parameter variants side by side (the evidence behind NHLE's defaults, docs/nhle.md).

Trains (cached by recipe under --cache-dir) or loads with --original one model, then for each variant and forget class runs NHLE from
--samples forget samples and reports forget_acc_unmasked, retain_drop, probe_forget_acc and seconds,
averaged over the classes. Prints a markdown table and writes JSON.

    python -m benchmarks.research.nhle_variants --dataset npz:../shared/data/mnist.npz --classes 3,5,8 \\
        --variants '[{}, {"target_scale": 1.0}, {"steps": 5}]'
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.harness import SCRATCH, SHARED_DATA, cached_train, data_digest, provenance, use_threads, write_results
from edge_unlearn.checkpoint import load_checkpoint
from edge_unlearn.data import load_dataset, preprocess, take_samples
from edge_unlearn.metrics import evaluate_model
from edge_unlearn.training import TrainConfig
from edge_unlearn.unlearn import ForgetSet, forget, method_config

#: NHLE version 4's parameters around its defaults (the earlier versions' parameters are gone: docs/nhle.md)
DEFAULT_VARIANTS = [
    {},
    {"target_scale": 0.25},  # version 3's
    {"target_scale": 1.0},  # the nearest retained class mean itself (versions 1 and 2)
    {"steps": 5},
    {"steps": 40},
    {"lr": 0.01},
    {"data_free": "none"},
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=f"npz:{SHARED_DATA / 'mnist.npz'}")
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--original", type=Path, help="use this checkpoint instead of training one")
    parser.add_argument("--cache-dir", type=Path, default=SCRATCH / "nhle_variants", help="trained originals")
    parser.add_argument("--classes", default="3,5,8")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--variants", default=None, help="JSON list of parameter overrides")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    use_threads()
    started = time.perf_counter()
    data = load_dataset(args.dataset)
    if args.original:
        original = load_checkpoint(args.original).model
    else:
        original, _, _ = cached_train(args.cache_dir, args.arch, data, data_digest(data), TrainConfig())
    classes = [int(c) for c in args.classes.split(",")]
    variants = json.loads(args.variants) if args.variants else DEFAULT_VARIANTS
    base = {c: evaluate_model(original, data, [c]) for c in classes}
    rows = []
    for variant in variants:
        config = method_config("nhle", variant)
        per_class = []
        for c in classes:
            x, y = take_samples(data, [c], args.samples)
            fs = ForgetSet(preprocess(x, data.normalization), y, (c,))
            forget(original, fs, config=config)  # warm-up
            result = forget(original, fs, config=config)
            after = evaluate_model(result.model, data, [c])
            per_class.append(
                {
                    "class": c,
                    "forget_acc_unmasked": after.forget_acc_unmasked,
                    "retain_drop": base[c].retain_acc - after.retain_acc,
                    "probe_forget_acc": after.probe_forget_acc,
                    "seconds": result.seconds,
                }
            )
        mean = {k: statistics.fmean(r[k] for r in per_class) for k in per_class[0] if k != "class"}
        rows.append({"variant": variant, "mean": mean, "per_class": per_class})
        print(json.dumps(variant), {k: round(v, 4) for k, v in mean.items()}, flush=True)
    probe_before = statistics.fmean(base[c].probe_forget_acc for c in classes)
    lines = [
        f"original model: probe_forget_acc {probe_before:.3f} (mean over classes {classes})",
        "",
        "| variant | forget_acc_unmasked | retain_drop | probe_forget_acc | seconds |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        m = row["mean"]
        name = ", ".join(f"{k}={v}" for k, v in row["variant"].items()) or "defaults"
        lines.append(
            f"| {name} | {m['forget_acc_unmasked']:.3f} | {m['retain_drop']:+.4f} | "
            f"{m['probe_forget_acc']:.3f} | {m['seconds']:.3f} |"
        )
    print("\n".join(lines))
    report = {
        "dataset": args.dataset,
        "classes": classes,
        "probe_original": probe_before,
        "rows": rows,
        **provenance("benchmarks.research.nhle_variants", argv, started),
    }
    if args.json:
        write_results(report, args.json, "\n".join(lines), args.json.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
