"""NHLE parameter variants side by side (the evidence behind NHLE's defaults, docs/nhle.md).

Trains (or loads with --original) one model, then for each variant and forget class runs NHLE from
--samples forget samples and reports forget_acc_unmasked, retain_drop, probe_forget_acc and seconds,
averaged over the classes. Prints a markdown table and writes JSON.

    python -m benchmarks.research.nhle_variants --dataset npz:../shared/data/mnist.npz --classes 3,5,8 \\
        --variants '[{}, {"project": false}, {"orthogonalize": false}, {"scope": "edit_layer", "lr": 0.001}]'
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from edge_unlearn.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint  # noqa: E402
from edge_unlearn.data import load_dataset, preprocess, take_samples  # noqa: E402
from edge_unlearn.metrics import evaluate_model  # noqa: E402
from edge_unlearn.training import TrainConfig, train_model  # noqa: E402
from edge_unlearn.unlearn import ForgetSet, forget, method_config  # noqa: E402

DEFAULT_VARIANTS = [
    {},
    {"project": False},
    {"feature_target": "nearest_class"},
    {"feature_target": "retained_mean"},  # version 1's default
    {"feature_target": "retained_mean", "orthogonalize": False},
    {"feature_metric": "forget_variance"},
    {"alpha": 0.5},
    {"retain_target": "uniform"},
    {"steps": 5},
    {"scope": "head"},
    {"scope": "edit_layer", "lr": 0.001},
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--dataset", default=f"npz:{shared / 'mnist.npz'}")
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--original", type=Path, help="use this checkpoint instead of training one")
    parser.add_argument("--save-original", type=Path, help="write the trained original here for reuse")
    parser.add_argument("--classes", default="3,5,8")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--variants", default=None, help="JSON list of parameter overrides")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = load_dataset(args.dataset)
    if args.original:
        original = load_checkpoint(args.original).model
    else:
        recipe = TrainConfig()
        original = train_model(args.arch, data, recipe, progress=False).model
        if args.save_original:
            save_checkpoint(
                args.save_original,
                original,
                CheckpointMeta(
                    args.arch,
                    data.num_classes,
                    data.class_names,
                    data.input_shape,
                    data.normalization,
                    args.dataset,
                    train_recipe=recipe.to_json(),
                ),
            )
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
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "dataset": args.dataset,
                    "classes": classes,
                    "probe_original": probe_before,
                    "threads": torch.get_num_threads(),
                    "rows": rows,
                },
                indent=2,
            )
        )
        args.json.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
