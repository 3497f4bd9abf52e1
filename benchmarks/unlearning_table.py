"""NHLE side by side with the field: methods × datasets × forget classes × seeds, every docs/design.md §3 figure.

For each (dataset, seed) the original model is trained once and reused; for each forget class every method
unlearns a copy of it (single-class forgetting: each entry of ``--forget-classes`` is one run). Writes
``rows.csv`` / ``rows.json`` (one row per dataset, seed, forget class, method; the original model is the row
``original``), ``table.md`` (mean ± std over seeds and forget classes) and PNG plots into ``--out-dir``
(default ``bench_out/unlearning_table``). The committed table, ``benchmarks/results/unlearning_table/``, is the
``--combine`` of several runs. Original models are cached by recipe (:func:`benchmarks.harness.cached_train`)
in ``--cache-dir``.

Data each method gets (its registry ``needs``): ``forget`` methods (nhle, neggrad) get ``--forget-samples``
training images per forgotten class — the few-sample setting NHLE claims; every other method gets all
training images of the forgotten class plus all retained training images (``--max-train`` caps the training
set for everyone), as the papers run them.

Examples::

    python -m benchmarks.unlearning_table --quick
    python -m benchmarks.unlearning_table --datasets npz:../shared/data/mnist.npz,npz:../shared/data/fashion_mnist.npz \\
        --forget-classes 0,3,7 --seeds 0,1,2 --out-dir bench_out/unlearning
    python -m benchmarks.unlearning_table --combine bench_out/unlearning_* --out-dir benchmarks/results/unlearning_table
Longer than 500 lines because the experiment, its figures and its plots write one results format.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import SCRATCH, cached_train, data_digest, provenance, use_threads, write_results
from edge_unlearn import attacks
from edge_unlearn.core.figures import retain_drop
from edge_unlearn.core.jsontext import clean_json
from edge_unlearn.data import Dataset, load_dataset, preprocess, take_samples
from edge_unlearn.metrics import evaluate_model, model_outputs
from edge_unlearn.training import TrainConfig
from edge_unlearn.unlearn import ForgetSet, RetainSet, forget, get_method, list_methods, method_config

METRICS = [
    # key, column header, number format
    ("forget_acc", "forget acc", "{:.3f}"),
    ("forget_acc_unmasked", "forget acc (no mask)", "{:.3f}"),
    ("retain_acc", "retain acc", "{:.3f}"),
    ("retain_drop", "retain drop", "{:+.3f}"),
    ("probe_forget_acc", "probe", "{:.3f}"),
    ("mia_entropy", "MIA entropy (SSD)", "{:.3f}"),
    ("mia_svc_efficacy", "MIA-SVC efficacy (SalUn)", "{:.3f}"),
    ("attack_forget_acc", "proto attack", "{:.3f}"),
    ("attack_forget_acc_lifted", "proto attack (mask lifted)", "{:.3f}"),
    ("relearn_steps", "relearn steps", "{:.1f}"),
    ("seconds", "seconds", "{:.3g}"),
]


def _parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _subsample(data: Dataset, max_train: int | None, max_test: int | None) -> Dataset:
    """Random subsets of the splits (fixed seed 0: every seed and method sees the same data)."""
    gen = torch.Generator().manual_seed(0)
    changes: dict[str, Any] = {}
    if max_train is not None and max_train < len(data.x_train):
        idx = torch.randperm(len(data.x_train), generator=gen)[:max_train].sort().values
        changes.update(x_train=data.x_train[idx], y_train=data.y_train[idx])
    if max_test is not None and max_test < len(data.x_test):
        idx = torch.randperm(len(data.x_test), generator=gen)[:max_test].sort().values
        changes.update(x_test=data.x_test[idx], y_test=data.y_test[idx])
    return dataclasses.replace(data, **changes) if changes else data


def _overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--set ssd.alpha=50`` → {"ssd": {"alpha": 50}} (values parsed as JSON, else kept as text)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, value = item.partition("=")
        method, _, param = key.partition(".")
        if not param or not value:
            raise SystemExit(f"--set expects METHOD.PARAM=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(method, {})[param] = parsed
    return out


def _config(
    method: str, seed: int, epochs: int, overrides: dict[str, dict[str, Any]], min_steps: int | None = None
) -> Any:
    fields = {f.name for f in dataclasses.fields(get_method(method).config_cls)}
    values: dict[str, Any] = {}
    if "seed" in fields:
        values["seed"] = seed
    if method == "retrain":  # the same recipe as the original model
        values["epochs"] = epochs
        if min_steps is not None:
            values["min_steps"] = min_steps
    values.update(overrides.get(method, {}))
    return method_config(method, values)


def _row_figures(model, data: Dataset, c: int, args, original_forget: float | None, seed: int) -> dict[str, Any]:
    """Every §2 figure of one model for forgotten class ``c`` (no relearn time when ``original_forget`` is None:
    the original model needs 0 steps by definition)."""
    report = evaluate_model(model, data, [c], probe=True, probe_train_size=args.probe_train_size, seed=seed)
    svc = attacks.mia_svc(model, data, [c], max_samples=args.mia_samples, seed=seed)
    attack = attacks.prototype_relearn_attack(model, data, [c], k=5, seed=seed + 1000)
    lifted = attacks.prototype_relearn_attack(model, data, [c], k=5, lift_mask=True, seed=seed + 1000)
    relearn = None
    if original_forget is not None:
        relearn = attacks.relearn_time(
            model,
            data,
            [c],
            target_acc=0.9 * original_forget,
            k=5,
            max_steps=args.relearn_steps,
            eval_samples=args.relearn_eval,
            seed=seed + 1000,
        )
    depth = {}
    if getattr(args, "depth", False):  # issue #15: the probe after every block (opt-in: one feature pass per block)
        from edge_unlearn.metrics import probe_forget_accuracy_by_depth

        depth = {
            f"probe@{name}": value
            for name, value in probe_forget_accuracy_by_depth(model, data, [c], args.probe_train_size, seed).items()
        }
    return {
        **depth,
        "forget_acc": report.forget_acc,
        "forget_acc_unmasked": report.forget_acc_unmasked,
        "retain_acc": report.retain_acc,
        "probe_forget_acc": report.probe_forget_acc,
        "mia_entropy": attacks.mia_entropy(model, data, [c], max_samples=args.mia_samples, seed=seed),
        "mia_svc_efficacy": svc["efficacy"],
        "attack_forget_acc": attack.forget_acc,
        "attack_forget_acc_lifted": lifted.forget_acc,
        "attack_alpha_lifted": lifted.alpha,
        "relearn_steps": relearn.steps_or_cap if relearn else 0,
        "relearn_reached": relearn.steps is not None if relearn else True,
        "per_class_accuracy": report.per_class_accuracy,
    }


def _original_model(data: Dataset, seed: int, args) -> tuple[Any, float]:
    """Train the original model, or load it from ``--cache-dir`` (cached by recipe: arch, data content — the
    subset included —, training config), so that runs split over time or processes share one original per
    (dataset, seed)."""
    recipe = TrainConfig(epochs=args.epochs, seed=seed, device="cpu")
    if args.min_steps is not None:
        recipe = dataclasses.replace(recipe, min_steps=args.min_steps)
    model, seconds, _ = cached_train(Path(args.cache_dir), args.arch, data, data_digest(data), recipe)
    return model.eval(), float("nan") if seconds is None else seconds


def run(args) -> dict[str, Any]:
    args.threads = use_threads(args.threads, default=1)
    methods = args.methods
    overrides = _overrides(args.set)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    # every finished row is appended here at once, so an interrupted run resumes where it stopped
    partial = out_dir / "rows.partial.jsonl"
    done: dict[tuple, dict[str, Any]] = {}
    if partial.is_file():
        for line in partial.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                row = {k: (float("nan") if v is None and k == "seconds" else v) for k, v in row.items()}
                done[(row["dataset"], row["seed"], row["forget_class"], row["method"])] = row

    def keep(row: dict[str, Any]) -> None:
        rows.append(row)
        if (row["dataset"], row["seed"], row["forget_class"], row["method"]) not in done:
            with open(partial, "a") as handle:
                handle.write(json.dumps(clean_json(row), default=str) + "\n")

    models_for_plots: dict[str, Any] = {}
    t_start = time.perf_counter()
    for spec in args.datasets:
        data = _subsample(load_dataset(spec, data_dir=args.data_dir), args.max_train, args.max_test)
        x_all = preprocess(data.x_train, data.normalization)
        for seed in args.seeds:
            original, train_seconds = _original_model(data, seed, args)
            print(
                f"[{time.perf_counter() - t_start:7.1f}s] {spec} seed {seed}: original trained in {train_seconds:.1f}s",
                flush=True,
            )
            for c in args.forget_classes:
                base = {"dataset": spec, "seed": seed, "forget_class": c, "arch": args.arch}
                if (spec, seed, c, "original") in done:
                    orig = done[(spec, seed, c, "original")]
                    keep(orig)
                else:
                    orig = _row_figures(original, data, c, args, original_forget=None, seed=seed)
                    keep(
                        {
                            **base,
                            "method": "original",
                            "needs": "-",
                            **orig,
                            "retain_drop": 0.0,
                            "seconds": float("nan"),
                            "train_seconds": train_seconds,
                            "samples_used": len(x_all),
                        }
                    )
                orig_forget = orig["forget_acc"]  # relearn target for every method: 0.9 × this
                sel = data.y_train == c
                full_fs = ForgetSet(x_all[sel], data.y_train[sel], (c,))
                few_x, few_y = take_samples(data, [c], args.forget_samples, seed=seed)
                few_fs = ForgetSet(preprocess(few_x, data.normalization), few_y, (c,))
                rs = RetainSet(x_all[~sel], data.y_train[~sel])
                for method in methods:
                    if (spec, seed, c, method) in done:  # resumed (its model is not rebuilt for the t-SNE plot)
                        keep(done[(spec, seed, c, method)])
                        continue
                    mspec = get_method(method)
                    fs = few_fs if mspec.needs == "forget" else full_fs
                    result = forget(
                        original,
                        fs,
                        method,
                        config=_config(method, seed, args.epochs, overrides, args.min_steps),
                        retain=None if mspec.needs == "forget" else rs,
                        device="cpu",
                    )
                    figs = _row_figures(result.model, data, c, args, original_forget=orig_forget, seed=seed)
                    keep(
                        {
                            **base,
                            "method": method,
                            "needs": mspec.needs,
                            **figs,
                            "retain_drop": retain_drop(orig["retain_acc"], figs["retain_acc"]),
                            "seconds": result.seconds,
                            "samples_used": result.samples_used,
                            "params": result.params,
                        }
                    )
                    if (spec, seed, c) == (args.datasets[0], args.seeds[0], args.forget_classes[0]):
                        models_for_plots.setdefault("original", original)
                        models_for_plots[method] = result.model
                        models_for_plots["data"] = data
                    print(
                        f"[{time.perf_counter() - t_start:7.1f}s] {spec} seed {seed} class {c} {method:>12}: "
                        f"forget {figs['forget_acc']:.3f} retain {figs['retain_acc']:.3f} "
                        f"probe {figs['probe_forget_acc']:.3f} {result.seconds:.2f}s",
                        flush=True,
                    )
    made = provenance("benchmarks.unlearning_table", args.argv)
    env = {"command": made["command"], **made["environment"], "device": "cpu"}
    env["total_seconds"] = time.perf_counter() - t_start
    summary = _aggregate(rows)
    report = {"environment": env, "args": {k: v for k, v in vars(args).items()}, "rows": rows, "summary": summary}
    _write(out_dir, rows, report)
    if not args.no_plots:
        _plots(out_dir, rows, models_for_plots, args)
    return report


def _aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """mean and std (over seeds and forget classes) per (dataset, method), in the order first seen."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["method"]), []).append(row)
    out = []
    for (dataset, method), items in groups.items():
        entry: dict[str, Any] = {
            "dataset": dataset,
            "method": method,
            "needs": items[0]["needs"],
            "n": len(items),
            "relearn_censored": sum(not r["relearn_reached"] for r in items),
        }
        for key, _, _ in _metrics(items):
            values = np.array([r[key] for r in items if r.get(key) is not None], dtype=float)
            values = values[np.isfinite(values)]
            entry[key] = {
                "mean": float(values.mean()) if len(values) else None,
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0 if len(values) else None,
            }
        out.append(entry)
    return out


