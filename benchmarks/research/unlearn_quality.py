"""Unlearning quality against retrain-from-scratch (issue #2's acceptance benchmark).

For each dataset: train the original once (lenet by default), then for each forget class: retrain
from scratch without it (the gold standard, timed), unlearn it with NHLE from --samples forget samples
(timed), and evaluate both with the same figures. Prints a table and writes JSON.

    python -m benchmarks.research.unlearn_quality --dataset npz:../shared/data/mnist.npz --json bench_out/mnist.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from edge_unlearn.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint  # noqa: E402
from edge_unlearn.data import load_dataset, preprocess, take_samples  # noqa: E402
from edge_unlearn.metrics import evaluate_model  # noqa: E402
from edge_unlearn.training import TrainConfig, train_model  # noqa: E402
from edge_unlearn.unlearn import ForgetSet, forget, method_config  # noqa: E402


def parse_params(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def cached_train(cache: Path | None, name: str, arch: str, data, recipe: TrainConfig, forget_classes=()):
    """Train (or load a cached model: then the recorded seconds are from the run that trained it)."""
    if cache is not None and (cache / f"{name}.safetensors").exists():
        ck = load_checkpoint(cache / f"{name}.safetensors")
        return ck.model, json.loads((cache / f"{name}.json").read_text())["seconds"]
    result = train_model(arch, data, recipe, forget_classes=forget_classes, progress=False)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        meta = CheckpointMeta(
            arch,
            data.num_classes,
            data.class_names,
            data.input_shape,
            data.normalization,
            data.spec,
            train_recipe=recipe.to_json(),
        )
        save_checkpoint(cache / f"{name}.safetensors", result.model, meta)
        (cache / f"{name}.json").write_text(json.dumps({"seconds": result.seconds}))
    return result.model, result.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", help="dataset spec (repeatable); default: both shared npz sets")
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9", help="forget classes, one run each")
    parser.add_argument("--samples", type=int, default=32, help="forget samples per run")
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--method", default="nhle")
    parser.add_argument("--param", action="append", default=[], help="method parameter key=value (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, help="reuse trained originals/retrains (development only)")
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    datasets = args.dataset or [f"npz:{shared / 'mnist.npz'}", f"npz:{shared / 'fashion_mnist.npz'}"]
    classes = [int(c) for c in args.classes.split(",")]
    config = method_config(args.method, parse_params(args.param))
    recipe = TrainConfig(epochs=args.epochs, seed=args.seed)
    results = {
        "machine": machine_info(),
        "method": args.method,
        "params": config.__dict__,
        "recipe": recipe.to_json(),
        "samples": args.samples,
        "datasets": {},
    }
    for spec in datasets:
        data = load_dataset(spec)
        tag = Path(spec.split(":", 1)[-1]).stem
        cache = args.cache_dir / f"{tag}_{args.arch}_e{args.epochs}_s{args.seed}" if args.cache_dir else None
        original, train_seconds = cached_train(cache, "original", args.arch, data, recipe)
        rows = []
        for c in classes:
            retrained, retrain_seconds = cached_train(cache, f"retrain_{c}", args.arch, data, recipe, [c])
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
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    path.with_suffix(".md").write_text(render_table(results) + "\n")


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
