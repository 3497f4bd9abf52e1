"""The `edge-unlearn` command line. Commands are thin: build a request, call a library function, print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import __version__, torch_runners  # noqa: F401  (registers the torch runners; imports no torch)
from .common import (
    DEVICES,
    EdgeUnlearnGroup,
    emit,
    output_options,
    parse_key_values,
    progress_enabled,
    say,
    workers_option,
)
from .evidence import keygen_cmd, sign_cmd
from .export import bundle_cmd, export_cmd, quantize_cmd, validate_cmd
from .importer import import_cmd
from .report import bench_cmd, report_cmd, verify_cmd
from .tensorrt import build_engine_cmd, doctor_cmd, inspect_engine_cmd

DATASET_HELP = (
    "digits (offline default), mnist, fashion_mnist, cifar10, cifar100, svhn (torchvision, from "
    "--data-dir), npz:PATH or folder:PATH"
)


def _parse_params(items: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    return parse_key_values(items, "--set")


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


@click.group(cls=EdgeUnlearnGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edge-unlearn")
def main() -> None:
    """Make an image classifier forget classes (NHLE + class weight masking), export it to ONNX/TensorRT,
    and prove on the target device that it stayed forgotten.

    Errors print one line and exit 2 (a missing extra names the `pip install 'edge-unlearn[...]'` to run); a
    failed validation exits 1. Every command takes --json (print the result as JSON on stdout), --json-out PATH
    (also write it to a file) and -q/--quiet.
    """


data_options = [
    click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Folder of torchvision datasets (default ./data).",
    ),
    click.option("--download", is_flag=True, help="Download torchvision datasets (needs internet)."),
]


#: training choices (the same as edge_unlearn.training's; kept here so the command line imports no torch)
AUGMENTS = ("auto", "none", "crop", "crop-flip")
SCHEDULES = ("onecycle", "cosine")
AMP_MODES = ("off", "bf16", "fp16")


def with_data_options(fn):
    for option in reversed(data_options):
        fn = option(fn)
    return workers_option(fn)


run_options = [
    click.option(
        "--save-every",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Write the training state (weights, optimiser, schedule, RNG, step) every N steps to "
        "OUTPUT.state.pt (0: never), to continue an interrupted training with --resume.",
    ),
    click.option(
        "--resume",
        type=click.Path(dir_okay=False),
        default=None,
        help="Continue from a training-state file written with --save-every (same recipe, arch and "
        "number of processes); the result equals an uninterrupted run.",
    ),
]


def with_run_options(fn):
    for option in reversed(run_options):
        fn = option(fn)
    return fn


def _train_run(save_every: int, resume: str | None, quiet: bool, as_json: bool):
    from ..data import default_workers
    from ..workflows import TrainRun

    progress = progress_enabled(quiet, as_json)
    log = None if quiet or as_json or progress else (lambda line: click.echo(line, err=True))  # a log: a line per 5 %
    return TrainRun(workers=default_workers(), save_every=save_every, resume=resume, progress=progress, log=log)


def _emit_main(summary: dict[str, Any], as_json: bool, json_out: str | None, quiet: bool, line: str) -> None:
    """Only the first process of a torchrun launch reports (the others' work is in the same checkpoint)."""
    if summary.get("rank", 0) == 0:
        emit(summary, as_json, json_out, quiet, line)


@main.command()
@click.option("--dataset", default="digits", show_default=True, help=DATASET_HELP)
@click.option("--arch", default="lenet", show_default=True, help="Model from the registry (see `edge-unlearn models`).")
@click.option("--epochs", type=int, default=None, help="Epochs (default 3, more if needed to reach --min-steps).")
@click.option("--min-steps", type=int, default=None, help="At least this many optimiser steps (default 500).")
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Global batch size (default 128; under torchrun split among the processes).",
)
@click.option("--lr", type=float, default=None, help="Peak learning rate of the AdamW schedule (default 2e-3).")
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default="onecycle",
    show_default=True,
    help="Learning-rate schedule: one-cycle, or cosine with a 5 % linear warm-up.",
)
@click.option(
    "--augment",
    type=click.Choice(AUGMENTS),
    default="auto",
    show_default=True,
    help="auto: random crop (4 px padding at 32 px, in proportion) + horizontal flip for colour "
    "images, none for grey ones (digits, fashion items); the checkpoint records the choice.",
)
@click.option("--label-smoothing", type=float, default=0.0, show_default=True, help="Label smoothing in [0, 1).")
@click.option(
    "--amp",
    type=click.Choice(AMP_MODES),
    default="off",
    is_flag=False,
    flag_value="bf16",
    show_default=True,
    help="Mixed precision on CUDA (--amp alone: bf16); refused on CPU.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option(
    "--image-size",
    type=click.IntRange(1, 4096),
    default=None,
    help="Resize (shorter side) and centre-crop every image to this size; needed for a folder of "
    "mixed sizes. Recorded in the checkpoint, so every later command reads the data the same way.",
)
@with_run_options
@with_data_options
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (.safetensors)."
)
@output_options
def train(
    dataset,
    arch,
    epochs,
    min_steps,
    batch_size,
    lr,
    schedule,
    augment,
    label_smoothing,
    amp,
    seed,
    device,
    image_size,
    save_every,
    resume,
    data_dir,
    download,
    output,
    as_json,
    json_out,
    quiet,
):
    """Train the original classifier and write its checkpoint.

    Several processes: `torchrun --nproc-per-node N --no-python edge-unlearn train ...` (see docs/training.md)."""
    from ..guards import check_outputs, check_train_options
    from ..training import TrainConfig
    from ..workflows import train_checkpoint

    check_train_options(epochs=epochs, min_steps=min_steps, batch_size=batch_size, lr=lr, device=device)
    check_outputs({"-o": output})

    overrides = {
        k: v for k, v in dict(epochs=epochs, min_steps=min_steps, batch_size=batch_size, lr=lr).items() if v is not None
    }
    config = TrainConfig(
        seed=seed,
        device=device,
        schedule=schedule,
        augment=augment,
        label_smoothing=label_smoothing,
        amp=amp,
        **overrides,
    )
    summary = train_checkpoint(
        dataset,
        arch,
        output,
        config,
        data_dir,
        download,
        run=_train_run(save_every, resume, quiet, as_json),
        image_size=image_size,
    )
    _emit_main(
        summary,
        as_json,
        json_out,
        quiet,
        f"trained {arch} on {dataset} in {summary['seconds']:.1f} s: test accuracy "
        f"{summary.get('test_accuracy', float('nan')):.4f} -> {output}",
    )


