"""Run-folder records: one JSON file per command (kind, payload, artefacts + sha256), append-only; the folder's
file names and formats. See :mod:`edge_unlearn.deploy.rundir`."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edge_unlearn import __version__
from edge_unlearn.errors import ModelFileError, UsageError
from edge_unlearn.fileio import atomic_output, sha256_file

RECORD_FORMAT = "edge-unlearn.record/1"
MANIFEST_FORMAT = "edge-unlearn.manifest/1"
RECORDS = "records"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SIGNATURE_FORMAT = "edge-unlearn.signature/1"
#: files ``report`` rewrites by design: not held to the previous manifest's hash
REWRITTEN = ("report.html",)
KINDS = ("train", "forget", "retrain", "evaluate", "export", "quantize", "bundle", "validate", "bench", "demo")
_RECORD_RE = re.compile(r"^(\d+)-([a-z0-9_-]+)\.json$")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _to_text(data: Any) -> str:
    from edge_unlearn.core.jsontext import to_json_text

    plain = json.loads(json.dumps(data, default=str))  # Paths, numpy scalars ... -> their text
    return to_json_text(plain) + "\n"


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form when inside it, else absolute."""
    path = path.resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _resolve(entry: str, root: Path) -> Path:
    p = Path(entry)
    if not p.is_absolute() and ".." in p.parts:
        raise ModelFileError(
            f"manifest/record path {entry!r} climbs out of the run folder; the folder was tampered with"
        )
    return p if p.is_absolute() else root / p


def _ignored(rel: str) -> bool:
    return rel in (MANIFEST, SIGNATURE)  # issue 30: a `.*.tmp` file is listed or unlisted like any other


def record(
    run_dir: str | Path, kind: str, payload: dict[str, Any], artefacts: Iterable[str | Path] = (), copy: bool = False
) -> Path:
    """Append ``records/<n>-<kind>.json`` (n = next free number) with the payload and each artefact's path,
    sha256 and size; returns the record's path. ``copy`` copies outside artefacts into ``artefacts/``."""
    if not re.fullmatch(r"[a-z0-9_-]+", kind):
        raise UsageError(f"record kind must be lower-case letters, digits, '-' or '_', got {kind!r}")
    root = Path(run_dir)
    if root.exists() and not root.is_dir():
        raise UsageError(f"--run-dir {root} is a file; give a folder")
    folder = root / RECORDS
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create run folder {folder} ({exc.strerror}); give a writable --run-dir") from exc
    entries = []
    for item in artefacts:
        src = Path(item)
        if not src.is_file():
            raise ModelFileError(f"cannot record artefact {src}: no such file")
        if copy and _rel(src, root) == str(src.resolve()):
            dest_dir = root / "artefacts"
            dest_dir.mkdir(exist_ok=True)
            dest = dest_dir / src.name
            with atomic_output(dest) as tmp:
                shutil.copyfile(src, tmp)
            src = dest
        entries.append({"path": _rel(src, root), "sha256": sha256_file(src), "bytes": src.stat().st_size})
    data = {
        "format": RECORD_FORMAT,
        "kind": kind,
        "created": _now(),
        "edge_unlearn": __version__,
        "artefacts": entries,
        "payload": payload,
    }
    while True:  # reserve the next number atomically (two writers never take the same one)
        numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _RECORD_RE.match(p.name))]
        n = max(numbers, default=0) + 1
        target = folder / f"{n:04d}-{kind}.json"
        try:
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        break
    try:
        with atomic_output(target) as tmp:
            Path(tmp).write_text(_to_text(data))
    except BaseException:
        target.unlink(missing_ok=True)  # give the reserved number back; never leave an empty record
        raise
    return target


def read_records(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Every record in number order (optionally of one kind); each gets ``_file`` (its name)."""
    folder = Path(run_dir) / RECORDS
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _RECORD_RE.match(p.name)
        if not m or (kind is not None and m.group(2) != kind):
            continue
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"run record {p} is unreadable ({exc}); the run folder was damaged") from exc
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            raise ModelFileError(f"{p} is not an edge-unlearn run record ({RECORD_FORMAT})")
        arts = data.get("artefacts", [])
        if (
            not isinstance(data.get("kind"), str)
            or not isinstance(data.get("payload", {}), dict)
            or not isinstance(arts, list)
            or not all(
                isinstance(a, dict) and isinstance(a.get("path"), str) and isinstance(a.get("sha256"), str)
                for a in arts
            )
        ):
            raise ModelFileError(
                f"run record {p} is damaged (kind, payload or artefacts missing or of the wrong type); "
                "the run folder was edited: redo the run in a fresh --run-dir"
            )
        data["_file"] = p.name
        found.append((int(m.group(1)), data))
    return [d for _, d in sorted(found, key=lambda t: t[0])]


def refuse_signed(run_dir: str | Path) -> None:
    """Raise UsageError for a signed folder: re-rendering the report would rewrite report.html and the manifest
    and break the signature, so ``report`` refuses before writing anything."""
    root = Path(run_dir)
    if (root / SIGNATURE).exists():
        raise UsageError(
            f"{root} is signed ({SIGNATURE}); a new report would change signed files: check it with "
            f"`edge-unlearn verify {root} --key PUB`, or move {SIGNATURE} away and sign again after"
        )
