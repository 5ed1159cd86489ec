"""`floatedge build` and `floatedge profile` (floatedge/devices/engines.py, acceptance.py, profile.py), on real
bundles with real acceptance sets and real ONNX Runtime; the TensorRT path against the stand-in built from the
real bindings' surface (tests/fake_tensorrt.py), simulated Jetsons for module-dependent settings and power."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from floatedge.bundle import (
    ACCEPTANCE_PREDICTIONS,
    BundleError,
    array_bytes,
    build_report_path,
    open_bundle,
    write_bundle,
)
from floatedge.cli import main
from floatedge.devices import engines
from floatedge.devices.acceptance import AcceptanceSet
from floatedge.devices.engines import BuildError, EngineCache, EngineKey, build, open_built, workspace_limits
from floatedge.devices.profile import ProfileError, load_profile, neighbours, run_profile
from floatedge.devices.simulate import SimJetson
from floatedge.export.torch_export import export_bundle
from floatedge.oppoint import OperatingPoint


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def accepted(floats_run, tmp_path_factory) -> Path:
    """A FLOATS bundle (widths 1, 0.75, 0.5) with a 32-image acceptance set."""
    return export_bundle(floats_run, tmp_path_factory.mktemp("acc") / "m.febundle", acceptance=32).path


@pytest.fixture
def bundle(accepted, tmp_path) -> Path:
    """A private copy: builds write their report beside the bundle."""
    return Path(shutil.copytree(accepted, tmp_path / "m.febundle"))


def report_of(bundle: Path) -> dict:
    return json.loads(build_report_path(bundle).read_text())


# ------------------------------------------------------------------------------------------ the acceptance set
def test_export_puts_a_checksummed_acceptance_set_in_the_bundle(accepted):
    b = open_bundle(accepted)
    acc = b.acceptance
    aset = AcceptanceSet.load(b)
    assert aset.n == acc["n_images"] == 32 and aset.images.dtype == np.float32 and 0 <= aset.images.min()
    assert aset.images.max() <= 1 and b.read_array(acc["images"]["file"]).dtype == np.uint8
    points = {(p["width"], p["lambda_n"]) for p in acc["points"]}
    assert points == {(w, lam) for w in (1.0, 0.75, 0.5) for lam in (0.0, 1.0)}  # no table: λ_n 0 and 1
    for i, p in enumerate(acc["points"]):
        assert p["adversarial"] is None if p["lambda_n"] == 0 else p["adversarial"] in acc_files(b)
        adv = aset.adversarial(i)
        if adv is not None:  # PGD within ε of the clean images, stored float16
            assert b.read_array(p["adversarial"]).dtype == np.float16
            assert np.abs(adv - aset.images).max() <= acc["attack"]["eps"] + 1e-3
            assert p["adv_acc"] == pytest.approx((aset.predictions[i, 1] == aset.labels).mean())
        assert p["clean_acc"] == pytest.approx((aset.predictions[i, 0] == aset.labels).mean())
    assert all(st.ok for st in b.check_files())


def acc_files(b):
    return set(b.manifest["files"])


def test_acceptance_arrays_never_unpickle(tmp_path, accepted):
    """An object array (what np.save pickles) in a bundle is refused, not loaded."""
    b = open_bundle(accepted)
    files = {name: b.read(name) for name in b.manifest["files"]}
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    files[ACCEPTANCE_PREDICTIONS] = buf.getvalue()
    bad = open_bundle(write_bundle(tmp_path / "bad.febundle", b.manifest, files))
    with pytest.raises(BundleError, match="not a plain .npy"):
        bad.read_array(ACCEPTANCE_PREDICTIONS)
    with pytest.raises(ValueError):
        array_bytes(np.array([{"x": 1}], dtype=object))


def test_old_bundle_without_acceptance_opens_and_builds_unproven(floats_run, tmp_path):
    path = export_bundle(floats_run, tmp_path / "old.febundle").path
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["acceptance"]  # as an older floatedge wrote it
    b = open_bundle(write_bundle(tmp_path / "older.febundle", manifest, {f: (path / f).read_bytes()
                                                                       for f in manifest["files"]}))
    assert b.acceptance is None
    report = build(b.path, cache=tmp_path / "cache")
    assert {e["precision"] for e in report["engines"]} == {"fp32"} and not report["acceptance"]["checked"]
    assert any("no acceptance set" in n for n in report["notes"])


# ------------------------------------------------------------------------------------------ keys and the cache
KEY = dict(part_number="p3767-0000", l4t="36.4.3", trt_version="10.3.0", sm="87", precision="fp16",
           flags=("refit", "batch=1,8,32"), onnx_sha256="ab" * 32)


def test_engine_key_every_field_changes_it_and_same_inputs_same_key():
    base = EngineKey(**KEY)
    assert EngineKey(**KEY).digest() == base.digest()
    assert EngineKey(**{**KEY, "flags": ("batch=1,8,32", "refit", "refit")}).digest() == base.digest()  # a set
    changed = dict(part_number="p3767-0001", l4t="36.4.4", trt_version="10.3.1", sm="72", precision="fp32",
                   flags=("refit", "batch=1,8,64"), onnx_sha256="cd" * 32)
    assert set(changed) == set(KEY)  # every field is exercised
    digests = {EngineKey(**{**KEY, k: v}).digest() for k, v in changed.items()}
    assert len(digests) == len(changed) and base.digest() not in digests
    assert EngineKey.from_dict(base.to_dict()) == base and base.flag("batch") == "1,8,32" and base.flag("dla") is None


def test_stale_key_is_never_loaded(tmp_path):
    cache = EngineCache(tmp_path)
    old = EngineKey(**{**KEY, "trt_version": "10.3.0"})
    new = EngineKey(**{**KEY, "trt_version": "10.4.0"})
    cache.store(old, "engine.plan", b"plan built by 10.3", {"width": 1.0})
    entry, status = cache.lookup(new)
    assert entry is None and status.startswith("miss") and "trt_version 10.3.0" in status
    assert cache.lookup(old)[1] == "hit"
    # an entry copied under the new key's directory still holds the old key: refused
    shutil.copytree(cache.dir_for(old), cache.dir_for(new))
    assert cache.lookup(new) == (None, "rebuilt: the entry holds another key")


def test_build_on_onnxruntime_caches_and_reports(bundle, tmp_path):
    cache = tmp_path / "cache"
    r = run_cli("build", bundle, "--cache", cache)
    assert r.exit_code == 0, r.output
    assert "TensorRT is not installed here" in r.output and "cache hits 0/3" in r.output
    report = report_of(bundle)
    b = open_bundle(bundle)
    assert report["format"] == "floatedge-build-report" and report["backend"] == "onnxruntime"
    assert report["bundle_manifest_sha256"] == b.manifest["manifest_sha256"]
    assert [e["width"] for e in report["engines"]] == [1.0, 0.75, 0.5]
    for e in report["engines"]:
        key = EngineKey.from_dict(e["key"])
        assert e["digest"] == key.digest() and Path(e["path"]).is_file() and e["bytes"] == Path(e["path"]).stat().st_size
        assert key.trt_version == "none" and key.flag("provider") == "CPUExecutionProvider"
        assert key.onnx_sha256 == b.manifest["files"][b.model_entry(e["width"])["file"]]["sha256"]
        assert e["precision"] == "fp16" and e["why"] == "passes acceptance" and e["cache"] == "miss"
        assert e["build_seconds"] > 0
    acc = report["acceptance"]
    assert acc["checked"] and len(acc["points"]) == 6 and all(p["passed"] for p in acc["points"])
    assert {(p["width"], p["lambda_n"]) for p in acc["points"] if p["adv_acc"] is not None} == \
        {(1.0, 1.0), (0.75, 1.0), (0.5, 1.0)}
    again = build(bundle, cache=cache)
    assert [e["cache"] for e in again["engines"]] == ["hit"] * 3 and again["cache_hits"] == 3
    assert [e["digest"] for e in again["engines"]] == [e["digest"] for e in report["engines"]]
    shown = run_cli("inspect", bundle)
    assert shown.exit_code == 0 and "acceptance on 32 images" in shown.output and "fp16" in shown.output
    assert "acceptance set: 32 synthetic test images, 6 points, pgd20 images for 3" in shown.output


def test_tampered_cache_entry_is_refused_and_rebuilt(bundle, tmp_path):
    cache = tmp_path / "cache"
    first = build(bundle, "fp32", cache=cache)
    plan = Path(first["engines"][1]["path"])
    plan.write_bytes(plan.read_bytes()[:-8] + b"tampered")
    with pytest.raises(BuildError, match="tampered"):  # the runtime never opens it
        open_built(bundle)
    again = build(bundle, "fp32", cache=cache)
    assert again["engines"][1]["cache"].startswith("rebuilt: tampered")
    assert [e["cache"] for e in again["engines"][::2]] == ["hit", "hit"]
    with open_built(bundle) as model:  # the rebuilt entry is whole again
        assert model.infer(np.zeros((1, *open_bundle(bundle).input_shape), np.float32)).shape == (1, len(open_bundle(bundle).classes))


def test_fp16_on_onnxruntime_really_is_another_precision(bundle, tmp_path):
    """The fp16 model's logits differ from fp32 (weights and activations rounded) yet pass acceptance."""
    report = build(bundle, "fp16", cache=tmp_path / "c16")
    b = open_bundle(bundle)
    x = AcceptanceSet.load(b).images
    with open_built(bundle) as fp16:
        fp16.set_operating_point(lambda_n=1.0, width=1.0)
        half = fp16.infer(x)
    build(bundle, "fp32", cache=tmp_path / "c32")
    with open_built(bundle) as fp32:
        fp32.set_operating_point(lambda_n=1.0, width=1.0)
        full = fp32.infer(x)
    model = onnx.load(report["engines"][0]["path"])
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert 0 < np.abs(half - full).max() < 0.05 and (half.argmax(1) == full.argmax(1)).mean() >= 0.99


