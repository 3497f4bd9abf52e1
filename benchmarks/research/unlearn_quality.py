"""Unlearning quality against retrain-from-scratch (issue #2's acceptance benchmark).

For each dataset: train the original once (lenet by default), then for each forget class: retrain
from scratch without it (the gold standard, timed), unlearn it with NHLE from --samples forget samples
(timed), and evaluate both with the same figures. Prints a table and writes JSON. Superseded by
``benchmarks/forgetting_depth.py`` (every audit measure, several seeds); kept for the figures of docs/nhle.md.

    python -m benchmarks.research.unlearn_quality --dataset npz:../shared/data/mnist.npz --json bench_out/mnist.json

Trained models are cached by recipe (:func:`benchmarks.harness.cached_train`) under --cache-dir.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.harness import SCRATCH, SHARED_DATA, cached_train, data_digest, provenance, use_threads, write_results
from edge_unlearn.data import load_dataset, preprocess, take_samples
from edge_unlearn.metrics import evaluate_model
from edge_unlearn.training import TrainConfig
from edge_unlearn.unlearn import ForgetSet, forget, method_config


def parse_params(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", help="dataset spec (repeatable); default: both shared npz sets")
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9", help="forget classes, one run each")
    parser.add_argument("--samples", type=int, default=32, help="forget samples per run")
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--method", default="nhle")
    parser.add_argument("--param", action="append", default=[], help="method parameter key=value (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=SCRATCH / "unlearn_quality", help="trained models")
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    use_threads(args.threads)
    datasets = args.dataset or [f"npz:{SHARED_DATA / 'mnist.npz'}", f"npz:{SHARED_DATA / 'fashion_mnist.npz'}"]
    classes = [int(c) for c in args.classes.split(",")]
    config = method_config(args.method, parse_params(args.param))
    recipe = TrainConfig(epochs=args.epochs, seed=args.seed)
    results = {
        **provenance("benchmarks.research.unlearn_quality", argv),
        "method": args.method,
        "params": config.__dict__,
        "recipe": recipe.to_json(),
        "samples": args.samples,
        "datasets": {},
    }
    for spec in datasets:
        data = load_dataset(spec)
        tag = Path(spec.split(":", 1)[-1]).stem
        digest = data_digest(data)
        original, train_seconds, _ = cached_train(args.cache_dir, args.arch, data, digest, recipe)
        rows = []
        for c in classes:
            retrained, retrain_seconds, _ = cached_train(args.cache_dir, args.arch, data, digest, recipe, (c,))
            xs, ys = take_samples(data, [c], args.samples, seed=args.seed)
            fs = ForgetSet(preprocess(xs, data.normalization), ys, (c,))
            forget(original, fs, method=args.method, config=config)  # warm-up: first-call allocator/autograd costs
            result = forget(original, fs, method=args.method, config=config)
            before = evaluate_model(original, data, [c], seed=args.seed)
            after = evaluate_model(result.model, data, [c], seed=args.seed)
            gold = evaluate_model(retrained, data, [c], seed=args.seed)
            row = {
                "class": c,
                "forget_acc": after.forget_acc,
                "forget_acc_unmasked": after.forget_acc_unmasked,
                "retain_acc_before": before.retain_acc,
                "retain_acc": after.retain_acc,
                "retain_drop": before.retain_acc - after.retain_acc,
                "retrain_retain_drop": before.retain_acc - gold.retain_acc,
                "probe_original": before.probe_forget_acc,
                "probe_forget_acc": after.probe_forget_acc,
                "probe_retrain": gold.probe_forget_acc,
                "seconds": result.seconds,
                "retrain_seconds": retrain_seconds,
            }
            row["seconds_ratio"] = row["retrain_seconds"] / max(row["seconds"], 1e-9)
            rows.append(row)
            print(f"{tag} class {c}: " + " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "class"), flush=True)
        mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0] if k != "class"}
        results["datasets"][tag] = {"spec": spec, "train_seconds": train_seconds, "rows": rows, "mean": mean}
        write(results, args.json)  # after each dataset, so a long run keeps what it finished
    print()
    print(render_table(results))
    return 0


def write(results: dict, path: Path | None) -> None:
    if path is not None:
        write_results(results, path, render_table(results), path.with_suffix(".md"))


def render_table(results: dict) -> str:
    head = (
        "| dataset | class | forget_acc | forget_acc_unmasked | retain_drop | retrain's drop | probe orig | "
        "probe NHLE | probe retrain | NHLE s | retrain s | ratio |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for tag, block in results["datasets"].items():
        for row in [*block["rows"], {"class": "mean", **block["mean"]}]:
            lines.append(
                f"| {tag} | {row['class']} | {row['forget_acc']:.3f} | {row['forget_acc_unmasked']:.3f} | "
                f"{row['retain_drop']:+.4f} | {row['retrain_retain_drop']:+.4f} | {row['probe_original']:.3f} | "
                f"{row['probe_forget_acc']:.3f} | {row['probe_retrain']:.3f} | {row['seconds']:.3f} | "
                f"{row['retrain_seconds']:.1f} | {row['seconds_ratio']:.0f}× |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
