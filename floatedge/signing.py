"""Signed bundles: Ed25519 over the manifest, which already holds every file's sha256. Torch-free.

A bundle's `manifest.json` records the sha256 of every other file (`floatedge.bundle`), so one signature over the
manifest's bytes covers the whole bundle: change a model and its checksum fails; change the manifest to match and
the signature fails. The signature lives inside the bundle as `manifest.sig` (`floatedge.bundle.SIGNATURE`, a name
the checksum check knows and skips: the manifest cannot list the file that signs it), so it travels with the
bundle, directory or tar, and an unsigned bundle is still a valid bundle. `manifest.sig` is JSON::

    {"format": "floatedge-signature", "version": 1, "algorithm": "ed25519", "key_id": "3f1c…",
     "public_key": "<base64 raw 32 bytes>", "manifest_sha256": "<sha256 of manifest.json's bytes>",
     "signature": "<base64 64 bytes>"}

The signed message is `MESSAGE_PREFIX + manifest.json's bytes exactly as stored` (the prefix keeps a floatedge
signature from meaning anything to another protocol). `public_key` only names the signer; verification uses the
trusted key with that `key_id`, never the key the bundle carries.

Keys: `generate_key` writes NAME.key (PKCS#8 PEM, unencrypted, mode 0600, as `ssh-keygen -N ''` would) and
NAME.pub (SubjectPublicKeyInfo PEM). A key's id is the first 16 hex digits of the sha256 of its raw public key, so
the id follows from the key itself, never from a file name. A trusted-keys directory is any directory of `*.pub`
files.

Device-side use (the server checks a hot-swapped bundle this way)::

    from floatedge.signing import SignatureError, verify_signature
    try:
        key_id = verify_signature("model.febundle", "/etc/floatedge/trusted-keys")
    except SignatureError as exc:
        refuse(exc.reason, str(exc))        # reason: missing | wrong | untrusted | tampered

Uses the `cryptography` package's Ed25519 (https://cryptography.io/en/latest/hazmat/primitives/asymmetric/ed25519/:
`Ed25519PrivateKey.generate`, `sign`, `Ed25519PublicKey.verify` raising `InvalidSignature`), imported lazily so
the module imports without it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from floatedge.bundle import MANIFEST, SIGNATURE, Bundle, BundleError, open_bundle, unreadable_bundle
from floatedge.fsutil import atomic_write

FORMAT = "floatedge-signature"
VERSION = 1
ALGORITHM = "ed25519"
MESSAGE_PREFIX = b"floatedge-bundle-signature-v1\n"
KEY_ID_HEX = 16
REASONS = ("missing", "wrong", "untrusted", "tampered")


class SignatureError(ValueError):
    """A bundle a device configured with trusted keys must refuse. `reason` is one of `REASONS`; the message is
    one line naming the bundle and why."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason


class KeyFileError(ValueError):
    """A key file or trusted-keys directory that cannot be used (missing, not Ed25519, readable by others)."""


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise KeyFileError("bundle signatures need the `cryptography` package: pip install 'floatedge[fleet]'") from None
    return serialization, ed25519


def key_id(public_key: Any) -> str:
    """The short id of an Ed25519 public key: sha256 of its 32 raw bytes, first `KEY_ID_HEX` hex digits."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX]


# ------------------------------------------------------------------------------------------ keys
def generate_key(out_dir: str | Path, name: str = "floatedge") -> KeyPair:
    """Write a new Ed25519 key pair `out_dir/NAME.key` (0600) and `out_dir/NAME.pub`; never replaces a key."""
    serialization, ed25519 = _crypto()
    out_dir = Path(out_dir)
    if not name or "/" in name or name.startswith("."):
        raise KeyFileError(f"bad key name {name!r}: a plain file name, e.g. 'release'")
    private, public = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for p in (private, public):
        if p.exists():
            raise KeyFileError(f"{p} already exists; keygen never replaces a key (choose another --name or --out)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(private, pem, 0o600)
    try:
        _write_new(public, pub, 0o644)
    except BaseException:
        private.unlink()
        raise
    return KeyPair(private, public, key_id(key.public_key()))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a new file with `mode` from the first byte on; fail, leaving nothing, if `path` exists.
    (A temp file linked into place: `os.link` refuses an existing name, where a rename would replace it.)"""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; keygen never replaces a key") from None
    finally:
        os.unlink(tmp)


