"""Shared pieces of the click commands: the group with the one error handler, the command class that keeps renamed
options' old spellings, closed-set choices and JSON output (the option groups are in :mod:`.options`). Imports no
torch.

Library modules never import this module (an import-linter contract in pyproject.toml); they take what they need
from :mod:`edge_unlearn.core`.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
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


def one_line(text: str) -> str:
    """``text`` on one line whatever it quotes: every character that ends a line (``str.splitlines``: \\n, \\r,
    \\x85, \\u2028, ...) and every other non-printable one is written as its escape."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def report_error(exc: BaseException) -> int | None:
    """Print the one line for a user-fixable error and return its exit code; None when ``exc`` is a bug."""
    if isinstance(exc, EdgeUnlearnError):
        click.echo(f"error: {one_line(str(exc))}", err=True)
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
            click.echo(f"error: {one_line(exc.format_message())} (see `{command} --help`)", err=True)
            ctx.exit(2)
        except (EdgeUnlearnError, ModuleNotFoundError) as exc:
            code = report_error(exc)
            if code is None:
                raise
            ctx.exit(code)
        except (KeyboardInterrupt, click.exceptions.Abort):
            interrupted()

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except KeyboardInterrupt:  # while parsing, or outside invoke: the same one line
            interrupted()


class Command(click.Command):
    """A command whose renamed options keep their old spelling for one release: ``renamed`` maps an old
    spelling to the new one; the old one still works and prints one warning line on stderr."""

    def __init__(self, *args: Any, renamed: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        self.renamed = dict(renamed or {})
        if self.renamed:
            note = "; ".join(f"{old} (now {new})" for old, new in self.renamed.items())
            epilog = f"Deprecated spellings, kept for one release: {note}."
            kwargs["epilog"] = f"{kwargs['epilog']}\n\n{epilog}" if kwargs.get("epilog") else epilog
        super().__init__(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, rename_args(args, self.renamed))


EdgeUnlearnGroup.command_class = Command


def rename_args(args: Sequence[str], renamed: Mapping[str, str]) -> list[str]:
    """``args`` with each deprecated spelling (``--old`` or ``--old=VALUE``, before a ``--``) replaced by its new
    name, warning once per spelling."""
    out: list[str] = []
    warned: set[str] = set()
    for i, arg in enumerate(args):
        if arg == "--":
            out.extend(args[i:])
            break
        name, eq, value = arg.partition("=")
        new = renamed.get(name)
        if new is not None:
            if name not in warned:
                click.echo(f"warning: {name} is deprecated; use {new}", err=True)
                warned.add(name)
            arg = new + eq + value
        out.append(arg)
    return out


#: the exit status of a program stopped by Ctrl-C (128 + SIGINT), as shells report it
INTERRUPTED = 130


def interrupted() -> None:
    """Ctrl-C: one line and exit 130 (never click's "Aborted!" with exit 1, which a gate reads as a failed
    validation, nor a traceback)."""
    click.echo("error: interrupted (Ctrl-C); no output was written (temporary files are removed)", err=True)
    try:  # the interrupt is handled: a second Ctrl-C while the interpreter shuts down must not turn 130 into -2
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread (an embedding application's worker): it keeps its own handler
        pass
    sys.exit(INTERRUPTED)


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
