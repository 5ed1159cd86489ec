"""Export → verify round trips on tiny trained runs, the λ graph against floatedge.oppoint, the static form,
and every bad input the issue lists. Real exports, real ONNX Runtime, real files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

from floatedge.bundle import LAMBDA, MANIFEST, NOISE_SCALE, USE_ADV, VERIFY_LAMBDAS, model_filename, open_bundle
from floatedge.cli import main
from floatedge.export.torch_export import ExportError, export_bundle, export_model
from floatedge.export.verify import ort_session, parity_images, run_scalable, verify_bundle
from floatedge.graph.static import plain_model, refit_weights, static_model
from floatedge.oppoint import OperatingPoint, bn_set, noise_scale, noise_scale_array
from floatedge.train.trainer import load_model

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("Error: "), result.output
    return lines[-1]


@pytest.fixture(scope="module")
def float_bundle(float_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fb") / "float.febundle"
    result = cli("export", float_run, "--out", out, "--dial", "switch")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def floats_bundle(floats_run, tmp_path_factory) -> Path:
    return export_bundle(floats_run, tmp_path_factory.mktemp("fsb") / "floats.febundle", eta_dtype="float32",
                         dial="switch").path


@pytest.fixture
def copy_of(tmp_path):
    def make(bundle: Path) -> Path:
        dst = tmp_path / bundle.name
        shutil.copytree(bundle, dst)
        return dst
    return make


# ------------------------------------------------------------------------------------ round trips
def test_float_round_trip_via_cli(float_bundle, float_run):
    result = cli("verify", float_bundle, "--run", float_run)
    assert result.exit_code == 0, result.output
    assert "OK:" in result.output and "ORT vs torch" in result.output
    b = open_bundle(float_bundle)
    assert b.widths == (1.0,) and [e["file"] for e in b.manifest["models"]] == [model_filename(1.0)]
    names = sorted(os.listdir(float_bundle))  # the command's default acceptance set: images, labels, predictions, PGD
    assert [n for n in names if not n.startswith("acceptance_")] == [MANIFEST, model_filename(1.0)]
    assert {"acceptance_images.npy", "acceptance_labels.npy", "acceptance_predictions.npy"} < set(names)


def test_floats_round_trip_three_widths(floats_bundle, floats_run):
    report = verify_bundle(floats_bundle, floats_run)
    assert report.ok, report.failures()
    points = {(w, lam) for w in (1.0, 0.75, 0.5) for lam in VERIFY_LAMBDAS}
    assert {(r.width, r.lambda_n) for r in report.parity} == points
    assert all(r.torch_delta is not None and r.torch_delta <= 1e-4 for r in report.parity)
    assert all(r.static_delta <= 1e-4 for r in report.parity)
    assert all(err is None for err in report.checker.values())


def test_noise_and_bn_really_change_the_output(floats_bundle):
    """Parity would be hollow if λ_n did nothing: s·α·η and the BN switch must move the logits."""
    b = open_bundle(floats_bundle)
    x = parity_images(b, 4)
    for w in b.widths:
        sess = ort_session(b.model_bytes(w))
        out = {lam: run_scalable(sess, x, lam) for lam in (0.0, 0.5, 0.51, 1.0)}
        assert np.abs(out[0.0] - out[0.5]).max() > 1e-3  # noise at s = 1 with BN_C
        assert np.abs(out[0.5] - out[0.51]).max() > 1e-3  # BN_C → BN_A (s ≈ 0.02)


def test_manifest_content(floats_bundle, floats_run):
    m = open_bundle(floats_bundle).manifest
    model, cfg, ckpt = load_model(floats_run)
    assert m["architecture"] == "tiny" and m["method"] == "floats" and m["classes"] == ckpt["dataset"]["classes"]
    assert m["input"]["shape"] == [3, 16, 16] and m["input"]["range"] == [0.0, 1.0]
    assert m["widths"] == [1.0, 0.75, 0.5] and m["lambda_th"] == 0.5
    assert m["noise"]["seed"] == cfg.noise_seed
    assert m["alphas"] == pytest.approx({k: float(v) for k, v in
                                         {n[:-6]: p.detach() for n, p in model.named_parameters()
                                          if n.endswith(".alpha")}.items()})
    prov = m["provenance"]
    assert prov["epoch"] == 1 and prov["config"]["method"] == "floats" and prov["packages"]["onnx"] == onnx.__version__
    assert len(prov["checkpoint_sha256"]) == 64 and prov["floatedge_version"]


# ------------------------------------------------------------------------------------ the graph
def test_initializer_names_are_layer_paths(floats_bundle):
    b = open_bundle(floats_bundle)
    half = onnx.load_from_string(b.model_bytes(0.5))
    names = {t.name for t in half.graph.initializer}
    for n in ("conv1.weight", "conv1.alpha", "conv1.eta", "conv2.eta", "fc.weight", "fc.bias", "fc.eta",
              "bn1.clean.running_mean", "bn1.adv.running_var", "bn2.clean.weight", "bn2.adv.bias",
              "normalize.mean", "normalize.std", "lambda_th"):
        assert n in names, n
    assert not [n for n in names if n.startswith("onnx::") or n.startswith("/")]
    assert [i.name for i in half.graph.input] == ["images", LAMBDA]
    assert [o.name for o in half.graph.output] == ["logits"]
    # BN is not folded: one BatchNormalization per BN layer, fed by the Where that picks the set
    assert sum(n.op_type == "BatchNormalization" for n in half.graph.node) == 2
    assert sum(n.op_type == "Greater" for n in half.graph.node) == 1  # the λ rule is built once


def test_eta_is_the_recorded_draw_sliced_to_the_width(floats_bundle, floats_run):
    model, _, _ = load_model(floats_run)
    inits = {t.name: numpy_helper.to_array(t)
             for t in onnx.load_from_string(open_bundle(floats_bundle).model_bytes(0.75)).graph.initializer}
    k = model.widths.index(0.75)
    out_c, in_c = model.conv2.out_list[k], model.conv2.in_list[k]
    assert inits["conv2.eta"].shape == (out_c, in_c, 3, 3)
    np.testing.assert_array_equal(inits["conv2.eta"], model.conv2.eta().detach()[:out_c, :in_c].numpy())
    np.testing.assert_array_equal(inits["conv2.weight"], model.conv2.weight.detach()[:out_c, :in_c].numpy())
    np.testing.assert_array_equal(inits["bn2.adv.running_mean"], model.bn2.bns[k][1].running_mean.numpy())


def test_export_is_deterministic(float_run):
    model, _, ckpt = load_model(float_run)
    a, _ = export_model(model, 1.0, ckpt["dataset"]["input_shape"])
    b, _ = export_model(model, 1.0, ckpt["dataset"]["input_shape"])
    assert a.SerializeToString() == b.SerializeToString()


@pytest.mark.parametrize("lambda_th", [0.0, 0.5])
def test_lambda_graph_agrees_with_oppoint_on_a_fine_grid(float_run, lambda_th):
    model, _, ckpt = load_model(float_run)
    scalable, _ = export_model(model, 1.0, ckpt["dataset"]["input_shape"], lambda_th=lambda_th)
    inferred = onnx.shape_inference.infer_shapes(scalable)
    rule = onnx.utils.Extractor(inferred).extract_model([LAMBDA], [NOISE_SCALE, USE_ADV])
    sess = ort_session(rule)
    th32 = np.float32(lambda_th)
    grid = np.concatenate([np.linspace(0, 1, 2001, dtype=np.float32),
                           [np.nextafter(th32, np.float32(0)), th32, np.nextafter(th32, np.float32(1))]])
    grid = np.clip(grid, 0, 1).astype(np.float32)
    for lam in grid:
        s, adv = sess.run([NOISE_SCALE, USE_ADV], {LAMBDA: np.array(lam, np.float32)})
        s_np, adv_np = noise_scale_array(lam, lambda_th)
        assert s == s_np and adv == adv_np, lam  # op for op: bit-identical
        assert abs(float(s) - noise_scale(float(lam), lambda_th)) <= 1e-6, lam
        assert int(adv) == bn_set(float(lam), lambda_th), lam


@pytest.mark.parametrize("arch,method,widths", [("resnet20", "floats", (1.0, 0.5)), ("wrn40_2", "float", (1.0,)),
                                                ("resnet20", "oats", (1.0, 0.5))])
def test_real_architectures_export_with_parity(arch, method, widths):
    """Not only `tiny`: an untrained model straight from its TrainConfig (export does not care how well it is
    trained), BN statistics and biases randomised so both BN sets and every FiLM carry signal; ONNX Runtime,
    in-graph and frozen, against PyTorch at the paper's λs and every width."""
    from floatedge.graph.static import freeze
    from floatedge.train.trainer import TrainConfig, build_model

    cfg = TrainConfig(method=method, arch=arch, widths=widths, film_init="reference")
    meta = {"num_classes": 10, "input_shape": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "classes": []}
    model = build_model(cfg, meta).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith(("running_mean", ".bias")) and ".film." not in name:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
    th = 0.0 if cfg.oat else 0.5
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    for w in widths:
        scalable, layers = export_model(model, w, meta["input_shape"])
        films = sum(bool(layer.get("film")) for layer in layers)
        assert films == (19 if cfg.oat else 0)  # ResNet-20: stem + 2 per block, none after a shortcut BN
        sess = ort_session(scalable)
        outs = []
        for lam in (0.0, 0.2, 0.7, 1.0):
            op = OperatingPoint(lam, w, th)
            model.set_operating_point(op)
            with torch.no_grad():
                want = model(torch.from_numpy(x)).numpy()
            outs.append(want)
            assert np.abs(run_scalable(sess, x, lam) - want).max() <= 1e-4, (w, lam)
            frozen = ort_session(freeze(scalable, {"layers": layers}, op)).run(["logits"], {"images": x})[0]
            assert np.abs(frozen - want).max() <= 1e-4, (w, lam)
        assert np.abs(outs[1] - outs[2]).max() > 1e-3  # λ moves the logits: the parity above is not hollow


