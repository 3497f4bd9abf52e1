"""Oracle bound for the CIFAR probe gap (issue #15): retrain a ResNet's last stages from scratch on real retained data.

NHLE's edits and the opt-in backbone step change the last block from forget samples only, and leave the
penultimate probe on the forgotten class above the retrained model's. This script asks whether *any* change
confined to the last stages could close that gap: it re-initialises the stages from ``--from-stage`` through
``layer4`` (and the head) and trains them on every retained training image's input to that stage, as the
original computes it (cross-entropy over the retained classes; retained data no NHLE user has, hence an
oracle), then fits the same penultimate probe as ``benchmarks/probe_gap.py``. If the probe stays above the
retrained model's, the forgotten class is still readable from the frozen earlier layers.

Example::

    python -m benchmarks.research.stage_retrain_oracle --checkpoint cifar_resnet18.safetensors \\
        --dataset npz:../shared/data/cifar10.npz --forget-class 5 --from-stage layer3 --json out.json --md out.md
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.harness import provenance, run_reporting_errors, use_threads, wilson, write_results
from edge_unlearn.checkpoint import load_checkpoint
from edge_unlearn.data import load_dataset, preprocess
from edge_unlearn.errors import UsageError
from edge_unlearn.metrics import fit_linear_probe, probe_train_indices

STAGES = ("layer1", "layer2", "layer3", "layer4")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the original model (edge-unlearn checkpoint)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--forget-class", type=int, required=True)
    parser.add_argument(
        "--from-stage",
        choices=STAGES,
        default="layer4",
        help="the first stage re-initialised and retrained (every later one is too)",
    )
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--probe-train-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    return run_reporting_errors(run, parser.parse_args(argv))


@torch.no_grad()
def stage_inputs(model, stage: nn.Module, images: torch.Tensor, normalization) -> torch.Tensor:
    """The stage's input for ``images`` (uint8), batch by batch."""
    seen: list[torch.Tensor] = []
    handle = stage.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        for start in range(0, len(images), 256):
            model.backbone(preprocess(images[start : start + 256], normalization))
    finally:
        handle.remove()
    return torch.cat(seen)


def run(args: argparse.Namespace) -> int:
    use_threads(default=1)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    data = load_dataset(args.dataset)
    original = load_checkpoint(args.checkpoint).model.eval()
    stages = [getattr(original.backbone, name, None) for name in STAGES[STAGES.index(args.from_stage) :]]
    if not all(isinstance(s, nn.Sequential) for s in stages):
        raise UsageError("stage_retrain_oracle needs a torchvision-style ResNet (a backbone with layer1..layer4)")
    stage = stages[0]
    tail = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    retrained_part = args.from_stage if args.from_stage == "layer4" else f"{args.from_stage}–layer4"
    cls = args.forget_class
    train_in = stage_inputs(original, stage, data.x_train, data.normalization)
    test_in = stage_inputs(original, stage, data.x_test, data.normalization)
    with torch.no_grad():
        if not torch.allclose(
            tail(test_in[:16]), original.features(preprocess(data.x_test[:16], data.normalization)), atol=1e-4
        ):
            raise UsageError(
                f"the backbone's output is not the pooled output of {retrained_part} "
                "(a layer between or after the stages?)"
            )
    print(f"cached the stage's inputs: {tuple(train_in.shape)} in {time.perf_counter() - t0:.0f} s", flush=True)
    probe_idx = probe_train_indices(data, args.probe_train_size, args.seed)
    y_train, y_test = data.y_train, data.y_test
    rows: list[dict[str, Any]] = []

    @torch.no_grad()
    def measure(name: str, module: nn.Module, head: nn.Linear, seconds: float | None = None) -> None:
        module.eval()
        feats = {
            s: torch.cat([module(x[i : i + 512]) for i in range(0, len(x), 512)])
            for s, x in (("probe", train_in[probe_idx]), ("test", test_in))
        }
        logits = (feats["test"] @ head.weight.T + head.bias).index_fill(1, torch.tensor([cls]), float("-inf"))
        retain = float((logits.argmax(1) == y_test)[y_test != cls].float().mean())
        probe = fit_linear_probe(feats["probe"].numpy(), y_train[probe_idx].numpy(), args.seed)
        in_class = y_test == cls
        hits = int((torch.as_tensor(probe.predict(feats["test"][in_class].numpy())) == cls).sum())
        low, high = wilson(hits, int(in_class.sum()))
        rows.append(
            {
                "variant": name,
                "retain_acc": retain,
                "probe_penultimate": hits / int(in_class.sum()),
                "probe_ci95": [low, high],
                "train_seconds": seconds,
            }
        )
        print(
            f"{name:44s} retain {retain:.3f} probe {hits / int(in_class.sum()):.3f} [{low:.2f}, {high:.2f}]", flush=True
        )

    measure("original", tail, original.head)
    fresh = copy.deepcopy(tail)
    for m in fresh.modules():  # torchvision's ResNet initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
    head = nn.Linear(original.head.in_features, data.num_classes)
    retained = torch.nonzero(y_train != cls).flatten()
    batch = 128
    per_epoch = len(retained) // batch  # full batches only (BatchNorm in training mode)
    optimizer = torch.optim.AdamW([*fresh.parameters(), *head.parameters()], lr=args.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.epochs * per_epoch)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        fresh.train()
        order = retained[torch.randperm(len(retained))]
        for step in range(per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            logits = head(fresh(train_in[idx])).index_fill(1, torch.tensor([cls]), -1e4)
            loss = F.cross_entropy(logits, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        measure(
            f"{retrained_part} + head retrained, epoch {epoch + 1}/{args.epochs}",
            fresh,
            head,
            time.perf_counter() - started,
        )

    header = "| variant | retain_acc | probe penultimate [95 % CI] |\n|---|---:|---:|"
    lines = [
        f"### stage retrain oracle: {Path(str(args.checkpoint)).name} on {data.spec}, class {cls}, "
        f"{retrained_part} retrained",
        "",
        header,
    ]
    lines += [
        f"| {r['variant']} | {r['retain_acc']:.3f} | {r['probe_penultimate']:.3f} "
        f"[{r['probe_ci95'][0]:.2f}, {r['probe_ci95'][1]:.2f}] |"
        for r in rows
    ]
    text = "\n".join(lines)
    print(text)
    report = {
        "schema": "edge_unlearn.bench.stage_retrain_oracle",
        "version": 2,
        "dataset": data.spec,
        "forget_class": cls,
        "from_stage": args.from_stage,
        "epochs": args.epochs,
        "lr": args.lr,
        "probe_train_size": args.probe_train_size,
        "seed": args.seed,
        "rows": rows,
        **provenance("benchmarks.research.stage_retrain_oracle", started=t0),
    }
    write_results(report, args.json, text, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