def load_private_key(path: str | Path) -> Any:
    """The Ed25519 private key in `path` (PKCS#8 PEM, unencrypted); refuses one that others can read."""
    serialization, ed25519 = _crypto()
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"private key {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o}): "
                           f"chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted (or an unsupported type): the library says which in words we cannot pass on
        raise KeyFileError(f"private key {path} is encrypted or of an unsupported type; floatedge keys are "
                           "unencrypted PKCS#8 (floatedge keygen)") from None
    except ValueError:
        raise KeyFileError(f"{path} is not a PEM private key (floatedge keygen writes one)") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"private key {path} is not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> Any:
    serialization, ed25519 = _crypto()
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise KeyFileError(f"trusted key {path} is not a PEM public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyFileError(f"trusted key {path} is not an Ed25519 key")
    return key


def load_trusted_keys(directory: str | Path) -> dict[str, Any]:
    """The `*.pub` keys of `directory` by key id. KeyFileError if the directory is missing, has no key, or holds a
    file that is not an Ed25519 public key (a trust store with a broken entry is a configuration error)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"trusted keys directory {directory} does not exist")
    keys = {key_id(k): k for k in map(load_public_key, sorted(directory.glob("*.pub")))}
    if not keys:
        raise KeyFileError(f"no trusted keys (*.pub) in {directory}")
    return keys


# ------------------------------------------------------------------------------------------ bundle members
def _read_member(path: Path, name: str) -> bytes | None:
    """`name`'s bytes in a bundle directory or tar, None if absent."""
    if not path.exists():
        raise BundleError(f"{path}: no such bundle")
    if path.is_dir():
        f = path / name
        return f.read_bytes() if f.is_file() else None
    try:
        with tarfile.open(path, mode="r:*") as tf:
            try:
                member = tf.getmember(name)
            except KeyError:
                return None
            fobj = tf.extractfile(member)
            return fobj.read() if fobj is not None else None
    except (tarfile.TarError, OSError) as exc:
        raise unreadable_bundle(path, exc) from None


def _path(bundle: str | Path | Bundle) -> Path:
    return Path(bundle.path) if isinstance(bundle, Bundle) else Path(bundle)


def read_signature(bundle: str | Path | Bundle) -> dict | None:
    """The parsed `manifest.sig` of a bundle, None if it is unsigned; SignatureError("wrong") if unreadable."""
    path = _path(bundle)
    raw = _read_member(path, SIGNATURE)
    if raw is None:
        return None
    try:
        sig = json.loads(raw)
        ok = (isinstance(sig, dict) and sig.get("format") == FORMAT and sig.get("algorithm") == ALGORITHM
              and isinstance(sig.get("key_id"), str) and isinstance(sig.get("signature"), str))
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise SignatureError("wrong", f"{path.name}: {SIGNATURE} is not a floatedge {ALGORITHM} signature")
    return sig


# ------------------------------------------------------------------------------------------ sign
def sign_bundle(bundle: str | Path, private_key: str | Path | Any) -> str:
    """Sign `bundle` (directory or tar) in place with an Ed25519 private key (a path or a loaded key); returns the
    key id. The bundle must pass its checksums first — a signature must never bless a damaged bundle. An existing
    signature is replaced. The manifest is not touched, so its self-checksum stays valid."""
    key = private_key if not isinstance(private_key, str | Path) else load_private_key(private_key)
    path = Path(bundle)
    open_bundle(path)  # format, schema, every checksum: BundleError naming what is wrong
    manifest = _read_member(path, MANIFEST)
    assert manifest is not None  # open_bundle found it
    kid = key_id(key.public_key())
    serialization, _ = _crypto()
    raw_pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    doc = {"format": FORMAT, "version": VERSION, "algorithm": ALGORITHM, "key_id": kid,
           "public_key": base64.b64encode(raw_pub).decode(), "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
           "signature": base64.b64encode(key.sign(MESSAGE_PREFIX + manifest)).decode()}
    data = (json.dumps(doc, indent=2) + "\n").encode()
    if path.is_dir():
        atomic_write(path / SIGNATURE, lambda f: f.write(data))
    else:
        _replace_tar_member(path, SIGNATURE, data)
    return kid


def _replace_tar_member(path: Path, name: str, data: bytes) -> None:
    """Rewrite the tar at `path` with member `name` set to `data`, placed right after the manifest; atomically
    (a temp file renamed over the old), members streamed, not loaded whole."""
    def write(out) -> None:
        with tarfile.open(path, mode="r:*") as src, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
            for info in src.getmembers():
                if info.name == name:
                    continue
                dst.addfile(info, src.extractfile(info) if info.isfile() else None)
                if info.name == MANIFEST:
                    _add(dst, name, data)

    atomic_write(path, write)


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tf.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------------------------------ verify
def verify_signature(bundle: str | Path | Bundle, trusted: str | Path | Mapping[str, Any], files: bool = True) -> str:
    """The id of the trusted key that signed `bundle`, or SignatureError naming why not:

    * ``missing``: no `manifest.sig` (an unsigned bundle);
    * ``untrusted``: signed, but by a key that is not among `trusted`;
    * ``wrong``: the signature does not match the manifest (edited after signing, or a signature copied from
      another bundle), or `manifest.sig` is malformed;
    * ``tampered``: the manifest is signed, but a file fails its checksum (with `files`, the default; pass False
      when the caller opens the bundle with `open_bundle`, which checks them anyway).

    `trusted` is a directory of `*.pub` keys or `load_trusted_keys`'s mapping (KeyFileError if unusable).
    """
    _, ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    path = _path(bundle)
    keys = load_trusted_keys(trusted) if isinstance(trusted, str | Path) else dict(trusted)
    sig = read_signature(path)
    if sig is None:
        raise SignatureError("missing", f"{path.name} is unsigned (no {SIGNATURE}); this device accepts only bundles "
                                        f"signed by a trusted key")
    kid = sig["key_id"]
    key = keys.get(kid)
    if key is None:
        raise SignatureError("untrusted", f"{path.name} is signed by key {kid}, which is not a trusted key "
                                          f"(trusted: {', '.join(sorted(keys)) or 'none'})")
    manifest = _read_member(path, MANIFEST)
    if manifest is None:
        raise BundleError(f"{path}: not a floatedge bundle (no {MANIFEST})")
    try:
        key.verify(base64.b64decode(sig["signature"], validate=True), MESSAGE_PREFIX + manifest)
    except (InvalidSignature, binascii.Error, ValueError):
        raise SignatureError("wrong", f"{path.name}: the signature by key {kid} does not match {MANIFEST} (changed "
                                      "after signing, or a signature taken from another bundle)") from None
    if files:
        try:
            open_bundle(path)
        except BundleError as exc:
            raise SignatureError("tampered", f"{path.name}: signed by {kid}, but {str(exc).split(': ', 1)[-1]}") from None
    return kid


def signature_status(bundle: str | Path | Bundle, trusted: str | Path | Mapping[str, Any] | None = None) -> str:
    """One line for `inspect`-style listings: unsigned, signed by KEY (not checked), or the verification result."""
    try:
        sig = read_signature(bundle)
        if sig is None:
            return "unsigned"
        if trusted is None:
            return f"signed by key {sig['key_id']} (not checked: no trusted keys given)"
        return f"signed by trusted key {verify_signature(bundle, trusted)}"
    except SignatureError as exc:
        return f"REFUSED ({exc.reason}): {exc}"


__all__ = ["SignatureError", "KeyFileError", "KeyPair", "REASONS", "generate_key", "load_private_key", "load_public_key",
           "load_trusted_keys", "key_id", "sign_bundle", "verify_signature", "read_signature", "signature_status"]