@main.command()
@click.argument("original", type=click.Path(dir_okay=False))
@click.option(
    "--forget",
    "forget_classes",
    multiple=True,
    required=True,
    help="Class index or name to leave out (repeatable, or comma-separated).",
)
@click.option("--dataset", default=None, help="Default: the dataset recorded in the checkpoint. " + DATASET_HELP)
@with_run_options
@with_data_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@output_options
def retrain(
    original, forget_classes, dataset, save_every, resume, data_dir, download, output, as_json, json_out, quiet
):
    """Retrain from scratch without the forgotten classes: the gold standard every unlearning run is
    compared with (same arch and recipe as ORIGINAL, read from its checkpoint)."""
    from ..workflows import retrain_checkpoint

    summary = retrain_checkpoint(
        original,
        forget_classes,
        output,
        dataset,
        data_dir,
        download,
        run=_train_run(save_every, resume, quiet, as_json),
    )
    _emit_main(
        summary,
        as_json,
        json_out,
        quiet,
        f"retrained without {summary['forget_classes']} in {summary['seconds']:.1f} s: retained accuracy "
        f"{summary.get('retain_acc', float('nan')):.4f} -> {output}",
    )


def print_forget_summary(s: dict[str, Any]) -> None:
    click.echo(
        f"forgot {s['forget_classes']} ({', '.join(s['forget_class_names'])}) with {s['method']} from "
        f"{s['samples_used']} samples in {s['seconds']:.3f} s -> {s['checkpoint']}"
    )
    if "forget_acc" in s:
        rows = [
            ("forget_acc (mask on)", s.get("forget_acc_before"), s["forget_acc"]),
            ("forget_acc_unmasked", s.get("forget_acc_before"), s["forget_acc_unmasked"]),
            ("retain_acc", s["retain_acc_before"], s["retain_acc"]),
            ("probe_forget_acc", s.get("probe_forget_acc_before"), s["probe_forget_acc"]),
        ]
        click.echo(f"  {'figure':24s} {'before':>8s} {'after':>8s}")
        for name, before, after in rows:
            click.echo(f"  {name:24s} {_fmt(before):>8s} {_fmt(after):>8s}")
        click.echo(f"  retain_drop {s['retain_drop']:+.4f}")
    if "feature_step" in s:
        if "feature_depth" in s:  # NHLE v2: a rank-one retargeting edit per layer
            click.echo(
                f"  feature step: {s['feature_step']} ({s.get('feature_directions', 0)} layer(s) edited, "
                f"forget features sent toward classes {s.get('target_classes')})"
            )
        else:
            click.echo(f"  feature step: {s['feature_step']} ({s.get('feature_directions', 0)} direction(s) removed)")


