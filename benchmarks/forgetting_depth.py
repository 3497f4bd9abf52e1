"""Forgetting at every depth (issue #15): original / retrain / NHLE default, every audit measure, classes × seeds.

For each seed the original model is trained once; for each forgotten class (single-class forgetting) the
retrained gold standard is trained without it and NHLE (default parameters, ``--samples`` forget images)
unlearns a copy of the original, and so does each ``--variants`` entry (NHLE parameter overrides, one
row each, named ``nhle[key=value,…]``). Every model gets :func:`edge_unlearn.metrics.evaluate_model` (forget
accuracy with and without the mask, retained accuracy) and :func:`edge_unlearn.attacks.forgetting_audit`
(linear probe after every block and at the penultimate features, prototype attack as deployed and with the
mask lifted, entropy MIA, relearn steps to 0.9 × the original's forget accuracy). Trained models are cached
under ``--out-dir`` (gitignored) keyed by a hash of the recipe (arch, dataset content, training config,
forgotten classes; :func:`benchmarks.harness.cached_train`), so a retrain that costs an hour on CPU runs once.
Writes ``forgetting_depth_<preset>.{json,md}`` (every row and the mean ± sample std over runs) into
``--results-dir`` (default ``benchmarks/results/forgetting_depth/``).

Examples::

    python -m benchmarks.forgetting_depth --quick                       # lenet + digits, minutes on 2 cores
    python -m benchmarks.forgetting_depth --preset lenet-digits         # the demo, 3 classes × 2 seeds
    python -m benchmarks.forgetting_depth --preset lenet-mnist          # 3 classes × 2 seeds
    python -m benchmarks.forgetting_depth --preset resnet18-fashion
    python -m benchmarks.forgetting_depth --quick --variants '[{"target_scale": 0.5}]'
    nohup python -m benchmarks.forgetting_depth --preset cifar-resnet18 > bench_out/cifar.log 2>&1 &   # hours on CPU
    python -m benchmarks.forgetting_depth --combine part_c3/….json part_c5/….json   # one experiment run in parts
Longer than 500 lines because the experiment, its combination of parts and its acceptance checks write one results format.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import (
    SCRATCH,
    SHARED_DATA,
    cache_key,
    cached_train,
    data_digest,
    provenance,
    recipe_json,
    results_dir,
    use_threads,
)
from benchmarks.harness import (
    write_results as write_files,
)
from edge_unlearn.attacks import ForgettingAuditConfig, default_relearn_target, forgetting_audit
from edge_unlearn.checkpoint import load_checkpoint, save_checkpoint
from edge_unlearn.core.figures import retain_drop
from edge_unlearn.data import Dataset, load_dataset, preprocess, take_samples
from edge_unlearn.metrics import evaluate_model
from edge_unlearn.models import UnlearnableClassifier
from edge_unlearn.training import TrainConfig
from edge_unlearn.unlearn import ForgetSet, forget, method_config


def variant_name(overrides: dict[str, Any]) -> str:
    """Row name of an NHLE variant: ``nhle`` for the defaults, else ``nhle[key=value,…]``."""
    return "nhle" if not overrides else "nhle[" + ",".join(f"{k}={v}" for k, v in sorted(overrides.items())) + "]"


def parse_variants(text: str | None) -> list[dict[str, Any]]:
    """``--variants``: a JSON list of NHLE parameter overrides (each checked now, not after an hour of training)."""
    if not text:
        return []
    try:
        variants = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--variants is not JSON ({exc}); pass a list like '[{{\"target_scale\": 0.5}}]'") from None
    if not isinstance(variants, list) or not all(isinstance(v, dict) and v for v in variants):
        raise SystemExit("--variants must be a JSON list of non-empty objects of NHLE parameters")
    for v in variants:
        method_config("nhle", v)
    return variants


@dataclass(frozen=True)
class Preset:
    """One benchmark setting (``--arch`` / ``--dataset`` / ``--classes`` / ``--seeds`` override it)."""

    arch: str
    dataset: str
    classes: tuple[int, ...]
    seeds: tuple[int, ...]
    epochs: int = 3  # the default recipe (TrainConfig)
    min_steps: int = 500


PRESETS = {
    # quick: the test fixture's short recipe (1 epoch, 150 steps), so it runs in minutes on 2 shared cores
    "quick": Preset("lenet", "digits", (3, 5), (0, 1), epochs=1, min_steps=150),
    # the demo's setting with the default recipe (the quick preset's models are trained 1/3 as long)
    "lenet-digits": Preset("lenet", "digits", (3, 5, 7), (0, 1)),
    "lenet-mnist": Preset("lenet", f"npz:{SHARED_DATA / 'mnist.npz'}", (0, 3, 7), (0, 1)),
    "resnet18-fashion": Preset("resnet18", f"npz:{SHARED_DATA / 'fashion_mnist.npz'}", (0, 3, 7), (0, 1)),
    "cifar-resnet18": Preset("cifar_resnet18", f"npz:{SHARED_DATA / 'cifar10.npz'}", (3, 5), (0, 1)),
}


def adopt_original(
    cache: Path, checkpoint: Path, arch: str, data: Dataset, digest: str, recipe: TrainConfig, seconds: float | None
) -> str:
    """Put a model trained elsewhere (``edge-unlearn train``, e.g. a long CIFAR run resumed over sessions) into the
    cache as this seed's original: refused unless it records the same architecture, the same data and exactly the
    recipe :func:`cached_train` would run (resolved as training resolves it). Returns the cache key."""
    loaded = load_checkpoint(checkpoint)
    meta = loaded.meta
    want = {k: v for k, v in recipe.resolved(data.input_shape).to_json().items() if k != "device"}
    have = {k: v for k, v in (meta.train_recipe or {}).items() if k != "device"}
    problems = []
    if meta.arch != arch:
        problems.append(f"arch {meta.arch} vs {arch}")
    if have != want:
        problems.append(f"recipe {have} vs {want}")
    if (meta.num_classes, tuple(meta.input_shape)) != (data.num_classes, tuple(data.input_shape)):
        problems.append(
            f"classes/input {meta.num_classes}/{tuple(meta.input_shape)} vs "
            f"{data.num_classes}/{tuple(data.input_shape)}"
        )
    if problems:
        raise SystemExit(f"--original {checkpoint} is not this preset's original: " + "; ".join(problems))
    key = cache_key(arch, digest, recipe)
    cache.mkdir(parents=True, exist_ok=True)
    save_checkpoint(cache / f"{arch}_{key}.safetensors", loaded.model, meta)
    (cache / f"{arch}_{key}.json").write_text(
        json.dumps(
            {
                "seconds": seconds,
                "arch": arch,
                "recipe": recipe_json(recipe),
                "forget": [],
                "adopted_from": str(checkpoint),
            }
        )
    )
    return key


def measure(
    model: UnlearnableClassifier,
    data: Dataset,
    cls: int,
    original_retain: float | None,
    target: float,
    source: str,
    audit_config: ForgettingAuditConfig,
    references: list[UnlearnableClassifier],
) -> dict[str, Any]:
    """Every figure of one model for one forgotten class; its outputs compared with ``references`` (retrained)."""
    report = evaluate_model(model, data, [cls], probe=False)
    audit = forgetting_audit(
        model,
        data,
        [cls],
        relearn_target=target,
        relearn_target_source=source,
        config=audit_config,
        references=references,
    )
    row = {
        "forget_acc": report.forget_acc,
        "forget_acc_unmasked": report.forget_acc_unmasked,
        "retain_acc": report.retain_acc,
        "retain_drop": retain_drop(original_retain, report.retain_acc) if original_retain is not None else 0.0,
    }
    row.update(audit.figures())
    return {"figures": row, "audit": audit.to_json()}


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {measure: {"mean", "std", "n"}}}: sample std (ddof=1) over runs, 0 for a single run."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        figs = [r["figures"] for r in rows if r["model"] == model]
        names = list(dict.fromkeys(k for f in figs for k in f))
        out[model] = {}
        for name in names:
            vals = np.array([f[name] for f in figs if f.get(name) is not None], dtype=float)
            out[model][name] = {
                "mean": float(vals.mean()) if len(vals) else float("nan"),
                "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                "n": int(len(vals)),
            }
    return out


def table(summary: dict[str, dict[str, dict[str, float]]], title: str) -> str:
    models = list(summary)
    names = list(dict.fromkeys(k for m in models for k in summary[m]))
    lines = [
        f"### {title}",
        "",
        "| measure | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
        "| runs | " + " | ".join(str(max((s["n"] for s in summary[m].values()), default=0)) for m in models) + " |",
    ]
    for name in names:
        cells = []
        for model in models:
            s = summary[model].get(name)
            cells.append(
                "—"
                if s is None or s["n"] == 0
                else (f"{s['mean']:.3g} ± {s['std']:.2g}" if name == "seconds" else f"{s['mean']:.3f} ± {s['std']:.3f}")
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument(
        "--quick", action="store_true", help="the quick preset: lenet on digits, short recipe, 2 classes × 2 seeds"
    )
    parser.add_argument("--arch", default=None)
    parser.add_argument("--dataset", default=None, help="dataset spec, e.g. npz:../shared/data/mnist.npz")
    parser.add_argument("--classes", default=None, help="comma-separated classes, each forgotten alone")
    parser.add_argument("--seeds", default=None, help="comma-separated training seeds")
    parser.add_argument("--epochs", type=int, default=None, help="training recipe: epochs (default: the preset's)")
    parser.add_argument(
        "--min-steps",
        type=int,
        default=None,
        help="training recipe: minimum optimiser steps (default: the preset's); a recipe other than "
        "the preset's is named in the results file (e.g. resnet18-fashion-3ep-0steps)",
    )
    parser.add_argument(
        "--retrain-seeds",
        default="0,1",
        help="comma-separated seeds of the retrained band (≥ 2: their spread and retrain-vs-retrain distances are "
        "the floor every figure is judged against); the retrain of the original's own seed is the reference",
    )
    parser.add_argument("--samples", type=int, default=32, help="NHLE forget samples per class (the CLI default)")
    parser.add_argument("--probe-train-size", type=int, default=5000)
    parser.add_argument("--relearn-max-steps", type=int, default=50)
    parser.add_argument(
        "--variants",
        default=None,
        help="JSON list of NHLE parameter overrides, one extra row each (e.g. '[{\"target_scale\": 0.5}]')",
    )
    parser.add_argument("--device", default="auto", help="training/unlearning device (auto, cpu, cuda)")
    parser.add_argument(
        "--out-dir", type=Path, default=SCRATCH / "forgetting_depth", help="trained-model cache (gitignored)"
    )
    parser.add_argument(
        "--original",
        type=Path,
        default=None,
        help="a checkpoint trained by `edge-unlearn train` with the preset's recipe for the first "
        "seed: adopted as that seed's original (checked: arch, data shape, recipe)",
    )
    parser.add_argument(
        "--original-seconds",
        type=float,
        default=None,
        help="the training seconds of --original (its train --json-out 'seconds')",
    )
    parser.add_argument("--results-dir", type=Path, default=results_dir("forgetting_depth"))
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="no run: merge result files of one experiment run in parts (e.g. a class per process) "
        "into forgetting_depth_<preset>.{json,md} in --results-dir",
    )
    args = parser.parse_args(argv)
    if args.combine:
        try:
            write_results(combine(args.combine), args.results_dir)
        except CombineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    name = "quick" if args.quick else args.preset
    variants = parse_variants(args.variants)
    preset = PRESETS[name]
    preset = replace(
        preset,
        arch=args.arch or preset.arch,
        dataset=args.dataset or preset.dataset,
        classes=tuple(int(c) for c in args.classes.split(",")) if args.classes else preset.classes,
        seeds=tuple(int(s) for s in args.seeds.split(",")) if args.seeds else preset.seeds,
        epochs=preset.epochs if args.epochs is None else args.epochs,
        min_steps=preset.min_steps if args.min_steps is None else args.min_steps,
    )
    if (preset.epochs, preset.min_steps) != (PRESETS[name].epochs, PRESETS[name].min_steps):
        name = f"{name}-{preset.epochs}ep-{preset.min_steps}steps"
    retrain_seeds = tuple(int(s) for s in args.retrain_seeds.split(","))
    if len(retrain_seeds) < 2 or len(set(retrain_seeds)) != len(retrain_seeds):
        print("error: --retrain-seeds needs at least two different seeds (the retrained band)", file=sys.stderr)
        return 2
    use_threads()
    data = load_dataset(preset.dataset)
    digest = data_digest(data)
    cache = args.out_dir / "models"
    audit_config = ForgettingAuditConfig(
        probe_train_size=args.probe_train_size, relearn_max_steps=args.relearn_max_steps
    )
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for seed in preset.seeds:
        recipe = TrainConfig(epochs=preset.epochs, min_steps=preset.min_steps, seed=seed, device=args.device)
        if args.original is not None and seed == preset.seeds[0]:
            adopt_original(cache, args.original, preset.arch, data, digest, recipe, args.original_seconds)
        original, original_s, original_key = cached_train(cache, preset.arch, data, digest, recipe)
        # a model cached before depth (or head) statistics: record them as training does
        if original.head_input_stats() is None:
            original.record_depth_stats(
                data.x_train, data.y_train, transform=lambda images: preprocess(images, data.normalization)
            )
        print(
            f"seed {seed}: original {preset.arch} ({original_key}) "
            f"{'trained elsewhere' if original_s is None else f'{original_s:.1f} s'}",
            flush=True,
        )
        for cls in preset.classes:
            # the retrained band: the original's own seed first (the reference), then the others
            band_seeds = sorted(retrain_seeds, key=lambda s: s != seed)
            band = [cached_train(cache, preset.arch, data, digest, replace(recipe, seed=s), (cls,)) for s in band_seeds]
            x, y = take_samples(data, [cls], args.samples, seed=seed)
            forget_set = ForgetSet(preprocess(x, data.normalization), y, (cls,))
            if not rows:  # warm-up: the first call in a process pays one-off costs (lazy imports, allocator)
                forget(original, forget_set, method="nhle", device=args.device)
            unlearned = [
                (
                    variant_name(v),
                    forget(original, forget_set, method="nhle", device=args.device, config=method_config("nhle", v)),
                )
                for v in [{}, *variants]
            ]
            target, source = default_relearn_target(original, data, [cls], original)
            original_retain = evaluate_model(original, data, [cls], probe=False).retain_acc
            reference = band[0][0]
            others = [model for model, _, _ in band[1:]]
            for model_name, model, seconds, key, details, references in (
                ("original", original, original_s, original_key, None, [reference]),
                ("retrain", reference, band[0][1], band[0][2], {"seed": band_seeds[0]}, others),
                *(
                    ("retrain_other", m, s, k, {"seed": band_seeds[i + 1]}, [reference])
                    for i, (m, s, k) in enumerate(band[1:])
                ),
                *((n, r.model, r.seconds, None, r.details, [reference]) for n, r in unlearned),
            ):
                m = measure(model, data, cls, original_retain, target, source, audit_config, references)
                m["figures"]["seconds"] = seconds
                rows.append(
                    {
                        "seed": seed,
                        "forget_class": cls,
                        "model": model_name,
                        "cache_key": key,
                        "method_details": details,
                        **m,
                    }
                )
                f = m["figures"]
                print(
                    f"  class {cls} {model_name} forget {f['forget_acc']:.3f}/{f['forget_acc_unmasked']:.3f} "
                    f"retain {f['retain_acc']:.3f} probe "
                    + " ".join(f"{v:.3f}" for k, v in f.items() if k.startswith("probe@"))
                    + f" attack {f['proto_attack_masked']:.3f}/{f['proto_attack_unmasked']:.3f} "
                    f"mia {f['mia_entropy']:.3f} entropy {f['out_entropy']:.3f} tv {f.get('out_tv', float('nan')):.3f} "
                    f"auc {f.get('out_auc', float('nan')):.3f} relearn {f['relearn_steps']} "
                    f"({'trained elsewhere' if seconds is None else f'{seconds:.3g} s'})",
                    flush=True,
                )
    report = {
        "schema": "edge_unlearn.bench.forgetting_depth",
        "version": 1,
        "preset": name,
        "arch": preset.arch,
        "dataset": preset.dataset,
        "recipe": {"epochs": preset.epochs, "min_steps": preset.min_steps},
        "classes": list(preset.classes),
        "seeds": list(preset.seeds),
        "nhle_samples": args.samples,
        "retrain_seeds": list(retrain_seeds),
        "variants": variants,
        "audit_config": audit_config.to_json(),
        "rows": rows,
        "seconds": time.perf_counter() - t_start,
        **provenance("benchmarks.forgetting_depth", argv),
    }
    write_results(report, args.results_dir)
    return 0


#: What must agree for runs to be merged by ``--combine`` (one experiment, run in parts); the variants may
#: differ (each model's summary says over how many runs it is taken).
SAME_EXPERIMENT = ("preset", "arch", "dataset", "recipe", "nhle_samples", "retrain_seeds", "audit_config")


class CombineError(ValueError):
    """Parts that cannot be one experiment (``--combine``): one line, exit 2."""


def _same(key: str, value: Any) -> Any:
    """A report field as compared by :func:`combine` (an npz dataset by the file it resolves to)."""
    if key == "dataset" and isinstance(value, str) and value.startswith("npz:"):
        return str(Path(value.removeprefix("npz:")).resolve())
    return value


def combine(paths: list[Path]) -> dict[str, Any]:
    """One report from result files of the same experiment run in parts (e.g. one forgotten class per process,
    or a class measured in a later session): rows concatenated, classes and seeds united, one summary. A run
    (seed, class) present twice, or parts that differ in :data:`SAME_EXPERIMENT`, is a usage error."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    for path, part in zip(paths[1:], parts[1:]):
        differ = [k for k in SAME_EXPERIMENT if _same(k, part.get(k)) != _same(k, first.get(k))]
        if differ:
            raise CombineError(
                f"{path} is not the same experiment as {paths[0]} (differs in {', '.join(differ)}); "
                "combine parts of one preset, recipe, sample count and audit configuration"
            )
    runs = [(r["seed"], r["forget_class"], r["model"]) for p in parts for r in p["rows"]]
    if len(runs) != len(set(runs)):
        raise CombineError("a (seed, class, model) row appears in two parts; combine each run once")
    variants = [v for p in parts for v in p["variants"]]
    return {
        **{k: first[k] for k in ("schema", "version", *SAME_EXPERIMENT)},
        "variants": [v for i, v in enumerate(variants) if v not in variants[:i]],
        "classes": sorted({c for p in parts for c in p["classes"]}),
        "seeds": sorted({s for p in parts for s in p["seeds"]}),
        "rows": [r for p in parts for r in p["rows"]],
        "seconds": sum(p["seconds"] for p in parts),
        "command": [p["command"] for p in parts],
        "environment": [p["environment"] for p in parts],
        "combined_from": [str(p) for p in paths],
    }


