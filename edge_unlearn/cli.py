"""The `edge-unlearn` command line. Commands are thin: build a request, call a library function, print."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .cli_common import echo_json, handle_errors
from .errors import UsageError

DATASET_HELP = ("digits (offline default), mnist, fashion_mnist, cifar10, cifar100, svhn (torchvision, from "
                "--data-dir), npz:PATH or folder:PATH")


def _parse_params(items: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out.append((key.strip(), json.loads(value)))
        except json.JSONDecodeError:
            out.append((key.strip(), value))
    return tuple(out)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edge-unlearn")
def main() -> None:
    """Make an image classifier forget classes (NHLE + class weight masking), export it to ONNX/TensorRT,
    and prove on the target device that it stayed forgotten.

    Errors print one line and exit 2; a failed validation exits 1.
    """


data_options = [
    click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                 help="Folder of torchvision datasets (default ./data)."),
    click.option("--download", is_flag=True, help="Download torchvision datasets (needs internet)."),
]


def with_data_options(fn):
    for option in reversed(data_options):
        fn = option(fn)
    return fn


@main.command()
@click.option("--dataset", default="digits", show_default=True, help=DATASET_HELP)
@click.option("--arch", default="lenet", show_default=True, help="Model from the registry (see `edge-unlearn models`).")
@click.option("--epochs", type=int, default=None, help="Epochs (default 3, more if needed to reach --min-steps).")
@click.option("--min-steps", type=int, default=None, help="At least this many optimiser steps (default 500).")
@click.option("--batch-size", type=int, default=None, help="Batch size (default 128).")
@click.option("--lr", type=float, default=None, help="Peak learning rate of the one-cycle AdamW schedule (default 2e-3).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@with_data_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (.safetensors).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def train(dataset, arch, epochs, min_steps, batch_size, lr, seed, device, data_dir, download, output, as_json, quiet):
    """Train the original classifier and write its checkpoint."""
    from .training import TrainConfig
    from .workflows import train_checkpoint

    overrides = {k: v for k, v in dict(epochs=epochs, min_steps=min_steps, batch_size=batch_size, lr=lr).items()
                 if v is not None}
    config = TrainConfig(seed=seed, device=device, **overrides)
    summary = train_checkpoint(dataset, arch, output, config, data_dir, download, progress=not (quiet or as_json))
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"trained {arch} on {dataset} in {summary['seconds']:.1f} s: test accuracy "
                   f"{summary['test_accuracy']:.4f} -> {output}")


@main.command()
@click.argument("original", type=click.Path(dir_okay=False))
@click.option("--forget", "forget_classes", multiple=True, required=True,
              help="Class index or name to leave out (repeatable, or comma-separated).")
@click.option("--dataset", default=None, help="Default: the dataset recorded in the checkpoint. " + DATASET_HELP)
@with_data_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True)
@handle_errors
def retrain(original, forget_classes, dataset, data_dir, download, output, as_json, quiet):
    """Retrain from scratch without the forgotten classes: the gold standard every unlearning run is
    compared with (same arch and recipe as ORIGINAL)."""
    from .workflows import retrain_checkpoint

    summary = retrain_checkpoint(original, forget_classes, output, dataset, data_dir, download,
                                 progress=not (quiet or as_json))
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"retrained without {summary['forget_classes']} in {summary['seconds']:.1f} s: retained accuracy "
                   f"{summary['retain_acc']:.4f} -> {output}")


def print_forget_summary(s: dict[str, Any]) -> None:
    click.echo(f"forgot {s['forget_classes']} ({', '.join(s['forget_class_names'])}) with {s['method']} from "
               f"{s['samples_used']} samples in {s['seconds']:.3f} s -> {s['checkpoint']}")
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
        click.echo(f"  feature step: {s['feature_step']} ({s.get('feature_directions', 0)} direction(s) removed)")


@main.command("forget")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--forget", "forget_classes", multiple=True, required=True,
              help="Class index or name to forget (repeatable, or comma-separated).")
@click.option("--samples", type=int, default=32, show_default=True,
              help="Forget samples per class, taken from the dataset's training split.")
@click.option("--forget-samples", "forget_samples_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of images of the forgotten classes instead (class sub-folders optional).")
@click.option("--method", default="nhle", show_default=True, help="Unlearning method (see `edge-unlearn methods`).")
@click.option("--set", "params", multiple=True, metavar="KEY=VALUE",
              help="Method parameter, e.g. --set steps=20 (see `edge-unlearn methods`).")
@click.option("--dataset", default=None, help="Default: the dataset recorded in the checkpoint. " + DATASET_HELP)
@with_data_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--no-eval", is_flag=True, help="Skip the before/after evaluation (no dataset needed with --forget-samples).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every figure.")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Record this run in a folder for `edge-unlearn report`.")
@handle_errors
def forget_cmd(checkpoint, forget_classes, samples, forget_samples_dir, method, params, dataset, data_dir, download,
               seed, device, no_eval, output, as_json, run_dir):
    """Make CHECKPOINT forget classes and write the unlearned checkpoint (masks accumulate over runs)."""
    from .workflows import ForgetRequest, forget_checkpoint

    req = ForgetRequest(checkpoint=checkpoint, forget=tuple(forget_classes), out=output, method=method,
                        samples=samples, forget_samples_dir=forget_samples_dir, params=_parse_params(params),
                        dataset=dataset, data_dir=data_dir, download=download, seed=seed, device=device,
                        evaluate=not no_eval)
    summary = forget_checkpoint(req)
    if run_dir:
        from .cli_report import record_to_run_dir

        record_to_run_dir(run_dir, "forget", summary, [Path(checkpoint), Path(output)])
    if as_json:
        echo_json(summary)
    else:
        print_forget_summary(summary)


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--dataset", default=None, help="Default: the dataset recorded in the checkpoint. " + DATASET_HELP)
@click.option("--forget", "forget_classes", multiple=True, help="Classes judged as forgotten (default: the checkpoint's).")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="The original checkpoint, for retain_drop.")
@click.option("--no-probe", is_flag=True, help="Skip the linear probe (faster).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def evaluate(checkpoint, dataset, forget_classes, reference, no_probe, data_dir, as_json):
    """Accuracy overall and per class, forget_acc with and without the mask, retained accuracy, and the
    linear-probe accuracy on the forgotten classes."""
    from .workflows import evaluate_checkpoint

    s = evaluate_checkpoint(checkpoint, dataset, forget_classes, reference, probe=not no_probe, data_dir=data_dir)
    if as_json:
        echo_json(s)
        return
    click.echo(f"{checkpoint}: accuracy {s['accuracy']:.4f}, forgotten {s['forget_classes']}")
    for key in ("forget_acc", "forget_acc_unmasked", "retain_acc", "retain_drop", "probe_forget_acc"):
        if key in s:
            click.echo(f"  {key:22s} {_fmt(s[key])}")
    click.echo("  per class: " + " ".join(f"{n}:{a:.3f}" for n, a in zip(s["class_names"], s["per_class_accuracy"])))


@main.command()
def models():
    """List the model registry."""
    from .models import MODELS

    for spec in MODELS.values():
        click.echo(f"{spec.name:20s} {spec.description}")
    from .byom import importable_models  # what `edge-unlearn import --arch` accepts besides the names above

    click.echo("\nimport --arch (bring your own model):\n" + "\n".join(f"  {w}\n      {h}" for w, h in importable_models()))


@main.command()
def methods():
    """List the unlearning methods, the data each needs and their parameters."""
    import dataclasses

    from .unlearn import METHODS, list_methods

    for name in list_methods():
        spec = METHODS[name]
        params = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(spec.config_cls))
        click.echo(f"{name:14s} needs {spec.needs:14s} {spec.description}\n{'':14s} parameters: {params}")


@main.command()
@click.option("--out-dir", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--forget", "forget_class", default="3", show_default=True, help="Digit to forget.")
@click.option("--skip-deploy", is_flag=True, help="Stop after evaluation (no ONNX export / INT8 / validation).")
@handle_errors
def demo(out_dir, forget_class, skip_deploy):
    """The whole job on scikit-learn's bundled digits, offline: train -> forget -> compare with retraining
    -> export to ONNX -> INT8 -> validate."""
    from .demo import run_demo

    run_demo(Path(out_dir), forget_class, deploy=not skip_deploy, echo=click.echo)


def _register_optional_commands() -> None:
    for module, names in (("edge_unlearn.cli_export", ("export_cmd", "quantize_cmd", "bundle_cmd", "validate_cmd")),
                          ("edge_unlearn.cli_tensorrt", ("build_engine_cmd", "doctor_cmd")),
                          ("edge_unlearn.cli_report", ("bench_cmd", "report_cmd", "verify_cmd"))):
        mod = __import__(module, fromlist=list(names))
        for name in names:
            main.add_command(getattr(mod, name))


_register_optional_commands()
main.add_command(__import__("edge_unlearn.cli_import", fromlist=["import_cmd"]).import_cmd)

if __name__ == "__main__":
    sys.exit(main())
