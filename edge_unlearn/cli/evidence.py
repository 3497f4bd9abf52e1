"""``edge-unlearn sign`` and ``edge-unlearn keygen``: Ed25519 signatures of a run folder's manifest.

``verify RUN_DIR --key KEY.pub`` checks them. Thin commands over :mod:`edge_unlearn.deploy.rundir`; no torch.
A key pair can also be made with OpenSSL: ``openssl genpkey -algorithm ed25519 -out key.pem`` and
``openssl pkey -in key.pem -pubout -out key.pem.pub``.
"""

from __future__ import annotations

import click

from .common import Command
from .options import OUTPUT, Output, OutputPath


@click.command("sign", cls=Command)
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--key",
    "key",
    required=True,
    type=click.Path(dir_okay=False),
    help="Ed25519 private key (PEM) from `edge-unlearn keygen` or `openssl genpkey -algorithm ed25519`.",
)
@OUTPUT
def sign_cmd(run_dir: str, key: str, out: Output) -> None:
    """Sign RUN_DIR/manifest.json (written by `edge-unlearn report`) into RUN_DIR/manifest.sig.

    Refuses a folder that does not verify. Sign last: a later `report` into the folder would change the manifest
    and is refused while the signature is there."""
    import json

    from edge_unlearn.deploy.rundir import sign

    path = sign(run_dir, key)
    data = json.loads(path.read_text())
    out.emit(
        {"signature": str(path), "key_id": data["key_id"], "manifest_sha256": data["manifest_sha256"]},
        f"signed {run_dir}/manifest.json with key {data['key_id']} -> {path}; check it "
        f"with `edge-unlearn verify {run_dir} --key PUBLIC_KEY`",
    )


@click.command("keygen", cls=Command)
@click.option(
    "-o",
    "--output",
    required=True,
    type=OutputPath(),
    help="Private key file to create (PEM, mode 0600); the public key goes to OUTPUT.pub.",
)
@click.option("--public", "public", type=OutputPath(), default=None, help="Public key file (default OUTPUT.pub).")
@OUTPUT
def keygen_cmd(output: str, public: str | None, out: Output) -> None:
    """Make an Ed25519 key pair for `sign` (keep the private key off the device) and `verify --key`."""
    from edge_unlearn.deploy.rundir import keygen

    private, pub = keygen(output, public)
    out.emit(
        {"private_key": str(private), "public_key": str(pub)},
        f"wrote private key {private} (keep it secret) and public key {pub}",
    )