# ------------------------------------------------------------------------------------ static form
def test_static_form_shares_names_and_graph_across_operating_points(floats_bundle):
    b = open_bundle(floats_bundle)
    scalable = onnx.load_from_string(b.model_bytes(0.75))
    scalable_names = {t.name for t in scalable.graph.initializer} | {o for n in scalable.graph.node for o in n.output}
    a, c = b.operating_point(0.2, 0.75), b.operating_point(0.7, 0.75)  # BN_C and BN_A
    sa, sc = static_model(b, a), static_model(b, c)
    onnx.checker.check_model(sa, full_check=True)
    assert [i.name for i in sa.graph.input] == ["images"]
    assert not {"Where", "Greater", "Cast"} & {n.op_type for n in sa.graph.node}
    assert [t.name for t in sa.graph.initializer] == [t.name for t in sc.graph.initializer]
    assert [(n.op_type, list(n.input)) for n in sa.graph.node] == [(n.op_type, list(n.input)) for n in sc.graph.node]
    assert {t.name for t in sa.graph.initializer} <= scalable_names
    assert "conv1.weight" in scalable_names and "bn1.running_mean" in scalable_names


def test_refit_weights_turn_one_static_model_into_another(floats_bundle):
    b = open_bundle(floats_bundle)
    a, c = b.operating_point(0.2, 1.0), b.operating_point(0.7, 1.0)
    refitted = static_model(b, a)
    weights = refit_weights(b, c)
    assert set(weights) == {t.name for t in refitted.graph.initializer}
    changing = refit_weights(b, c, changing_only=True)
    assert "conv1.weight" in changing and "bn1.running_var" in changing and "normalize.mean" not in changing
    for t in refitted.graph.initializer:  # what a TensorRT refitter does, by name
        t.CopyFrom(numpy_helper.from_array(weights[t.name], t.name))
    x = parity_images(b, 4)
    got = ort_session(refitted).run(["logits"], {"images": x})[0]
    want = run_scalable(ort_session(b.model_bytes(1.0)), x, 0.7)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_plain_model_is_the_clean_network(floats_bundle, floats_run):
    b = open_bundle(floats_bundle)
    plain = plain_model(b, 0.5)
    assert not [t.name for t in plain.graph.initializer if t.name.endswith((".eta", ".alpha"))]
    model, _, _ = load_model(floats_run)
    model.set_state(0.0, 0, 0.5)
    x = parity_images(b, 4)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort_session(plain).run(["logits"], {"images": x})[0], want, atol=1e-5)
    assert len(plain.SerializeToString()) < 0.6 * len(b.model_bytes(0.5))


