"""How much the gold standard itself varies (issue #15): retrained models of one class under several seeds.

``benchmarks/forgetting_depth.py`` judges NHLE against one retrained model per (seed, class). Where a figure rests on ~85
test images and one training run, the retrained model's own seed-to-seed spread says how far a target such as
"probe ≤ retrain + 0.02" can be read. This script trains (or loads from forgetting_depth's cache: the same
recipe hash, so nothing is trained twice) the model retrained without ``--forget-class`` under each of
``--retrain-seeds`` and audits each one exactly as forgetting_depth does, beside the original of
``--original-seed`` (the relearn target and the retained-drop reference are the original's).

Example::

    python -m benchmarks.research.retrain_spread --preset cifar-resnet18 --forget-class 5 --retrain-seeds 0,1 \\
        --original cifar_resnet18.safetensors --probe-train-size 2000 --relearn-max-steps 20 --json out.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.forgetting_depth import PRESETS, adopt_original, measure, summarise, table
from benchmarks.harness import (
    add_model_cache_and_output_args,
    cached_train,
    data_digest,
    provenance,
    run_reporting_errors,
    use_threads,
    write_results,
)
from edge_unlearn.attacks import ForgettingAuditConfig, default_relearn_target
from edge_unlearn.data import load_dataset
from edge_unlearn.errors import UsageError
from edge_unlearn.metrics import evaluate_model
from edge_unlearn.models import UnlearnableClassifier
from edge_unlearn.training import TrainConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--forget-class", type=int, required=True)
    parser.add_argument("--retrain-seeds", default="0,1", help="comma-separated training seeds of the retrained models")
    parser.add_argument("--original-seed", type=int, default=0, help="the seed of the original they stand beside")
    parser.add_argument("--original", type=Path, help="as forgetting_depth's --original (adopted for --original-seed)")
    parser.add_argument("--probe-train-size", type=int, default=5000)
    parser.add_argument("--relearn-max-steps", type=int, default=50)
    parser.add_argument("--device", default="auto")
    add_model_cache_and_output_args(parser)
    return run_reporting_errors(run, parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    use_threads()
    try:
        seeds = [int(s) for s in args.retrain_seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--retrain-seeds must be comma-separated integers, not {args.retrain_seeds!r}") from None
    if not seeds:
        raise UsageError("--retrain-seeds names no seed; pass e.g. 0,1")
    preset = PRESETS[args.preset]
    t0 = time.perf_counter()
    data = load_dataset(preset.dataset)
    cls = args.forget_class
    if not 0 <= cls < data.num_classes:
        raise UsageError(f"--forget-class {cls} is out of range; {data.spec} has classes 0..{data.num_classes - 1}")
    digest, cache = data_digest(data), args.out_dir / "models"
    audit_config = ForgettingAuditConfig(
        probe_train_size=args.probe_train_size, relearn_max_steps=args.relearn_max_steps
    )

    def recipe(seed: int) -> TrainConfig:
        return TrainConfig(epochs=preset.epochs, min_steps=preset.min_steps, seed=seed, device=args.device)

    if args.original is not None:
        adopt_original(cache, args.original, preset.arch, data, digest, recipe(args.original_seed), None)
    original, original_s, original_key = cached_train(cache, preset.arch, data, digest, recipe(args.original_seed))
    target, source = default_relearn_target(original, data, [cls], original)
    original_retain = evaluate_model(original, data, [cls], probe=False).retain_acc
    rows: list[dict[str, Any]] = []

    def audit(
        name: str,
        model: UnlearnableClassifier,
        seconds: float | None,
        key: str,
        references: list[UnlearnableClassifier],
    ) -> None:
        m = measure(model, data, cls, original_retain, target, source, audit_config, references)
        m["figures"]["seconds"] = seconds
        rows.append({"model": name, "cache_key": key, **m})
        f = m["figures"]
        print(
            f"{name:18s} retain {f['retain_acc']:.3f} "
            + " ".join(f"{k[6:]} {v:.3f}" for k, v in f.items() if k.startswith("probe@"))
            + f" attack(lifted) {f['proto_attack_unmasked']:.3f} mia {f['mia_entropy']:.3f}",
            flush=True,
        )

    retrained = [cached_train(cache, preset.arch, data, digest, recipe(seed), (cls,)) for seed in seeds]  # train first
    # outputs compared as forgetting_depth compares them: with the first seed's retrained model, and each retrained
    # model with the others
    audit("original", original, original_s, original_key, [retrained[0][0]])
    for i, (seed, (model, seconds, key)) in enumerate(zip(seeds, retrained)):
        others = [m for j, (m, _, _) in enumerate(retrained) if j != i]
        audit(f"retrain[seed={seed}]", model, seconds, key, others)
    retrain_rows = [{**r, "model": "retrain (every seed)"} for r in rows if r["model"] != "original"]
    summary = summarise(rows + retrain_rows)
    text = table(
        summary,
        f"retrained-model spread: {preset.arch} on {data.spec}, class {cls}, "
        f"retrain seeds {', '.join(map(str, seeds))} (original: seed {args.original_seed})",
    )
    print(text)
    report = {
        "schema": "edge_unlearn.bench.retrain_spread",
        "version": 1,
        "preset": args.preset,
        "arch": preset.arch,
        "dataset": data.spec,
        "forget_class": cls,
        "original_seed": args.original_seed,
        "retrain_seeds": seeds,
        "recipe": {"epochs": preset.epochs, "min_steps": preset.min_steps},
        "audit_config": audit_config.to_json(),
        "rows": rows,
        "summary": summary,
        **provenance("benchmarks.research.retrain_spread", started=t0),
    }
    write_results(report, args.json, text, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
