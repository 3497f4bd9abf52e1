"""A plain PyTorch training script that knows nothing of edge-unlearn (it never imports it): what a user has.

Trains a torchvision (or timm) classifier on an .npz (x_train uint8 N×H×W×C or N×C×H×W, y_train, ...) and
saves ``model.state_dict()`` to a .pth. Recipe: AdamW (lr 2e-3, weight decay 5e-4), one-cycle schedule,
batch 128, no augmentation, inputs scaled to [0, 1] and normalised with --mean/--std: the same recipe as
``edge-unlearn train``/``retrain`` so the retrain comparison is like for like.

    python benchmarks/plain_train.py --arch resnet18 --cifar-stem --data subset.npz --epochs 3 -o resnet18.pth
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torchvision
from torch import nn


def build(arch: str, num_classes: int, cifar_stem: bool) -> nn.Module:
    if arch.startswith("timm:"):
        import timm

        return timm.create_model(arch[5:], pretrained=False, num_classes=num_classes)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if cifar_stem:  # the usual 32×32 recipe: 3×3 stride-1 stem, no max-pool
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> None:
    """Recompute every BatchNorm's running statistics as a plain average over ``inputs`` with the weights frozen: a
    short training leaves them far behind the final weights (mobilenet_v3's BatchNorm momentum is 0.01), and the
    model then answers one class in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the pass
    model.train()
    with torch.no_grad():
        for i in range(0, len(inputs), batch_size):
            model(inputs[i : i + batch_size])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, help="torchvision model name, or timm:NAME")
    parser.add_argument("--data", required=True, help=".npz with x_train, y_train")
    parser.add_argument("--cifar-stem", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--mean", default="0.4914,0.4822,0.4465")
    parser.add_argument("--std", default="0.2470,0.2435,0.2616")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--wrap",
        choices=["none", "state_dict", "module"],
        default="none",
        help="save {'state_dict': …} or with DataParallel's module. prefixes (wrappers users have)",
    )
    parser.add_argument(
        "--recalibrate-bn",
        action="store_true",
        help="after training, recompute BatchNorm running statistics on the training images (short trainings)",
    )
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with np.load(args.data) as arrays:
        x, y = arrays["x_train"], arrays["y_train"].astype(np.int64)
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    mean = torch.tensor([float(v) for v in args.mean.split(",")]).view(1, -1, 1, 1)
    std = torch.tensor([float(v) for v in args.std.split(",")]).view(1, -1, 1, 1)
    inputs = (torch.from_numpy(np.ascontiguousarray(x)).float() / 255.0 - mean) / std
    labels = torch.from_numpy(y)
    model = build(args.arch, int(labels.max()) + 1, args.cifar_stem).train()
    steps = (len(inputs) + args.batch_size - 1) // args.batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(inputs), generator=gen)
        for i in range(steps):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            loss = loss_fn(model(inputs[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f}", flush=True)
    if args.recalibrate_bn:
        recalibrate_batchnorm(model, inputs, args.batch_size)
    state = model.state_dict()
    if args.wrap == "module":
        state = {f"module.{k}": v for k, v in state.items()}
    elif args.wrap == "state_dict":
        state = {"state_dict": state, "epoch": args.epochs}
    torch.save(state, args.output)
    assert "edge_unlearn" not in sys.modules  # this script is the user's own: no edge-unlearn involved
    print(f"trained {args.arch} in {time.perf_counter() - start:.1f} s -> {args.output}")


if __name__ == "__main__":
    main()