def test_static_form_honours_another_lambda_th(floats_bundle, floats_run):
    b = open_bundle(floats_bundle)
    op = OperatingPoint(0.3, 1.0, 0.0)  # λ_th = 0: BN_A at s = 0.3, a point the λ_th = 0.5 graph also reaches
    model, _, _ = load_model(floats_run)
    model.set_operating_point(op)
    x = parity_images(b, 4)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort_session(static_model(b, op)).run(["logits"], {"images": x})[0], want, atol=1e-5)


def test_float16_eta(float_run, tmp_path):
    r = export_bundle(float_run, tmp_path / "h.febundle", eta_dtype="float16")
    b = open_bundle(r.path)
    model = onnx.load_from_string(b.model_bytes(1.0))
    etas = [t for t in model.graph.initializer if t.name.endswith(".eta")]
    assert etas and all(t.data_type == TensorProto.FLOAT16 for t in etas)
    assert b.manifest["noise"]["eta_dtype"] == "float16"
    full = export_bundle(float_run, tmp_path / "f.febundle", eta_dtype="float32")
    assert r.bundle_bytes < full.bundle_bytes
    report = verify_bundle(r.path, float_run, lambdas=(0.0, 1.0))
    assert report.max_delta("static") <= 1e-4  # the static form upcasts exactly as the graph does
    assert report.parity[0].torch_delta <= 1e-6  # λ_n = 0 never touches η