#: relative margin on the retrained band's entropy, absolute margins on the other figures (issue #28)
ENTROPY_MARGIN, MIA_MARGIN, PROBE_MARGIN, TV_MARGIN, RETAIN_DROP_MAX, UNMASKED_MAX = 0.05, 0.05, 0.02, 0.05, 0.01, 0.02


def run_checks(rows: list[dict[str, Any]], model: str) -> dict[str, tuple[bool, float, str]]:
    """{check: (passed, value, bound)} for ``model`` in one run (seed, class), against that run's retrained band
    (the ``retrain`` and ``retrain_other`` rows: their spread, and their distances to each other as the floor)."""
    band = [r["figures"] for r in rows if r["model"] in ("retrain", "retrain_other")]
    f = next(r["figures"] for r in rows if r["model"] == model)
    lo, hi = (lambda k: min(b[k] for b in band)), (lambda k: max(b[k] for b in band))
    out: dict[str, tuple[bool, float, str]] = {
        "forget_acc = 0": (f["forget_acc"] == 0, f["forget_acc"], "0"),
        f"forget_acc_unmasked ≤ {UNMASKED_MAX}": (
            f["forget_acc_unmasked"] <= UNMASKED_MAX,
            f["forget_acc_unmasked"],
            str(UNMASKED_MAX),
        ),
        f"retain_drop ≤ {RETAIN_DROP_MAX}": (
            f["retain_drop"] <= RETAIN_DROP_MAX,
            f["retain_drop"],
            str(RETAIN_DROP_MAX),
        ),
    }
    for key in [k for k in f if k.startswith("probe@")]:
        bound = hi(key) + PROBE_MARGIN
        out[f"{key} ≤ band max + {PROBE_MARGIN}"] = (f[key] <= bound, f[key], f"{bound:.3f}")
    bound = hi("proto_attack_unmasked")
    out["proto_attack_unmasked ≤ band max"] = (
        f["proto_attack_unmasked"] <= bound,
        f["proto_attack_unmasked"],
        f"{bound:.3f}",
    )
    floor = float(np.mean([b["out_tv"] for b in band]))
    out[f"out_tv ≤ floor + {TV_MARGIN}"] = (f["out_tv"] <= floor + TV_MARGIN, f["out_tv"], f"{floor + TV_MARGIN:.3f}")
    mean = float(np.mean([b["out_entropy"] for b in band]))
    elo, ehi = lo("out_entropy") - ENTROPY_MARGIN * mean, hi("out_entropy") + ENTROPY_MARGIN * mean
    out["out_entropy in band ± 5 %"] = (elo <= f["out_entropy"] <= ehi, f["out_entropy"], f"[{elo:.3f}, {ehi:.3f}]")
    mlo, mhi = lo("mia_entropy") - MIA_MARGIN, hi("mia_entropy") + MIA_MARGIN
    out[f"mia_entropy in band ± {MIA_MARGIN}"] = (
        mlo <= f["mia_entropy"] <= mhi,
        f["mia_entropy"],
        f"[{mlo:.3f}, {mhi:.3f}]",
    )
    auc_floor = float(np.mean([b["out_auc"] for b in band]))
    out["out_auc (reported; floor = retrain vs retrain)"] = (True, f["out_auc"], f"floor {auc_floor:.3f}")
    if f.get("seconds") is not None and band[0].get("seconds"):
        bound = band[0]["seconds"] / 100
        out["seconds ≤ retrain / 100"] = (f["seconds"] <= bound, f["seconds"], f"{bound:.3g}")
    return out