def degrade(model):
    """Weights rounded to fp16 and then perturbed: a model that looks like fp16 but computes something else."""
    model = engines_to_fp16(model)
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float16 and a.ndim >= 2:
            t.CopyFrom(numpy_helper.from_array((a + rng.normal(0, 2 * float(a.std()) + 1e-3, a.shape)).astype(np.float16),
                                               t.name))
    return model


engines_to_fp16 = engines.to_fp16


def test_auto_rejects_a_degraded_fp16_model_and_says_where(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "to_fp16", degrade)
    r = run_cli("build", bundle, "--cache", tmp_path / "cache")
    assert r.exit_code == 0, r.output
    assert "fp16 failed at λ_n" in r.output and "falling back to fp32" in r.output
    report = report_of(bundle)
    assert [e["precision"] for e in report["engines"]] == ["fp32"] * 3
    assert all(e["why"].startswith("fallback: fp16 failed at λ_n") for e in report["engines"])
    rejected = report["acceptance"]["rejected"]
    assert rejected and all(p["precision"] == "fp16" for p in rejected) and not all(p["passed"] for p in rejected)
    assert any("points" in f or "agrees" in f for p in rejected for f in p["failures"])
    assert all(p["passed"] and p["precision"] == "fp32" for p in report["acceptance"]["points"])
    assert {g["precision"] for g in report["tried"]} == {"fp16", "fp32"}