def _scaled_alpha_run(float_run: Path, tmp_path: Path, factor: float) -> Path:
    run = tmp_path / f"run_alpha_x{factor:g}"
    shutil.copytree(float_run, run)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    for k in ckpt["model"]:
        if k.endswith(".alpha"):
            ckpt["model"][k] = ckpt["model"][k] * factor
    torch.save(ckpt, run / "checkpoint.pt")
    return run


def test_auto_eta_dtype_keeps_float16_only_while_parity_holds(float_bundle, float_run, tmp_path):
    m = open_bundle(float_bundle).manifest  # exported with the CLI default, auto
    assert m["noise"]["eta_dtype"] == "float16"
    assert 0 < m["provenance"]["export_parity"]["max_abs_delta_logits"] <= 1e-4
    loud = _scaled_alpha_run(float_run, tmp_path, 10.0)  # α × 10: float16 rounding of η shows in the logits
    with pytest.raises(ExportError, match="float16 breaks parity"):
        export_bundle(loud, tmp_path / "h.febundle", eta_dtype="float16")
    assert not (tmp_path / "h.febundle").exists()
    r = export_bundle(loud, tmp_path / "a.febundle")
    assert r.eta_dtype == "float32" and r.parity <= 1e-4
    assert verify_bundle(r.path, loud).ok


def test_plain_method_exports_with_the_same_contract(synthetic, tmp_path):
    """A standard (no noise, one BN) run gives the same inputs, and λ_n changes nothing."""
    from floatedge.train.trainer import TrainConfig, train

    run = train(TrainConfig(method="standard", arch="tiny", dataset="synthetic", epochs=1, batch_size=64),
                tmp_path / "run", progress=False, dataset=synthetic)
    r = export_bundle(run, tmp_path / "s.febundle")
    b = open_bundle(r.path)
    model = onnx.load_from_string(b.model_bytes(1.0))
    assert [i.name for i in model.graph.input] == ["images", LAMBDA] and b.manifest["alphas"] == {}
    assert {"bn1.running_mean", "conv1.weight"} <= {t.name for t in model.graph.initializer}
    sess, x = ort_session(model), parity_images(b, 2)
    np.testing.assert_array_equal(run_scalable(sess, x, 0.0), run_scalable(sess, x, 1.0))
    assert verify_bundle(r.path, run).ok


def test_tar_bundle(float_run, tmp_path):
    out = tmp_path / "m.febundle"
    result = cli("export", float_run, "--out", out, "--tar")
    assert result.exit_code == 0, result.output
    assert out.is_file() and os.listdir(tmp_path) == ["m.febundle"]
    assert cli("verify", out).exit_code == 0
    assert "model_w1.onnx" in cli("inspect", out).output


def test_operating_point_table_from_eval(float_run, tmp_path):
    from floatedge.train.evaluate import evaluate, save_result

    result = evaluate(float_run, lambdas=(0.0, 0.5, 1.0), lambda_ths=(0.5,), attacks=("fgsm",), limit=16,
                      progress=False)
    save_result(result, tmp_path / "eval.json")
    out = tmp_path / "m.febundle"
    assert cli("export", float_run, "--out", out, "--eval", tmp_path / "eval.json").exit_code == 0
    b = open_bundle(out)
    ops = b.manifest["operating_points"]
    assert ops["n_images"] == 16 and list(ops["attacks"]) == ["fgsm"] and len(ops["rows"]) == 3
    assert b.lookup(b.operating_point(1.0))["fgsm_acc"] == result["rows"][2]["fgsm_acc"]
    shown = cli("inspect", out)
    assert shown.exit_code == 0 and "fgsm RA %" in shown.output
    result["arch"] = "resnet20"
    (tmp_path / "other.json").write_text(json.dumps(result))
    err = one_line_error(cli("export", float_run, "--out", tmp_path / "x.febundle", "--eval", tmp_path / "other.json"))
    assert "different run" in err and not (tmp_path / "x.febundle").exists()


