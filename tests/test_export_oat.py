"""OAT/OATS export: FiLM in-graph, FiLM folded into BN by the static form, and both against PyTorch.

Real tiny OAT (128-d orthogonal encoding) and OATS (scalar λ, two widths) runs, real ONNX Runtime, the real
runtime. The reference FiLM init (fixtures in conftest.py) makes γ(λ)/β(λ) move the logits after one epoch,
so parity at λ = 0.2 and 0.7 — both BN_A — is parity of the FiLM path, not of the BN switch alone.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from floatedge.bundle import LAMBDA, MANIFEST, BundleError, open_bundle
from floatedge.cli import main
from floatedge.export.torch_export import ExportError, export_bundle
from floatedge.export.verify import ort_session, parity_images, run_scalable, verify_bundle
from floatedge.graph.film import COND, encode_lambda
from floatedge.graph.scalable import initializer_arrays
from floatedge.graph.static import refit_weights, static_model
from floatedge.oppoint import OperatingPoint, OperatingPointError
from floatedge.train.trainer import load_model

LAMBDAS = (0.0, 0.2, 0.7, 1.0)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[-1]


@pytest.fixture(scope="module")
def oat_bundle(oat_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("ob") / "oat.febundle"
    result = cli("export", oat_run, "--out", out)  # the CLI path the issue reported failing
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def oats_bundle(oats_run, tmp_path_factory):
    return export_bundle(oats_run, tmp_path_factory.mktemp("osb") / "oats.febundle").path


def torch_logits(model, x: np.ndarray, lam: float, width: float) -> np.ndarray:
    model.set_lambda(lam, width)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# ------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("which", ["oat", "oats"])
def test_parity_with_pytorch_in_graph_and_materialised(which, request):
    bundle, run = request.getfixturevalue(f"{which}_bundle"), request.getfixturevalue(f"{which}_run")
    b = open_bundle(bundle)
    model, _, _ = load_model(run)
    x = parity_images(b, 8)
    for w in b.widths:
        sess = ort_session(b.model_bytes(w))
        for lam in LAMBDAS:
            want = torch_logits(model, x, lam, w)
            in_graph = run_scalable(sess, x, lam)
            materialised = ort_session(static_model(b, b.operating_point(lam, w))).run(["logits"], {"images": x})[0]
            assert np.abs(in_graph - want).max() <= 1e-4, (w, lam)
            assert np.abs(materialised - want).max() <= 1e-4, (w, lam)
        # FiLM must matter, or the parity above is hollow: 0.2 and 0.7 share BN_A and differ only by FiLM
        assert np.abs(torch_logits(model, x, 0.2, w) - torch_logits(model, x, 0.7, w)).max() > 1e-2


@pytest.mark.parametrize("which", ["oat", "oats"])
def test_verify_passes_via_the_cli(which, request):
    bundle, run = request.getfixturevalue(f"{which}_bundle"), request.getfixturevalue(f"{which}_run")
    result = cli("verify", bundle, "--run", run)
    assert result.exit_code == 0, result.output
    assert "OK:" in result.output and " -" not in result.output.split("ORT vs torch")[1]  # every row checked
    report = verify_bundle(bundle, run)
    assert report.torch_checked and report.ok and report.max_delta("torch") <= 1e-4
    assert all(err is None for err in report.checker.values())


def test_manifest_says_oat(oat_bundle, oats_bundle):
    b = open_bundle(oat_bundle)
    m = b.manifest
    assert b.kind == "oat" and m["method"] == "oat" and b.schema_version == 2 and b.lambda_th == 0.0
    assert b.film == {"dim": 128, "encoding": "orthogonal", "grid": [0.0, 0.1, 0.2, 0.3, 0.4, 1.0],
                      "seed": m["provenance"]["config"]["seed"], "init": "reference", "layers": 2}
    assert m["alphas"] == {} and m["noise"]["eta_dtype"] == "float32"
    layers = m["models"][0]["layers"]
    assert [(layer["name"], layer.get("film")) for layer in layers if layer["kind"] == "bn"] == [("bn1", True),
                                                                                               ("bn2", True)]
    s = open_bundle(oats_bundle)
    assert s.kind == "oat" and s.widths == (1.0, 0.5) and s.film["encoding"] == "scalar" and s.film["dim"] == 1


def test_inspect_shows_the_kind(oat_bundle):
    result = cli("inspect", oat_bundle)
    assert result.exit_code == 0, result.output
    assert "oat tiny (kind oat)" in result.output and "FiLM on λ_n in-graph: 2 FiLM layers" in result.output
    assert "orthogonal encoding of size 128" in result.output


# ------------------------------------------------------------------------------------ the graph
def test_graph_inputs_and_names_match_float(oat_bundle):
    model = onnx.load_from_string(open_bundle(oat_bundle).model_bytes(1.0))
    assert [i.name for i in model.graph.input] == ["images", LAMBDA]
    assert [o.name for o in model.graph.output] == ["logits"]
    names = {t.name for t in model.graph.initializer}
    for n in ("bn1.clean.weight", "bn1.adv.running_var", "bn1.film.fc1.weight", "bn2.film.fc2.bias",
              "lambda_encoder.grid", "lambda_encoder.rows", "conv1.weight", "fc.bias"):
        assert n in names, n
    assert not {"conv1.eta", "conv1.alpha"} & names  # OAT has no weight noise
    assert initializer_arrays(model)["lambda_encoder.rows"].shape == (6, 128)  # the grid's rows, not 128×128
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("LeakyRelu") == 4 and ops.count("BatchNormalization") == 2  # 2 FiLMs × 2; BN not folded


def test_encoding_subgraph_is_torchs_encoder(oat_bundle, oat_run):
    """λ_n → film.cond extracted from the exported graph, against LambdaEncoder and the numpy mirror, on a
    fine grid plus the training λs and their float32 neighbours."""
    model, _, _ = load_model(oat_run)
    scalable = onnx.load_from_string(open_bundle(oat_bundle).model_bytes(1.0))
    inferred = onnx.shape_inference.infer_shapes(scalable)
    sess = ort_session(onnx.utils.Extractor(inferred).extract_model([LAMBDA], [COND]))
    inits = initializer_arrays(scalable)
    knots = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    grid = np.concatenate([np.linspace(0, 1, 1001, dtype=np.float32), knots, np.nextafter(knots, np.float32(0)),
                           np.nextafter(knots, np.float32(1))])
    want = model.lambda_encoder(torch.from_numpy(grid)).numpy()
    for lam, row in zip(grid, want, strict=True):
        got = sess.run([COND], {LAMBDA: np.array(lam, np.float32)})[0]
        np.testing.assert_allclose(got[0], row, rtol=0, atol=1e-7, err_msg=str(lam))
        np.testing.assert_array_equal(encode_lambda(lam, inits), got)  # static form: op for op


def test_static_form_is_a_plain_network(oat_bundle, oat_run):
    b = open_bundle(oat_bundle)
    a, c = b.operating_point(0.2), b.operating_point(0.7)
    sa, sc = static_model(b, a), static_model(b, c)
    onnx.checker.check_model(sa, full_check=True)
    assert [i.name for i in sa.graph.input] == ["images"]
    assert not {"LeakyRelu", "Where", "Gather", "Less"} & {n.op_type for n in sa.graph.node}
    assert [t.name for t in sa.graph.initializer] == [t.name for t in sc.graph.initializer]
    assert not [t.name for t in sa.graph.initializer if ".film." in t.name or t.name.startswith("lambda_encoder")]
    # FiLM folded into BN: the folded weight is γ·a of the BN_A set, as train.film.fold_film computes it
    model, _, _ = load_model(oat_run)
    from floatedge.train.film import fold_film

    folded = fold_film(model, 0.7)
    got = {t.name: onnx.numpy_helper.to_array(t) for t in sc.graph.initializer}
    np.testing.assert_allclose(got["bn1.weight"], folded.bn1.weight.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["bn2.bias"], folded.bn2.bias.detach().numpy(), rtol=1e-6, atol=1e-7)
    # refit: the weights of point c turn the static model of point a into c's
    weights = refit_weights(b, c)
    for t in sa.graph.initializer:
        t.CopyFrom(onnx.numpy_helper.from_array(weights[t.name], t.name))
    x = parity_images(b, 4)
    np.testing.assert_allclose(ort_session(sa).run(["logits"], {"images": x})[0],
                               run_scalable(ort_session(b.model_bytes(1.0)), x, 0.7), atol=1e-5)
    assert set(refit_weights(b, c, changing_only=True)) == {f"bn{i}.{p}" for i in (1, 2) for p in
                                                           ("weight", "bias", "running_mean", "running_var")}


# ------------------------------------------------------------------------------------ λ_th
def test_oat_has_no_lambda_th(oat_run, oat_bundle, tmp_path):
    with pytest.raises(ExportError, match="no λ_th"):
        export_bundle(oat_run, tmp_path / "x.febundle", lambda_th=0.5)
    err = one_line_error(cli("export", oat_run, "--out", tmp_path / "y.febundle", "--lambda-th", "0.5"))
    assert "OAT/OATS have no λ_th" in err
    assert export_bundle(oat_run, tmp_path / "z.febundle", lambda_th=0.0).path.exists()  # 0 is OAT's own rule
    b = open_bundle(oat_bundle)
    with pytest.raises(OperatingPointError, match="no λ_th"):
        b.check_point(OperatingPoint(0.5, 1.0, 0.5))
    with pytest.raises(OperatingPointError, match="no λ_th"):
        static_model(b, OperatingPoint(0.5, 1.0, 0.5))
    err = one_line_error(cli("static", oat_bundle, "--lambda-n", "0.5", "--lambda-th", "0.5", "--out", tmp_path / "s.onnx"))
    assert "no λ_th" in err and not (tmp_path / "s.onnx").exists() and not (tmp_path / "x.febundle").exists()
    assert b.operating_point(0.3).bn == 1 and b.operating_point(0.0).bn == 0  # BN_A iff λ_n > 0, as the trainer


# ------------------------------------------------------------------------------------ schema
def _rewrite(bundle, tmp_path, edit):
    dst = tmp_path / bundle.name
    shutil.copytree(bundle, dst)
    m = json.loads((dst / MANIFEST).read_text())
    edit(m)
    from floatedge.bundle import manifest_checksum

    m["manifest_sha256"] = manifest_checksum(m)
    (dst / MANIFEST).write_text(json.dumps(m))
    return dst


def test_schema_checks_for_the_kind(oat_bundle, float_run, tmp_path):
    old = _rewrite(oat_bundle, tmp_path / "a", lambda m: m.update(schema_version=1))
    with pytest.raises(BundleError, match="kind 'oat' needs schema version ≥ 2"):
        open_bundle(old)
    odd = _rewrite(oat_bundle, tmp_path / "b", lambda m: m.update(kind="film"))
    with pytest.raises(BundleError, match="unknown model kind 'film'"):
        open_bundle(odd)
    # FLOAT bundles are still written at version 1, and a version-1 manifest without `kind` is FLOAT
    f = export_bundle(float_run, tmp_path / "f.febundle", dial="switch").path
    assert open_bundle(f).schema_version == 1 and open_bundle(f).manifest["kind"] == "float"
    v1 = _rewrite(f, tmp_path / "c", lambda m: (m.pop("kind"), m.pop("film")))
    assert open_bundle(v1).kind == "float" and open_bundle(v1).film is None and verify_bundle(v1).ok


# ------------------------------------------------------------------------------------ runtime
def test_runtime_opens_and_switches_an_oats_bundle(oats_bundle, oats_run):
    import floatedge.runtime as rt

    model, _, _ = load_model(oats_run)
    x = parity_images(open_bundle(oats_bundle), 4)
    for mode in ("in-graph", "materialised"):
        with rt.open(str(oats_bundle), mode=mode, threads=1) as r:
            assert r.lambda_th == 0.0 and r.widths == (1.0, 0.5)
            for lam, w in ((0.0, 1.0), (0.7, 1.0), (0.2, 0.5), (1.0, 0.5), (0.7, 1.0)):  # the last one cached
                assert r.set_operating_point(lambda_n=lam, width=w).lambda_n == lam
                np.testing.assert_allclose(r.infer(x), torch_logits(model, x, lam, w), atol=1e-4, err_msg=f"{mode} {lam} {w}")


@pytest.mark.parametrize("mode", ["in-graph", "materialised"])
def test_runtime_refuses_a_threshold_on_an_oat_bundle_in_every_mode(oat_bundle, mode):
    """OAT has no λ_th: the in-graph runtime must refuse it as the materialised one does, not run another λ."""
    import floatedge.runtime as rt

    with rt.open(str(oat_bundle), mode=mode, threads=1) as r:
        before = r.operating_point
        with pytest.raises(OperatingPointError, match="OAT bundle has no λ_th"):
            r.set_operating_point(lambda_n=0.7, lambda_th=0.5)
        with pytest.raises(OperatingPointError, match="OAT bundle has no λ_th"):
            r.run(parity_images(open_bundle(oat_bundle), 1), point={"lambda_n": 0.7, "lambda_th": 0.5})
        assert r.operating_point == before
