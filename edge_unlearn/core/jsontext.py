"""Strict JSON text for files and ``--json`` output: NaN and Inf become null (strict parsers reject NaN)."""

from __future__ import annotations

import json
import math
from typing import Any


def clean_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (recursively through dicts, lists and tuples)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def to_json_text(data: Any) -> str:
    """Indented JSON with NaN/Inf written as null."""
    return json.dumps(clean_json(data), indent=2, sort_keys=False)