def test_inspect_summary(floats_bundle):
    result = cli("inspect", floats_bundle)
    assert result.exit_code == 0, result.output
    for text in ("widths   1, 0.75, 0.5", "model_w0.75.onnx", "ok", "λ_th 0.5", "tiny", "none recorded"):
        assert text in result.output


# ------------------------------------------------------------------------------------ bad input
def test_run_without_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    err = one_line_error(cli("export", tmp_path / "run", "--out", tmp_path / "m.febundle"))
    assert "no checkpoint" in err
    assert os.listdir(tmp_path) == ["run"]


def test_unfinished_run(float_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(float_run, run)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["finished"] = False
    torch.save(ckpt, run / "checkpoint.pt")
    err = one_line_error(cli("export", run, "--out", tmp_path / "m.febundle"))
    assert "not finished" in err and not (tmp_path / "m.febundle").exists()


def test_bad_export_options(floats_run, float_bundle, tmp_path):
    assert "width 0.25 not trained" in one_line_error(cli("export", floats_run, "--out", tmp_path / "a",
                                                          "--widths", "1,0.25"))
    assert "opset must be between" in one_line_error(cli("export", floats_run, "--out", tmp_path / "a",
                                                         "--opset", "7"))
    assert "already exists" in one_line_error(cli("export", floats_run, "--out", float_bundle))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("damage", ["modified", "missing", "extra", "manifest"])
def test_damaged_bundle_fails_verify_naming_the_file(float_bundle, copy_of, damage):
    b = copy_of(float_bundle)
    model = b / model_filename(1.0)
    if damage == "modified":
        data = bytearray(model.read_bytes())
        data[-1] ^= 1
        model.write_bytes(bytes(data))
        name, word = model.name, "checksum"
    elif damage == "missing":
        model.unlink()
        name, word = model.name, "missing"
    elif damage == "extra":
        (b / "model_w0.5.onnx").write_bytes(b"sneaked in")
        name, word = "model_w0.5.onnx", "not listed"
    else:
        m = json.loads((b / MANIFEST).read_text())
        m["lambda_th"] = 0.0
        (b / MANIFEST).write_text(json.dumps(m, indent=2))
        name, word = MANIFEST, "checksum"
    for cmd in ("verify", "static"):
        args = [cmd, b] + (["--lambda-n", "0.5", "--out", b.parent / "s.onnx"] if cmd == "static" else [])
        err = one_line_error(cli(*args))
        assert name in err and word in err, err
    assert not (b.parent / "s.onnx").exists()
    shown = cli("inspect", b)  # inspect still summarises, flags the file, and exits non-zero
    flag = {"modified": "MODIFIED", "missing": "MISSING", "extra": "EXTRA", "manifest": "MODIFIED (self-checksum"}
    flagged = [ln for ln in shown.output.splitlines() if name in ln and flag[damage] in ln]
    assert shown.exit_code == 1 and len(flagged) == 1, shown.output


def test_newer_schema(float_bundle, copy_of):
    b = copy_of(float_bundle)
    m = json.loads((b / MANIFEST).read_text())
    m["schema_version"] = 99
    (b / MANIFEST).write_text(json.dumps(m))
    for cmd in ("verify", "inspect"):
        assert "schema version 99 is newer" in one_line_error(cli(cmd, b))


def test_bad_operating_points(float_bundle, tmp_path):
    out = tmp_path / "s.onnx"
    assert "lambda_n must be in [0, 1]" in one_line_error(cli("static", float_bundle, "--lambda-n", "1.5",
                                                              "--out", out))
    assert "lambda_n must be in [0, 1]" in one_line_error(cli("static", float_bundle, "--lambda-n", "-0.1",
                                                              "--out", out))
    assert "width 0.5 is not in this bundle" in one_line_error(cli("static", float_bundle, "--lambda-n", "0.5",
                                                                   "--width", "0.5", "--out", out))
    assert not out.exists()
    ok = cli("static", float_bundle, "--lambda-n", "0.7", "--out", out, "--refit", tmp_path / "w.npz")
    assert ok.exit_code == 0, ok.output
    onnx.checker.check_model(onnx.load(out))
    assert "conv1.weight" in np.load(tmp_path / "w.npz").files


def test_verify_refuses_another_run(float_bundle, floats_run):
    assert "is not the run" in one_line_error(cli("verify", float_bundle, "--run", floats_run))


def test_verify_reports_a_parity_failure(float_bundle, float_run, copy_of, tmp_path):
    """A bundle whose checksums are fine but whose weights differ from the run must fail verify."""
    from floatedge.bundle import write_bundle

    src = open_bundle(float_bundle)
    model = onnx.load_from_string(src.model_bytes(1.0))
    for t in model.graph.initializer:
        if t.name == "conv1.weight":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.01, t.name))
    out = write_bundle(tmp_path / "bad.febundle", src.manifest, {model_filename(1.0): model.SerializeToString()})
    err = one_line_error(cli("verify", out, "--run", float_run))
    assert "ONNX Runtime differs from PyTorch" in err


