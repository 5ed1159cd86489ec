"""The bundle container on its own (floatedge.bundle): writing, checksums, schema, tar, table lookup.

Small synthetic files stand in for ONNX models here; tests/test_export.py covers real exported bundles.
"""
from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from floatedge.bundle import (
    FORMAT,
    MANIFEST,
    SCHEMA_VERSION,
    BundleError,
    manifest_checksum,
    model_filename,
    open_bundle,
    write_bundle,
)
from floatedge.oppoint import OperatingPoint, OperatingPointError


def _manifest(**extra) -> dict:
    m = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "architecture": "tiny", "method": "floats",
        "classes": ["a", "b"], "input": {"name": "images", "shape": [3, 8, 8], "dtype": "float32", "range": [0, 1]},
        "widths": [1.0, 0.5], "lambda_th": 0.5, "noise": {"seed": 1, "mode": "fixed", "eta_dtype": "float32"},
        "alphas": {"conv1": 0.25},
        "models": [{"width": 1.0, "file": model_filename(1.0), "opset": 17, "layers": []},
                   {"width": 0.5, "file": model_filename(0.5), "opset": 17, "layers": []}],
        "operating_points": {"source": "eval.json", "n_images": 16, "attacks": {"pgd20": "PGD-20"}, "rows": [
            {"lambda_n": 1.0, "width": 1.0, "lambda_th": 0.0, "noise_scale": 1.0, "bn": "adv", "clean_acc": 0.5,
             "pgd20_acc": 0.3},
            {"lambda_n": 0.2, "width": 0.5, "lambda_th": 0.5, "noise_scale": 0.4, "bn": "clean", "clean_acc": 0.7,
             "pgd20_acc": 0.1}]},
        "provenance": {"run": "r"},
    }
    m.update(extra)
    return m


FILES = {model_filename(1.0): b"full width model", model_filename(0.5): b"half width"}


@pytest.fixture
def bundle_dir(tmp_path):
    return write_bundle(tmp_path / "m.febundle", _manifest(), FILES)


def test_write_then_open_round_trip(bundle_dir):
    b = open_bundle(bundle_dir)
    assert sorted(os.listdir(bundle_dir)) == sorted([MANIFEST, *FILES])
    assert b.widths == (1.0, 0.5) and b.lambda_th == 0.5 and b.input_shape == (3, 8, 8)
    assert b.model_bytes(0.5) == b"half width"
    assert all(st.ok for st in b.check_files())
    assert b.manifest["manifest_sha256"] == manifest_checksum(b.manifest)


def test_nothing_beside_the_bundle_after_writing(tmp_path):
    write_bundle(tmp_path / "m.febundle", _manifest(), FILES)
    write_bundle(tmp_path / "m.febundle", _manifest(architecture="resnet20"), FILES, force=True)
    assert os.listdir(tmp_path) == ["m.febundle"]  # no .tmp or .old siblings left
    assert open_bundle(tmp_path / "m.febundle").architecture == "resnet20"


def test_existing_bundle_is_not_replaced_without_force(bundle_dir):
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(bundle_dir, _manifest(), FILES)


def test_bad_file_names_are_refused(tmp_path):
    for name in ("../x.onnx", MANIFEST, ".hidden"):
        with pytest.raises(BundleError, match="bad bundle file name"):
            write_bundle(tmp_path / "m.febundle", _manifest(), {name: b"x"})
    assert not (tmp_path / "m.febundle").exists()


def test_modified_file_is_named_with_its_checksums(bundle_dir):
    (bundle_dir / model_filename(0.5)).write_bytes(b"half widtH")
    with pytest.raises(BundleError) as err:
        open_bundle(bundle_dir)
    msg = str(err.value)
    assert model_filename(0.5) in msg and "checksum" in msg
    assert json.loads((bundle_dir / MANIFEST).read_text())["files"][model_filename(0.5)]["sha256"] in msg
    assert "\n" not in msg


