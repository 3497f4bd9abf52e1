"""The run folder: an append-only record of every forget/export/quantize/validate/bench, and its manifest.

Layout of a run folder (``--run-dir``)::

    records/0001-forget.json      one JSON record per command: kind, payload (its summary), artefacts + sha256
    records/0002-export.json
    ...
    report.html                   ``edge-unlearn report`` (self-contained)
    manifest.json                 sha256 and size of every file in the folder and every artefact referenced
                                  from outside it; ``edge-unlearn verify`` re-hashes against it

Artefacts inside the folder are referenced by their relative path; artefacts outside it are referenced by
absolute path (``copy=True`` copies them into ``artefacts/`` instead, so the folder is self-contained).
Imports no torch.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from edge_unlearn import __version__
from edge_unlearn.errors import ModelFileError, UsageError
from edge_unlearn.fileio import atomic_output, sha256_file

RECORD_FORMAT = "edge-unlearn.record/1"
MANIFEST_FORMAT = "edge-unlearn.manifest/1"
RECORDS = "records"
MANIFEST = "manifest.json"
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
    return p if p.is_absolute() else root / p


def _ignored(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return rel == MANIFEST or (name.startswith(".") and name.endswith(".tmp"))


def record(run_dir: str | Path, kind: str, payload: dict[str, Any], artefacts: Iterable[str | Path] = (),
           copy: bool = False) -> Path:
    """Append ``records/<n>-<kind>.json`` (n = next free number) with the payload and each artefact's path,
    sha256 and size; returns the record's path. ``copy`` copies outside artefacts into ``artefacts/``."""
    if not re.fullmatch(r"[a-z0-9_-]+", kind):
        raise UsageError(f"record kind must be lower-case letters, digits, '-' or '_', got {kind!r}")
    root = Path(run_dir)
    if root.exists() and not root.is_dir():
        raise UsageError(f"--run-dir {root} is a file; give a folder")
    folder = root / RECORDS
    folder.mkdir(parents=True, exist_ok=True)
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
    data = {"format": RECORD_FORMAT, "kind": kind, "created": _now(), "edge_unlearn": __version__,
            "artefacts": entries, "payload": payload}
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
        data["_file"] = p.name
        found.append((int(m.group(1)), data))
    return [d for _, d in sorted(found, key=lambda t: t[0])]


def _files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if not _ignored(rel) and not (Path(dirpath) / name).is_symlink():
                out.append(rel)
    return out


def write_manifest(run_dir: str | Path) -> Path:
    """Hash every file of the folder (except the manifest) and every outside artefact named in a record."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UsageError(f"run folder {root} does not exist")
    files = [{"path": rel, "sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
             for rel in _files(root)]
    outside: dict[str, dict[str, Any]] = {}
    stale = []
    for rec in read_records(root):
        for art in rec.get("artefacts", []):
            path = _resolve(art["path"], root)
            current = sha256_file(path) if path.is_file() else None
            if Path(art["path"]).is_absolute() and art["path"] not in outside and current is not None:
                outside[art["path"]] = {"path": art["path"], "sha256": current, "bytes": path.stat().st_size}
            if current != art.get("sha256"):
                stale.append({"record": rec["_file"], "path": art["path"], "recorded": art.get("sha256"),
                              "now": current})
    data = {"format": MANIFEST_FORMAT, "created": _now(), "edge_unlearn": __version__, "algorithm": "sha256",
            "files": files, "external": list(outside.values()),
            "changed_since_recorded": stale}
    target = root / MANIFEST
    with atomic_output(target) as tmp:  # a failed write keeps the previous manifest intact
        Path(tmp).write_text(_to_text(data))
    return target


@dataclass
class VerifyReport:
    """What ``verify`` found. ``bool(report)``: every listed file is present with its recorded sha256."""

    run_dir: str
    checked: int = 0
    mismatched: list[dict[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    manifest_created: str = ""

    @property
    def ok(self) -> bool:
        return self.checked > 0 and not self.mismatched and not self.missing

    def __bool__(self) -> bool:
        return self.ok

    def to_json(self) -> dict[str, Any]:
        return {"verdict": "pass" if self.ok else "fail", "run_dir": self.run_dir, "checked": self.checked,
                "mismatched": self.mismatched, "missing": self.missing, "unlisted": self.unlisted,
                "manifest_created": self.manifest_created}

    def summary(self) -> str:
        lines = [f"verify {self.run_dir}: {self.checked} files in the manifest of {self.manifest_created}"]
        lines += [f"  MODIFIED {m['path']}: sha256 {m['actual'][:16]}… but the manifest says {m['expected'][:16]}…"
                  for m in self.mismatched]
        lines += [f"  MISSING  {p}" for p in self.missing]
        lines += [f"  (not in the manifest: {p})" for p in self.unlisted]
        lines.append(f"verdict: {'PASS' if self.ok else 'FAIL'}"
                     + ("" if self.ok else f" ({len(self.mismatched)} modified, {len(self.missing)} missing)"))
        return "\n".join(lines)


def verify(run_dir: str | Path) -> VerifyReport:
    """Re-hash every file of ``manifest.json``; mismatched and missing files fail, new files are listed only."""
    root = Path(run_dir)
    path = root / MANIFEST
    if not path.is_file():
        raise ModelFileError(f"{root} has no {MANIFEST}; write it with `edge-unlearn report {root}`")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} is unreadable ({exc}); the manifest was damaged: regenerate it from a trusted "
                             "copy of the run") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ModelFileError(f"{path} is not an edge-unlearn manifest ({MANIFEST_FORMAT})")
    report = VerifyReport(str(root), manifest_created=str(data.get("created", "")))
    listed = set()
    for entry in list(data.get("files", [])) + list(data.get("external", [])):
        rel = str(entry["path"])
        listed.add(rel)
        report.checked += 1
        target = _resolve(rel, root)
        if not target.is_file():
            report.missing.append(rel)
            continue
        actual = sha256_file(target)
        if actual != entry.get("sha256"):
            report.mismatched.append({"path": rel, "expected": str(entry.get("sha256")), "actual": actual})
    report.unlisted = [rel for rel in _files(root) if rel not in listed]
    return report
