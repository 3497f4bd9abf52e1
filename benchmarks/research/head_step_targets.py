"""Where should NHLE's head step send a forgotten class (issue #28)? Head-step targets compared at version 6's rule.

NHLE's head step (edge_unlearn/unlearn/nhle.py) edits only the head, so every target can be tried on the penultimate
features of one model: the original after the product's feature step (computed once per seed and class). Each
target is applied at version 6's rule — the largest scale <= ``--head-scale`` at which the forget samples' mean
entropy over the retained classes stays >= ``--head-entropy-ratio`` x the masked original's — and its outputs are
audited as ``benchmarks/forgetting_depth.py`` audits them (retained-logit probe, entropy, entropy MIA, TV to the
retrained reference, retained accuracy), against the same retrained band and margins:

- ``mixture``: the retained classes' recorded penultimate means mixed by the model's own answer (version 6);
- ``mixture_original``: mixed by the masked original's answer instead (before the feature step);
- ``nearest``: the nearest retained class's mean (version 4's opt-in);
- ``groups``: a rank-k edit, the forget samples grouped by their most likely retained class (groups of >= 2
  samples), each group's mean sent to its class's mean: confident per sample, spread over classes;
- ``sharpened``: version 6's mixture, its weights sharpened (w ~ p^(1/T)) until the entropy floor is reached
  where the scale cap stops version 6 short of it.

Example::

    python -m benchmarks.research.head_step_targets --preset lenet-digits --json out.json --md out.md
    python -m benchmarks.research.head_step_targets --preset resnet18-fashion --seeds 0 \\
        --out-dir ~/.cache/edge-unlearn/forgetting_depth --json out.json --md out.md
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.forgetting_depth import (
    ENTROPY_MARGIN,
    MIA_MARGIN,
    PRESETS,
    PROBE_MARGIN,
    RETAIN_DROP_MAX,
    TV_MARGIN,
)
from benchmarks.harness import (
    add_model_cache_and_output_args,
    cached_train,
    data_digest,
    provenance,
    run_reporting_errors,
    use_threads,
    write_results,
)
from edge_unlearn.attacks import mia_entropy_from_probs
from edge_unlearn.data import Dataset, load_dataset, preprocess, take_samples
from edge_unlearn.errors import UsageError
from edge_unlearn.metrics import linear_probe_accuracy, model_outputs, probe_test_indices, probe_train_indices
from edge_unlearn.models import UnlearnableClassifier
from edge_unlearn.output_audit import entropy_of, total_variation
from edge_unlearn.training import TrainConfig
from edge_unlearn.unlearn import ForgetSet, forget, method_config
from edge_unlearn.unlearn.nhle import NHLEConfig, largest_scale_above

TARGETS = ("mixture", "mixture_original", "nearest", "groups", "sharpened")
#: the audit's draws (forgetting_audit's defaults): probe training images, MIA images per set
PROBE_TRAIN_SIZE, MIA_SAMPLES = 5000, 5000


def image_sets(data: Dataset, cls: int) -> dict[str, tuple[Any, torch.Tensor]]:
    """The images each output figure reads, drawn as the forgetting audit draws them: (source, indices)."""
    gen = torch.Generator().manual_seed(0)  # mia_entropy's draw: members, non-members, targets in this order
    in_forget = data.y_train == cls
    forget_idx, retain_idx = torch.nonzero(in_forget).flatten(), torch.nonzero(~in_forget).flatten()
    members = retain_idx[torch.randperm(len(retain_idx), generator=gen)[:MIA_SAMPLES]]
    nonmembers = torch.randperm(len(data.y_test), generator=gen)[:MIA_SAMPLES]
    targets = forget_idx[torch.randperm(len(forget_idx), generator=gen)[:MIA_SAMPLES]]
    return {
        "probe_train": (data.x_train, probe_train_indices(data, PROBE_TRAIN_SIZE, 0)),
        "probe_test": (data.x_test, probe_test_indices(data, [cls], 0)),
        "forget_test": (data.x_test, torch.nonzero(data.y_test == cls).flatten()),
        "retain_test": (data.x_test, torch.nonzero(data.y_test != cls).flatten()),
        "members": (data.x_train, members),
        "nonmembers": (data.x_test, nonmembers),
        "targets": (data.x_train, targets),
    }


def penultimate(model: UnlearnableClassifier, data: Dataset, sets: dict[str, tuple[Any, torch.Tensor]]):
    """The model's penultimate features [N, D] on each image set."""
    return {name: model_outputs(model, images, data, indices=idx)[0].float() for name, (images, idx) in sets.items()}


