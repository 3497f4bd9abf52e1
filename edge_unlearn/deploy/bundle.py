"""The evaluation bundle: a torch-free .npz that lets a device validate a model without the dataset or torch.

Arrays (``np.load(allow_pickle=False)`` reads them all): ``inputs`` float32 [N, C, H, W] (preprocessed test
images), ``labels`` int64 [N], ``reference_logits`` float32 [N, num_classes] (the FP32 checkpoint's logits,
forgotten classes = MASK_VALUE), ``class_names`` str [num_classes], ``forgotten_classes`` int64 [K] and
``indices`` int64 [N] (the test-split rows drawn) and ``meta_json`` (one JSON string: format, source sha256,
dataset, normalisation, input shape, mask value, ``provenance`` and ``digest``).
Optional ``audit_*`` arrays (``bundle --audit``): the feature-level audit's probe, forget samples and FP32
figures (:mod:`edge_unlearn.deploy.audit`, docs/audit.md), each with its own digest in ``audit_json``.

Format 2 puts the bundle inside the evidence: ``provenance`` names the dataset (spec and sha256), the split, the
drawn ``indices`` and the sha256 of the checkpoint that made the reference logits; ``digest`` is the sha256 of
every core array and of the metadata (provenance included). :func:`load_bundle` refuses a bundle whose digest does
not match (its samples, labels or reference logits were replaced after ``edge-unlearn bundle`` wrote it) or whose
provenance names another checkpoint than ``source_sha256``. Format 1 (no digest) is refused, not read with a
warning: a gate that still reads it would let anyone pass off edited samples as an old bundle.

This module reads bundles (device side); :mod:`edge_unlearn.export.bundle` writes them from a checkpoint.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn.errors import ModelFileError
from edge_unlearn.fileio import sha256_file

from .audit import AuditData, array_digest, read_audit

FORMAT = "edge-unlearn.bundle/2"
#: formats refused with how to remake the bundle (no digest: nothing binds their arrays to their provenance)
OLD_FORMATS = ("edge-unlearn.bundle/1",)
ARRAYS = ("inputs", "labels", "reference_logits", "class_names", "forgotten_classes", "meta_json")
#: the arrays the digest covers (the audit arrays carry their own digests in ``audit_json``)
DIGESTED = ("inputs", "labels", "reference_logits", "class_names", "forgotten_classes", "indices")
#: what ``provenance`` must name
PROVENANCE = ("dataset", "dataset_sha256", "split", "checkpoint_sha256")
REMAKE = "remake it with `edge-unlearn bundle CHECKPOINT --dataset SPEC -o BUNDLE.npz`"


@dataclass(frozen=True)
class Bundle:
    inputs: np.ndarray
    labels: np.ndarray
    reference_logits: np.ndarray
    class_names: tuple[str, ...]
    forgotten_classes: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    sha256: str = ""
    #: the feature-level audit's data (``bundle --audit``); None without
    audit: AuditData | None = None
    #: the test-split rows drawn (provenance) and the digest over the arrays and the metadata
    indices: np.ndarray | None = None
    digest: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def retained_classes(self) -> list[int]:
        gone = set(self.forgotten_classes)
        return [c for c in range(self.num_classes) if c not in gone]

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "samples": int(len(self.labels)),
            "num_classes": self.num_classes,
            "forgotten_classes": list(self.forgotten_classes),
            "source_sha256": self.meta.get("source_sha256"),
            "dataset": self.meta.get("dataset"),
            "audit": self.audit is not None,
            "format": self.meta.get("format"),
            "digest": self.digest,
            "provenance": self.meta.get("provenance"),
        }


def bundle_digest(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """sha256 over the digested arrays (dtype, shape, bytes) and the metadata without its ``digest`` entry."""
    import hashlib

    record = {
        "arrays": {name: array_digest(np.asarray(arrays[name])) for name in DIGESTED},
        "meta": {k: v for k, v in meta.items() if k != "digest"},
    }
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def write_bundle(handle: Any, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write a format-2 bundle to an open binary ``handle``: ``arrays`` (the core ones, ``indices`` and any
    ``audit_*``) and ``meta`` (with ``provenance``), the digest added here."""
    meta = {**meta, "format": FORMAT}
    meta["digest"] = bundle_digest(arrays, meta)
    np.savez_compressed(handle, **arrays, meta_json=np.asarray(json.dumps(meta)))


def _check_evidence(data: dict[str, np.ndarray], meta: dict[str, Any], path: Path) -> str:
    """The digest matches and the provenance names the checkpoint of the reference logits; returns the digest."""
    provenance = meta.get("provenance")
    if "indices" not in data or not isinstance(provenance, dict) or any(k not in provenance for k in PROVENANCE):
        raise ModelFileError(f"{path}: the bundle lacks its provenance (indices, dataset, checkpoint); {REMAKE}")
    indices = data["indices"]
    if indices.ndim != 1 or indices.dtype.kind not in "iu" or len(indices) != len(data["labels"]):
        raise ModelFileError(f"{path}: array indices does not list one test-split row per sample; {REMAKE}")
    recorded = meta.get("digest")
    try:
        actual = bundle_digest(data, meta)
    except ValueError as exc:  # a NaN or infinity in the metadata: not what `bundle` writes
        raise ModelFileError(f"{path}: the bundle's metadata is not plain JSON ({exc}); {REMAKE}") from exc
    if recorded != actual:
        raise ModelFileError(
            f"{path}: the bundle's arrays or provenance changed after the bundle was written (digest "
            f"{str(recorded)[:16]}… recorded, {actual[:16]}… now: samples, labels or reference logits replaced?); "
            f"{REMAKE}"
        )
    if provenance.get("checkpoint_sha256") != meta.get("source_sha256"):
        raise ModelFileError(
            f"{path}: the reference logits were made by checkpoint {str(provenance.get('checkpoint_sha256'))[:12]}… "
            f"but the bundle names {str(meta.get('source_sha256'))[:12]}…; {REMAKE}"
        )
    return actual


