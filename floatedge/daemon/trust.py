"""Bundle signatures for hot swaps: Ed25519 over the manifest's own checksum, checked when trusted keys are set.

The manifest already records the sha256 of every file and of itself (`floatedge.bundle`), so one signature
over `manifest_sha256` covers the whole bundle. The signature travels beside the bundle, not inside it (a file
inside would be an "extra" file to the checksum check): `NAME.febundle.sig`, a JSON object
`{"key": "<key id>", "signature": "<base64 Ed25519 signature of the manifest_sha256 text>"}`. Trusted keys are
the `*.pub` files of a directory, each a PEM Ed25519 public key; a key's id is its file name without `.pub`.
Issue 11 ships `floatedge keygen` / `export --sign`; this module is the device side of that contract, small
enough to replace (docs/serve.md). Uses the `cryptography` package's Ed25519 (`Ed25519PublicKey.verify`).
"""
from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from floatedge.bundle import Bundle, BundleError

SIG_SUFFIX = ".sig"


def signature_path(bundle_path: Path) -> Path:
    return bundle_path.with_name(bundle_path.name + SIG_SUFFIX)


def load_keys(directory: str | Path) -> dict[str, object]:
    """The trusted public keys of `directory` by id; BundleError if none can be used."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"trusted keys directory {directory} does not exist")
    keys = {}
    for f in sorted(directory.glob("*.pub")):
        try:
            key = load_pem_public_key(f.read_bytes())
        except ValueError as exc:
            raise BundleError(f"trusted key {f.name} is not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise BundleError(f"trusted key {f.name} is not an Ed25519 key")
        keys[f.name[: -len(".pub")]] = key
    if not keys:
        raise BundleError(f"no trusted keys (*.pub) in {directory}")
    return keys


def check_signature(bundle: Bundle, keys: dict[str, object]) -> str:
    """Return the id of the trusted key that signed `bundle`, or raise BundleError naming why not."""
    from cryptography.exceptions import InvalidSignature

    sig_file = signature_path(Path(bundle.path))
    if not sig_file.is_file():
        raise BundleError(f"{Path(bundle.path).name} is unsigned (no {sig_file.name}) and trusted keys are configured")
    try:
        sig = json.loads(sig_file.read_text())
        key_id, raw = str(sig["key"]), base64.b64decode(sig["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error, OSError):
        raise BundleError(f"{sig_file.name} is not a floatedge signature file") from None
    key = keys.get(key_id)
    if key is None:
        raise BundleError(f"{Path(bundle.path).name} is signed by {key_id!r}, which is not a trusted key")
    try:
        key.verify(raw, str(bundle.manifest["manifest_sha256"]).encode())  # type: ignore[attr-defined]
    except InvalidSignature:
        raise BundleError(f"{Path(bundle.path).name}: the signature does not match the bundle (tampered or re-exported "
                          "after signing)") from None
    return key_id
