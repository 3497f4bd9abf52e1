"""On-disk formats: their tags and versions, the precisions, and the one reader of a checkpoint's header.

Every file edge-unlearn writes names its format and version in a ``format`` field (``<name>/<version>``):

=====================  =================================  ==============================================
file                   tag                                where it is written
=====================  =================================  ==============================================
checkpoint header      ``edge-unlearn/1``                 :mod:`edge_unlearn.checkpoint` (safetensors)
bench results          ``edge-unlearn.bench/1``           :mod:`edge_unlearn.deploy.bench`
=====================  =================================  ==============================================

The ONNX metadata, bundle, sidecar, run records and validation JSON keep their tags in their own modules
(:mod:`edge_unlearn.deploy.onnx_meta`, ``bundle``, ``sidecar``, ``rundir``, ``validate``).

A checkpoint is read here without torch or safetensors: a safetensors file starts with an 8-byte
little-endian header length, then that many bytes of JSON whose ``__metadata__`` map holds string values;
edge-unlearn keeps all its metadata as JSON under the one key ``edge_unlearn``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from edge_unlearn.errors import CheckpointError, UsageError

#: format tag of the ``edge_unlearn`` entry of a checkpoint's safetensors header
CHECKPOINT_FORMAT = "edge-unlearn/1"
#: the safetensors metadata key that holds it
CHECKPOINT_METADATA_KEY = "edge_unlearn"
#: format tag of a bench result file
BENCH_FORMAT = "edge-unlearn.bench/1"
#: the precisions an artefact can have (ONNX models, engines, bench and validation rows)
PRECISIONS = ("fp32", "fp16", "int8")
#: a safetensors header larger than this is refused (the format itself caps it at 100 MB)
MAX_SAFETENSORS_HEADER = 100 * 2**20


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` map of a safetensors file (no tensors read). Raises :class:`CheckpointError`
    for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} not found; train one with `edge-unlearn train -o {path}`")
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > MAX_SAFETENSORS_HEADER:
                raise ValueError(f"header of {size} bytes exceeds the safetensors limit")
            raw = handle.read(size)
            if len(raw) != size:
                raise ValueError("file ends inside its header")
        header = json.loads(raw)
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict):
            raise ValueError("__metadata__ is not a map")
    except (OSError, ValueError, struct.error, AttributeError) as exc:
        kind = _other_artefact_kind(path)
        if kind:  # a mixed-up argument, not a damaged file: say so rather than "re-create it"
            raise CheckpointError(
                f"{path} is {kind}, not a checkpoint: give the .safetensors checkpoint from "
                "`edge-unlearn train`/`forget` here"
            ) from exc
        raise CheckpointError(
            f"{path} is not a valid safetensors checkpoint ({exc}); the file is corrupt or of "
            "another format: re-create it with `edge-unlearn train`"
        ) from exc
    return {str(k): str(v) for k, v in metadata.items()}


def _other_artefact_kind(path: Path) -> str | None:
    """What another edge-unlearn artefact passed where a checkpoint belongs is (by suffix, or the zip magic of
    an .npz), or None."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "an ONNX model"
    if suffix in (".plan", ".engine"):
        return "a TensorRT engine"
    try:
        with open(path, "rb") as handle:
            if handle.read(4) == b"PK\x03\x04":
                return "a zip/.npz archive (a dataset or an evaluation bundle)"
    except OSError:
        return None
    return None


def parse_checkpoint_metadata(metadata: dict[str, str], path: str | Path = "checkpoint") -> dict[str, Any]:
    """The edge-unlearn metadata (a dict with ``format`` == :data:`CHECKPOINT_FORMAT`) from a safetensors
    ``__metadata__`` map; :class:`CheckpointError` when it is absent, unreadable or of another format."""
    try:
        data = json.loads(metadata[CHECKPOINT_METADATA_KEY]) if CHECKPOINT_METADATA_KEY in metadata else {}
    except ValueError as exc:
        raise CheckpointError(
            f"{path} has unreadable edge-unlearn metadata ({exc}); re-create it with `edge-unlearn train`"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not an edge-unlearn checkpoint (no '{CHECKPOINT_FORMAT}' metadata); "
            "train one with `edge-unlearn train` or convert your model with edge_unlearn.checkpoint.save_checkpoint"
        )
    return data


def read_checkpoint_header(path: str | Path) -> dict[str, Any]:
    """The edge-unlearn metadata of a checkpoint as JSON (arch, classes, input shape, normalisation, forgotten
    classes, lineage, ...), read without torch; :class:`CheckpointError`/:class:`UsageError` when unreadable."""
    return parse_checkpoint_metadata(read_safetensors_metadata(path), path)