#: preprocessed inputs beyond this are no image (raw 0..255 pixels are far inside; issue 30: 1e300 was exit 1)
INPUT_LIMIT = 1e6


def _check_arrays(data: dict[str, np.ndarray], path: Path) -> None:
    """Ranks and kinds of the arrays (a fuzzed bundle must fail in one line, not deep in numpy)."""
    expect = {
        "inputs": (4, "fiu"),
        "labels": (1, "iu"),
        "reference_logits": (2, "fiu"),
        "class_names": (1, "U"),
        "forgotten_classes": (1, "iu"),
        "meta_json": (0, "U"),
    }
    for name, (ndim, kinds) in expect.items():
        array = data[name]
        if array.ndim != ndim or array.dtype.kind not in kinds:
            raise ModelFileError(
                f"{path}: array {name} is {array.dtype} of shape {list(array.shape)}, expected a "
                f"{ndim}-D {'text' if kinds == 'U' else 'numeric'} array; re-create the bundle with "
                "`edge-unlearn bundle`"
            )
    for name, limit in (("inputs", INPUT_LIMIT), ("reference_logits", float(np.finfo(np.float32).max))):
        if data[name].size and not np.abs(data[name].astype(np.float64)).max() <= limit:  # NaN fails too (issue 30)
            raise ModelFileError(
                f"{path}: array {name} holds NaN, Inf or values beyond {limit:.3g}; re-create the bundle with "
                "`edge-unlearn bundle`"
            )
    c = len(data["class_names"])
    forgotten = data["forgotten_classes"]
    if forgotten.size and (
        forgotten.min() < 0 or forgotten.max() >= c or len(set(forgotten.tolist())) != forgotten.size
    ):
        raise ModelFileError(
            f"{path}: forgotten_classes {forgotten.tolist()} are not distinct classes of 0..{c - 1}; "
            "re-create the bundle"
        )


def load_bundle(path: str | Path) -> Bundle:
    """Read and check a bundle (no torch). ModelFileError with a one-line fix when it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"bundle {path} not found; make one with `edge-unlearn bundle CHECKPOINT --dataset SPEC -o {path.name}`"
        )
    if not zipfile.is_zipfile(path):  # else numpy's own message suggests unpickling the file
        raise ModelFileError(
            f"{path} is not a readable .npz bundle (not a zip archive: another kind of file?); "
            "make one with `edge-unlearn bundle`"
        )
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in ARRAYS if k not in arrays.files]
            if missing:
                raise ModelFileError(
                    f"{path} is not an edge-unlearn evaluation bundle (lacks {', '.join(missing)}); "
                    "make one with `edge-unlearn bundle`"
                )
            data = {k: arrays[k] for k in ARRAYS}
            if "indices" in arrays.files:
                data["indices"] = arrays["indices"]
            audit_arrays = {k: arrays[k] for k in arrays.files if k.startswith("audit_")}
        meta = json.loads(str(data["meta_json"]))
    except ModelFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises OSError, EOFError, BadZipFile, TokenError... on damage
        raise ModelFileError(
            f"{path} is not a readable .npz bundle ({exc}); re-create it with `edge-unlearn bundle`"
        ) from exc
    if isinstance(meta, dict) and meta.get("format") in OLD_FORMATS:
        raise ModelFileError(
            f"{path}: bundle format {meta['format']} carries no digest, so nothing shows that its samples and "
            f"reference logits are the ones `edge-unlearn bundle` wrote; {REMAKE}"
        )
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(
            f"{path}: bundle format {meta.get('format') if isinstance(meta, dict) else meta!r} is not {FORMAT}; re-create it with `edge-unlearn bundle`"
        )
    _check_arrays(data, path)
    bundle = Bundle(
        inputs=np.ascontiguousarray(data["inputs"], dtype=np.float32),
        labels=np.asarray(data["labels"], dtype=np.int64),
        reference_logits=np.asarray(data["reference_logits"], dtype=np.float32),
        class_names=tuple(str(n) for n in data["class_names"]),
        forgotten_classes=tuple(int(c) for c in data["forgotten_classes"]),
        meta=meta,
        path=str(path),
        sha256=sha256_file(path),
    )
    n, c = len(bundle.labels), bundle.num_classes
    if n == 0 or c == 0:
        raise ModelFileError(
            f"{path} holds no samples (or no classes); re-create it with `edge-unlearn bundle` from a "
            "dataset whose test split is not empty"
        )
    if bundle.inputs.ndim != 4 or len(bundle.inputs) != n or bundle.reference_logits.shape != (n, c):
        raise ModelFileError(
            f"{path}: array shapes disagree (inputs {bundle.inputs.shape}, labels {n}, "
            f"reference_logits {bundle.reference_logits.shape}, {c} classes); re-create the bundle"
        )
    if n and (bundle.labels.min() < 0 or bundle.labels.max() >= c):
        raise ModelFileError(f"{path}: labels outside 0..{c - 1}; re-create the bundle")
    digest = _check_evidence(data, meta, path)
    from dataclasses import replace

    bundle = replace(bundle, indices=np.asarray(data["indices"], dtype=np.int64), digest=digest)
    if audit_arrays:
        bundle = replace(
            bundle, audit=read_audit(audit_arrays, str(path), c, bundle.forgotten_classes, n, bundle.inputs.shape[1:])
        )
    return bundle