@main.command("forget")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--forget",
    "forget_classes",
    multiple=True,
    required=True,
    help="Class index or name to forget (repeatable, or comma-separated).",
)
@click.option(
    "--samples",
    type=int,
    default=32,
    show_default=True,
    help="Forget samples per class, taken from the dataset's training split.",
)
@click.option(
    "--forget-samples",
    "forget_samples_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder of images of the forgotten classes instead (class sub-folders optional).",
)
@click.option("--method", default="nhle", show_default=True, help="Unlearning method (see `edge-unlearn methods`).")
@click.option(
    "--set",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Method parameter, e.g. --set steps=20 (see `edge-unlearn methods`).",
)
@click.option("--dataset", default=None, help="Default: the dataset recorded in the checkpoint. " + DATASET_HELP)
@with_data_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option(
    "--no-eval", is_flag=True, help="Skip the before/after evaluation (no dataset needed with --forget-samples)."
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@output_options
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Record this run in a folder for `edge-unlearn report`.",
)
def forget_cmd(
    checkpoint,
    forget_classes,
    samples,
    forget_samples_dir,
    method,
    params,
    dataset,
    data_dir,
    download,
    seed,
    device,
    no_eval,
    output,
    as_json,
    json_out,
    quiet,
    run_dir,
):
    """Make CHECKPOINT forget classes and write the unlearned checkpoint (masks accumulate over runs)."""
    from ..guards import check_device, check_outputs
    from ..workflows import ForgetRequest, forget_checkpoint

    check_device(device)
    check_outputs({"-o": output}, [checkpoint], run_dir)

    req = ForgetRequest(
        checkpoint=checkpoint,
        forget=tuple(forget_classes),
        out=output,
        method=method,
        samples=samples,
        forget_samples_dir=forget_samples_dir,
        params=_parse_params(params),
        dataset=dataset,
        data_dir=data_dir,
        download=download,
        seed=seed,
        device=device,
        evaluate=not no_eval,
    )
    summary = forget_checkpoint(req, progress=progress_enabled(quiet, as_json))
    if run_dir:
        from .report import record_to_run_dir

        record_to_run_dir(run_dir, "forget", summary, [Path(checkpoint), Path(output)])
    emit(summary, as_json, json_out)
    if not (as_json or quiet):
        print_forget_summary(summary)


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--dataset", default=None, help="Default: the dataset recorded in the checkpoint. " + DATASET_HELP)
@click.option(
    "--forget", "forget_classes", multiple=True, help="Classes judged as forgotten (default: the checkpoint's)."
)
@click.option(
    "--reference", type=click.Path(dir_okay=False), default=None, help="The original checkpoint, for retain_drop."
)
@click.option("--no-probe", is_flag=True, help="Skip the linear probe (faster).")
@click.option("--depth", is_flag=True, help="Also the linear probe after every block and at the penultimate features.")
@click.option(
    "--attacks",
    is_flag=True,
    help="Also the prototype relearning attack (mask on and lifted), the entropy MIA and relearn time (slower).",
)
@click.option(
    "--retrained",
    type=click.Path(dir_okay=False),
    default=None,
    help="The retrained gold standard (`edge-unlearn retrain`), evaluated beside with the same measures.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the probe's draw and the attacks' samples."
)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@workers_option
@output_options
def evaluate(
    checkpoint,
    dataset,
    forget_classes,
    reference,
    no_probe,
    depth,
    attacks,
    retrained,
    seed,
    data_dir,
    as_json,
    json_out,
    quiet,
):
    """Accuracy overall and per class, forget_acc with and without the mask, retained accuracy, and the
    linear-probe accuracy on the forgotten classes; --depth / --attacks add the forgetting audit, beside
    --reference (the original) and --retrained (the gold standard) when given."""
    from ..workflows import audit_table, evaluate_checkpoint

    s = evaluate_checkpoint(
        checkpoint,
        dataset,
        forget_classes,
        reference,
        probe=not no_probe,
        data_dir=data_dir,
        seed=seed,
        depth=depth,
        attacks=attacks,
        retrained=retrained,
    )
    emit(s, as_json, json_out)
    if as_json or quiet:
        return
    click.echo(f"{checkpoint}: accuracy {s['accuracy']:.4f}, forgotten {s['forget_classes']}")
    for key in ("forget_acc", "forget_acc_unmasked", "retain_acc", "retain_drop", "probe_forget_acc"):
        if key in s:
            retrained_value = s.get("retrained", {}).get(key)
            beside = f"   (retrained {_fmt(retrained_value)})" if retrained_value is not None else ""
            click.echo(f"  {key:22s} {_fmt(s[key])}{beside}")
    click.echo("  per class: " + " ".join(f"{n}:{a:.3f}" for n, a in zip(s["class_names"], s["per_class_accuracy"])))
    for line in audit_table(s):
        click.echo(line)


