"""The `edge-unlearn` command line. Commands are thin: build a request, call a library function, print."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import __version__, torch_runners  # noqa: F401  (registers the torch runners; imports no torch)
from .common import EdgeUnlearnGroup, parse_key_values
from .convert import convert_cmd
from .evidence import keygen_cmd, sign_cmd
from .export import bundle_cmd, export_cmd, quantize_cmd, validate_cmd
from .importer import import_cmd
from .options import (
    DATASET_HELP,
    DEVICE,
    OUTPUT,
    RECIPE,
    RUN_DIR,
    TRAIN_STATE,
    DataGroup,
    DataSource,
    Output,
    OutputPath,
    RunFolder,
    TrainState,
)
from .report import bench_cmd, report_cmd, verify_cmd
from .tensorrt import build_engine_cmd, doctor_cmd, inspect_engine_cmd


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
    failed validation exits 1; Ctrl-C exits 130. Every command takes --json (print the result as JSON on stdout),
    --json-out PATH (also write it to a file) and -q/--quiet. Renamed options keep their old spelling for one
    release (a warning on stderr).
    """


def _emit_main(summary: dict[str, Any], out: Output, run: RunFolder, kind: str, artefacts: list, line: str) -> None:
    """Only the first process of a torchrun launch reports and records (the others' work is in the same
    checkpoint)."""
    if summary.get("rank", 0) == 0:
        run.record(kind, summary, artefacts)
        out.emit(summary, line)


def _output_option(help: str = "Checkpoint to write (.safetensors).") -> Callable:
    return click.option("-o", "--output", required=True, type=OutputPath(), help=help)


