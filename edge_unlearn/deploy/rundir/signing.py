"""Ed25519 signing of a run folder's manifest: ``keygen``, ``sign``, ``verify --key`` (:mod:`edge_unlearn.deploy.rundir`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edge_unlearn.errors import ModelFileError, UsageError
from edge_unlearn.fileio import atomic_output

from .records import MANIFEST, SIGNATURE, SIGNATURE_FORMAT, _now, _to_text


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
    from .manifest import verify  # manifest imports this module

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
