"""Shared pieces of the click commands: error handling, JSON output. Imports no torch."""
from __future__ import annotations

import functools
import json
import math
import sys
from typing import Any, Callable

import click

from .errors import EdgeUnlearnError


def handle_errors(fn: Callable) -> Callable:
    """Turn an :class:`EdgeUnlearnError` into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgeUnlearnError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json_text(data: Any) -> str:
    """JSON with NaN/Inf written as null (strict JSON parsers reject NaN)."""
    return json.dumps(_clean(data), indent=2, sort_keys=False)


def echo_json(data: Any) -> None:
    click.echo(to_json_text(data))
