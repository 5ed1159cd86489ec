"""The λ dial (issue 15): FLOAT's switch and BN interpolation (mixing dials), the same function in torch, in the
scalable ONNX graph, in the static form and in the runtime; the bundle's record of it, old bundles, eval → export."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import floatedge.runtime as rt
from floatedge.bundle import BN_WEIGHT, LAMBDA, MANIFEST, NOISE_SCALE, BundleError, manifest_checksum, open_bundle
from floatedge.cli import main
from floatedge.export.torch_export import ExportError, export_bundle, export_model, resolve_dial
from floatedge.export.verify import ort_session, parity_images, run_scalable, verify_bundle
from floatedge.graph.static import static_model
from floatedge.oppoint import (
    DIALS,
    Dial,
    OperatingPoint,
    OperatingPointError,
    equivalent_lambda,
    fold_bn,
    get_dial,
    mix_affine,
    noise_scale_array,
)
from floatedge.train.layers import DualBatchNorm2d
from floatedge.train.trainer import load_model

GRID = np.linspace(0, 1, 501, dtype=np.float32)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def mix_bundle(floats_run, tmp_path_factory):
    return export_bundle(floats_run, tmp_path_factory.mktemp("mix") / "mix.febundle", eta_dtype="float32", dial="mix").path


@pytest.fixture(scope="module")
def switch_bundle(floats_run, tmp_path_factory):
    return export_bundle(floats_run, tmp_path_factory.mktemp("sw") / "sw.febundle", eta_dtype="float32",
                         dial="switch").path


# ------------------------------------------------------------------------------------------------ the rule
def test_named_dials_compute_what_they_say():
    s, t = DIALS["mix"].arrays(GRID, 0.0)
    np.testing.assert_array_equal(s, GRID)  # t = s = λ_n exactly: one segment of slope 1
    np.testing.assert_array_equal(t, GRID)
    s1, t1 = DIALS["mix-s1"].arrays(GRID, 0.0)
    assert (s1 == 1).all() and (t1 == GRID).all()
    s0, _ = DIALS["mix-s0"].arrays(GRID, 0.0)
    assert (s0 == 0).all()
    for th in (0.0, 0.5):  # switch: Eq. 5, t the BN set as 0/1
        s, t = DIALS["switch"].arrays(GRID, th)
        want_s, want_adv = noise_scale_array(GRID, th)
        np.testing.assert_array_equal(s, want_s)
        np.testing.assert_array_equal(t, want_adv.astype(np.float32))


def test_piecewise_linear_knots_are_np_interp():
    d = Dial("bent", ((0, 0), (0.3, 0.1), (0.8, 0.9), (1, 1)), ((0, 0.2), (0.5, 1), (1, 1)))
    s, t = d.arrays(GRID, 0.0)
    np.testing.assert_allclose(t, np.interp(GRID, [0, 0.3, 0.8, 1], [0, 0.1, 0.9, 1]), atol=1e-6)
    np.testing.assert_allclose(s, np.interp(GRID, [0, 0.5, 1], [0.2, 1, 1]), atol=1e-6)


@pytest.mark.parametrize("t,s,msg", [(((0, 0), (0.9, 1)), ((0, 0), (1, 1)), "rise strictly from λ_n = 0 to 1"),
                                     (((0, 0), (0.5, 0.2), (0.5, 0.3), (1, 1)), ((0, 0), (1, 1)), "rise strictly"),
                                     (((0, 0), (1, 1.5)), ((0, 0), (1, 1)), r"values must be in \[0, 1\]"),
                                     (((0, 0), (1, 1)), ((0, -1), (1, 1)), "values must be in"),
                                     ((0, 1), ((0, 0), (1, 1)), "knots must be pairs")])
def test_bad_knots_are_one_clear_error(t, s, msg):
    with pytest.raises(OperatingPointError, match=msg):
        Dial("x", t, s)


def test_a_point_under_a_mixing_dial():
    p = OperatingPoint(0.3, 1.0, 0.5, "mix")
    assert p.lambda_th == 0.0 and p.dial is DIALS["mix"]  # a mixing dial has no λ_th
    assert p.noise_scale == pytest.approx(0.3) and p.bn_weight == pytest.approx(0.3) and p.bn_name == "mix 0.30"
    assert p.to_dict() == {"lambda_n": 0.3, "width": 1.0, "lambda_th": 0.0, "dial": "mix"}
    assert OperatingPoint(**p.to_dict()) == p
    assert p.effective() != OperatingPoint(0.3, 1.0, 0.0).effective()  # switch at λ_th 0: BN_A, s = 0.3
    # the ends of `mix` compute what the ends of the switch compute
    assert OperatingPoint(1.0, 1.0, 0, "mix").effective() == OperatingPoint(1.0, 1.0, 0.5).effective()
    assert OperatingPoint(0.0, 1.0, 0, "mix").effective() == OperatingPoint(0.0, 1.0, 0.5).effective()
    # switch is stored as None, so naming it changes nothing
    assert OperatingPoint(0.7, 1.0, 0.5, "switch") == OperatingPoint(0.7, 1.0, 0.5)
    # a bundle fills its dial into a point naming none, and refuses one naming another
    assert OperatingPoint(0.3, 1.0).with_dial("mix") == p
    assert OperatingPoint(0.3, 1.0).with_dial("switch") == OperatingPoint(0.3, 1.0)
    with pytest.raises(OperatingPointError, match="names dial 'mix', this model's is 'mix-s1'"):
        p.with_dial("mix-s1")
    assert equivalent_lambda(p, 0.0, "mix") == 0.3
    with pytest.raises(OperatingPointError, match="mode='materialised'"):
        equivalent_lambda(OperatingPoint(0.7, 1.0, 0.5), 0.0, "mix")


def test_a_recorded_dial_must_be_the_one_this_floatedge_knows():
    assert get_dial(DIALS["mix"].to_dict()) is DIALS["mix"]
    assert get_dial(None) is DIALS["switch"]
    with pytest.raises(OperatingPointError, match="unknown dial 'warp'"):
        get_dial({"name": "warp", "t": [[0, 0], [1, 1]], "s": [[0, 0], [1, 1]]})
    with pytest.raises(OperatingPointError, match="other knots"):
        get_dial({"name": "mix", "t": [[0, 0], [1, 1]], "s": [[0, 1], [1, 1]]})


# ------------------------------------------------------------------------------------------- torch layer
def test_blending_outputs_is_the_folded_affine_and_mixing_statistics_is_not():
    torch.manual_seed(0)
    bn = DualBatchNorm2d([6]).eval()
    for m, scale in zip(bn.bns[0], (1.0, 5.0), strict=True):  # BN_A sees far larger activations, as adversarial ones
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 2.0).mul_(scale ** 2)
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.normal_()
    x = torch.randn(4, 6, 3, 3)
    bn.bn = 0.3
    with torch.no_grad():
        got = bn(x)
    clean, adv = bn.bns[0]
    with torch.no_grad():
        torch.testing.assert_close(got, 0.7 * clean(x) + 0.3 * adv(x))
    sets = [fold_bn(*(getattr(m, p).detach().numpy() for p in ("weight", "bias", "running_mean", "running_var")), m.eps)
            for m in (clean, adv)]
    k, b = mix_affine(*sets[0], *sets[1], 0.3)
    k = k / math.sqrt(1 + clean.eps)  # the graph's BN node runs at variance 1: it divides by √(1 + ε)
    np.testing.assert_allclose(got.numpy(), x.numpy() * k[:, None, None] + b[:, None, None], atol=1e-5)
    # the alternative the docstring rejects: a BN from blended statistics is another (nonlinear) function
    stat = torch.nn.BatchNorm2d(6).eval()
    for p in ("weight", "bias", "running_mean", "running_var"):
        getattr(stat, p).data.copy_(0.7 * getattr(clean, p).data + 0.3 * getattr(adv, p).data)
    with torch.no_grad():
        assert (stat(x) - got).abs().max() > 0.05
        bn.bn = 1  # the ends select a set, as before
        torch.testing.assert_close(bn(x), adv(x))


# ------------------------------------------------------------------------------------------------ the graph
def test_mixing_graph_computes_s_and_t_as_oppoint_does(float_run):
    model, _, ckpt = load_model(float_run)
    d = Dial("bent", ((0, 0), (0.4, 0.1), (1, 1)), ((0, 0.2), (1, 1)))
    scalable, _ = export_model(model, 1.0, ckpt["dataset"]["input_shape"], lambda_th=0.0, dial=d)
    inferred = onnx.shape_inference.infer_shapes(scalable)
    sess = ort_session(onnx.utils.Extractor(inferred).extract_model([LAMBDA], [NOISE_SCALE, BN_WEIGHT]))
    want_s, want_t = d.arrays(GRID, 0.0)
    for lam, ws, wt in zip(GRID, want_s, want_t, strict=True):
        s, t = sess.run([NOISE_SCALE, BN_WEIGHT], {LAMBDA: np.array(lam, np.float32)})
        assert abs(s - ws) <= 1e-6 and abs(t - wt) <= 1e-6, lam
    names = {i.name for i in scalable.graph.initializer}
    assert {"bn1.clean.scale", "bn1.adv.shift", "bn1.running_mean"} <= names and "bn1.clean.running_var" not in names


def test_mix_bundle_round_trip(mix_bundle, floats_run):
    b = open_bundle(mix_bundle)
    assert b.dial is DIALS["mix"] and b.schema_version == 3 and b.lambda_th == 0.0
    assert b.manifest["dial"] == DIALS["mix"].to_dict()
    report = verify_bundle(mix_bundle, floats_run)  # torch vs ORT, static vs scalable, every width, VERIFY_LAMBDAS
    assert report.ok, report.failures()
    # a real dial: the intermediate points are neither end
    sess, x = ort_session(b.model_bytes(0.5)), parity_images(b, 4)
    ends = [run_scalable(sess, x, lam) for lam in (0.0, 1.0)]
    mid = run_scalable(sess, x, 0.5)
    assert min(np.abs(mid - e).max() for e in ends) > 1e-3
    assert "dial     mix (BN mixed" in cli("inspect", mix_bundle).output


@pytest.mark.parametrize("lam", [0.15, 0.5, 0.85])
def test_torch_ort_static_and_runtime_agree_between_the_ends(mix_bundle, floats_run, lam):
    b = open_bundle(mix_bundle)
    model, _, _ = load_model(floats_run)
    x = parity_images(b, 4)
    for w in b.widths:
        op = b.operating_point(lam, w)
        assert op.dial is DIALS["mix"] and op.bn_weight == pytest.approx(lam)
        model.set_operating_point(op)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = run_scalable(ort_session(b.model_bytes(w)), x, lam)
        frozen = ort_session(static_model(b, op)).run(["logits"], {"images": x})[0]
        assert np.abs(got - want).max() <= 1e-4 and np.abs(frozen - got).max() <= 1e-5
    for mode in ("in-graph", "materialised"):
        with rt.open(mix_bundle, mode=mode) as m:
            m.set_operating_point(lambda_n=lam, width=0.5)
            assert m.operating_point.dial is DIALS["mix"] and m.describe()["dial"] == "mix"
            model.set_operating_point(b.operating_point(lam, 0.5))
            with torch.no_grad():
                want = model(torch.from_numpy(x)).numpy()
            assert np.abs(m.infer(x) - want).max() <= 1e-4
            before = m.operating_point
            m.set_operating_point(lambda_th=0.5)  # a mixing dial has no λ_th: the same point
            assert m.operating_point == before
            assert m.run(x, point={"lambda_n": lam, "dial": "mix"}).point == before
            with pytest.raises(OperatingPointError, match="names dial 'mix-s1', this model's is 'mix'"):
                m.run(x, point={"lambda_n": lam, "dial": "mix-s1"})


def test_static_form_materialises_any_dial_from_either_graph(mix_bundle, switch_bundle):
    mix, sw = open_bundle(mix_bundle), open_bundle(switch_bundle)
    x = parity_images(mix, 4)

    def frozen(b, op):
        return ort_session(static_model(b, op)).run(["logits"], {"images": x})[0]

    for lam in (0.0, 0.3, 1.0):  # a blend from a switch graph (folded from its raw BN sets) = the mixing graph's
        op = OperatingPoint(lam, 0.75, 0.0, "mix")
        np.testing.assert_allclose(frozen(sw, op), run_scalable(ort_session(mix.model_bytes(0.75)), x, lam), atol=1e-5)
    for lam in (0.3, 0.7):  # and a switch point from a mixing graph (its folded sets at t ∈ {0, 1}) = the switch graph's
        op = OperatingPoint(lam, 0.75, 0.5, "switch")
        np.testing.assert_allclose(frozen(mix, op), run_scalable(ort_session(sw.model_bytes(0.75)), x, lam), atol=1e-5)


# ------------------------------------------------------------------------------------------ the bundle
def _rewrite(path, edit):
    m = json.loads((path / MANIFEST).read_text())
    edit(m)
    m["manifest_sha256"] = manifest_checksum(m)
    (path / MANIFEST).write_text(json.dumps(m))


def test_a_bundle_from_before_dials_still_opens_and_runs(switch_bundle, tmp_path):
    old = tmp_path / "old.febundle"
    shutil.copytree(switch_bundle, old)
    _rewrite(old, lambda m: m.pop("dial"))  # what every bundle exported before this change looks like
    b = open_bundle(old)
    assert b.dial is DIALS["switch"] and b.schema_version == 1
    with rt.open(old) as m:
        m.set_operating_point(lambda_n=0.7)
        assert m.operating_point == OperatingPoint(0.7, 1.0, 0.5)
        ref = run_scalable(ort_session(b.model_bytes(1.0)), parity_images(b, 2), 0.7)
        assert np.abs(m.infer(parity_images(b, 2)) - ref).max() <= 1e-5


def test_a_mixing_dial_needs_schema_3_and_a_known_dial(mix_bundle, tmp_path):
    for edit, msg in ((lambda m: m.update(schema_version=2), "mixing dial needs schema version ≥ 3"),
                      (lambda m: m["dial"].update(name="warp"), "unknown dial 'warp'"),
                      (lambda m: m["dial"].update(s=[[0, 1], [1, 1]]), "other knots")):
        bad = tmp_path / f"b{len(list(tmp_path.iterdir()))}.febundle"
        shutil.copytree(mix_bundle, bad)
        _rewrite(bad, edit)
        with pytest.raises(BundleError, match=msg):
            open_bundle(bad)
        result = cli("inspect", bad)
        assert result.exit_code == 1 and msg.split("'")[0] in result.output.splitlines()[-1]


# --------------------------------------------------------------------------------------- eval → export
def test_what_is_measured_under_a_dial_is_what_is_deployed(float_run, tmp_path):
    ev = tmp_path / "eval.json"
    result = cli("eval", float_run, "--dial", "mix", "--lambdas", "0,0.5,1", "--attacks", "fgsm", "--limit", "16",
                 "--out", ev, "--quiet")
    assert result.exit_code == 0, result.output
    rows = json.loads(ev.read_text())["rows"]
    assert [(r["lambda_n"], r["lambda_th"], r.get("dial")) for r in rows] == [(0.0, 0.0, "mix"), (0.5, 0.0, "mix"),
                                                                              (1.0, 0.0, "mix")]  # λ_ths collapse
    out = tmp_path / "m.febundle"
    result = cli("export", float_run, "--out", out, "--eval", ev, "--dial", "mix", "--acceptance", "16")
    assert result.exit_code == 0, result.output
    b = open_bundle(out)
    row = b.lookup(b.operating_point(0.5))
    assert row is not None and row["fgsm_acc"] == rows[1]["fgsm_acc"] and row["bn"] == "mix 0.50"
    assert {p["lambda_th"] for p in b.acceptance["points"]} == {0.0} and len(b.acceptance["points"]) == 3
    err = cli("export", float_run, "--out", tmp_path / "x.febundle", "--eval", ev, "--dial", "switch")
    assert err.exit_code == 1 and "measured under the mix dial, the bundle deploys switch" in err.output
    assert not (tmp_path / "x.febundle").exists()
    err = cli("export", float_run, "--out", tmp_path / "y.febundle", "--dial", "mix", "--lambda-th", "0.5")
    assert err.exit_code == 1 and "no λ_th" in err.output.splitlines()[-1]


def test_models_without_two_bn_sets_take_only_switch(oat_run, synthetic, tmp_path):
    from floatedge.train.trainer import TrainConfig, train

    model, _, _ = load_model(oat_run)
    assert resolve_dial(model, None).name == "switch"
    with pytest.raises(ExportError, match="OAT model routes its BNs by λ"):
        resolve_dial(model, "mix")
    plain = train(TrainConfig(method="standard", arch="tiny", dataset="synthetic", epochs=1, batch_size=64),
                  tmp_path / "std", progress=False, dataset=synthetic)
    with pytest.raises(ExportError, match="one BN set"):
        resolve_dial(load_model(plain)[0], "mix-s1")