def test_failing_acceptance_is_one_line_and_writes_no_report(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "to_fp16", degrade)
    r = run_cli("build", bundle, "--precision", "fp16", "--cache", tmp_path / "c")
    assert r.exit_code == 1 and "width 1 fails acceptance at every precision tried (fp16)" in r.output
    assert "Traceback" not in r.output and not build_report_path(bundle).exists()
    real = engines.prepare_ort
    monkeypatch.setattr(engines, "prepare_ort", lambda b, w, p, t: real(b, w, "fp16", t))  # "fp32" degraded too
    r = run_cli("build", bundle, "--cache", tmp_path / "c2")
    assert r.exit_code == 1 and "at every precision tried (fp16, fp32)" in r.output
    assert r.output.strip().splitlines()[-1].startswith("Error: width 1 fails acceptance")
    assert not build_report_path(bundle).exists()


@pytest.mark.parametrize("args, message", [
    (["--precision", "int8"], "int8 needs a calibration set"),
    (["--dla", "0"], "--dla needs TensorRT"),
    (["--max-batch", "0"], "--max-batch must be ≥ 1"),
    (["--tolerance", "-1"], "tolerance must be in [0, 100]"),
])
def test_build_bad_input_is_one_line(bundle, tmp_path, args, message):
    r = run_cli("build", bundle, "--cache", tmp_path / "c", *args)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output
    assert not build_report_path(bundle).exists() and not (tmp_path / "c").exists()


