"""`edge-unlearn import`: an edge-unlearn checkpoint from a classifier trained elsewhere (thin: parse, call
:func:`edge_unlearn.byom.import_checkpoint`, print)."""

from __future__ import annotations

from typing import Any

import click

from ..errors import UsageError
from .common import Command, parse_key_values
from .options import OUTPUT, Output, OutputPath


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError as exc:
        raise UsageError(f"{option} takes numbers separated by commas, e.g. 0.485,0.456,0.406; got {text!r}") from exc
    if not values:
        raise UsageError(f"{option} needs at least one number")
    return values


def _size(text: str | None, option: str) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts if p.strip()]
    except ValueError as exc:
        raise UsageError(f"{option} takes N or HxW (e.g. 224 or 224x224), got {text!r}") from exc
    if len(values) not in (1, 2) or min(values) < 1:
        raise UsageError(f"{option} takes N or HxW with positive numbers, got {text!r}")
    return (values[0], values[-1])


def _kwargs(items: tuple[str, ...], option: str = "--arch-arg") -> tuple[tuple[str, Any], ...]:
    return parse_key_values(items, option)


@click.command("import", cls=Command)
@click.option(
    "--arch",
    required=True,
    help="torchvision:NAME (e.g. torchvision:resnet50), timm:NAME (needs the timm extra) or a built-in "
    "name; `edge-unlearn models` lists them.",
)
@click.option(
    "--weights",
    required=True,
    type=click.Path(dir_okay=False),
    help="The trained weights: a state dict .pth/.pt (loaded with weights_only=True) or .safetensors; "
    "{'state_dict': …}/{'model': …} wrappers and module. prefixes are accepted.",
)
@click.option(
    "--num-classes", type=click.IntRange(min=1), default=None, help="Expected class count (checked against the head)."
)
@click.option(
    "--classes",
    "classes_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Text file with one class name per line, in output order.",
)
@click.option(
    "--dataset",
    default=None,
    help="Dataset the model classifies (class names, input size, and the "
    "default for forget/evaluate/bundle): digits, cifar10, npz:PATH, folder:PATH, …",
)
@click.option(
    "--image-size",
    default=None,
    help="The model's input size, N or HxW (default: the dataset's, 224 with --preset imagenet).",
)
@click.option(
    "--resize",
    default=None,
    help="Resize before the centre crop: N (shorter side) or HxW (default: "
    "straight to --image-size when the dataset's images differ; 256 for 224 with --preset imagenet).",
)
@click.option("--channels", type=click.Choice(["1", "3"]), default=None, help="Input channels (default 3).")
@click.option("--mean", default=None, help="Per-channel mean of the training normalisation, e.g. 0.4914,0.4822,0.4465.")
@click.option("--std", default=None, help="Per-channel std of the training normalisation.")
@click.option(
    "--preset",
    type=click.Choice(["imagenet", "dataset", "none"]),
    default=None,
    help="imagenet: resize 256, crop 224, ImageNet mean/std; dataset: mean/std of --dataset's images; "
    "none: pixels in [0, 1].",
)
@click.option(
    "--cifar-stem",
    is_flag=True,
    help="The training script replaced a ResNet's stem with a 3×3 stride-1 "
    "conv and removed the max-pool (the usual 32×32 recipe).",
)
@click.option(
    "--arch-arg",
    "arch_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="Constructor argument of the architecture (JSON value), recorded in the checkpoint, e.g. "
    "--arch-arg transform_input=true.",
)
@click.option(
    "--stats-from",
    default=None,
    help="Labelled dataset for the per-class statistics NHLE's feature step "
    "uses (without it NHLE uses a data-free estimate).",
)
@click.option(
    "--stats-samples",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Statistics samples: training images per class of --stats-from.",
)
@click.option(
    "--recipe",
    "recipe",
    multiple=True,
    metavar="KEY=VALUE",
    help="How the model was trained, for `retrain` to repeat on the retained classes (keys of "
    "edge-unlearn's recipe: epochs, min_steps, batch_size, lr, weight_decay, seed), e.g. --recipe epochs=30.",
)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder of torchvision datasets.")
@click.option("--download", is_flag=True, help="Download torchvision datasets (needs internet).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", required=True, type=OutputPath(), help="Checkpoint to write (.safetensors).")
@OUTPUT
def import_cmd(
    arch,
    weights,
    num_classes,
    classes_file,
    dataset,
    image_size,
    resize,
    channels,
    mean,
    std,
    preset,
    cifar_stem,
    arch_args,
    recipe,
    stats_from,
    stats_samples,
    data_dir,
    download,
    seed,
    output,
    out: Output,
):
    """Write an edge-unlearn checkpoint from a classifier trained elsewhere (bring your own model).

    The architecture is rebuilt from torchvision/timm/the registry, the weights load strictly, the head
    is split off (logits checked unchanged), and the preprocessing is recorded so forget, evaluate, bundle,
    quantize and bench prepare inputs exactly as the training did. Loading the checkpoint runs no code.
    """
    from ..byom import ImportRequest, import_checkpoint

    resize_size = _size(resize, "--resize")
    req = ImportRequest(
        arch=arch,
        weights=weights,
        output=output,
        num_classes=num_classes,
        classes_file=classes_file,
        dataset=dataset,
        image_size=_size(image_size, "--image-size"),
        resize=(resize_size[0] if resize and "x" not in resize.lower() and "," not in resize else resize_size),
        channels=int(channels) if channels else None,
        mean=_floats(mean, "--mean"),
        std=_floats(std, "--std"),
        preset=preset,
        arch_kwargs=_kwargs(arch_args),
        cifar_stem=cifar_stem,
        stats_from=stats_from,
        stats_samples=stats_samples,
        data_dir=data_dir,
        download=download,
        seed=seed,
        train_recipe=_kwargs(recipe, "--recipe"),
    )
    summary = import_checkpoint(req)
    out.emit(summary)
    if not (out.as_json or out.quiet):
        prep = summary["preprocessing"]
        click.echo(
            f"imported {summary['arch']} ({summary['num_classes']} classes, {summary['feature_dim']}-d features, "
            f"head {summary['head']}) -> {output}"
        )
        click.echo(
            f"  input {prep['channels']}×{prep['crop'][0]}×{prep['crop'][1]}, resize {prep['resize']}, "
            f"mean {prep['mean']}, std {prep['std']}"
        )
        click.echo(f"  class statistics: {summary['class_stats']}")