# ------------------------------------------------------------------------------------ device side
def test_device_side_needs_no_torch(floats_bundle, tmp_path):
    """Open, inspect, freeze and run a bundle in a Python where `import torch` fails."""
    script = textwrap.dedent(f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is hidden in this test")
        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from floatedge.bundle import open_bundle
        from floatedge.graph.static import static_model, refit_weights, plain_model
        from floatedge.export.verify import verify_bundle, ort_session, run_scalable, parity_images
        from floatedge.cli import main
        b = open_bundle({str(floats_bundle)!r})
        assert b.widths == (1.0, 0.75, 0.5)
        op = b.operating_point(0.7, 0.5)
        x = parity_images(b, 2)
        a = ort_session(static_model(b, op)).run(["logits"], {{"images": x}})[0]
        c = run_scalable(ort_session(b.model_bytes(0.5)), x, 0.7)
        assert np.abs(a - c).max() <= 1e-4
        assert refit_weights(b, op) and plain_model(b, 1.0)
        assert verify_bundle({str(floats_bundle)!r}).ok
        try:
            main(["inspect", {str(floats_bundle)!r}], standalone_mode=False)
        except SystemExit as e:
            assert not e.code
        assert "torch" not in sys.modules, "torch was imported"
        print("TORCH-FREE OK")
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TORCH-FREE OK" in proc.stdout


# ------------------------------------------------------------------------------------ issue 9: messages a user meets
@pytest.mark.parametrize("where", ["proc", "under_a_file"])
def test_export_checks_its_destination_first(float_run, tmp_path, where):
    """`export --out` names the destination that cannot be written, before any work, not an internal temp file."""
    if where == "proc":
        if not Path("/proc/self").exists():
            pytest.skip("no /proc here")
        out, refusing = Path("/proc/floatedge-test.febundle"), "/proc does not take new files"
    else:
        (tmp_path / "a_file").write_text("x")
        out, refusing = tmp_path / "a_file" / "m.febundle", f"{tmp_path / 'a_file'} is not a directory"
    err = one_line_error(cli("export", float_run, "--out", out))
    assert err.startswith(f"Error: cannot write {out}: {refusing}"), err
    assert ".tmp" not in err and not out.exists()


@pytest.mark.parametrize("cmd", ["verify", "inspect", "static"])
def test_a_file_that_is_not_a_bundle_gets_a_whole_line(tmp_path, cmd):
    junk = tmp_path / "junk.febundle"
    junk.write_bytes(b"not a tar, not a directory")
    extra = ["--lambda-n", "0", "--out", tmp_path / "s.onnx"] if cmd == "static" else []
    err = one_line_error(cli(cmd, junk, *extra))
    assert err == f"Error: {junk}: not a floatedge bundle (neither a bundle directory nor a tar file)"


def test_a_width_the_bundle_lacks_is_one_message_everywhere(float_bundle, tmp_path):
    """The static CLI, the runtime's switch and its start point, and bench: the same words (one source)."""
    import floatedge.runtime as rt

    want = "width 0.5 is not in this bundle; it has 1"
    messages = [one_line_error(cli("static", float_bundle, "--lambda-n", "0", "--width", "0.5",
                                   "--out", tmp_path / "s.onnx")).removeprefix("Error: "),
                one_line_error(cli("bench", float_bundle, "--widths", "0.5", "--no-switch")).removeprefix("Error: ")]
    with rt.open(float_bundle) as model:
        with pytest.raises(rt.OperatingPointError) as exc:
            model.set_operating_point(width=0.5)
        messages.append(str(exc.value))
    with pytest.raises(rt.OperatingPointError) as exc:
        rt.open(float_bundle, point=OperatingPoint(0.0, 0.5, 0.5))
    messages.append(str(exc.value))
    assert messages == [want] * 4
