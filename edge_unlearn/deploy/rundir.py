"""The run folder: an append-only record of every forget/export/quantize/validate/bench, and its manifest.

Layout of a run folder (``--run-dir``)::

    records/0001-forget.json      one JSON record per command: kind, payload (its summary), artefacts + sha256
    records/0002-export.json
    ...
    report.html                   ``edge-unlearn report`` (self-contained)
    manifest.json                 sha256 and size of every file in the folder and every artefact referenced
                                  from outside it; ``edge-unlearn verify`` re-hashes against it
    manifest.sig                  ``edge-unlearn sign``: an Ed25519 signature of manifest.json's exact bytes

Evidence rules (issue #13): a manifest never blesses a changed artefact -- a file whose sha256 differs from
its record, or from the previous manifest, keeps the recorded hash and is listed under
``changed_since_recorded``, so ``verify`` fails until the run is redone. ``verify`` fails on a modified,
missing or unlisted file, on a change since a record, on a ``validate`` record whose bundle digest (the digest over
the bundle's arrays and provenance, issue #30) no ``bundle`` record of the folder wrote, and (with ``--key``) on a
signature that does not verify.
Without a key, verify proves only internal consistency: anyone can recompute sha256; the signature is what
binds the folder to the holder of the private key.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
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


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def _key_id(public_bytes: bytes) -> str:
    import hashlib

    return hashlib.sha256(public_bytes).hexdigest()[:16]


def _read_key_file(path: str | Path, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise UsageError(
            f"{what} {p} not found; make a key pair with `edge-unlearn keygen -o KEY` "
            "(or `openssl genpkey -algorithm ed25519 -out KEY`)"
        )
    try:
        return p.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {p} ({exc.strerror}); check its permissions") from exc


def load_private_key(path: str | Path):
    """An Ed25519 private key from a PEM file (PKCS#8, unencrypted), or UsageError saying what to give."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key_file(path, "private key")
    if b"-----BEGIN PUBLIC KEY-----" in data:  # the usual mix-up: KEY.pub for KEY
        raise UsageError(
            f"{path} is a public key; sign with the private key (KEY, not KEY.pub) from `edge-unlearn keygen -o KEY`"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"{path} is not an unencrypted PEM private key ({str(exc).splitlines()[0][:80]}); make one "
            "with `edge-unlearn keygen -o KEY`"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path} is a {type(key).__name__}, not an Ed25519 key; make one with `edge-unlearn keygen`")
    return key


def load_public_key(path: str | Path):
    """An Ed25519 public key from a PEM file; a private key is refused (it belongs off the device)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY-----" in data:  # the usual mix-up: KEY for KEY.pub
        raise UsageError(
            f"{path} is a private key; verify with its public key (KEY.pub from `edge-unlearn keygen`), "
            "and keep the private key off the device"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, Exception) as exc:  # noqa: BLE001 - cryptography raises UnsupportedAlgorithm too
        raise UsageError(
            f"{path} is not a PEM public key ({type(exc).__name__}); give the KEY.pub written by "
            "`edge-unlearn keygen` (or `openssl pkey -in KEY -pubout -out KEY.pub`)"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path} is a {type(key).__name__}, not an Ed25519 public key")
    return key


def _raw_public(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(run_dir: str | Path, private_key: str | Path) -> Path:
    """Sign ``manifest.json``'s exact bytes with an Ed25519 key into ``manifest.sig``; refuses a folder that does
    not verify (a signature over broken evidence would be worse than none)."""
    import hashlib

    root = Path(run_dir)
    key = load_private_key(private_key)
    if (root / SIGNATURE).exists():
        raise UsageError(
            f"{root} is already signed ({SIGNATURE}); verify it with `edge-unlearn verify {root} --key PUB`"
            f", or move {SIGNATURE} away to sign again"
        )
    report = verify(root)
    if not report:
        raise ModelFileError(
            f"refusing to sign {root}: it does not verify ({'; '.join(report.problems[:3])}); "
            "redo the run in a fresh --run-dir"
        )
    manifest = (root / MANIFEST).read_bytes()
    public = _raw_public(key.public_key())
    data = {
        "format": SIGNATURE_FORMAT,
        "algorithm": "ed25519",
        "signed": _now(),
        "manifest": MANIFEST,
        "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        "public_key": _b64(public),
        "key_id": _key_id(public),
        "signature": _b64(key.sign(manifest)),
    }
    target = root / SIGNATURE
    with atomic_output(target) as tmp:
        Path(tmp).write_text(_to_text(data))
    return target


def check_signature(run_dir: str | Path, public_key) -> dict[str, Any]:
    """``{"status": "valid" | "missing" | "invalid" | "damaged", "key_id", "detail"}`` of ``manifest.sig``."""
    import base64
    import binascii

    from cryptography.exceptions import InvalidSignature

    root = Path(run_dir)
    expected_id = _key_id(_raw_public(public_key))
    path = root / SIGNATURE
    if not path.is_file():
        return {
            "status": "missing",
            "key_id": expected_id,
            "detail": f"no {SIGNATURE}: the folder was never signed (`edge-unlearn sign {root} --key KEY`)",
        }
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != SIGNATURE_FORMAT or data.get("algorithm") != "ed25519":
            raise ValueError("not an edge-unlearn Ed25519 signature")
        signature = base64.b64decode(str(data["signature"]), validate=True)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, binascii.Error) as exc:
        return {"status": "damaged", "key_id": expected_id, "detail": f"{SIGNATURE} is unreadable ({exc})"}
    try:
        public_key.verify(signature, (root / MANIFEST).read_bytes())
    except InvalidSignature:
        signer = data.get("key_id")
        why = (
            "signed by another key " + str(signer)
            if signer != expected_id
            else "manifest.json was changed after it was signed"
        )
        return {"status": "invalid", "key_id": expected_id, "detail": f"the signature does not verify: {why}"}
    return {"status": "valid", "key_id": expected_id, "detail": f"signed {data.get('signed', '?')}"}


def keygen(private_path: str | Path, public_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: the private key (PKCS#8 PEM, mode 0600, never overwritten) and the public
    key (``<private>.pub`` by default)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_unlearn.fileio import check_output_path

    private = Path(private_path)
    public = Path(public_path) if public_path else private.with_name(private.name + ".pub")
    if os.path.abspath(public) == os.path.abspath(private):  # the public key would replace the private one
        raise UsageError(f"--public {public} is the private key file -o {private}; give the public key another path")
    for p, option in ((private, "-o"), (public, "--public")):
        if p.exists() or p.is_symlink():
            raise UsageError(f"{p} exists; keygen never overwrites a key: choose another {option} path")
        check_output_path(p)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        with atomic_output(public) as tmp:
            Path(tmp).write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
    except BaseException:
        private.unlink(missing_ok=True)
        raise
    return private, public


def refuse_signed(run_dir: str | Path) -> None:
    """Raise UsageError for a signed folder: re-rendering the report would rewrite report.html and the manifest
    and break the signature, so ``report`` refuses before writing anything."""
    root = Path(run_dir)
    if (root / SIGNATURE).exists():
        raise UsageError(
            f"{root} is signed ({SIGNATURE}); a new report would change signed files: check it with "
            f"`edge-unlearn verify {root} --key PUB`, or move {SIGNATURE} away and sign again after"
        )