def test_missing_and_extra_files_are_named(bundle_dir):
    (bundle_dir / "notes.txt").write_text("hi")
    with pytest.raises(BundleError, match="notes.txt is not listed"):
        open_bundle(bundle_dir)
    (bundle_dir / "notes.txt").unlink()
    (bundle_dir / model_filename(1.0)).unlink()
    with pytest.raises(BundleError, match=f"{model_filename(1.0)} is missing"):
        open_bundle(bundle_dir)
    statuses = {st.name: st.status for st in open_bundle(bundle_dir, verify=False).check_files()}
    assert statuses == {model_filename(1.0): "missing", model_filename(0.5): "ok"}


def test_edited_manifest_fails_its_own_checksum(bundle_dir):
    m = json.loads((bundle_dir / MANIFEST).read_text())
    m["alphas"]["conv1"] = 0.5
    (bundle_dir / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=f"{MANIFEST} failed its checksum"):
        open_bundle(bundle_dir)


def test_newer_schema_is_refused_before_anything_else(bundle_dir):
    m = json.loads((bundle_dir / MANIFEST).read_text())
    m["schema_version"] = SCHEMA_VERSION + 1
    m["something_new"] = {"we": "cannot read"}
    (bundle_dir / MANIFEST).write_text(json.dumps(m))
    for verify in (True, False):
        with pytest.raises(BundleError, match=f"schema version {SCHEMA_VERSION + 1} is newer .* upgrade floatedge"):
            open_bundle(bundle_dir, verify=verify)


@pytest.mark.parametrize("content, match", [("{not json", "not valid JSON"), ('{"format": "other"}', "not a floatedge"),
                                            (json.dumps({"format": FORMAT, "schema_version": 1}), "lacks")])
def test_broken_manifests(bundle_dir, content, match):
    (bundle_dir / MANIFEST).write_text(content)
    with pytest.raises(BundleError, match=match):
        open_bundle(bundle_dir)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no such bundle"):
        open_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        open_bundle(tmp_path / "empty")
    (tmp_path / "junk.febundle").write_bytes(b"\0" * 10)
    with pytest.raises(BundleError, match=r"junk.febundle: not a floatedge bundle \(neither a bundle directory nor a tar "
                                          r"file\)$"):  # one whole line, not tarfile's list of methods tried
        open_bundle(tmp_path / "junk.febundle")


def test_tar_bundle_round_trip_and_tampering(tmp_path):
    path = write_bundle(tmp_path / "m.febundle", _manifest(), FILES, tar=True)
    assert path.is_file() and os.listdir(tmp_path) == ["m.febundle"]
    b = open_bundle(path)
    assert b.is_tar and b.model_bytes(1.0) == b"full width model"
    with tarfile.open(path) as tf:
        assert tf.getnames()[0] == MANIFEST
    with tarfile.open(path, "a") as tf:  # an extra member appended after export
        info = tarfile.TarInfo("extra.bin")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(BundleError, match="extra.bin is not listed"):
        open_bundle(path)


def test_operating_points_are_checked_against_the_bundle(bundle_dir):
    b = open_bundle(bundle_dir)
    assert b.operating_point(0.7, 0.5) == OperatingPoint(0.7, 0.5, 0.5)
    assert b.operating_point(0.7).width == 1.0  # widest by default
    with pytest.raises(OperatingPointError, match="lambda_n must be in"):
        b.operating_point(1.5)
    with pytest.raises(OperatingPointError, match="width 0.25 is not in this bundle"):
        b.operating_point(0.5, 0.25)


def test_lookup_matches_what_a_point_computes(bundle_dir):
    b = open_bundle(bundle_dir)
    # λ_n = 1 computes the same under λ_th = 0 and 0.5 (s = 1, BN_A): the λ_th = 0 row answers
    assert b.lookup(b.operating_point(1.0, 1.0))["pgd20_acc"] == 0.3
    assert b.lookup(b.operating_point(0.2, 0.5))["clean_acc"] == 0.7
    assert b.lookup(b.operating_point(0.2, 1.0)) is None