@torch.no_grad()
def output_measures(
    head: nn.Module, feats: dict[str, torch.Tensor], data: Dataset, sets: dict, cls: int, reference: torch.Tensor | None
) -> tuple[dict[str, float], torch.Tensor]:
    """The audit's output figures of ``head`` on cached features, and the forget-test retained log-softmax."""
    cols = [c for c in range(data.num_classes) if c != cls]

    def logits(name: str) -> torch.Tensor:
        return head(feats[name]).double()[:, cols]

    probe = linear_probe_accuracy(
        logits("probe_train").numpy(),
        data.y_train[sets["probe_train"][1]].numpy(),
        logits("probe_test").numpy(),
        data.y_test[sets["probe_test"][1]].numpy(),
        [cls],
        seed=0,
    )
    log_p = torch.log_softmax(logits("forget_test"), 1)
    predicted = torch.tensor(cols)[logits("retain_test").argmax(1)]
    out = {
        "probe@retained_logits": probe,
        "out_entropy": float(entropy_of(log_p).mean()),
        "mia_entropy": mia_entropy_from_probs(
            *(torch.softmax(logits(k), 1) for k in ("members", "nonmembers", "targets"))
        ),
        "retain_acc": float((predicted == data.y_test[sets["retain_test"][1]]).double().mean()),
    }
    if reference is not None:
        out["out_tv"] = float(total_variation(log_p, reference).mean())
    return out, log_p


@torch.no_grad()
def retarget_points(head: nn.Linear, points: torch.Tensor, targets: torch.Tensor, retained: torch.Tensor) -> nn.Linear:
    """A copy of ``head`` edited (rank k) so that each of ``points`` [k, D] gets the logits of the matching row of
    ``targets`` while every row of ``retained`` [K, D] keeps its logits: :func:`~edge_unlearn.unlearn.nhle.
    retarget_layer` for k points at once (W~ += U Vᵀ, Vᵀ p~_j = e_j, Vᵀ r~ = 0, V of least norm)."""
    width = points.shape[1]
    ones = points.new_ones
    kept = torch.cat([retained, ones(len(retained), 1)], 1)
    moved = torch.cat([points, ones(len(points), 1)], 1)
    basis, r = torch.linalg.qr(kept.T)
    basis = basis[:, r.diagonal().abs() > 1e-6 * float(r.diagonal().abs().max())]
    orth = moved.T - basis @ (basis.T @ moved.T)  # [D+1, k]: each point's part the retained means do not span
    v = orth @ torch.linalg.pinv(moved @ orth).T
    u = head.weight.float() @ (targets - points).T  # [out, k]
    edited = copy.deepcopy(head)
    edited.weight += (u @ v[:width].T).to(edited.weight.dtype)
    edited.bias += (u @ v[width]).to(edited.bias.dtype)
    return edited


def mean_entropy(head: nn.Module, feats: torch.Tensor, keep: torch.Tensor) -> float:
    with torch.no_grad():
        return float(entropy_of(torch.log_softmax(head(feats).double()[:, keep], 1)).mean())