def acceptance(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Issue #28's checks for every unlearned model (not original, not the band), per run and over runs."""
    runs = sorted({(r["seed"], r["forget_class"]) for r in rows})
    models = [m for m in dict.fromkeys(r["model"] for r in rows) if m not in ("original", "retrain", "retrain_other")]
    if not any(r["model"] == "retrain_other" for r in rows):
        return {}  # results from before the retrained band: no floor to judge against
    out: dict[str, dict[str, Any]] = {}
    for model in models:
        per_run = {
            f"seed {s} class {c}": run_checks([r for r in rows if (r["seed"], r["forget_class"]) == (s, c)], model)
            for s, c in runs
        }
        checks = list(dict.fromkeys(k for v in per_run.values() for k in v))
        out[model] = {
            check: {
                "passed": sum(v[check][0] for v in per_run.values() if check in v),
                "runs": sum(check in v for v in per_run.values()),
                "values": {run: [v[check][1], v[check][2]] for run, v in per_run.items() if check in v},
            }
            for check in checks
        }
    return out


def acceptance_table(verdicts: dict[str, dict[str, Any]]) -> str:
    """Markdown: per model and check, runs passed / runs, and each run's value against its bound."""
    lines = []
    for model, checks in verdicts.items():
        lines += [
            f"#### {model} against the retrained band (issue #28)",
            "",
            "| check | passed | value (bound) per run |",
            "|---|---:|---|",
        ]
        for check, v in checks.items():
            cells = "; ".join(
                f"{val:.3f} ({bound})" if isinstance(val, float) else f"{val} ({bound})"
                for val, bound in v["values"].values()
            )
            lines.append(f"| {check} | {v['passed']}/{v['runs']} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def write_results(report: dict[str, Any], folder: Path) -> None:
    """Summary (mean ± sample std over runs), table, ``forgetting_depth_<preset>.{json,md}`` in ``folder``."""
    report["summary"] = summarise(report["rows"])
    runs = {(r["seed"], r["forget_class"]) for r in report["rows"]}
    recipe = report["recipe"]
    title = (
        f"{report['arch']} on {Path(report['dataset'].removeprefix('npz:')).name}: classes {report['classes']} "
        f"× seeds {report['seeds']}, recipe {recipe['epochs']} epochs / ≥{recipe['min_steps']} steps "
        f"(mean ± sample std over {len(runs)} runs)"
    )
    report["acceptance"] = acceptance(report["rows"])
    text = table(report["summary"], title) + "\n\n" + acceptance_table(report["acceptance"])
    print(text)
    stem = folder / f"forgetting_depth_{report['preset']}"
    write_files(report, stem.with_suffix(".json"), text, stem.with_suffix(".md"))


if __name__ == "__main__":
    sys.exit(main())
