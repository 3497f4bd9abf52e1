"""Option groups shared by the commands, in the manner of Polygraphy's argument groups.

An :class:`OptionGroup` declares its click options once and builds one value from them (a config dataclass or a
small CLI object); decorating a command with the group adds the options and hands the command that one value
instead of the separate arguments::

    @click.command(cls=Command)
    @OUTPUT
    def doctor(out: Output) -> None: ...

This module also holds the parser-level types: a file ``OutputPath`` that refuses folders, ``BatchList``.
Imports no torch: a group's ``build`` imports the library lazily.

Vocabulary (one name per meaning): ``--batch-size N`` is one batch size; ``--batches 1,8,64`` a sweep;
``--samples`` forget images per class; ``--X-samples`` the images used for purpose X (each help says whether
per class or in all); ``--per-class`` the test images per class that a bundle keeps.
Longer than 500 lines because every shared option group and parser type: the CLI's one vocabulary lives in one place.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..guards import MAX_BATCH
from .common import DEVICES, emit, progress_enabled, say

# ------------------------------------------------------------------------------------------------ parser types


class OutputPath(click.Path):
    """A file to write: refuses a name that ends with a path separator or names an existing folder (before any
    work, so no file named like the folder is ever written)."""

    name = "file"

    def __init__(self) -> None:
        super().__init__(dir_okay=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = os.fspath(value)
        if text.endswith(("/", os.sep)) or Path(text).is_dir():
            self.fail(f"{text} is a folder; give a file name inside it, e.g. {text.rstrip('/' + os.sep)}/NAME", param)
        return text


class BatchList(click.ParamType):
    """Comma-separated batch sizes, e.g. ``1,8,64``: each 1..MAX_BATCH, duplicates dropped, order kept."""

    name = "sizes"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            sizes = tuple(int(v) for v in str(value).replace(" ", "").split(",") if v)
        except ValueError:
            self.fail(f"takes comma-separated integers such as 1,8,64; got {value!r}", param)
        if not sizes or any(not 1 <= s <= MAX_BATCH for s in sizes):
            self.fail(f"takes batch sizes from 1 to {MAX_BATCH}, e.g. 1,8,64; got {value!r}", param)
        return tuple(dict.fromkeys(sizes))


class FiniteRange(click.FloatRange):
    """A float within bounds that is also finite (click's FloatRange lets NaN through: it compares false)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param)
        return number


#: a fraction in [0, 1] (accuracies, agreement, drops)
FRACTION = FiniteRange(0.0, 1.0)


# ------------------------------------------------------------------------------------------------ option groups


class OptionGroup:
    """Options that belong together and the one value they build. Subclasses give ``dest`` (the keyword the
    command receives), :meth:`params` (the click options) and :meth:`build` (their values -> the value)."""

    dest: str = ""

    def params(self) -> list[click.Parameter]:
        raise NotImplementedError

    def build(self, **values: Any) -> Any:
        raise NotImplementedError

    def __call__(self, fn: Callable) -> Callable:
        params = self.params()
        names = [p.name for p in params if p.expose_value]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            kwargs[self.dest] = self.build(**values)
            return fn(*args, **kwargs)

        command.__click_params__ = list(getattr(fn, "__click_params__", []))  # type: ignore[attr-defined]
        command.__click_params__.extend(reversed(params))  # type: ignore[attr-defined]
        return command


@dataclass(frozen=True)
class Output:
    """How a command reports: ``--json`` (only the JSON on stdout), ``--json-out`` (also to a file), ``--quiet``."""

    as_json: bool = False
    json_out: str | None = None
    quiet: bool = False

    def emit(self, data: Any, line: str | None = None) -> None:
        """Write --json-out; print the JSON on --json, else ``line`` unless --quiet."""
        emit(data, self.as_json, self.json_out, self.quiet, line)

    @property
    def say(self) -> Callable[[str], None]:
        """Human lines: silenced by --quiet, on stderr with --json."""
        return say(self.quiet, self.as_json)

    @property
    def progress(self) -> bool:
        return progress_enabled(self.quiet, self.as_json)


class OutputGroup(OptionGroup):
    """``--json``, ``--json-out PATH``, ``-q/--quiet`` -> :class:`Output` (the same three on every command)."""

    dest = "out"

    def __init__(self, quiet_help: str = "Print nothing but errors (and a verdict line).") -> None:
        self.quiet_help = quiet_help

    def params(self) -> list[click.Parameter]:
        return [
            click.Option(["--json", "as_json"], is_flag=True, help="Print the result as JSON on stdout (only that)."),
            click.Option(
                ["--json-out", "json_out"],
                type=OutputPath(),
                default=None,
                help="Also write the result as JSON to this file.",
            ),
            click.Option(["-q", "--quiet"], is_flag=True, help=self.quiet_help),
        ]

    def build(self, as_json: bool, json_out: str | None, quiet: bool) -> Output:
        return Output(as_json, json_out, quiet)


DATASET_HELP = (
    "digits (offline default), mnist, fashion_mnist, cifar10, cifar100, svhn (torchvision, from "
    "--data-dir), npz:PATH or folder:PATH"
)
RECORDED_DATASET_HELP = "Default: the dataset recorded in the checkpoint. " + DATASET_HELP


@dataclass(frozen=True)
class DataSource:
    """Where a command reads its dataset: the spec (None: the checkpoint's), the torchvision folder, download."""

    dataset: str | None = None
    data_dir: str | None = None
    download: bool = False


def _set_workers(_ctx: click.Context, _param: click.Parameter, value: int) -> int:
    """Every dataset this command reads is loaded through ``value`` worker processes (torch imported only when
    data is read: a default of 0 leaves a torch-free command torch-free)."""
    import sys

    if value or "edge_unlearn.data" in sys.modules:
        from edge_unlearn.data import set_default_workers

        set_default_workers(value)
    return value


def workers_param() -> click.Option:
    """``--workers N``: image-decoding processes of the data loaders."""
    return click.Option(
        ["--workers"],
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        expose_value=False,
        callback=_set_workers,
        help="Processes decoding images for the data loaders (0: in this process; worth it for image folders).",
    )


class DataGroup(OptionGroup):
    """``--dataset``, ``--data-dir``, ``--download``, ``--workers`` -> :class:`DataSource`. ``dataset=False``: a
    command that names its dataset otherwise (``quantize --calib``) takes the other three."""

    dest = "data"

    def __init__(self, default: str | None = None, help: str = RECORDED_DATASET_HELP, dataset: bool = True) -> None:
        self.default, self.help, self.dataset = default, help, dataset

    def params(self) -> list[click.Parameter]:
        spec = [
            click.Option(["--dataset"], default=self.default, show_default=self.default is not None, help=self.help)
        ]
        return [
            *(spec if self.dataset else []),
            click.Option(
                ["--data-dir"],
                type=click.Path(file_okay=False),
                default=None,
                help="Folder of torchvision datasets (default ./data).",
            ),
            click.Option(["--download"], is_flag=True, help="Download torchvision datasets (needs internet)."),
            workers_param(),
        ]

    def build(self, data_dir: str | None, download: bool, dataset: str | None = None) -> DataSource:
        return DataSource(dataset, data_dir, download)


class DeviceGroup(OptionGroup):
    """``--device`` (auto, cpu, cuda) -> the torch device name."""

    dest = "device"

    def params(self) -> list[click.Parameter]:
        return [
            click.Option(
                ["--device"],
                type=click.Choice(DEVICES),
                default="auto",
                show_default=True,
                help="Where torch runs (auto: CUDA when present).",
            )
        ]

    def build(self, device: str) -> str:
        return device


@dataclass(frozen=True)
class RunFolder:
    """``--run-dir``: the run folder this command's result is recorded in (nothing when ``path`` is None)."""

    path: str | None = None

    def check(self) -> None:
        """Before any work: the folder exists or can be made, and is writable."""
        from edge_unlearn.guards import check_run_dir

        check_run_dir(self.path)

    def record(self, kind: str, payload: dict[str, Any], artefacts: Sequence[str | Path | None] = ()) -> Path | None:
        """Append a ``kind`` record (the JSON summary and the hashed artefacts it read or wrote)."""
        if self.path is None:
            return None
        from edge_unlearn.deploy.rundir import record

        return record(self.path, kind, payload, [Path(a) for a in artefacts if a is not None])


class RunFolderGroup(OptionGroup):
    """``--run-dir DIR`` -> :class:`RunFolder`."""

    dest = "run"

    def params(self) -> list[click.Parameter]:
        return [
            click.Option(
                ["--run-dir"],
                type=click.Path(file_okay=False),
                default=None,
                help="Record this run in a folder for `edge-unlearn report` (and `verify`/`sign`).",
            )
        ]

    def build(self, run_dir: str | None) -> RunFolder:
        return RunFolder(run_dir)


#: training choices (the same as edge_unlearn.training's; kept here so the command line imports no torch)
AUGMENTS = ("auto", "none", "crop", "crop-flip")
SCHEDULES = ("onecycle", "cosine")
AMP_MODES = ("off", "bf16", "fp16")


class RecipeGroup(OptionGroup):
    """The training recipe: epochs, steps, batch size, learning rate, schedule, augmentation, label smoothing,
    mixed precision, seed, device -> ``edge_unlearn.training.TrainConfig`` (its defaults where not given)."""

    dest = "recipe"

    def params(self) -> list[click.Parameter]:
        return [
            click.Option(
                ["--epochs"],
                type=click.IntRange(min=0),
                default=None,
                help="Epochs (default 3, more if needed to reach --min-steps).",
            ),
            click.Option(
                ["--min-steps"],
                type=click.IntRange(min=0),
                default=None,
                help="At least this many optimiser steps (default 500).",
            ),
            click.Option(
                ["--batch-size"],
                type=click.IntRange(1, 1 << 20),
                default=None,
                help="Global batch size (default 128; under torchrun split among the processes).",
            ),
            click.Option(
                ["--lr"],
                type=FiniteRange(0, 10, min_open=True),
                default=None,
                help="Peak learning rate of the AdamW schedule (default 2e-3).",
            ),
            click.Option(
                ["--schedule"],
                type=click.Choice(SCHEDULES),
                default="onecycle",
                show_default=True,
                help="Learning-rate schedule: one-cycle, or cosine with a 5 % linear warm-up.",
            ),
            click.Option(
                ["--augment"],
                type=click.Choice(AUGMENTS),
                default="auto",
                show_default=True,
                help="auto: random crop (4 px padding at 32 px, in proportion) + horizontal flip for colour "
                "images, none for grey ones (digits, fashion items); the checkpoint records the choice.",
            ),
            click.Option(
                ["--label-smoothing"],
                type=FiniteRange(0, 1, max_open=True),
                default=0.0,
                show_default=True,
                help="Label smoothing in [0, 1).",
            ),
            click.Option(
                ["--amp"],
                type=click.Choice(AMP_MODES),
                default="off",
                is_flag=False,
                flag_value="bf16",
                show_default=True,
                help="Mixed precision on CUDA (--amp alone: bf16); refused on CPU.",
            ),
            click.Option(
                ["--seed"],
                type=int,
                default=0,
                show_default=True,
                help="Seed of the initial weights and the data order.",
            ),
            *DeviceGroup().params(),
        ]

    def build(
        self, seed: int, device: str, schedule: str, augment: str, label_smoothing: float, amp: str, **given: Any
    ) -> Any:
        from edge_unlearn.training import TrainConfig

        overrides = {k: v for k, v in given.items() if v is not None}
        return TrainConfig(
            seed=seed,
            device=device,
            schedule=schedule,
            augment=augment,
            label_smoothing=label_smoothing,
            amp=amp,
            **overrides,
        )


@dataclass(frozen=True)
class TrainState:
    """``--save-every`` / ``--resume``: periodic training-state files and the one to continue from."""

    save_every: int = 0
    resume: str | None = None

    def run(self, out: Output) -> Any:
        """The library's ``TrainRun``: these files, the data workers, progress bars on a terminal, else a log."""
        from edge_unlearn.data import default_workers
        from edge_unlearn.workflows import TrainRun

        log = None if out.quiet or out.as_json or out.progress else (lambda line: click.echo(line, err=True))
        return TrainRun(
            workers=default_workers(), save_every=self.save_every, resume=self.resume, progress=out.progress, log=log
        )


class TrainStateGroup(OptionGroup):
    """``--save-every N``, ``--resume FILE`` -> :class:`TrainState`."""

    dest = "state"

    def params(self) -> list[click.Parameter]:
        return [
            click.Option(
                ["--save-every"],
                type=click.IntRange(min=0),
                default=0,
                show_default=True,
                help="Write the training state (weights, optimiser, schedule, RNG, step) every N steps to "
                "OUTPUT.state.pt (0: never), to continue an interrupted training with --resume.",
            ),
            click.Option(
                ["--resume"],
                type=click.Path(dir_okay=False),
                default=None,
                help="Continue from a training-state file written with --save-every (same recipe, arch and "
                "number of processes); the result equals an uninterrupted run.",
            ),
        ]

    def build(self, save_every: int, resume: str | None) -> TrainState:
        return TrainState(save_every, resume)


@dataclass(frozen=True)
class Gate:
    """``validate``'s pass criteria: the deployment thresholds and, with --audit, the audit's."""

    thresholds: Any
    audit: Any = None


class GateGroup(OptionGroup):
    """``--max-forget-acc``, ``--max-retain-drop``, ``--min-agreement``, ``--audit`` and the ``--audit-*``
    thresholds -> :class:`Gate` (``Thresholds`` and, with --audit, ``AuditThresholds``)."""

    dest = "gate"

    def params(self) -> list[click.Parameter]:
        return [
            click.Option(
                ["--max-forget-acc"],
                type=FRACTION,
                default=0.01,
                show_default=True,
                help="Highest accepted accuracy on forgotten classes.",
            ),
            click.Option(
                ["--max-retain-drop"],
                type=FRACTION,
                default=0.01,
                show_default=True,
                help="Highest accepted retained-accuracy drop against the bundle's FP32 reference.",
            ),
            click.Option(
                ["--min-agreement"],
                type=FRACTION,
                default=0.99,
                show_default=True,
                help="Lowest accepted argmax agreement with the FP32 reference on retained classes.",
            ),
            click.Option(
                ["--audit"],
                is_flag=True,
                help="Also the feature-level audit: the bundle's probe and the prototype attack "
                "on MODEL's own features, and its answers on the forgotten classes against the retrained models "
                "(MODEL: an `export --audit` file, quantized or not, or its `convert --audit` OpenVINO/LiteRT/"
                "ExecuTorch file; the bundle from `bundle --audit`).",
            ),
            click.Option(
                ["--audit-max-probe"],
                type=FRACTION,
                default=None,
                help="Highest accepted probe accuracy on forgotten classes (default: the bundle's, from --retrained).",
            ),
            click.Option(
                ["--audit-max-prototype"],
                type=FRACTION,
                default=None,
                help="Highest accepted prototype-attack recovery (default: the bundle's, from --retrained, else 0.10).",
            ),
            click.Option(
                ["--audit-max-logit-probe"],
                type=FRACTION,
                default=None,
                help="Highest accepted accuracy on forgotten classes of the output probe (the bundle's probe on "
                "MODEL's retained logits; default: the bundle's, from --retrained).",
            ),
            click.Option(
                ["--audit-tolerance"],
                type=FRACTION,
                default=None,
                help="How far this model's audit figures may sit above the FP32 ones (default 0.05).",
            ),
        ]

    def build(
        self,
        max_forget_acc: float,
        max_retain_drop: float,
        min_agreement: float,
        audit: bool,
        audit_max_probe: float | None,
        audit_max_prototype: float | None,
        audit_max_logit_probe: float | None,
        audit_tolerance: float | None,
    ) -> Gate:
        from edge_unlearn.deploy.validate import Thresholds
        from edge_unlearn.guards import check_needs_flag

        thresholds = Thresholds(max_forget_acc, max_retain_drop, min_agreement)
        given = {
            "--audit-max-probe": audit_max_probe,
            "--audit-max-prototype": audit_max_prototype,
            "--audit-max-logit-probe": audit_max_logit_probe,
            "--audit-tolerance": audit_tolerance,
        }
        check_needs_flag("--audit", audit, given)
        if not audit:
            return Gate(thresholds)
        from edge_unlearn.deploy.audit import DEFAULT_TOLERANCE, AuditThresholds

        tolerance = DEFAULT_TOLERANCE if audit_tolerance is None else audit_tolerance
        return Gate(thresholds, AuditThresholds(audit_max_probe, audit_max_prototype, tolerance, audit_max_logit_probe))


OUTPUT = OutputGroup()
RUN_DIR = RunFolderGroup()
DEVICE = DeviceGroup()
RECIPE = RecipeGroup()
TRAIN_STATE = TrainStateGroup()
GATE = GateGroup()
