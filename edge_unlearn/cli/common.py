"""Shared pieces of the click commands: the group with the one error handler, the options every command takes
(``--json``, ``--json-out``, ``-q/--quiet``), closed-set choices and JSON output. Imports no torch.

Library modules never import this module (an import-linter contract in pyproject.toml); they take what they need
from :mod:`edge_unlearn.core`.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..core.jsontext import to_json_text
from ..errors import EdgeUnlearnError, UsageError
from ..fileio import atomic_output

#: the extra that provides each optional top-level module (``pip install 'edge-unlearn[EXTRA]'``)
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "torchvision", "sklearn", "safetensors", "tqdm", "onnxscript", "triton"), "host"),
    "matplotlib": "report",
    **dict.fromkeys(("tensorrt", "pycuda"), "tensorrt"),
}

#: torch devices of the host commands (the closed sets of the deployment commands come from their modules)
DEVICES = ("auto", "cpu", "cuda")


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """One line naming the extra to install for a missing optional module; None for any other module."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return f"this command needs {top}, which is not installed here; install it with pip install 'edge-unlearn[{extra}]'"


def report_error(exc: BaseException) -> int | None:
    """Print the one line for a user-fixable error and return its exit code; None when ``exc`` is a bug."""
    if isinstance(exc, EdgeUnlearnError):
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    if isinstance(exc, ModuleNotFoundError):
        message = missing_extra_message(exc)
        if message is not None:
            click.echo(f"error: {message}", err=True)
            return 2
    return None


class EdgeUnlearnGroup(click.Group):
    """The ``edge-unlearn`` group and its one error handler: a bad option (click's usage errors), every
    :class:`EdgeUnlearnError` and every missing optional module (a missing extra) becomes one line on stderr
    and exit code 2; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            command = (exc.ctx or ctx).command_path
            click.echo(f"error: {exc.format_message()} (see `{command} --help`)", err=True)
            ctx.exit(2)
        except (EdgeUnlearnError, ModuleNotFoundError) as exc:
            code = report_error(exc)
            if code is None:
                raise
            ctx.exit(code)
        except (KeyboardInterrupt, click.exceptions.Abort):
            # click would print "Aborted!" with exit 1, which a pipeline reads as a failed validation
            click.echo("error: interrupted (Ctrl-C); no output was written (temporary files are removed)", err=True)
            ctx.exit(2)


def handle_errors(fn: Callable) -> Callable:
    """For a command run outside the group (tests, other programs): the group's error handling on one command.
    Commands in the group do not need it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (EdgeUnlearnError, ModuleNotFoundError) as exc:
            code = report_error(exc)
            if code is None:
                raise
            sys.exit(code)

    return wrapper


def output_options(fn: Callable) -> Callable:
    """``--json`` (print the result as JSON on stdout, nothing else), ``--json-out PATH`` (also write it to a
    file) and ``-q/--quiet`` (print nothing but errors and the verdict): the same three on every command."""
    fn = click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (and a verdict line).")(fn)
    fn = click.option(
        "--json-out",
        "json_out",
        type=click.Path(dir_okay=False),
        default=None,
        help="Also write the result as JSON to this file.",
    )(fn)
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (only that).")(fn)


def _set_workers(_ctx: click.Context, _param: click.Parameter, value: int) -> int:
    """Every dataset this command reads is loaded through ``value`` worker processes (torch imported only when
    data is read: a default of 0 leaves a torch-free command torch-free)."""
    if value or "edge_unlearn.data" in sys.modules:
        from edge_unlearn.data import set_default_workers

        set_default_workers(value)
    return value


def workers_option(fn: Callable) -> Callable:
    """``--workers N``: image-decoding processes of the data loaders (issue #12)."""
    return click.option(
        "--workers",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        expose_value=False,
        callback=_set_workers,
        help="Processes decoding images for the data loaders (0: in this process; worth it for image folders).",
    )(fn)


def echo_json(data: Any) -> None:
    click.echo(to_json_text(data))


def write_json(path: str | Path | None, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (nothing when ``path`` is None)."""
    if path:
        with atomic_output(path) as tmp:
            Path(tmp).write_text(to_json_text(data) + "\n")


def emit(data: Any, as_json: bool, json_out: str | None, quiet: bool = False, line: str | None = None) -> None:
    """The output of :func:`output_options`: write ``--json-out``; print the JSON on ``--json``, else ``line``
    (the human summary) unless ``--quiet``."""
    write_json(json_out, data)
    if as_json:
        echo_json(data)
    elif line is not None and not quiet:
        click.echo(line)


def say(quiet: bool, as_json: bool = False) -> Callable[[str], None]:
    """``click.echo`` for human lines, silenced by ``--quiet``; with ``--json`` they go to stderr so stdout
    holds only the JSON."""
    if quiet:
        return lambda _msg: None
    return functools.partial(click.echo, err=True) if as_json else click.echo


def progress_enabled(quiet: bool = False, as_json: bool = False) -> bool:
    """Progress bars only on a terminal: never in --quiet/--json mode or when stderr goes to a file or pipe
    (a log should not receive thousands of carriage-return updates)."""
    return not (quiet or as_json) and sys.stderr.isatty()


def parse_key_values(items: tuple[str, ...], option: str) -> tuple[tuple[str, Any], ...]:
    """``KEY=VALUE`` options (``--set``, ``--arch-arg``, ``--recipe``): VALUE as JSON when it parses, else the text."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} takes KEY=VALUE (a JSON value or text), got {item!r}")
        try:
            out.append((key.strip(), json.loads(value)))
        except json.JSONDecodeError:
            out.append((key.strip(), value))
    return tuple(out)
