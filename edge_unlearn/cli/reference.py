"""docs/cli.md, rendered from the click commands themselves, so the reference cannot drift from ``--help``.

``python -m edge_unlearn.cli.reference > docs/cli.md`` (or ``--write docs/cli.md``) regenerates it;
tests/test_docs.py fails when the committed file differs from :func:`render_reference`.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click

from . import main

REGENERATE = "python -m edge_unlearn.cli.reference --write docs/cli.md"

HEADER = f"""# Command-line reference

<!-- generated from the click commands by `{REGENERATE}`; do not edit by hand -->

Every command is `edge-unlearn COMMAND [OPTIONS]`. Errors print one line and exit 2; a failed validation exits 1.
`edge-unlearn COMMAND --help` prints the same text as this page.
"""


def _cell(text: str) -> str:
    """``text`` on one line, safe inside a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _help_text(text: str) -> str:
    """A docstring-style help text without click's ``\\b`` no-rewrap markers."""
    return "\n".join(line for line in inspect.cleandoc(text).splitlines() if line.strip() != "\b")


def _type(param: click.Parameter) -> str:
    """What a parameter takes: the choices of a closed set, ``flag`` for a switch, else click's type name."""
    kind = param.type
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    if isinstance(kind, click.Choice):
        return " | ".join(f"`{choice}`" for choice in kind.choices)
    if isinstance(kind, click.types._NumberRangeBase):
        return f"{'integer' if isinstance(kind, click.IntRange) else 'float'}, {kind._describe_range()}"
    return kind.name


def _default(param: click.Parameter, ctx: click.Context) -> str:
    """The default as ``--help`` would show it; empty when there is none to show."""
    default = param.get_default(ctx, call=False)
    if callable(default):
        return "computed"
    if default is None or default == () or default == "" or default is click.core.UNSET:
        return ""
    if isinstance(param, click.Option) and param.is_flag:
        if param.secondary_opts:  # --x/--no-x: name the side that is on
            return f"`{param.opts[0] if default else param.secondary_opts[0]}`"
        return "" if default is False else "on"
    if isinstance(default, (list, tuple)):
        return ", ".join(f"`{value}`" for value in default)
    return f"`{default}`"


def render_command(name: str, command: click.Command, parent: click.Context) -> str:
    """One command's section: usage, help text, arguments and an options table."""
    ctx = click.Context(command, info_name=name, parent=parent)
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines = [f"## `{name}`", "", "```text", f"edge-unlearn {name} {usage}".rstrip(), "```", ""]
    if command.help:
        lines += [_help_text(command.help), ""]
    rows = []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        if isinstance(param, click.Argument):
            rows.append((f"`{param.human_readable_name}` (argument)", _type(param), "", "required"))
            continue
        names = ", ".join(f"`{opt}`" for opt in (*param.opts, *param.secondary_opts))
        help_text = param.help or ""
        if param.required:
            help_text = f"required. {help_text}".strip()
        if param.multiple and "repeatable" not in help_text:
            help_text = f"{help_text} (repeatable)".strip()
        rows.append((names, _type(param), _default(param, ctx), help_text))
    if rows:
        lines += ["| option | takes | default | what it does |", "|---|---|---|---|"]
        lines += [f"| {' | '.join(_cell(cell) for cell in row)} |" for row in rows]
        lines.append("")
    if command.epilog:
        lines += [_help_text(command.epilog), ""]
    return "\n".join(lines)


def render_reference(group: click.Group = main) -> str:
    """The whole reference: the group's help, a command index, then one section per command (sorted)."""
    ctx = click.Context(group, info_name="edge-unlearn")
    names = group.list_commands(ctx)
    parts = [HEADER]
    if group.help:
        parts.append(_help_text(group.help) + "\n")
    parts.append(
        "| command | what it does |\n|---|---|\n"
        + "\n".join(
            f"| [`{name}`](#{name}) | {_cell(group.get_command(ctx, name).get_short_help_str(limit=200))} |"
            for name in names
        )
        + "\n"
    )
    parts += [render_command(name, group.get_command(ctx, name), ctx) for name in names]
    return "\n".join(parts).rstrip("\n") + "\n"


@click.command()
@click.option("--write", "write_to", type=click.Path(dir_okay=False), help="Write the reference to this file.")
def cli(write_to: str | None) -> None:
    """Print the command-line reference as markdown (or write it with --write)."""
    text = render_reference()
    if write_to is None:
        sys.stdout.write(text)
        return
    from ..fileio import atomic_output

    with atomic_output(write_to) as tmp:
        Path(tmp).write_text(text)


if __name__ == "__main__":
    cli()
