"""Argument guards: range and type checks that commands call with one line where they parse input (no torch).

Each raises :class:`~edge_unlearn.errors.UsageError` (one line, exit 2) saying which option is wrong and what it
takes; :func:`check_finite_tensors` raises :class:`~edge_unlearn.errors.CheckpointError`. Issue #13's list of
inputs that used to print tracebacks or wrote NaN weights with exit 0 is the reason for each guard.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import CheckpointError, UsageError

#: method parameters that only make sense above zero
POSITIVE_PARAM = re.compile(r"(^|_)(lr|steps|epochs|batch_size|samples|temperature|iterations)($|_)")
#: largest batch a benchmark or validation is asked to run in one call
MAX_BATCH = 8192


def check_number(
    option: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_open: bool = False,
    integer: bool = False,
) -> None:
    """``value`` is a finite number (an int when ``integer``) within the bounds; None passes (= default)."""
    if value is None:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise UsageError(f"{option} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if min_open else value < minimum):
        bound = f"greater than {minimum:g}" if min_open else f"at least {minimum:g}"
        raise UsageError(f"{option} must be {bound}, got {value!r}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{option} must be at most {maximum:g}, got {value!r}")


#: largest image a model may declare (elements of one [C, H, W] input)
MAX_INPUT_ELEMENTS = 1 << 24


def check_input_shape(shape: Any, where: str) -> None:
    """A declared [channels, height, width] that is plausible (else a 100000x100000 header allocates forever)."""
    from .errors import CheckpointError as _Error

    values = [v for v in shape] if isinstance(shape, (list, tuple)) else None
    if (
        values is None
        or len(values) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
        or math.prod(values) > MAX_INPUT_ELEMENTS
    ):
        raise _Error(
            f"{where}: input shape {shape!r} is not a plausible [channels, height, width] (at most "
            f"{MAX_INPUT_ELEMENTS} values); the header was edited: re-create the file"
        )


def check_checkpoint_meta(meta: Any, where: str) -> None:
    """A checkpoint header that makes sense: plausible input shape, one name per class, forgotten classes in range."""
    check_input_shape(tuple(meta.input_shape), where)
    n = meta.num_classes
    forgotten = list(meta.forgotten_classes)
    if (
        not isinstance(n, int)
        or isinstance(n, bool)
        or n < 1
        or len(meta.class_names) != n
        or any(not isinstance(c, int) or not 0 <= c < n for c in forgotten)
        or len(set(forgotten)) != len(forgotten)
    ):
        raise CheckpointError(
            f"{where}: header is inconsistent ({n!r} classes, {len(meta.class_names)} class names, "
            f"forgotten {forgotten}); the file was edited: re-create it with `edge-unlearn train`"
        )


def _field_kind(field: dataclasses.Field) -> str:
    text = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    parts = {p.strip() for p in str(text).split("|")} - {"None"}
    return parts.pop() if len(parts) == 1 else ""


def check_params(config_cls: type, values: Mapping[str, Any], option: str = "--set") -> None:
    """Method parameters against their config dataclass: the field's type (int / float / bool / str), finite
    numbers, and > 0 for learning rates, step/epoch/sample counts, batch sizes and temperatures."""
    if not dataclasses.is_dataclass(config_cls):
        return
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for key, value in values.items():
        field = fields.get(key)
        if field is None or value is None:
            continue
        kind = _field_kind(field)
        name = f"{option} {key}"
        if kind == "bool":
            if not isinstance(value, bool):
                raise UsageError(f"{name} must be true or false, got {value!r}")
        elif kind in ("int", "float"):
            check_number(name, value, integer=kind == "int")
            if POSITIVE_PARAM.search(key) and value <= 0:
                raise UsageError(f"{name} must be greater than 0, got {value!r}")
        elif kind == "str" and not isinstance(value, str):
            raise UsageError(f"{name} must be text, got {value!r}")


def check_labels(spec: str, y_train: Any, y_test: Any) -> None:
    """Labels are whole numbers >= 0 and the test split is not empty (else: truncated float labels, NaN
    accuracies)."""
    import numpy as np

    from .errors import DataError

    for name, labels in (("y_train", y_train), ("y_test", y_test)):
        array = np.asarray(labels)
        if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and not np.all(np.isfinite(array))):
            raise DataError(f"{spec}: {name} must hold whole-number class labels, got dtype {array.dtype}")
        if array.dtype.kind == "f" and np.any(array != np.round(array)):
            raise DataError(
                f"{spec}: {name} holds fractional labels (e.g. {array[array != np.round(array)][0]}); "
                "labels must be whole class numbers"
            )
        if array.size and array.min() < 0:
            raise DataError(f"{spec}: {name} holds negative labels; labels must lie in 0..classes-1")
    if np.asarray(y_test).size == 0:
        raise DataError(f"{spec}: the test split is empty; give x_test/y_test with at least one image per class")
    check_class_count(spec, y_train, y_test)  # issue 30: before anything is sized by the largest label


def check_every_class_present(dataset: Any) -> None:
    """Training: every class 0..C-1 has training images (labels 5..14 would make a 15-class model with 5 empty
    classes). Subsets of classes are fine elsewhere (calibration, forget sets), so only `train` calls this."""
    from .errors import DataError

    present = set(int(c) for c in dataset.y_train.unique().tolist())
    missing = sorted(set(range(dataset.num_classes)) - present)
    if missing:
        shown = ", ".join(str(c) for c in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise DataError(
            f"{dataset.spec}: classes {shown} have no training images; renumber the labels 0..C-1 so "
            "that every class is present"
        )


def check_finite_tensors(tensors: Mapping[str, Any], where: str, writing: bool = False) -> None:
    """Every floating-point tensor (torch or numpy) is finite; else CheckpointError naming the first bad one."""
    import numpy as np

    for name, tensor in tensors.items():
        if hasattr(tensor, "is_floating_point"):
            ok = not tensor.is_floating_point() or bool(tensor.isfinite().all())
        else:
            array = np.asarray(tensor)
            ok = array.dtype.kind != "f" or bool(np.isfinite(array).all())
        if not ok:
            if writing:
                raise CheckpointError(
                    f"refusing to write {where}: tensor {name!r} holds NaN/Inf (training diverged); "
                    "lower the learning rate and run again"
                )
            raise CheckpointError(
                f"{where}: tensor {name!r} holds NaN/Inf; the checkpoint is unusable: re-create it "
                "with a lower learning rate"
            )


def check_outputs(outputs: Mapping[str, Any], inputs: Iterable[Any] = (), run_dir: Any = None) -> None:
    """Before any work: every output path (option -> path; None skipped) is writable and no input; ``run_dir`` is
    a folder (or can be made) and writable."""
    from .fileio import check_output_path

    inputs = [i for i in inputs if i is not None]
    for option, path in outputs.items():
        if path is not None and path != "-":
            check_output_path(path, inputs, option)
    check_run_dir(run_dir)


def check_run_dir(run_dir: Any) -> None:
    """``--run-dir`` is a folder (or can be made) and writable; None passes."""
    import os
    from pathlib import Path

    if run_dir is None:
        return
    root = Path(run_dir)
    if root.exists() and not root.is_dir():
        raise UsageError(f"--run-dir {root} is a file; give a folder")
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--run-dir {root} cannot be created or written ({probe} is not a writable folder)")


def check_needs_flag(flag: str, on: bool, given: Mapping[str, Any]) -> None:
    """Options that only apply with ``flag`` (e.g. the ``--audit-*`` thresholds without ``--audit``) are refused
    when ``flag`` is off, naming them and the flag to add."""
    named = [option for option, value in given.items() if value is not None and value is not False]
    if named and not on:
        verb, pronoun = ("belongs", "it") if len(named) == 1 else ("belong", "them")
        raise UsageError(f"{', '.join(named)} {verb} to {flag}: add {flag} or drop {pronoun}")


#: the most classes a dataset may have (ImageNet-21k has 21,841): a larger label is a corrupt file, and the class
#: names, the head and the per-class tables sized by it would exhaust memory (one label of 10**9 made `train`
#: allocate 23.6 GB until the kernel killed it)
MAX_CLASSES = 100_000


def check_class_count(spec: str, y_train: Any, y_test: Any) -> None:
    """Labels lie in 0..C-1 with C <= :data:`MAX_CLASSES`, checked on the raw arrays before anything is allocated
    from the largest label (its class count)."""
    import numpy as np

    from .errors import DataError

    for name, labels in (("y_train", y_train), ("y_test", y_test)):
        array = np.asarray(labels)
        top = array.max() if array.size and array.dtype.kind in "iuf" else 0
        if top >= MAX_CLASSES:
            shown = int(top) if top < 1e15 else f"{float(top):g}"
            raise DataError(
                f"{spec}: {name} holds label {shown}; labels must be 0..C-1 with at most "
                f"{MAX_CLASSES:,} classes: renumber the classes 0..C-1"
            )