def _metrics(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """METRICS, preceded by the depth probes (``probe@<block>``, ``--depth``) when the rows have them."""
    depth = list(dict.fromkeys(k for r in rows for k in r if k.startswith("probe@")))
    return [(k, k, "{:.3f}") for k in depth] + METRICS


def markdown_table(summary: list[dict[str, Any]]) -> str:
    metrics = _metrics(summary)
    head = ["dataset", "method", "needs"] + [h for _, h, _ in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in summary:
        cells = [entry["dataset"].rsplit("/", 1)[-1], entry["method"], entry["needs"]]
        for key, _, fmt in metrics:
            stat = entry.get(key, {"mean": None})
            if stat["mean"] is None:
                cells.append("–")
                continue
            text = f"{fmt.format(stat['mean'])} ± {fmt.format(stat['std']).lstrip('+')}"
            if key == "relearn_steps" and entry["relearn_censored"]:
                text += f" ({entry['relearn_censored']}/{entry['n']} not reached)"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def acceptance(summary: list[dict[str, Any]]) -> list[str]:
    """The issue's acceptance checks for NHLE against retrain, per dataset (text lines, PASS/FAIL)."""
    out = []
    by = {(e["dataset"], e["method"]): e for e in summary}
    for dataset in dict.fromkeys(e["dataset"] for e in summary):
        nhle, retrain = by.get((dataset, "nhle")), by.get((dataset, "retrain"))
        if not nhle or not retrain:
            continue
        name = dataset.rsplit("/", 1)[-1]
        fa = nhle["forget_acc"]["mean"]
        dd = nhle["retain_drop"]["mean"] - retrain["retain_drop"]["mean"]
        ratio = nhle["seconds"]["mean"] / retrain["seconds"]["mean"]
        out.append(f"- {name}: NHLE forget_acc {fa:.3f} → {'PASS' if fa == 0 else 'FAIL'} (needs 0)")
        out.append(
            f"- {name}: NHLE retain_drop − retrain's = {dd:+.3f} → {'PASS' if dd <= 0.01 else 'FAIL'} (needs ≤ +0.01)"
        )
        out.append(
            f"- {name}: NHLE seconds / retrain's = {ratio:.4f} → {'PASS' if ratio <= 1 / 50 else 'FAIL'} (needs ≤ 0.02)"
        )
        for key in ("probe_forget_acc", "attack_forget_acc_lifted", "mia_entropy", "mia_svc_efficacy"):
            out.append(f"- {name}: {key} NHLE {nhle[key]['mean']:.3f} vs retrain {retrain[key]['mean']:.3f}")
    return out


def _write(out_dir: Path, rows: list[dict[str, Any]], report: dict[str, Any]) -> None:
    keys = (
        ["dataset", "seed", "forget_class", "arch", "method", "needs"]
        + [k for k, _, _ in _metrics(rows)]
        + ["attack_alpha_lifted", "relearn_reached", "samples_used"]
    )
    with open(out_dir / "rows.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(clean_json(row))
    env = report["environment"]
    text = [
        markdown_table(report["summary"]),
        "",
        f"Machine: {env.get('cpu', env.get('cpu_model'))} ({env['machine']}), torch {env['torch']} on CPU, {env['threads']} thread(s)"
        + (f"; total {env['total_seconds'] / 60:.1f} min." if env.get("total_seconds") else "."),
        "",
        f"Command: `{env['command']}`",
        "",
    ]
    checks = acceptance(report["summary"])
    if checks:
        text += ["Acceptance checks (NHLE vs retrain):", *checks, ""]
    print("\n".join(text))
    plain = json.loads(json.dumps(clean_json(report), default=str))  # paths and tuples of the arguments as text
    write_results(plain, out_dir / "rows.json", "\n".join(text), out_dir / "table.md")


# ---------------------------------------------------------------------------------------------
# plots


def _plots(out_dir: Path, rows: list[dict[str, Any]], models: dict[str, Any], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = rows[0]
    data_name = first["dataset"].rsplit("/", 1)[-1]
    seed, c = first["seed"], first["forget_class"]
    # 1. per-class accuracy before/after for each method (first dataset, seed, forget class)
    pick = [r for r in rows if r["dataset"] == first["dataset"] and r["seed"] == seed and r["forget_class"] == c]
    before = next(r for r in pick if r["method"] == "original")["per_class_accuracy"]
    after = [r for r in pick if r["method"] != "original"]
    cols = min(4, len(after))
    nrows = (len(after) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False, sharey=True)
    x = np.arange(len(before))
    for ax, row in zip(axes.flat, after):
        ax.bar(x - 0.2, before, 0.4, label="original", color="#bbbbbb")
        colors = ["#d62728" if i == c else "#1f77b4" for i in x]
        ax.bar(
            x + 0.2, [v if v is not None else 0 for v in row["per_class_accuracy"]], 0.4, color=colors, label="after"
        )
        ax.set_title(row["method"])
        ax.set_xticks(x)
        ax.set_ylim(0, 1.05)
    for ax in list(axes.flat)[len(after) :]:
        ax.axis("off")
    from matplotlib.patches import Patch

    axes[0, 0].legend(
        handles=[
            Patch(color="#bbbbbb", label="original"),
            Patch(color="#1f77b4", label="after"),
            Patch(color="#d62728", label="forgotten class, after"),
        ],
        loc="lower left",
        fontsize=7,
    )
    fig.suptitle(
        f"Per-class test accuracy before (grey) and after unlearning class {c} (red) — {data_name}, seed {seed}"
    )
    fig.tight_layout()
    fig.savefig(out_dir / "per_class_accuracy.png", dpi=120)
    plt.close(fig)

    # 2. t-SNE of penultimate features before and after NHLE
    if "nhle" in models and "original" in models:
        from sklearn.manifold import TSNE

        data = models["data"]
        gen = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(data.x_test), generator=gen)[: args.tsne_points]
        y = data.y_test[idx].numpy()
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
        for ax, (title, model) in zip(axes, [("original", models["original"]), ("after NHLE", models["nhle"])]):
            feats, _ = model_outputs(model, data.x_test[idx], data)
            emb = TSNE(n_components=2, init="pca", random_state=0, perplexity=30).fit_transform(feats.numpy())
            other = y != c
            ax.scatter(emb[other, 0], emb[other, 1], c=y[other], cmap="tab10", s=5, alpha=0.35, vmin=0, vmax=9)
            ax.scatter(
                emb[~other, 0],
                emb[~other, 1],
                c="black",
                marker="x",
                s=16,
                linewidths=0.8,
                label=f"forgotten class {c}",
            )
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0].legend(loc="best", fontsize=8)
        fig.suptitle(f"t-SNE of penultimate test features — {data_name}, seed {seed}")
        fig.tight_layout()
        fig.savefig(out_dir / "tsne_nhle.png", dpi=120)
        plt.close(fig)

    # 3. seconds per method (log axis), per dataset
    summary = _aggregate(rows)
    datasets = list(dict.fromkeys(e["dataset"] for e in summary))
    methods = [m for m in dict.fromkeys(e["method"] for e in summary) if m != "original"]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(methods), 3.8))
    width = 0.8 / max(1, len(datasets))
    for i, dataset in enumerate(datasets):
        means = [
            next(e for e in summary if e["dataset"] == dataset and e["method"] == m)["seconds"]["mean"] for m in methods
        ]
        stds = [
            next(e for e in summary if e["dataset"] == dataset and e["method"] == m)["seconds"]["std"] for m in methods
        ]
        ax.bar(
            np.arange(len(methods)) + (i - (len(datasets) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            label=dataset.rsplit("/", 1)[-1],
            capsize=2,
        )
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(methods)))
    ax.set_xticklabels(methods, rotation=20)
    ax.set_ylabel("unlearning seconds (log)")
    ax.legend(fontsize=8)
    ax.set_title("Seconds per method (CPU)")
    fig.tight_layout()
    fig.savefig(out_dir / "seconds.png", dpi=120)
    plt.close(fig)


