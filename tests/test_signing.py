"""Signed bundles (floatedge.signing): keys, signing directory and tar bundles in place, and the four reasons a
device refuses one — missing, wrong, untrusted, tampered. Small synthetic bundles stand in for exported ones here
(signing reads only the manifest and the checksums); one test signs and verifies a real export through the CLI."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest
from click.testing import CliRunner
from test_bundle import FILES, _manifest

from floatedge.bundle import MANIFEST, SIGNATURE, manifest_checksum, open_bundle, write_bundle
from floatedge.cli import main
from floatedge.signing import (
    KeyFileError,
    SignatureError,
    generate_key,
    key_id,
    load_private_key,
    load_trusted_keys,
    read_signature,
    sign_bundle,
    signature_status,
    verify_signature,
)

pytest.importorskip("cryptography")


@pytest.fixture
def keys(tmp_path):
    """Two key pairs: `ours` (trusted: its .pub in trusted/) and `theirs` (not trusted)."""
    ours, theirs = generate_key(tmp_path / "ours"), generate_key(tmp_path / "theirs")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(ours.public, trusted / "release.pub")
    return {"ours": ours, "theirs": theirs, "trusted": trusted}


@pytest.fixture(params=["dir", "tar"])
def bundle(request, tmp_path):
    return write_bundle(tmp_path / "m.febundle", _manifest(), FILES, tar=request.param == "tar")


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_replaces_one(tmp_path):
    kp = generate_key(tmp_path / "k", name="release")
    assert stat.S_IMODE(kp.private.stat().st_mode) == 0o600
    assert kp.private.name == "release.key" and kp.public.name == "release.pub"
    key = load_private_key(kp.private)
    raw = key.public_key().public_bytes(*_raw())
    assert kp.key_id == key_id(key.public_key()) == hashlib.sha256(raw).hexdigest()[:16]
    before = kp.private.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key(tmp_path / "k", name="release")
    assert kp.private.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["release.key", "release.pub"]  # no temp files


def _raw():
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.Raw, serialization.PublicFormat.Raw


def test_a_private_key_others_can_read_is_refused(keys):
    os.chmod(keys["ours"].private, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_private_key(keys["ours"].private)


def test_sign_then_verify_directory_and_tar(bundle, keys):
    kid = sign_bundle(bundle, keys["ours"].private)
    assert kid == keys["ours"].key_id
    assert verify_signature(bundle, keys["trusted"]) == kid
    open_bundle(bundle)  # the signature is no extra file to the checksum check, and the manifest is untouched
    assert manifest_checksum(json.loads(_member(bundle, MANIFEST))) == json.loads(_member(bundle, MANIFEST))["manifest_sha256"]
    sig = read_signature(bundle)
    assert sig["manifest_sha256"] == hashlib.sha256(_member(bundle, MANIFEST)).hexdigest()
    assert signature_status(bundle, keys["trusted"]) == f"signed by trusted key {kid}"


def test_resigning_replaces_the_signature(bundle, keys):
    sign_bundle(bundle, keys["theirs"].private)
    sign_bundle(bundle, keys["ours"].private)
    assert verify_signature(bundle, keys["trusted"]) == keys["ours"].key_id
    if bundle.is_file():
        with tarfile.open(bundle) as tf:
            names = tf.getnames()
        assert names.count(SIGNATURE) == 1 and names[:2] == [MANIFEST, SIGNATURE]


def test_unsigned_is_refused_as_missing(bundle, keys):
    _refused(bundle, keys["trusted"], "missing", "unsigned")
    assert signature_status(bundle) == "unsigned"


def test_another_signer_is_refused_as_untrusted(bundle, keys):
    sign_bundle(bundle, keys["theirs"].private)
    _refused(bundle, keys["trusted"], "untrusted", f"signed by key {keys['theirs'].key_id}, which is not a trusted key")


def test_a_model_changed_after_signing_is_refused_as_tampered(tmp_path, keys):
    b = write_bundle(tmp_path / "m.febundle", _manifest(), FILES)
    sign_bundle(b, keys["ours"].private)
    (b / "model_w1.onnx").write_bytes(b"another model")
    _refused(b, keys["trusted"], "tampered", "model_w1.onnx failed its checksum")


def test_a_manifest_rewritten_to_match_is_refused_as_wrong(tmp_path, keys):
    """The attack checksums alone cannot stop: new model, manifest updated with its sha256 and a valid self-checksum."""
    b = write_bundle(tmp_path / "m.febundle", _manifest(), FILES)
    sign_bundle(b, keys["ours"].private)
    (b / "model_w1.onnx").write_bytes(b"another model")
    m = json.loads((b / MANIFEST).read_text())
    m["files"]["model_w1.onnx"] = {"sha256": hashlib.sha256(b"another model").hexdigest(), "bytes": 13}
    m["manifest_sha256"] = manifest_checksum(m)
    (b / MANIFEST).write_text(json.dumps(m, indent=2) + "\n")
    open_bundle(b)  # every checksum passes
    _refused(b, keys["trusted"], "wrong", "does not match manifest.json")


def test_a_signature_from_another_bundle_is_wrong(tmp_path, keys):
    a = write_bundle(tmp_path / "a.febundle", _manifest(), FILES)
    b = write_bundle(tmp_path / "b.febundle", _manifest(architecture="other"), FILES)
    sign_bundle(a, keys["ours"].private)
    shutil.copy(a / SIGNATURE, b / SIGNATURE)
    _refused(b, keys["trusted"], "wrong")


def test_a_malformed_or_forged_signature_file_is_wrong(tmp_path, keys):
    b = write_bundle(tmp_path / "m.febundle", _manifest(), FILES)
    (b / SIGNATURE).write_text("not json")
    _refused(b, keys["trusted"], "wrong", "is not a floatedge ed25519 signature")
    sign_bundle(b, keys["ours"].private)
    sig = json.loads((b / SIGNATURE).read_text())
    sig["signature"] = base64.b64encode(bytes(64)).decode()
    (b / SIGNATURE).write_text(json.dumps(sig))
    _refused(b, keys["trusted"], "wrong")


def test_trusted_keys_directory_problems_are_named(tmp_path, keys):
    with pytest.raises(KeyFileError, match="does not exist"):
        load_trusted_keys(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyFileError, match="no trusted keys"):
        load_trusted_keys(tmp_path / "empty")
    shutil.copy(keys["ours"].private, keys["trusted"] / "oops.pub")  # a private key where a public one belongs
    with pytest.raises(KeyFileError, match="oops.pub is not a PEM public key"):
        load_trusted_keys(keys["trusted"])


def _refused(bundle, trusted, reason: str, match: str | None = None) -> None:
    with pytest.raises(SignatureError, match=match) as e:
        verify_signature(bundle, trusted)
    assert e.value.reason == reason


def _member(bundle, name) -> bytes:
    if bundle.is_dir():
        return (bundle / name).read_bytes()
    with tarfile.open(bundle) as tf:
        return tf.extractfile(name).read()


# ------------------------------------------------------------------------------------------ commands
def test_cli_keygen_sign_and_refusals_are_one_line(tmp_path):
    r = CliRunner().invoke(main, ["keygen", "--out", str(tmp_path / "k")])
    assert r.exit_code == 0 and "mode 0600" in r.output, r.output
    b = write_bundle(tmp_path / "m.febundle", _manifest(), FILES)
    r = CliRunner().invoke(main, ["sign", str(b), "--key", str(tmp_path / "k" / "floatedge.key")])
    assert r.exit_code == 0 and "signed" in r.output, r.output
    (b / "model_w1.onnx").write_bytes(b"x")
    r = CliRunner().invoke(main, ["sign", str(b), "--key", str(tmp_path / "k" / "floatedge.key")])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "failed its checksum" in r.output, r.output
    r = CliRunner().invoke(main, ["keygen", "--out", str(tmp_path / "k")])
    assert r.exit_code == 1 and "already exists" in r.output


def test_export_sign_and_verify_trust_on_a_real_bundle(float_run, tmp_path):
    """`export --sign` and `verify --trust` as a user runs them (subprocesses): good, untrusted, unsigned, tampered."""
    def fe(*args):
        return subprocess.run([sys.executable, "-m", "floatedge", *map(str, args)], capture_output=True, text=True,
                              timeout=600)

    assert fe("keygen", "--out", tmp_path / "keys").returncode == 0
    assert fe("keygen", "--out", tmp_path / "other").returncode == 0
    out = tmp_path / "m.febundle"
    r = fe("export", float_run, "--out", out, "--sign", tmp_path / "keys" / "floatedge.key", "--acceptance", "0")
    if "no such option: --acceptance" in r.stderr:  # an export without acceptance sets (before issue 11 item 2)
        r = fe("export", float_run, "--out", out, "--sign", tmp_path / "keys" / "floatedge.key")
    assert r.returncode == 0 and "signed" in r.stdout, r.stderr
    r = fe("verify", out, "--trust", tmp_path / "keys")
    assert r.returncode == 0 and "signature     signed by trusted key" in r.stdout, r.stdout + r.stderr
    r = fe("verify", out, "--trust", tmp_path / "other")
    assert r.returncode == 1 and "not a trusted key" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    (out / SIGNATURE).unlink()
    r = fe("verify", out, "--trust", tmp_path / "keys")
    assert r.returncode == 1 and "unsigned" in r.stderr, r.stderr
    r = fe("verify", out)  # no --trust: an unsigned bundle is still a good bundle
    assert r.returncode == 0 and "signature     unsigned" in r.stdout, r.stdout + r.stderr
    r = fe("export", float_run, "--out", tmp_path / "n.febundle", "--sign", tmp_path / "nokey")
    assert r.returncode == 1 and "cannot read private key" in r.stderr and not (tmp_path / "n.febundle").exists()
