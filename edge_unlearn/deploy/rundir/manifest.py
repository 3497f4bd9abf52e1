"""The run folder's manifest and ``verify``: sha256 of every file and every recorded artefact, the evidence rules
(:mod:`edge_unlearn.deploy.rundir`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_unlearn import __version__
from edge_unlearn.errors import ModelFileError, UsageError
from edge_unlearn.fileio import atomic_output, sha256_file

from .records import MANIFEST, MANIFEST_FORMAT, REWRITTEN, SIGNATURE, _ignored, _now, _resolve, _to_text, read_records
from .signing import check_signature, load_public_key


def _files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if not _ignored(rel) and not (Path(dirpath) / name).is_symlink():
                out.append(rel)
    return out


def _symlinks(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            if (Path(dirpath) / name).is_symlink():
                out.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(out)


def _entries(data: Any, where: Path) -> list[dict[str, Any]]:
    """The manifest's file and external entries, each with a str ``path`` and ``sha256`` (else ModelFileError)."""
    files, external = data.get("files", []), data.get("external", [])
    if not isinstance(files, list) or not isinstance(external, list):
        raise ModelFileError(f"{where}: 'files'/'external' are not lists; the manifest was damaged")
    for entry in files + external:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and entry["path"]
            and isinstance(entry.get("sha256"), str)
        ):
            raise ModelFileError(
                f"{where}: an entry lacks a path or sha256 ({str(entry)[:80]}); the manifest was "
                "damaged: regenerate the run from a trusted copy"
            )
    return files + external


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """``manifest.json`` parsed and shape-checked; ModelFileError (one line) when missing or damaged."""
    root = Path(run_dir)
    path = root / MANIFEST
    if not path.is_file():
        raise ModelFileError(f"{root} has no {MANIFEST}; write it with `edge-unlearn report {root}`")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(
            f"{path} is unreadable ({type(exc).__name__}); the manifest was damaged: regenerate it "
            "from a trusted copy of the run"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ModelFileError(f"{path} is not an edge-unlearn manifest ({MANIFEST_FORMAT})")
    _entries(data, path)
    return data


def _changes(root: Path) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str]]:
    """Artefacts whose bytes differ from a record or from the previous manifest.

    Returns (changes, held, current): ``held`` maps a path to the hash the new manifest must keep (the recorded
    one) and ``current`` caches the hashes computed."""
    current: dict[str, str | None] = {}

    def now(rel: str) -> str | None:
        if rel not in current:
            path = _resolve(rel, root)
            current[rel] = sha256_file(path) if path.is_file() and not path.is_symlink() else None
        return current[rel]

    changes: list[dict[str, Any]] = []
    held: dict[str, str] = {}
    for rec in read_records(root):
        for art in rec.get("artefacts", []):
            rel = art["path"]
            if now(rel) != art["sha256"]:
                changes.append({"record": rec["_file"], "path": rel, "recorded": art["sha256"], "now": now(rel)})
                held.setdefault(rel, art["sha256"])
    if (root / MANIFEST).is_file():
        try:
            previous = read_manifest(root)
        except ModelFileError:
            previous = None
            changes.append({"record": MANIFEST, "path": MANIFEST, "recorded": "a readable manifest", "now": None})
        for entry in _entries(previous, root / MANIFEST) if previous else []:
            rel = entry["path"]
            if rel in REWRITTEN:
                continue
            if now(rel) != entry["sha256"]:
                changes.append({"record": MANIFEST, "path": rel, "recorded": entry["sha256"], "now": now(rel)})
                held.setdefault(rel, entry["sha256"])
    return changes, held, {k: v for k, v in current.items() if v is not None}


