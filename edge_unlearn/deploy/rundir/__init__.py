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

from .manifest import VerifyReport, evidence_problems, foreign_bundles, read_manifest, verify, write_manifest
from .records import (
    KINDS,
    MANIFEST,
    MANIFEST_FORMAT,
    RECORD_FORMAT,
    RECORDS,
    REWRITTEN,
    SIGNATURE,
    SIGNATURE_FORMAT,
    read_records,
    record,
    refuse_signed,
)
from .signing import check_signature, keygen, load_private_key, load_public_key, sign

__all__ = [
    "KINDS",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "RECORD_FORMAT",
    "RECORDS",
    "REWRITTEN",
    "SIGNATURE",
    "SIGNATURE_FORMAT",
    "VerifyReport",
    "check_signature",
    "evidence_problems",
    "foreign_bundles",
    "keygen",
    "load_private_key",
    "load_public_key",
    "read_manifest",
    "read_records",
    "record",
    "refuse_signed",
    "sign",
    "verify",
    "write_manifest",
]
