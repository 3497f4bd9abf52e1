"""Bring your own model, end to end (issue #11's acceptance benchmark).

For each architecture: a plain PyTorch script that never imports edge-unlearn (benchmarks/plain_train.py)
trains it on a CIFAR-10 subset and saves a state_dict .pth; then `import` (once with class statistics from
the training data, once without: NHLE's data-free BatchNorm estimate) -> `forget 3` (NHLE) -> export ->
INT8 -> bundle -> validate; and `retrain` (same arch, same data, same recipe) as the gold standard.
Figures: forget_acc (mask on), forget_acc_unmasked, retain_acc, retain_drop, probe_forget_acc, seconds.

Modest by design (one CPU thread, ~30 min): --per-class training images per class (300), --test-per-class
test images per class (100), at the native 32×32 (--size below 32 downscales by area averaging), --epochs
epochs (8); the same subset feeds the plain script, the import, the forget samples, the retrain and the
evaluation. The architectures are torchvision's own, unchanged (stride-32 ImageNet stems: 1×1 final maps at
32×32); the 3×3 CIFAR stem (``resnet18:cifar_stem``) costs ~10× more per step on a CPU.

    nice -n 5 python -m benchmarks.byom --archs resnet18,mobilenet_v2   # into benchmarks/results/byom/byom.json
    # or one process per arch side by side, then: python -m benchmarks.byom --combine a.json b.json --json OUT
    python -m benchmarks.byom --quick   # resnet18, 40 images per class, 1 epoch, into --work
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import SCRATCH, SHARED_DATA, provenance, results_dir, use_threads, write_results
from edge_unlearn.byom import ImportRequest, import_checkpoint
from edge_unlearn.demo import deployment_demo

# imported now, not lazily by deployment_demo: a long run uses the code it started with
from edge_unlearn.deploy import validate  # noqa: F401
from edge_unlearn.export import bundle, onnx_export, quantize  # noqa: F401
from edge_unlearn.fileio import sha256_file
from edge_unlearn.training import TrainConfig
from edge_unlearn.workflows import ForgetRequest, evaluate_checkpoint, forget_checkpoint, retrain_checkpoint

HERE = Path(__file__).resolve().parent
CIFAR_MEAN, CIFAR_STD = "0.4914,0.4822,0.4465", "0.2470,0.2435,0.2616"
FIGURES = ("forget_acc", "forget_acc_unmasked", "retain_acc", "retain_drop", "probe_forget_acc", "seconds")


def make_subset(
    source: Path, out: Path, per_class: int, size: int, seed: int, test_per_class: int | None = None
) -> str:
    """A class-balanced training subset (and a class-balanced test subset, or the whole test split),
    downscaled by area averaging when ``size`` is below the images' size."""
    with np.load(source) as a:
        x_train, y_train, x_test, y_test = (a[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        names = a["class_names"] if "class_names" in a.files else None
    rng = np.random.default_rng(seed)
    pick = np.sort(
        np.concatenate([rng.permutation(np.nonzero(y_train == c)[0])[:per_class] for c in np.unique(y_train)])
    )
    test = (
        np.arange(len(y_test))
        if test_per_class is None
        else np.sort(
            np.concatenate([rng.permutation(np.nonzero(y_test == c)[0])[:test_per_class] for c in np.unique(y_test)])
        )
    )

    def shrink(x: np.ndarray) -> np.ndarray:
        f = x.shape[2] // size
        if f <= 1:
            return x
        n, c, h, w = x.shape
        return x.reshape(n, c, h // f, f, w // f, f).astype(np.float32).mean((3, 5)).round().astype(np.uint8)

    arrays = dict(
        x_train=shrink(x_train[pick]), y_train=y_train[pick], x_test=shrink(x_test[test]), y_test=y_test[test]
    )
    if names is not None:
        arrays["class_names"] = names
    np.savez(out, **arrays)
    return f"npz:{out}"


def reused_training(pth: Path, args: list[str]) -> float | None:
    """Seconds of an earlier plain training with exactly these arguments, or None (train again).

    The plain script is deterministic for a given argument list, so its .pth is reused when the sidecar written
    beside it records the same arguments; the row keeps the seconds that training took."""
    sidecar = pth.with_suffix(".run.json")
    if not (pth.exists() and sidecar.exists()):
        return None
    record = json.loads(sidecar.read_text())
    return float(record["seconds"]) if record.get("args") == args else None


def run_arch(
    arch: str,
    data_npz: Path,
    spec: str,
    work: Path,
    epochs: int,
    forget: str,
    samples: int,
    stats_samples: int,
    threads: int,
) -> list[dict]:
    cifar_stem = arch.endswith(":cifar_stem")
    name = arch[: -len(":cifar_stem")] if cifar_stem else arch
    label = f"{name}{' (cifar stem)' if cifar_stem else ''}"
    tag = name.replace(":", "_")
    rows: list[dict] = []
    pth = work / f"{tag}.pth"
    cmd = [
        sys.executable,
        str(HERE / "plain_train.py"),
        "--arch",
        name,
        "--data",
        str(data_npz),
        "--epochs",
        str(epochs),
        "--mean",
        CIFAR_MEAN,
        "--std",
        CIFAR_STD,
        "--threads",
        str(threads),
        "-o",
        str(pth),
    ] + (["--cifar-stem"] if cifar_stem else [])
    train_seconds = reused_training(pth, cmd[1:])
    if train_seconds is None:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        train_seconds = time.perf_counter() - t0
        pth.with_suffix(".run.json").write_text(json.dumps({"args": cmd[1:], "seconds": train_seconds}))
    print(f"[{label}] plain training: {train_seconds:.0f} s", flush=True)
    arch_flag = name if name.startswith("timm:") else f"torchvision:{name}"
    checkpoints = {}
    for variant, stats in (("nhle, class stats from data", spec), ("nhle, data-free (BatchNorm)", None)):
        out = work / f"{tag}.{'stats' if stats else 'free'}.safetensors"
        t0 = time.perf_counter()
        import_checkpoint(
            ImportRequest(
                arch=arch_flag,
                weights=str(pth),
                output=str(out),
                dataset=spec,
                mean=tuple(float(v) for v in CIFAR_MEAN.split(",")),
                std=tuple(float(v) for v in CIFAR_STD.split(",")),
                cifar_stem=cifar_stem,
                stats_from=stats,
                stats_samples=stats_samples,
            )
        )
        import_seconds = time.perf_counter() - t0
        child = work / f"{tag}.{'stats' if stats else 'free'}.f{forget}.safetensors"
        s = forget_checkpoint(ForgetRequest(checkpoint=str(out), forget=(forget,), out=str(child), samples=samples))
        checkpoints[variant] = child
        if not rows:
            rows.append(
                {
                    "arch": label,
                    "variant": "original (plain script)",
                    "forget_acc": s["forget_acc_before"],
                    "forget_acc_unmasked": s["forget_acc_before"],
                    "retain_acc": s["retain_acc_before"],
                    "retain_drop": 0.0,
                    "probe_forget_acc": s["probe_forget_acc_before"],
                    "seconds": train_seconds,
                }
            )
        rows.append(
            {
                "arch": label,
                "variant": variant,
                **{k: s[k] for k in FIGURES if k in s},
                "feature_step": s.get("feature_step"),
                "import_seconds": import_seconds,
            }
        )
        print(f"[{label}] {variant}: {json.dumps(rows[-1])}", flush=True)
    original = work / f"{tag}.stats.safetensors"
    retrained = work / f"{tag}.retrain.safetensors"
    # the plain script's recipe exactly (benchmarks/plain_train.py: no augmentation), not the 3-channel default
    recipe = TrainConfig(epochs=epochs, min_steps=0, batch_size=128, lr=2e-3, device="cpu", augment="none")
    made_by = {
        "weights_sha256": sha256_file(pth),
        "data_sha256": sha256_file(data_npz),
        "forget": forget,
        "recipe": recipe.to_json(),
    }
    sidecar = retrained.with_suffix(".run.json")
    if retrained.exists() and sidecar.exists() and json.loads(sidecar.read_text())["made_by"] == made_by:
        retrain_seconds = float(json.loads(sidecar.read_text())["seconds"])  # the same retrain, done before
    else:
        retrain_seconds = retrain_checkpoint(original, [forget], retrained, progress=False, config=recipe)["seconds"]
        sidecar.write_text(json.dumps({"made_by": made_by, "seconds": retrain_seconds}))
    e = evaluate_checkpoint(retrained, reference=original)
    rows.append(
        {
            "arch": label,
            "variant": "retrain (gold standard)",
            "forget_acc": e["forget_acc"],
            "forget_acc_unmasked": e["forget_acc_unmasked"],
            "retain_acc": e["retain_acc"],
            "retain_drop": e["retain_drop"],
            "probe_forget_acc": e["probe_forget_acc"],
            "seconds": retrain_seconds,
        }
    )
    print(f"[{label}] retrain: {json.dumps(rows[-1])}", flush=True)
    deploy = deployment_demo(checkpoints["nhle, class stats from data"], spec, work / f"{tag}.deploy", echo=print)
    rows[1]["int8_validate"] = deploy["int8"]["verdict"]
    rows[1]["fp32_validate"] = deploy["fp32"]["verdict"]
    rows[1]["int8_agreement"] = deploy["int8"]["retain_agreement"]
    rows[1]["fp32_agreement"] = deploy["fp32"]["retain_agreement"]
    return rows


def fmt(v) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def table(rows: list[dict]) -> str:
    head = (
        "| arch | variant | forget_acc | forget_acc_unmasked | retain_acc | retain_drop | probe | seconds "
        "| feature step | validate FP32 / INT8 (agreement) |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        deploy = (
            f"{r['fp32_validate']} / {r['int8_validate']} ({fmt(r.get('int8_agreement'))})"
            if "int8_validate" in r
            else r.get("note", "")
        )
        lines.append(
            f"| {r['arch']} | {r['variant']} | {fmt(r.get('forget_acc'))} | {fmt(r.get('forget_acc_unmasked'))} "
            f"| {fmt(r.get('retain_acc'))} | {fmt(r.get('retain_drop'))} | {fmt(r.get('probe_forget_acc'))} "
            f"| {fmt(r.get('seconds'))} | {r.get('feature_step', '')} | {deploy} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "cifar10.npz"))
    parser.add_argument(
        "--archs",
        default="resnet18,mobilenet_v2",
        help="comma-separated torchvision names (NAME:cifar_stem for the 3×3 stem) or timm:NAME",
    )
    parser.add_argument("--per-class", type=int, default=300, help="training images per class")
    parser.add_argument("--test-per-class", type=int, default=100, help="test images per class (0: all)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads, the plain script's too (default: BENCH_THREADS, else 1)",
    )
    parser.add_argument("--forget", default="3")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--stats-samples", type=int, default=100)
    parser.add_argument("--work", type=Path, default=SCRATCH / "byom")
    parser.add_argument("--json", type=Path, default=None, help="results JSON (default: see above)")
    parser.add_argument("--quick", action="store_true", help="resnet18, 40 images per class, 1 epoch, into --work")
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="JSON",
        help="no run: merge the rows of these result files (e.g. one run per arch, run side by side) "
        "into --json and print the table",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.archs, args.per_class, args.test_per_class, args.epochs = "resnet18", 40, 20, 1
    json_path = args.json or (args.work / "byom_quick.json" if args.quick else results_dir("byom") / "byom.json")
    if args.combine:
        parts = [json.loads(Path(p).read_text()) for p in args.combine]
        merged = {
            "config": [p["config"] for p in parts],
            "rows": [r for p in parts for r in p["rows"]],
            "skipped": [s for p in parts for s in p["skipped"]],
            "parts": [
                {"command": p.get("command"), "environment": p.get("environment", p.get("machine"))} for p in parts
            ],
            **provenance("benchmarks.byom", argv),
        }
        write_results(merged, json_path)
        print(table(merged["rows"]))
        return 0
    args.threads = use_threads(args.threads, default=1)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    subset = (
        work
        / f"cifar10_{args.per_class}pc_{args.test_per_class}tpc_{args.size}px_{args.archs.replace(':', '_').replace(',', '_')}.npz"
    )
    spec = make_subset(
        Path(args.data), subset, args.per_class, args.size, seed=0, test_per_class=args.test_per_class or None
    )
    rows: list[dict] = []
    skipped: list[str] = []
    for arch in [a for a in args.archs.split(",") if a]:
        if arch.startswith("timm:"):
            try:
                import timm  # noqa: F401
            except ImportError:
                skipped.append(f"{arch}: timm is not installed")
                continue
        rows += run_arch(
            arch, subset, spec, work, args.epochs, args.forget, args.samples, args.stats_samples, args.threads
        )
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        report = {"config": config, "rows": rows, "skipped": skipped, **provenance("benchmarks.byom", argv)}
        write_results(report, json_path)  # after every arch: a long run keeps what it finished
    print(table(rows))
    for s in skipped:
        print(f"skipped {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