def combine(dirs: list[str], out_dir: str) -> dict[str, Any]:
    """Merge the ``rows.json`` of earlier runs (later directories win on the same dataset, seed, class and
    method) into one table, CSV, JSON and the row-based plots; a t-SNE plot found in a run is copied."""
    import shutil

    merged: dict[tuple, dict[str, Any]] = {}
    envs = []
    for d in dirs:
        report = json.loads((Path(d) / "rows.json").read_text())
        envs.append(report["environment"])
        for row in report["rows"]:
            row = {k: (float("nan") if v is None and k in ("seconds",) else v) for k, v in row.items()}
            merged[(row["dataset"], row["seed"], row["forget_class"], row["method"])] = row
    rows = list(merged.values())
    order = {m: i for i, m in enumerate(dict.fromkeys(["original", "retrain", "nhle"] + [r["method"] for r in rows]))}
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    rows.sort(key=lambda r: (datasets.index(r["dataset"]), r["seed"], r["forget_class"], order[r["method"]]))
    env = dict(envs[0])
    env["command"] = " ; ".join(e["command"] for e in envs)
    env["total_seconds"] = None  # runs may have overlapped or resumed: no meaningful total
    report = {"environment": env, "runs": envs, "rows": rows, "summary": _aggregate(rows)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write(out, rows, report)
    _plots(out, rows, {}, None)
    for d in dirs:
        tsne = Path(d) / "tsne_nhle.png"
        if tsne.is_file() and tsne.resolve() != (out / "tsne_nhle.png").resolve():
            shutil.copyfile(tsne, out / "tsne_nhle.png")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", default="digits", help="comma-separated dataset specs (digits, npz:PATH, mnist, …)")
    p.add_argument("--data-dir", default=None, help="folder of torchvision datasets")
    p.add_argument("--forget-classes", default="3", help="comma-separated class indices; each is one run")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (original model, sampling, method seeds)")
    p.add_argument("--methods", default=None, help="comma-separated registry methods (default: all)")
    p.add_argument("--arch", default="lenet")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="epochs of the original model and of retrain")
    p.add_argument(
        "--min-steps",
        type=int,
        default=None,
        help="at least this many optimiser steps for the original and retrain (default: TrainConfig's)",
    )
    p.add_argument("--forget-samples", type=int, default=32, help="forget samples per class for 'forget' methods")
    p.add_argument("--max-train", type=int, default=None, help="random subset of the training split (all methods)")
    p.add_argument("--max-test", type=int, default=None, help="random subset of the test split")
    p.add_argument("--probe-train-size", type=int, default=2000)
    p.add_argument("--mia-samples", type=int, default=1000, help="cap on each set of the membership attacks")
    p.add_argument("--relearn-steps", type=int, default=50, help="cap on relearn-time steps (censored beyond)")
    p.add_argument("--relearn-eval", type=int, default=200, help="forget test images checked per relearn step")
    p.add_argument("--tsne-points", type=int, default=800)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: BENCH_THREADS, else 1: fastest on a loaded machine)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.PARAM=VALUE",
        help="override a method parameter, e.g. --set ssd.alpha=50 (repeatable)",
    )
    p.add_argument("--out-dir", default=str(SCRATCH / "unlearning_table"))
    p.add_argument(
        "--cache-dir",
        default=str(SCRATCH / "unlearning_table" / "models"),
        help="the original models, cached by recipe",
    )
    p.add_argument(
        "--combine",
        nargs="+",
        metavar="RUN_DIR",
        default=None,
        help="merge the rows.json of earlier runs into --out-dir instead of running",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--depth",
        action="store_true",
        help="also the linear probe after every block (issue #15; one feature pass per block and model)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: digits, class 3, seed 0, 3 epochs, small attack sets"
    )
    args = p.parse_args(argv)
    args.argv = argv
    if args.combine:
        return combine(args.combine, args.out_dir)
    if args.quick:
        args.datasets, args.forget_classes, args.seeds = "digits", "3", "0"
        args.epochs, args.min_steps, args.probe_train_size, args.mia_samples = 3, 100, 500, 300
        args.relearn_steps, args.tsne_points = 20, 300
    args.datasets = _parse_list(args.datasets)
    args.forget_classes = [int(v) for v in _parse_list(args.forget_classes)]
    args.seeds = [int(v) for v in _parse_list(args.seeds)]
    default = [m for m in ("retrain", "nhle") if m in list_methods()]
    args.methods = (
        _parse_list(args.methods) if args.methods else default + [m for m in list_methods() if m not in default]
    )
    for m in args.methods:
        get_method(m)
    return run(args)


if __name__ == "__main__":
    main()