@main.command()
@output_options
def models(as_json, json_out, quiet):
    """List the model registry."""
    from ..byom import importable_models  # what `edge-unlearn import --arch` accepts besides the names above
    from ..models import MODELS

    importable = importable_models()
    emit(
        {
            "registry": [{"name": spec.name, "description": spec.description} for spec in MODELS.values()],
            "importable": [{"arch": w, "how": h} for w, h in importable],
        },
        as_json,
        json_out,
    )
    if not (as_json or quiet):
        for spec in MODELS.values():
            click.echo(f"{spec.name:20s} {spec.description}")
        click.echo("\nimport --arch (bring your own model):\n" + "\n".join(f"  {w}\n      {h}" for w, h in importable))


@main.command()
@output_options
def methods(as_json, json_out, quiet):
    """List the unlearning methods, the data each needs and their parameters."""
    import dataclasses

    from ..unlearn import METHODS, list_methods

    listing = [
        {
            "name": name,
            "needs": METHODS[name].needs,
            "description": METHODS[name].description,
            "parameters": {f.name: f.default for f in dataclasses.fields(METHODS[name].config_cls)},
        }
        for name in list_methods()
    ]
    emit(listing, as_json, json_out)
    if not (as_json or quiet):
        for item in listing:
            params = ", ".join(f"{k}={v!r}" for k, v in item["parameters"].items())
            click.echo(
                f"{item['name']:14s} needs {item['needs']:14s} {item['description']}\n{'':14s} parameters: {params}"
            )


@main.command()
@click.option("--out-dir", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--forget", "forget_class", default="3", show_default=True, help="Digit to forget.")
@click.option("--skip-deploy", is_flag=True, help="Stop after evaluation (no ONNX export / INT8 / validation).")
@output_options
def demo(out_dir, forget_class, skip_deploy, as_json, json_out, quiet):
    """The whole job on scikit-learn's bundled digits, offline: train -> forget -> compare with retraining
    -> export to ONNX -> INT8 -> validate -> bench -> report (every figure in OUT_DIR/demo.json)."""
    from ..demo import run_demo
    from ..guards import check_demo_options

    check_demo_options(forget_class, out_dir)
    result = run_demo(
        Path(out_dir),
        forget_class,
        deploy=not skip_deploy,
        echo=say(quiet, as_json),
        progress=progress_enabled(quiet, as_json),
    )
    emit(result, as_json, json_out)


main.add_command(export_cmd)
main.add_command(quantize_cmd)
main.add_command(bundle_cmd)
main.add_command(validate_cmd)
main.add_command(build_engine_cmd)
main.add_command(inspect_engine_cmd)
main.add_command(doctor_cmd)
main.add_command(bench_cmd)
main.add_command(report_cmd)
main.add_command(verify_cmd)
main.add_command(sign_cmd)
main.add_command(keygen_cmd)
main.add_command(import_cmd)
