"""The penultimate probe after NHLE on CIFAR-10 (issue #15): edits of a ResNet's last block tried against it.

On cifar_resnet18 (class 3) NHLE v3 leaves the linear probe at layer4 / penultimate where the original had it
(0.321; retrain 0.250). This script measures, side by side, edits of the last BasicBlock that could close the
gap, all from the forget samples and class statistics (one row per variant; ``oracle`` rows use retained
training data no user has, to bound what an edit could reach):

- ``nhle`` / ``nhle[target_scale=1.0]``: the method's feature step (a rank-one edit of the block's conv2).
- ``per-sample retarget``: a least-squares edit of conv2's centre tap (MEMIT-style, in closed form, four
  refinements through the ReLU) that sends *each* forget sample to the penultimate mean of the retained
  class the original ranks first for it, while preserving retained inputs in the metric of their second
  moment: from the recorded class means only (``means``) or from retained data (``oracle``).
- ``silence top-k units``: the k penultimate channels most specific to the forgotten class (forget samples'
  mean against the retained class means, over their spread) are made constant (their retained mean) in the
  skip path and the block output, as zeroed BatchNorm scales would.
- ``fine-tune last block``: the whole block trained 40 Adam steps on the forget samples' block inputs (BatchNorm
  frozen, head fixed) with the negative-hot loss through the original head (``nhle``) or against a logistic
  probe refitted on the current features every 10 steps (``adversarial``, "feature-indistinguishable" taken
  literally) or toward the anchors' prototype of the retained class the original ranks first for each sample
  (``prototype``), with retention anchors whose features must stay put: none; ``synthesised`` — block inputs
  optimised from the class means to match the block's BatchNorm statistics and the head's verdict
  (BatchNorm-statistics inversion: no retained data); ``oracle`` — retained training images outside the
  probe's draw. ``--finetune-samples 128,all`` adds the synthesised-anchor rows (both objectives) fine-tuned on
  more of the class's training images (``all``: every one), to tell whether a few samples are the limit.
``--rows`` runs some of these groups only (``nhle``, ``per-sample``, ``silence``, ``finetune``, ``directions``;
the original's and the retrained model's rows always).
- ``remove k directions (diagnostic)``: the span of the forget mean minus each retained class mean,
  projected out of the penultimate features of every image (no edit of the network does exactly this).

The per-class means these variants use at the block's input and output (what training-time statistics
would record there) are taken from the probe's training draw. The block's output is recomputed from cached
activations (its input and conv2's input), so a variant costs a probe fit, not a forward pass; rows from :func:`edge_unlearn.unlearn.forget` are checked to have changed
nothing before that block. Every row: retained accuracy (mask set), forget accuracy with the mask lifted, the
probe's accuracy on the forgotten class's test images with its 95 % Wilson interval (the noise of ~85 images)
and the prototype attack with the mask lifted. ``--retrained`` adds the gold standard, computed end to end.

Example::

    python -m benchmarks.research.probe_gap --checkpoint ck.safetensors --retrained retrain.safetensors \\
        --dataset npz:../shared/data/cifar10.npz --forget-class 3
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.harness import provenance, run_reporting_errors, use_threads, wilson, write_results
from benchmarks.research.anchored import finetune_block, last_residual_block, pooled_block, synthesize_block_inputs
from edge_unlearn.attacks import prototype_attack_on_features
from edge_unlearn.checkpoint import load_checkpoint
from edge_unlearn.data import load_dataset, preprocess, sample_indices, take_samples
from edge_unlearn.errors import UsageError
from edge_unlearn.metrics import fit_linear_probe, model_outputs, probe_train_indices, tensor_accuracy
from edge_unlearn.models import UnlearnableClassifier
from edge_unlearn.unlearn import ForgetSet, forget, method_config

ROW_GROUPS = ("nhle", "per-sample", "silence", "finetune", "directions")
Activations = tuple[torch.Tensor, torch.Tensor]  # (block input = skip path [N, C, H, W], conv2 input [N, C, H, W])


def last_basic_block(model: UnlearnableClassifier) -> nn.Module:
    """The backbone's last block (NHLE's :func:`last_residual_block`), which must also be a torchvision
    BasicBlock with an identity shortcut (what :func:`block_output` recomputes), or a clear error."""
    message = (
        "probe_gap needs a torchvision ResNet whose layer4 ends in a BasicBlock (cifar_resnet18, resnet18, resnet34)"
    )
    try:
        block = last_residual_block(model.backbone)
    except UsageError:
        raise UsageError(message) from None
    if (
        not all(hasattr(block, n) for n in ("bn1", "conv2", "bn2"))
        or getattr(block, "downsample", None) is not None
        or hasattr(block, "conv3")
    ):
        raise UsageError(message)
    return block


@torch.no_grad()
def block_activations(
    model: UnlearnableClassifier, block: nn.Module, images: torch.Tensor, normalization
) -> Activations:
    """The last block's input and its conv2's input for ``images`` (uint8), batch by batch."""
    skips, convs = [], []
    h1 = block.register_forward_pre_hook(lambda _m, a: skips.append(a[0].clone()))
    h2 = block.conv2.register_forward_pre_hook(lambda _m, a: convs.append(a[0].clone()))
    try:
        for start in range(0, len(images), 256):
            model.backbone(preprocess(images[start : start + 256], normalization))
    finally:
        h1.remove()
        h2.remove()
    return torch.cat(skips), torch.cat(convs)


def batchnorm(x: torch.Tensor, bn: nn.BatchNorm2d, mean: torch.Tensor | None = None) -> torch.Tensor:
    """``bn`` in eval mode, with its running mean replaced where given."""
    return F.batch_norm(
        x, bn.running_mean if mean is None else mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
    )


@torch.no_grad()
def block_output(
    block: nn.Module,
    act: Activations,
    conv2_weight: torch.Tensor | None = None,
    bn2_mean: torch.Tensor | None = None,
    recompute_conv1: bool = False,
) -> torch.Tensor:
    """Penultimate features: avgpool(relu(bn2(conv2(a)) + skip)), with conv2's weight / bn2's running mean
    replaced where given (``recompute_conv1``: a from the skip, for edits of the skip path)."""
    skip, a = act
    if recompute_conv1:
        a = torch.relu(batchnorm(F.conv2d(skip, block.conv1.weight, padding=1), block.bn1))
    z = F.conv2d(a, block.conv2.weight if conv2_weight is None else conv2_weight, padding=1)
    return torch.relu(batchnorm(z, block.bn2, mean=bn2_mean) + skip).mean((2, 3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the original model (edge-unlearn checkpoint)")
    parser.add_argument("--retrained", type=Path, help="the retrained gold standard, for its row")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--forget-class", type=int, required=True)
    parser.add_argument("--samples", type=int, default=32, help="forget samples (NHLE's CLI default)")
    parser.add_argument("--probe-train-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--finetune-samples",
        default="",
        help="comma-separated forget-sample counts (or 'all') for extra fine-tuning rows with "
        "synthesised anchors, e.g. 128,all",
    )
    parser.add_argument(
        "--oracle-anchors",
        type=int,
        default=256,
        help="retained training images (outside the probe's draw) for the oracle fine-tuning rows",
    )
    parser.add_argument(
        "--rows",
        default=",".join(ROW_GROUPS),
        help=f"comma-separated groups of rows to run (default: all of {', '.join(ROW_GROUPS)})",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    return run_reporting_errors(run, parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    use_threads(default=1)
    t0 = time.perf_counter()
    data = load_dataset(args.dataset)
    original = load_checkpoint(args.checkpoint).model.eval()
    block = last_basic_block(original)
    cls, keep = args.forget_class, [c for c in range(data.num_classes) if c != args.forget_class]
    if not original.has_class_stats:
        raise UsageError("the checkpoint has no class statistics (train or import it with data)")
    x_forget, y_forget = take_samples(data, [cls], args.samples, seed=args.seed)
    available = int((data.y_train == cls).sum())
    extra_counts = [available if c.strip() == "all" else int(c) for c in args.finetune_samples.split(",") if c.strip()]
    groups = {g.strip() for g in args.rows.split(",") if g.strip()}
    if not groups or groups - set(ROW_GROUPS):
        raise UsageError(f"--rows: choose among {', '.join(ROW_GROUPS)}, got {args.rows!r}")
    if any(not 1 <= c <= available for c in extra_counts):
        raise UsageError(
            f"--finetune-samples: class {cls} has {available} training images; ask for 1..{available} or 'all'"
        )
    x_proto, y_proto = take_samples(data, [cls], 5, seed=args.seed)
    probe_idx = probe_train_indices(data, args.probe_train_size, args.seed)
    y_probe, y_test = data.y_train[probe_idx], data.y_test
    norm = data.normalization
    act = {
        "probe": block_activations(original, block, data.x_train[probe_idx], norm),
        "test": block_activations(original, block, data.x_test[torch.arange(len(y_test))], norm),
        "forget": block_activations(original, block, x_forget, norm),
        "proto": block_activations(original, block, x_proto, norm),
    }
    check = original.features(preprocess(data.x_test[:16], norm))
    if not torch.allclose(block_output(block, tuple(t[:16] for t in act["test"])), check, atol=1e-4):
        raise UsageError("the backbone's output is not the last block's pooled output (a layer after layer4?)")
    forget_set = ForgetSet(preprocess(x_forget, norm), y_forget, (cls,))
    head_only = forget(original, forget_set, method="nhle", config=method_config("nhle", {"project": False})).model
    head = (head_only.head.weight.detach(), head_only.head.bias.detach(), head_only.class_mask)

    rows: list[dict[str, Any]] = []

    def measure(name: str, features: Callable[[str], torch.Tensor], head_params=head, oracle: bool = False) -> None:
        weight, bias, mask = head_params
        train_f, test_f = features("probe"), features("test")
        probe = fit_linear_probe(train_f.numpy(), y_probe.numpy(), args.seed)
        in_class = y_test == cls
        hits = int((torch.as_tensor(probe.predict(test_f[in_class].numpy())) == cls).sum())
        logits = test_f @ weight.T + bias
        masked = logits.masked_fill(~mask, float("-inf")).argmax(1)
        attack = prototype_attack_on_features(
            test_f, y_test, features("proto"), y_proto, weight, bias, mask, [cls], lift_mask=True
        )
        low, high = wilson(hits, int(in_class.sum()))
        row = {
            "variant": name,
            "oracle": oracle,
            "retain_acc": tensor_accuracy(masked, y_test, keep),
            "forget_acc_unmasked": tensor_accuracy(logits.argmax(1), y_test, [cls]),
            "probe_penultimate": hits / int(in_class.sum()),
            "probe_ci95": [low, high],
            "proto_attack_unmasked": attack.forget_acc,
        }
        rows.append(row)
        print(
            f"{name:44s} retain {row['retain_acc']:.3f} unmasked {row['forget_acc_unmasked']:.3f} "
            f"probe {row['probe_penultimate']:.3f} [{low:.2f}, {high:.2f}] attack {attack.forget_acc:.3f}",
            flush=True,
        )

    measure("nhle[project=False]: the original's features", lambda s: block_output(block, act[s]))
    if args.retrained is not None:
        gold = load_checkpoint(args.retrained).model.eval()
        gold_feats = {
            "probe": model_outputs(gold, data.x_train, data, indices=probe_idx)[0],
            "test": model_outputs(gold, data.x_test, data)[0],
            "proto": model_outputs(gold, x_proto, data)[0],
        }
        measure(
            "retrain", gold_feats.__getitem__, (gold.head.weight.detach(), gold.head.bias.detach(), gold.class_mask)
        )

    for overrides in ({}, {"target_scale": 1.0}) if "nhle" in groups else ():
        edited = forget(original, forget_set, method="nhle", config=method_config("nhle", overrides)).model
        edited_block = last_basic_block(edited)
        before = {n: p for n, p in original.backbone.state_dict().items()}
        changed = sorted(n for n, p in edited.backbone.state_dict().items() if not torch.equal(p, before[n]))
        expected = {n for n in before if n.startswith("layer4.") and n.endswith(("conv2.weight", "bn2.running_mean"))}
        if not set(changed) <= expected:
            raise UsageError(f"NHLE changed {changed}: this script simulates edits of the last conv2 / bn2 only")
        w2, m2 = edited_block.conv2.weight.detach(), edited_block.bn2.running_mean.detach()
        name = "nhle" + ("" if not overrides else "[" + ",".join(f"{k}={v}" for k, v in overrides.items()) + "]")
        measure(
            name,
            lambda s, w2=w2, m2=m2: block_output(block, act[s], w2, m2),
            (edited.head.weight.detach(), edited.head.bias.detach(), edited.class_mask),
        )

    # per-sample retarget of conv2's centre tap (closed-form least squares, refined through the ReLU)
    base = {s: block_output(block, act[s]) for s in act}
    class_pen = torch.stack([base["probe"][y_probe == c].mean(0) for c in range(data.num_classes)])
    forget_logits = base["forget"] @ original.head.weight.detach().T + original.head.bias.detach()
    own = torch.tensor(keep)[forget_logits[:, keep].argmax(1)]
    keys = act["forget"][1].mean((2, 3))  # pooled conv2 input of each forget sample [n, D]
    gain = block.bn2.weight.detach() / torch.sqrt(block.bn2.running_var + block.bn2.eps)
    stats = original.class_stats.float()
    counts = original.class_stats_count.float()
    means_moment = sum(counts[c] * torch.outer(stats[c], stats[c]) for c in keep) / counts[keep].sum()
    means_moment = means_moment + 1e-2 * torch.trace(means_moment) / len(means_moment) * torch.eye(len(means_moment))
    retained_keys = act["probe"][1].mean((2, 3))[y_probe != cls]
    oracle_moment = retained_keys.T @ retained_keys / len(retained_keys)
    for moment_name, moment in (("means", means_moment), ("oracle", oracle_moment)) if "per-sample" in groups else ():
        for ridge in (10.0, 100.0):
            weight = block.conv2.weight.detach().clone()
            target = class_pen[own]
            for _ in range(4):
                residual = (target - block_output(block, act["forget"], weight)) / gain
                delta = torch.linalg.solve(ridge * len(keys) * moment + keys.T @ keys, (residual.T @ keys).T).T
                weight[:, :, 1, 1] += delta
            measure(
                f"per-sample retarget ({moment_name}, ridge {ridge:g})",
                lambda s, w=weight: block_output(block, act[s], w),
                oracle=moment_name == "oracle",
            )

    # silence the units most specific to the forgotten class
    skip_class = torch.stack([act["probe"][0][y_probe == c].mean((0, 2, 3)) for c in range(data.num_classes)])
    skip_retained, pen_retained = skip_class[keep].mean(0), class_pen[keep].mean(0)
    score = (base["forget"].mean(0) - pen_retained) / (class_pen[keep].std(0) + base["forget"].std(0) + 1e-6)
    order = score.argsort(descending=True)
    for k in (16, 64, 128) if "silence" in groups else ():
        units = order[:k]

        def silenced(s: str, units=units) -> torch.Tensor:
            skip = act[s][0].clone()
            skip[:, units] = skip_retained[units][None, :, None, None]
            out = block_output(block, (skip, act[s][1]), recompute_conv1=True)
            out[:, units] = pen_retained[units]
            return out

        measure(f"silence top-{k} units", silenced)

    # fine-tune the whole last block on the forget samples (BatchNorm frozen, head fixed), with retention anchors
    synthesis_seconds = None
    if "finetune" in groups:
        others = torch.ones(len(data.y_train), dtype=torch.bool)
        others[probe_idx] = False
        others &= data.y_train != cls
        oracle_idx = torch.nonzero(others).flatten()[: args.oracle_anchors]
        started = time.perf_counter()
        synthesised = synthesize_block_inputs(
            block,
            original.head.weight.detach(),
            original.head.bias.detach(),
            skip_class,
            keep,
            tuple(act["forget"][0].shape[2:]),
            seed=args.seed,
        )
        synthesis_seconds = time.perf_counter() - started
        print(f"synthesised {len(synthesised[0])} retention anchors in {synthesis_seconds:.0f} s", flush=True)
        anchor_sets = {
            "synthesised": synthesised,
            "oracle": (block_activations(original, block, data.x_train[oracle_idx], norm)[0], data.y_train[oracle_idx]),
        }
        for objective, anchor_name in (
            ("nhle", None),
            ("nhle", "synthesised"),
            ("nhle", "oracle"),
            ("adversarial", "synthesised"),
            ("adversarial", "oracle"),
            ("prototype", "synthesised"),
            ("prototype", "oracle"),
        ):
            anchors, anchor_labels = anchor_sets[anchor_name] if anchor_name else (None, None)
            started = time.perf_counter()
            tuned = finetune_block(
                block,
                act["forget"][0],
                original.head.weight.detach(),
                original.head.bias.detach(),
                [cls],
                anchors,
                objective,
                anchor_labels=anchor_labels,
                seed=args.seed,
            )
            tuned_feats = {s: pooled_block(tuned, act[s][0]) for s in ("probe", "test", "proto")}
            label = f"fine-tune last block ({objective}), {anchor_name or 'no'} anchors"
            if anchor_name:
                label += f" ({len(anchors)})"
            measure(
                f"{label}, {time.perf_counter() - started:.0f} s",
                tuned_feats.__getitem__,
                oracle=anchor_name == "oracle",
            )
        # the same with more forget samples (the first n of the same seeded draw): are a few samples the limit?
        if extra_counts:
            extra_idx = sample_indices(data, [cls], max(extra_counts), seed=args.seed)
            first = min(args.samples, len(extra_idx))  # sample_indices draws prefixes of one seeded permutation
            assert torch.equal(extra_idx[:first], sample_indices(data, [cls], args.samples, seed=args.seed)[:first])
            extra_inputs = block_activations(original, block, data.x_train[extra_idx], norm)[0]
            for objective in ("nhle", "adversarial"):
                for n in extra_counts:
                    started = time.perf_counter()
                    tuned = finetune_block(
                        block,
                        extra_inputs[:n],
                        original.head.weight.detach(),
                        original.head.bias.detach(),
                        [cls],
                        synthesised[0],
                        objective,
                        anchor_labels=synthesised[1],
                        seed=args.seed,
                    )
                    tuned_feats = {s: pooled_block(tuned, act[s][0]) for s in ("probe", "test", "proto")}
                    measure(
                        f"fine-tune last block ({objective}), synthesised anchors ({len(synthesised[0])}), {n} forget "
                        f"samples, {time.perf_counter() - started:.0f} s",
                        tuned_feats.__getitem__,
                    )

    # diagnostic: directions removed from the penultimate features themselves
    diffs = torch.stack([base["forget"].mean(0) - class_pen[r] for r in keep], 1)
    basis, _ = torch.linalg.qr(diffs)
    for k in (1, 3) if "directions" in groups else ():
        proj = basis[:, :k] @ basis[:, :k].T
        measure(f"remove {k} direction(s) (diagnostic)", lambda s, p=proj: base[s] - base[s] @ p)

    header = (
        "| variant | retain_acc | forget unmasked | probe penultimate [95 % CI] | prototype attack, mask lifted |\n"
        "|---|---:|---:|---:|---:|"
    )
    lines = [
        f"### probe gap: {Path(str(args.checkpoint)).name} on {data.spec}, class {cls}, {args.samples} forget samples",
        "",
        header,
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['retain_acc']:.3f} | "
            f"{r['forget_acc_unmasked']:.3f} | {r['probe_penultimate']:.3f} "
            f"[{r['probe_ci95'][0]:.2f}, {r['probe_ci95'][1]:.2f}] | {r['proto_attack_unmasked']:.3f} |"
        )
    if synthesis_seconds is not None:
        lines += [
            "",
            f"Fine-tuning rows give the fine-tuning's seconds; synthesising the anchors took "
            f"{synthesis_seconds:.0f} s more.",
        ]
    text = "\n".join(lines)
    print(text)
    report = {
        "schema": "edge_unlearn.bench.probe_gap",
        "version": 2,
        "dataset": data.spec,
        "forget_class": cls,
        "samples": args.samples,
        "finetune_samples": extra_counts,
        "row_groups": sorted(groups),
        "probe_train_size": args.probe_train_size,
        "seed": args.seed,
        "rows": rows,
        "anchor_synthesis_seconds": synthesis_seconds,
        **provenance("benchmarks.research.probe_gap", started=t0),
    }
    write_results(report, args.json, text, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
