"""Bundle signatures for the server: when `trusted_keys` is set, every bundle it opens (at start-up and on a hot
swap) must be signed by one of those keys.

`floatedge.signing` owns the format (Ed25519 over `manifest.json`, which already holds every file's sha256; the
signature in the bundle as `manifest.sig`; `floatedge keygen`, `floatedge sign`, `export --sign`). This module
only turns its refusals — missing, untrusted, wrong, tampered — into `BundleError`s with that reason, so a refused
load is a 400 that names why while the old bundle keeps serving.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from floatedge.bundle import Bundle, BundleError
from floatedge.signing import KeyFileError, SignatureError, load_trusted_keys, verify_signature


def load_keys(directory: str | Path) -> dict[str, Any]:
    """The trusted public keys of `directory` by key id; BundleError if the directory cannot be used."""
    try:
        return load_trusted_keys(directory)
    except KeyFileError as exc:
        raise BundleError(str(exc)) from None


def check_signature(bundle: Bundle, keys: dict[str, Any]) -> str:
    """The id of the trusted key that signed `bundle`, or BundleError naming why not. Its files were checked by
    `open_bundle` already, so only the signature is verified here."""
    try:
        return verify_signature(bundle, keys, files=False)
    except SignatureError as exc:
        raise BundleError(f"signature {exc.reason}: {exc}") from None