def head_targets(
    head: nn.Linear,
    head0: nn.Linear,
    forget_feats: torch.Tensor,
    forget_feats0: torch.Tensor,
    retained: torch.Tensor,
    keep: torch.Tensor,
    config: NHLEConfig,
) -> dict[str, dict[str, Any]]:
    """Each target's edited head and what was chosen: ``head``/``forget_feats`` after the feature step,
    ``head0``/``forget_feats0`` the original's (its masked answer gives the entropy floor)."""
    with torch.no_grad():
        answer = torch.softmax(head(forget_feats).float()[:, keep], 1)
        answer0 = torch.softmax(head0(forget_feats0).float()[:, keep], 1)
    floor = (config.head_entropy_ratio or 0.0) * mean_entropy(head0, forget_feats0, keep)
    mean = forget_feats.mean(0, keepdim=True)
    kept = torch.nonzero(keep).flatten()

    def at_rule(points: torch.Tensor, goal: torch.Tensor) -> tuple[nn.Linear, float]:
        def entropy_at(scale: float) -> float:
            return mean_entropy(retarget_points(head, points, scale * goal, retained), forget_feats, keep)

        scale = largest_scale_above(entropy_at, floor, 0.05, config.head_scale)
        return retarget_points(head, points, scale * goal, retained), scale

    out: dict[str, dict[str, Any]] = {}
    for name, weights in (("mixture", answer.mean(0)), ("mixture_original", answer0.mean(0))):
        edited, scale = at_rule(mean, (weights @ retained)[None])
        out[name] = {"head": edited, "scale": scale}
    nearest = int((retained - mean).norm(dim=1).argmin())
    edited, scale = at_rule(mean, retained[nearest][None])
    out["nearest"] = {"head": edited, "scale": scale, "classes": [int(kept[nearest])]}
    top = answer.argmax(1)
    counts = torch.bincount(top, minlength=len(kept))
    groups = [j for j in range(len(kept)) if counts[j] >= 2] or [int(counts.argmax())]
    member = torch.tensor([j if j in groups else groups[int(answer[i, groups].argmax())] for i, j in enumerate(top)])
    points = torch.stack([forget_feats[member == j].mean(0) for j in groups])
    edited, scale = at_rule(points, retained[groups])
    out["groups"] = {
        "head": edited,
        "scale": scale,
        "classes": [int(kept[j]) for j in groups],
        "sizes": [int((member == j).sum()) for j in groups],
    }
    # sharpened: version 6's scale; where it stops at the cap above the floor, sharpen the weights to reach it
    scale = out["mixture"]["scale"]
    sharpness = 1.0

    def sharpened(t: float) -> nn.Linear:
        weights = answer.mean(0) ** (1 / t)
        return retarget_points(head, mean, scale * ((weights / weights.sum()) @ retained)[None], retained)

    if scale >= config.head_scale and mean_entropy(out["mixture"]["head"], forget_feats, keep) > floor:
        lo, hi = 0.1, 1.0  # entropy grows with t: the largest t whose entropy is <= the floor
        if mean_entropy(sharpened(lo), forget_feats, keep) >= floor:
            sharpness = lo
        else:
            for _ in range(12):
                mid = (lo * hi) ** 0.5
                lo, hi = (mid, hi) if mean_entropy(sharpened(mid), forget_feats, keep) < floor else (lo, mid)
            sharpness = lo
    out["sharpened"] = {"head": sharpened(sharpness), "scale": scale, "temperature": round(sharpness, 4)}
    return out


def checks(
    figures: dict[str, float], band: list[dict[str, float]], floor_tv: float, masked_retain: float
) -> dict[str, bool]:
    """forgetting_depth's output checks (issue #28's margins) against one run's retrained band, and the retained
    accuracy against the masked original's (the deployed original: its argmax over the retained classes)."""
    entropies, mias = [b["out_entropy"] for b in band], [b["mia_entropy"] for b in band]
    margin = ENTROPY_MARGIN * float(np.mean(entropies))
    return {
        "retain_acc": masked_retain - figures["retain_acc"] <= RETAIN_DROP_MAX,
        "probe@retained_logits": figures["probe@retained_logits"]
        <= max(b["probe@retained_logits"] for b in band) + PROBE_MARGIN,
        "out_tv": figures["out_tv"] <= floor_tv + TV_MARGIN,
        "out_entropy": min(entropies) - margin <= figures["out_entropy"] <= max(entropies) + margin,
        "mia_entropy": min(mias) - MIA_MARGIN <= figures["mia_entropy"] <= max(mias) + MIA_MARGIN,
    }