def test_workspace_bounded_by_the_module(bundle, tmp_path):
    nano = SimJetson(tmp_path / "nano", "nano").build()
    assert workspace_limits(3964) == (256, 991) and workspace_limits(62840)[0] == 2048
    r = run_cli("build", bundle, "--root", nano.root, "--workspace-mb", "2000", "--cache", tmp_path / "c")
    assert r.exit_code == 1 and "--workspace-mb 2000: this device allows 1 to" in r.output


# ------------------------------------------------------------------------------------------ TensorRT (stand-in)
@pytest.fixture
def fake_trt(monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    from fake_tensorrt import FakeCuda, make_tensorrt

    def make(version: str):
        cuda = FakeCuda()
        monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(version, cuda))
        return cuda

    return make


def test_tensorrt_build_engines_refit_and_version_keys(bundle, tmp_path, fake_trt):
    cuda = fake_trt("10.3.0")
    cache = tmp_path / "cache"
    report = build(bundle, "fp32", cache=cache, cuda=cuda)
    assert report["backend"] == "tensorrt" and report["backend_version"] == "10.3.0"
    assert report["settings"]["batch_profile"] == [1, 8, 32]
    assert report["settings"]["workspace_mb"] == workspace_limits(report["device"]["ram_mb"])[0]
    for e in report["engines"]:
        key = EngineKey.from_dict(e["key"])
        assert e["path"].endswith("engine.plan") and key.trt_version == "10.3.0" and key.flag("refit") == ""
        assert e["kind"] == "materialised"
    assert all(p["passed"] for p in report["acceptance"]["points"])  # proven through the runner, by refit
    assert (cache / "timing").is_dir()
    with open_built(bundle, cuda=cuda) as model:  # the runner opens the plans, builds nothing
        model.set_operating_point(lambda_n=0.7, width=0.5)
        assert model.describe()["engines_built"] == []
        assert model.infer(np.zeros((3, *open_bundle(bundle).input_shape), np.float32)).shape[0] == 3
    cuda = fake_trt("8.6.1")  # a TensorRT upgrade/downgrade: other keys, nothing of 10.3 loaded
    other = build(bundle, "fp32", cache=cache, cuda=cuda)
    assert all(e["cache"].startswith("miss (stale: entry") and "10.3.0" in e["cache"] for e in other["engines"])
    assert {e["digest"] for e in other["engines"]}.isdisjoint({e["digest"] for e in report["engines"]})


def test_tensorrt_dla_needs_a_module_with_dla(bundle, tmp_path, fake_trt):
    cuda = fake_trt("10.3.0")
    orin_nano = SimJetson(tmp_path / "on", "orin-nano-8gb").build()
    r = run_cli("build", bundle, "--root", orin_nano.root, "--dla", "0", "--precision", "fp16", "--cache", tmp_path / "c")
    assert r.exit_code == 1 and "has 0 DLA core(s)" in r.output
    agx = SimJetson(tmp_path / "agx", "agx-orin-64gb").build()
    report = build(bundle, "fp16", dla=1, root=agx.root, cache=tmp_path / "c", cuda=cuda)
    key = EngineKey.from_dict(report["engines"][0]["key"])
    assert key.flag("dla") == "1" and key.part_number == "p3701-0005" and report["settings"]["batch_profile"] == [1, 1, 1]