def write_manifest(run_dir: str | Path) -> Path:
    """Hash every file of the folder (except the manifest and its signature) and every outside artefact named in a
    record. An artefact changed since its record (or since the previous manifest) keeps its recorded hash and is
    listed under ``changed_since_recorded``: the manifest never re-hashes a changed artefact into a pass."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UsageError(f"run folder {root} does not exist")
    if (root / SIGNATURE).exists():
        raise UsageError(
            f"{root} is signed ({SIGNATURE}); a new manifest would break the signature: render the "
            f"report elsewhere (`edge-unlearn report {root} -o OTHER.html`) or move {SIGNATURE} away "
            "and sign again"
        )
    changes, held, cache = _changes(root)
    files = []
    for rel in _files(root):
        digest = held.get(rel) or cache.get(rel) or sha256_file(root / rel)
        files.append({"path": rel, "sha256": digest, "bytes": (root / rel).stat().st_size})
    listed = {f["path"] for f in files}
    for rel, digest in held.items():  # a recorded file that vanished stays listed: verify reports it missing
        if rel not in listed and not Path(rel).is_absolute():
            files.append({"path": rel, "sha256": digest, "bytes": None})
    outside: dict[str, dict[str, Any]] = {}
    for rec in read_records(root):
        for art in rec.get("artefacts", []):
            rel = art["path"]
            if Path(rel).is_absolute() and rel not in outside:
                path = Path(rel)
                outside[rel] = {
                    "path": rel,
                    "sha256": held.get(rel) or art["sha256"],
                    "bytes": path.stat().st_size if path.is_file() else None,
                }
    data = {
        "format": MANIFEST_FORMAT,
        "created": _now(),
        "edge_unlearn": __version__,
        "algorithm": "sha256",
        "files": files,
        "external": list(outside.values()),
        "changed_since_recorded": changes,
    }
    target = root / MANIFEST
    with atomic_output(target) as tmp:  # a failed write keeps the previous manifest intact
        Path(tmp).write_text(_to_text(data))
    return target


def evidence_problems(run_dir: str | Path) -> list[str]:
    """One line per reason the folder's evidence does not hold *now* (for the report's red banner): artefacts
    changed since their record or the previous manifest, and an existing signature that this manifest breaks."""
    changes, _, _ = _changes(Path(run_dir))  # a damaged record or manifest raises: report refuses before writing
    lines = [
        f"{c['path']}: changed since {c['record']} (recorded {str(c['recorded'])[:16]}…, now "
        f"{'missing' if c['now'] is None else str(c['now'])[:16] + '…'})"
        for c in changes
    ]
    return lines


@dataclass
class VerifyReport:
    """What ``verify`` found. ``bool(report)``: every listed file present and unchanged, nothing unlisted, nothing
    changed since its record, and (when a key was given) a valid signature of the manifest."""

    run_dir: str
    checked: int = 0
    mismatched: list[dict[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    changed_since_recorded: list[dict[str, Any]] = field(default_factory=list)
    #: validate records that judged a bundle none of the folder's bundle records wrote: {"record", "digest"}
    foreign_bundles: list[dict[str, str]] = field(default_factory=list)
    signature: dict[str, Any] = field(default_factory=lambda: {"status": "not checked"})
    manifest_created: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.checked > 0
            and not self.mismatched
            and not self.missing
            and not self.unlisted
            and not self.changed_since_recorded
            and not self.foreign_bundles
            and self.signature.get("status") in ("valid", "not checked")
        )

    def __bool__(self) -> bool:
        return self.ok

    @property
    def problems(self) -> list[str]:
        lines = [
            f"MODIFIED {m['path']}: sha256 {m['actual'][:16]}… but the manifest says {m['expected'][:16]}…"
            for m in self.mismatched
        ]
        lines += [f"MISSING  {p}" for p in self.missing]
        lines += [f"UNLISTED {p} (not in the manifest: added after it was written)" for p in self.unlisted]
        lines += [
            f"CHANGED  {c['path']} since {c['record']} (recorded {str(c['recorded'])[:16]}…)"
            for c in self.changed_since_recorded
        ]
        lines += [
            f"BUNDLE   {b['record']} validated bundle digest {b['digest'][:16]}…, which no bundle record of this "
            "folder wrote"
            for b in self.foreign_bundles
        ]
        if self.signature.get("status") not in ("valid", "not checked"):
            lines.append(f"SIGNATURE {self.signature['status']}: {self.signature.get('detail', '')}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": "pass" if self.ok else "fail",
            "run_dir": self.run_dir,
            "checked": self.checked,
            "mismatched": self.mismatched,
            "missing": self.missing,
            "unlisted": self.unlisted,
            "changed_since_recorded": self.changed_since_recorded,
            "foreign_bundles": self.foreign_bundles,
            "signature": self.signature,
            "manifest_created": self.manifest_created,
        }

    def summary(self) -> str:
        lines = [f"verify {self.run_dir}: {self.checked} files in the manifest of {self.manifest_created}"]
        lines += [f"  {p}" for p in self.problems]
        sig = self.signature
        lines.append(
            f"  signature: {sig['status']}"
            + (f" (key {sig['key_id']})" if sig.get("key_id") else "")
            + (
                ""
                if sig["status"] != "not checked"
                else " -- without --key this proves consistency only; anyone can recompute sha256"
            )
        )
        lines.append(
            f"verdict: {'PASS' if self.ok else 'FAIL'}" + ("" if self.ok else f" ({len(self.problems)} problem(s))")
        )
        return "\n".join(lines)


def verify(run_dir: str | Path, public_key: str | Path | None = None) -> VerifyReport:
    """Re-hash every file of ``manifest.json`` and every recorded artefact; with ``public_key`` (an Ed25519 PEM)
    also check ``manifest.sig``. Modified, missing, unlisted and changed-since-recorded files fail."""
    root = Path(run_dir)
    key = load_public_key(public_key) if public_key is not None else None
    data = read_manifest(root)
    report = VerifyReport(str(root), manifest_created=str(data.get("created", "")))
    listed = set()
    for entry in _entries(data, root / MANIFEST):
        rel = entry["path"]
        listed.add(rel)
        report.checked += 1
        target = _resolve(rel, root)
        if not target.is_file() or target.is_symlink():
            report.missing.append(rel)
            continue
        actual = sha256_file(target)
        if actual != entry["sha256"]:
            report.mismatched.append({"path": rel, "expected": entry["sha256"], "actual": actual})
    report.unlisted = [rel for rel in _files(root) if rel not in listed] + [
        f"{rel} (symlink)" for rel in _symlinks(root)
    ]
    recorded = data.get("changed_since_recorded") or []
    report.changed_since_recorded = (
        list(recorded)
        if isinstance(recorded, list)
        else [{"record": MANIFEST, "path": "changed_since_recorded", "recorded": "a list"}]
    )
    seen = {(c.get("record"), c.get("path")) for c in report.changed_since_recorded if isinstance(c, dict)}
    for change in _changes_against_records(root):
        if (change["record"], change["path"]) not in seen:
            report.changed_since_recorded.append(change)
    report.foreign_bundles = foreign_bundles(read_records(root))
    if key is not None:
        report.signature = check_signature(root, key)
    elif (root / SIGNATURE).exists():
        report.signature = {"status": "not checked", "detail": f"{SIGNATURE} present; pass --key PUB to check it"}
    return report


def _digest_of(payload: Any) -> str | None:
    """The bundle digest a bundle record (its payload) or a validate record (``payload.bundle``) names."""
    if not isinstance(payload, dict):
        return None
    digest = payload.get("digest")
    if digest is None and isinstance(payload.get("bundle"), dict):
        digest = payload["bundle"].get("digest")
    return digest if isinstance(digest, str) and digest else None


def foreign_bundles(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Validate records whose bundle digest is not that of any bundle record, where the folder has bundle records
    with digests (a device may validate against a bundle made elsewhere: then there is nothing to compare)."""
    written = {d for r in records if r.get("kind") == "bundle" and (d := _digest_of(r.get("payload")))}
    if not written:
        return []
    return [
        {"record": r["_file"], "digest": digest}
        for r in records
        if r.get("kind") == "validate" and (digest := _digest_of(r.get("payload"))) and digest not in written
    ]


def _changes_against_records(root: Path) -> list[dict[str, Any]]:
    out = []
    cache: dict[str, str | None] = {}
    for rec in read_records(root):
        for art in rec.get("artefacts", []):
            rel = art["path"]
            if rel not in cache:
                path = _resolve(rel, root)
                cache[rel] = sha256_file(path) if path.is_file() and not path.is_symlink() else None
            if cache[rel] != art["sha256"]:
                out.append({"record": rec["_file"], "path": rel, "recorded": art["sha256"], "now": cache[rel]})
    return out


# ------------------------------------------------------------------------------------------------ signatures