def run(args: argparse.Namespace) -> int:
    use_threads()
    preset = PRESETS[args.preset]
    unknown = [t for t in args.targets.split(",") if t not in TARGETS]
    if unknown:
        raise UsageError(f"--targets: {', '.join(unknown)} unknown; choose among {', '.join(TARGETS)}")
    config = NHLEConfig(head_scale=args.head_scale, head_entropy_ratio=args.head_entropy_ratio)
    classes = [int(c) for c in args.classes.split(",")] if args.classes else list(preset.classes)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(preset.seeds)
    t0 = time.perf_counter()
    data = load_dataset(preset.dataset)
    bad = [c for c in classes if not 0 <= c < data.num_classes]
    if bad:
        raise UsageError(f"--classes {bad} out of range; {data.spec} has classes 0..{data.num_classes - 1}")
    digest, cache = data_digest(data), args.out_dir / "models"
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        recipe = TrainConfig(epochs=preset.epochs, min_steps=preset.min_steps, seed=seed, device="cpu")
        original = cached_train(cache, preset.arch, data, digest, recipe)[0]
        if original.head_input_stats() is None:  # cached before head statistics: record them as training does
            original.record_depth_stats(
                data.x_train, data.y_train, transform=lambda im: preprocess(im, data.normalization)
            )
        for cls in classes:
            sets = image_sets(data, cls)
            band_seeds = sorted((0, 1), key=lambda s: s != seed)  # the original's own seed first: the reference
            band_models = [
                cached_train(cache, preset.arch, data, digest, replace(recipe, seed=s), (cls,))[0] for s in band_seeds
            ]
            band, band_logp = [], []
            for model in band_models:
                figures, log_p = output_measures(model.head, penultimate(model, data, sets), data, sets, cls, None)
                band.append(figures)
                band_logp.append(log_p)
            floor_tv = float(total_variation(band_logp[0], band_logp[1]).mean())
            x, y = take_samples(data, [cls], args.samples, seed=seed)
            forget_set = ForgetSet(preprocess(x, data.normalization), y, (cls,))
            stepped = forget(
                original, forget_set, method="nhle", config=method_config("nhle", {"head_target": "none", "steps": 1})
            ).model  # the feature step (and one step on the forgotten rows, which no figure here reads)
            keep = torch.ones(data.num_classes, dtype=torch.bool)
            keep[cls] = False
            with torch.no_grad():
                forget_feats = stepped.features(forget_set.inputs).float().flatten(1)
                forget_feats0 = original.features(forget_set.inputs).float().flatten(1)
            feats = penultimate(stepped, data, sets)
            retained = original.head_input_stats()[keep].float()
            candidates = head_targets(stepped.head, original.head, forget_feats, forget_feats0, retained, keep, config)
            masked, _ = output_measures(original.head, penultimate(original, data, sets), data, sets, cls, band_logp[0])
            run_rows = [("masked original", masked, {})]
            for name in args.targets.split(","):
                chosen = {k: v for k, v in candidates[name].items() if k != "head"}
                figures, _ = output_measures(candidates[name]["head"], feats, data, sets, cls, band_logp[0])
                run_rows.append((name, figures, chosen))
            for name, figures, chosen in run_rows:
                passed = checks(figures, band, floor_tv, masked["retain_acc"])
                rows.append(
                    {
                        "seed": seed,
                        "forget_class": cls,
                        "target": name,
                        "chosen": chosen,
                        "figures": figures,
                        "checks": passed,
                    }
                )
                print(
                    f"seed {seed} class {cls} {name:16s} "
                    + " ".join(f"{k} {v:.3f}{'' if passed.get(k, True) else '✗'}" for k, v in figures.items())
                    + (f" {chosen}" if chosen else ""),
                    flush=True,
                )
            rows.append(
                {"seed": seed, "forget_class": cls, "target": "retrained band", "band": band, "floor_tv": floor_tv}
            )
    text = summary_table(
        rows,
        f"{preset.arch} on {data.spec}: head-step targets at version 6's rule "
        f"(ratio {config.head_entropy_ratio}, cap {config.head_scale}), classes {classes} × seeds {seeds}",
    )
    print(text)
    report = {
        "schema": "edge_unlearn.bench.head_step_targets",
        "version": 1,
        "preset": args.preset,
        "classes": classes,
        "seeds": seeds,
        "nhle": config.to_json(),
        "nhle_samples": args.samples,
        "rows": rows,
        **provenance("benchmarks.research.head_step_targets", started=t0),
    }
    write_results(report, args.json, text, args.md)
    return 0


def summary_table(rows: list[dict[str, Any]], title: str) -> str:
    """Per target: each check's mean figure and runs passed (retain_acc: within 0.01 of the masked original's)."""
    names = ("probe@retained_logits", "out_tv", "out_entropy", "mia_entropy", "retain_acc")
    lines = [
        f"### {title}",
        "",
        "| target | " + " | ".join(f"{n} (passed)" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for target in dict.fromkeys(r["target"] for r in rows if "checks" in r):
        mine = [r for r in rows if r["target"] == target]
        cells = [
            f"{np.mean([r['figures'][n] for r in mine]):.3f} ({sum(r['checks'][n] for r in mine)}/{len(mine)})"
            for n in names
        ]
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--classes", help="comma-separated classes, each forgotten alone (default: the preset's)")
    parser.add_argument("--seeds", help="comma-separated training seeds (default: the preset's); retrained band: 0, 1")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, among {', '.join(TARGETS)}")
    parser.add_argument("--samples", type=int, default=32, help="forget samples per class (the CLI default)")
    parser.add_argument("--head-scale", type=float, default=NHLEConfig.head_scale)
    parser.add_argument("--head-entropy-ratio", type=float, default=NHLEConfig.head_entropy_ratio)
    add_model_cache_and_output_args(parser)
    return run_reporting_errors(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