# ------------------------------------------------------------------------------------------ profile
def test_profile_schema_and_keys(bundle, tmp_path):
    build(bundle, "fp32", cache=tmp_path / "cache")
    with pytest.raises(ProfileError, match="run floatedge profile"):
        load_profile(bundle)
    prof = run_profile(bundle, batches=(1, 4), rounds=4, warmup=1, switch_rounds=1, passes=2)
    assert load_profile(bundle) == prof
    assert prof["format"] == "floatedge-device-profile" and prof["schema_version"] == 1
    assert Path(prof["path"]).parent == tmp_path / "cache" / "profiles"
    assert prof["settings"]["batches"] == [1, 4] and prof["settings"]["power"] is False and prof["settings"]["passes"] == 2
    assert [(p["width"], p["lambda_n"]) for p in prof["points"]] == [(w, lam) for w in (1.0, 0.75, 0.5) for lam in (0, 1)]
    for p in prof["points"]:
        assert p["precision"] == "fp32" and p["peak_rss_mb"] > 0
        for f in p["batches"]:
            assert 0 < f["p50_ms"] <= f["p99_ms"] and f["throughput_ips"] > 0 and f["rounds"] == 4
            assert f["power_w"] is None and f["energy_mj_per_image"] is None
    assert len(prof["switches"]) == len(neighbours([OperatingPoint(p["lambda_n"], p["width"]) for p in prof["points"]]))
    assert {s["change"] for s in prof["switches"]} == {"lambda", "width"}
    assert all(s["cold_ms"] > 0 and s["warm_ms"] > 0 for s in prof["switches"])
    assert set(prof["engines"]) == {"1", "0.75", "0.5"} and prof["key"]["bundle_manifest_sha256"]
    # a profile keyed for another device or another build is refused
    other = dict(prof, key=dict(prof["key"], part_number="p3448-0000"))
    Path(tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ProfileError, match="another part number"):
        load_profile(bundle, path=tmp_path / "other.json")
    build(bundle, "fp16", cache=tmp_path / "cache")  # rebuilt at another precision: the old profile is not this build's
    with pytest.raises(ProfileError, match="missing"):
        load_profile(bundle)
    with pytest.raises(ProfileError, match="another engines"):
        load_profile(bundle, path=prof["path"])


def test_profile_reads_power_on_a_simulated_jetson(bundle, tmp_path):
    sim = SimJetson(tmp_path / "sim", "orin-nx-16gb", "6.2").build()
    sim.advance(1.0)
    assert run_cli("build", bundle, "--precision", "fp32", "--root", sim.root, "--cache", tmp_path / "c").exit_code == 0
    r = run_cli("profile", bundle, "--root", sim.root, "--rounds", "3", "--batches", "1", "--switch-rounds", "1")
    assert r.exit_code == 0, r.output
    prof = load_profile(bundle, root=sim.root)
    assert prof["settings"]["power"] and prof["settings"]["telemetry"] == "sysfs"
    assert prof["key"]["part_number"] == "p3767-0000"
    f = prof["points"][0]["batches"][0]
    assert f["power_w"] > 0 and f["power_samples"] >= 1 and f["energy_mj_per_image"] > 0
    other = SimJetson(tmp_path / "nx8", "orin-nx-8gb", "6.2").build()
    with pytest.raises(ProfileError, match="another device"):
        load_profile(bundle, root=other.root)


def test_profile_without_a_build_is_one_line(bundle):
    r = run_cli("profile", bundle)
    assert r.exit_code == 1 and "not built on this device yet" in r.output