@main.command()
@RECIPE
@click.option("--arch", default="lenet", show_default=True, help="Model from the registry (see `edge-unlearn models`).")
@click.option(
    "--image-size",
    type=click.IntRange(1, 4096),
    default=None,
    help="Resize (shorter side) and centre-crop every image to this size; needed for a folder of "
    "mixed sizes. Recorded in the checkpoint, so every later command reads the data the same way.",
)
@TRAIN_STATE
@DataGroup(default="digits", help=DATASET_HELP)
@_output_option()
@OUTPUT
@RUN_DIR
def train(recipe, arch, image_size, state: TrainState, data: DataSource, output, out: Output, run: RunFolder):
    """Train the original classifier and write its checkpoint.

    Several processes: `torchrun --nproc-per-node N --no-python edge-unlearn train ...` (see docs/training.md)."""
    from ..guards import check_outputs
    from ..workflows import train_checkpoint

    check_outputs({"-o": output, "--json-out": out.json_out}, run_dir=run.path)
    summary = train_checkpoint(
        data.dataset, arch, output, recipe, data.data_dir, data.download, run=state.run(out), image_size=image_size
    )
    _emit_main(
        summary,
        out,
        run,
        "train",
        [output],
        f"trained {arch} on {data.dataset} in {summary['seconds']:.1f} s: test accuracy "
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
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed of the initial weights and the data order (default: the seed recorded in ORIGINAL's recipe); "
    "recorded in the retrained checkpoint's recipe.",
)
@DataGroup()
@TRAIN_STATE
@_output_option()
@OUTPUT
@RUN_DIR
def retrain(original, forget_classes, seed, data: DataSource, state: TrainState, output, out: Output, run: RunFolder):
    """Retrain from scratch without the forgotten classes: the gold standard every unlearning run is
    compared with (same arch and recipe as ORIGINAL, read from its checkpoint)."""
    from ..guards import check_outputs
    from ..workflows import retrain_checkpoint

    check_outputs({"-o": output, "--json-out": out.json_out}, [original], run.path)
    summary = retrain_checkpoint(
        original,
        forget_classes,
        output,
        data.dataset,
        data.data_dir,
        data.download,
        run=state.run(out),
        seed=seed,
    )
    _emit_main(
        summary,
        out,
        run,
        "retrain",
        [original, output],
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
        if "target_classes" in s:  # NHLE with class statistics: a rank-one retargeting edit per forgotten class
            click.echo(
                f"  feature step: {s['feature_step']} ({s.get('feature_directions', 0)} edit(s), "
                f"forget features sent toward classes {s['target_classes']})"
            )
        else:
            click.echo(f"  feature step: {s['feature_step']} ({s.get('feature_directions', 0)} direction(s) removed)")
    if "head_step" in s:
        scales = f" at scale {s['head_scales']}" if "head_scales" in s else ""
        click.echo(f"  head step: {s['head_step']}{scales}")


@main.command("forget", renamed={"--forget-samples": "--forget-images"})
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
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Forget samples: images per forgotten class, taken from the dataset's training split.",
)
@click.option(
    "--forget-images",
    "forget_images",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder of images of the forgotten classes to use as forget samples instead (class sub-folders optional).",
)
@click.option("--method", default="nhle", show_default=True, help="Unlearning method (see `edge-unlearn methods`).")
@click.option(
    "--set",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Method parameter, e.g. --set steps=20 (see `edge-unlearn methods`).",
)
@DataGroup()
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the forget-sample draw and the method.")
@DEVICE
@click.option(
    "--no-eval", is_flag=True, help="Skip the before/after evaluation (no dataset needed with --forget-images)."
)
@_output_option("Unlearned checkpoint to write (.safetensors).")
@OUTPUT
@RUN_DIR
def forget_cmd(
    checkpoint,
    forget_classes,
    samples,
    forget_images,
    method,
    params,
    data: DataSource,
    seed,
    device,
    no_eval,
    output,
    out: Output,
    run: RunFolder,
):
    """Make CHECKPOINT forget classes and write the unlearned checkpoint (masks accumulate over runs)."""
    from ..guards import check_outputs
    from ..workflows import ForgetRequest, forget_checkpoint

    check_outputs({"-o": output, "--json-out": out.json_out}, [checkpoint], run.path)
    req = ForgetRequest(
        checkpoint=checkpoint,
        forget=tuple(forget_classes),
        out=output,
        method=method,
        samples=samples,
        forget_samples_dir=forget_images,
        params=_parse_params(params),
        dataset=data.dataset,
        data_dir=data.data_dir,
        download=data.download,
        seed=seed,
        device=device,
        evaluate=not no_eval,
    )
    summary = forget_checkpoint(req, progress=out.progress)
    run.record("forget", summary, [checkpoint, output])
    out.emit(summary)
    if not (out.as_json or out.quiet):
        print_forget_summary(summary)


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@DataGroup()
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
    multiple=True,
    help="The retrained gold standard (`edge-unlearn retrain`), evaluated beside with the same measures. Give it "
    "again for other seeds (`retrain --seed`): output distances are then averaged over them, and the first "
    "retrained model's are to the others (the floor no method can beat).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the probe's draw and the attacks' samples."
)
@OUTPUT
@RUN_DIR
def evaluate(
    checkpoint,
    data: DataSource,
    forget_classes,
    reference,
    no_probe,
    depth,
    attacks,
    retrained,
    seed,
    out: Output,
    run: RunFolder,
):
    """Accuracy overall and per class, forget_acc with and without the mask, retained accuracy, and the
    linear-probe accuracy on the forgotten classes; --depth / --attacks add the forgetting audit, beside
    --reference (the original) and --retrained (the gold standard) when given."""
    from ..guards import check_outputs
    from ..workflows import audit_table, evaluate_checkpoint

    check_outputs({"--json-out": out.json_out}, [checkpoint, reference, *retrained], run.path)
    s = evaluate_checkpoint(
        checkpoint,
        data.dataset,
        forget_classes,
        reference,
        probe=not no_probe,
        data_dir=data.data_dir,
        download=data.download,
        seed=seed,
        depth=depth,
        attacks=attacks,
        retrained=list(retrained),
    )
    run.record("evaluate", s, [checkpoint, reference, *retrained])
    out.emit(s)
    if out.as_json or out.quiet:
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
@OUTPUT
def models(out: Output):
    """List the model registry."""
    from ..byom import importable_models  # what `edge-unlearn import --arch` accepts besides the names above
    from ..models import MODELS

    importable = importable_models()
    out.emit(
        {
            "registry": [{"name": spec.name, "description": spec.description} for spec in MODELS.values()],
            "importable": [{"arch": w, "how": h} for w, h in importable],
        }
    )
    if not (out.as_json or out.quiet):
        for spec in MODELS.values():
            click.echo(f"{spec.name:20s} {spec.description}")
        click.echo("\nimport --arch (bring your own model):\n" + "\n".join(f"  {w}\n      {h}" for w, h in importable))


@main.command()
@OUTPUT
def methods(out: Output):
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
    out.emit(listing)
    if not (out.as_json or out.quiet):
        for item in listing:
            params = ", ".join(f"{k}={v!r}" for k, v in item["parameters"].items())
            click.echo(
                f"{item['name']:14s} needs {item['needs']:14s} {item['description']}\n{'':14s} parameters: {params}"
            )


@main.command()
@click.option("--out-dir", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option(
    "--forget",
    "forget_class",
    type=click.Choice([str(d) for d in range(10)]),
    default="3",
    show_default=True,
    help="Digit to forget.",
)
@click.option("--skip-deploy", is_flag=True, help="Stop after evaluation (no ONNX export / INT8 / validation).")
@OUTPUT
def demo(out_dir, forget_class, skip_deploy, out: Output):
    """The whole job on scikit-learn's bundled digits, offline: train -> forget -> compare with retraining
    -> export to ONNX -> INT8 -> validate -> bench -> report (every figure in OUT_DIR/demo.json)."""
    from ..demo import run_demo
    from ..guards import check_outputs

    check_outputs({"--json-out": out.json_out}, run_dir=out_dir)
    result = run_demo(Path(out_dir), forget_class, deploy=not skip_deploy, echo=out.say, progress=out.progress)
    out.emit(result)


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
main.add_command(convert_cmd)
main.add_command(sign_cmd)
main.add_command(keygen_cmd)
main.add_command(import_cmd)
