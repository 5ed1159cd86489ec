"""evaluate(): operating-point grid, dedupe of identical points, JSON/CSV/PNG output."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import floatedge.train.evaluate as ev
from floatedge.oppoint import OperatingPoint
from floatedge.train.evaluate import EvalError, evaluate, format_table, load_result, save_result
from floatedge.train.trainer import TrainConfig, train


@pytest.fixture
def count_attacks(monkeypatch):
    """Record the operating point of every attack call (the real attack still runs)."""
    calls = []
    real = ev.run_attack

    def counting(name, model, x, y, seed=0, **kw):
        layer = next(model.conditional_layers())
        calls.append((name, layer.noise_scale, layer.bn, layer.width_idx))
        return real(name, model, x, y, seed=seed, **kw)

    monkeypatch.setattr(ev, "run_attack", counting)
    return calls


def test_float_grid_dedupes_identical_points(float_run, count_attacks):
    res = evaluate(float_run, attacks=["pgd7"], limit=32, batch_size=64, progress=False, dial="switch")
    rows = res["rows"]
    assert len(rows) == 8  # 2 thresholds × 4 λ_n
    # (s, BN) per row, as the paper's two tables say
    want = {(0.0, 0.0): (0.0, "clean"), (0.0, 0.2): (0.2, "adv"), (0.0, 0.7): (0.7, "adv"), (0.0, 1.0): (1.0, "adv"),
            (0.5, 0.0): (0.0, "clean"), (0.5, 0.2): (0.4, "clean"), (0.5, 0.7): (0.4, "adv"), (0.5, 1.0): (1.0, "adv")}
    for r in rows:
        s, bn = want[r["lambda_th"], r["lambda_n"]]
        assert r["noise_scale"] == pytest.approx(s) and r["bn"] == bn and r["width"] == 1.0
        # the attack is real at every point: PGD-7 costs this fragile one-epoch model ≥ 20 points (measured), and a
        # no-op or wrongly aimed attack would cost none
        assert r["pgd7_acc"] < r["clean_acc"] - 0.1, r
    # λ_n = 0 and λ_n = 1 are the same function under both thresholds: 6 distinct points, 6 attacks
    assert len(count_attacks) == 6 and len(set(count_attacks)) == 6
    by = {(r["lambda_th"], r["lambda_n"]): r for r in rows}
    for lam in (0.0, 1.0):
        assert by[0.0, lam] == {**by[0.5, lam], "lambda_th": 0.0}
    assert res["n_images"] == 32 and res["epochs"] == 1 and res["method"] == "float"
    assert res["eps"] == pytest.approx(8 / 255)
    assert by[0.0, 0.0]["clean_acc"] > 0.5  # trained on separable synthetic data (4 classes)


def test_floats_widths(floats_run, count_attacks):
    res = evaluate(floats_run, lambdas=(0.0, 1.0), lambda_ths=(0.5,), attacks=["fgsm"], limit=16, progress=False)
    assert [(r["width"], r["lambda_n"]) for r in res["rows"]] == [
        (w, lam) for w in (1.0, 0.75, 0.5) for lam in (0.0, 1.0)]
    assert sorted({c[3] for c in count_attacks}) == [0, 1, 2]
    res = evaluate(floats_run, lambdas=(1.0,), lambda_ths=(0.0,), widths=(0.5,), attacks=["fgsm"], limit=16,
                   progress=False)
    assert [r["width"] for r in res["rows"]] == [0.5]
    with pytest.raises(EvalError, match=r"width 0.3 not trained; .* has widths \[1.0, 0.75, 0.5\]"):
        evaluate(floats_run, widths=(0.3,), progress=False)


def test_plain_model_has_one_point_per_width(tmp_path, synthetic):
    cfg = TrainConfig(method="pgdat", arch="tiny", dataset="synthetic", epochs=1, batch_size=64, pgd_steps=1)
    run = train(cfg, tmp_path / "pgdat", progress=False, dataset=synthetic)
    res = evaluate(run, attacks=["fgsm"], limit=16, progress=False)
    assert len(res["rows"]) == 1
    (row,) = res["rows"]
    assert (row["lambda_n"], row["noise_scale"], row["bn"]) == (0.0, 0.0, "clean")


def test_evaluation_is_deterministic(float_run):
    kw = dict(lambdas=(0.2,), lambda_ths=(0.5,), attacks=["pgd7"], limit=24, progress=False)
    a, b = evaluate(float_run, **kw), evaluate(float_run, **kw)
    strip = lambda res: [{k: v for k, v in r.items() if k != "seconds"} for r in res["rows"]]
    assert strip(a) == strip(b)


def test_save_result_writes_json_csv_png(float_run, tmp_path):
    res = evaluate(float_run, lambdas=(0.0, 0.7, 1.0), attacks=["fgsm", "pgd7"], limit=16, progress=False, dial="switch")
    paths = save_result(res, tmp_path / "out" / "result.json")
    assert {k: p.name for k, p in paths.items()} == {"json": "result.json", "csv": "result.csv", "png": "result.png"}
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(res))
    assert load_result(paths["json"])["rows"] == res["rows"]
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"lambda_n", "width", "lambda_th", "clean_acc", "fgsm_acc", "pgd7_acc"} <= set(rows[0])
    assert [float(r["clean_acc"]) for r in rows] == [r["clean_acc"] for r in res["rows"]]
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(paths["png"]) as im:
        assert im.size[0] >= 400 and im.size[1] >= 300
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # not a blank canvas
    table = format_table(res)
    assert "fgsm RA %" in table and "pgd7 RA %" in table and len(table.splitlines()) == 2 + 6


def test_eval_errors(float_run, tmp_path):
    with pytest.raises(EvalError, match="unknown attack 'cw'"):
        evaluate(float_run, attacks=["cw"], progress=False)
    with pytest.raises(EvalError, match="unknown attack 'clean'"):
        evaluate(float_run, attacks=["clean"], progress=False)
    with pytest.raises(ValueError, match="lambda_th must be in"):
        evaluate(float_run, lambda_ths=(1.0,), attacks=["fgsm"], limit=4, progress=False)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EvalError, match="not a floatedge eval result"):
        load_result(tmp_path / "bad.json")


@pytest.mark.parametrize("noise_mode", ["fixed", "resample"])
def test_saved_noise_is_the_recorded_draw(tmp_path, synthetic, noise_mode):
    """What is evaluated and exported is the draw recorded by noise_seed, also after training that redrew
    z before every step (resample mode restores the recorded draw before saving)."""
    from floatedge.train.models import create_model
    from floatedge.train.trainer import load_model

    cfg = TrainConfig(method="float", arch="tiny", dataset="synthetic", epochs=1, batch_size=64, pgd_steps=1,
                      noise_mode=noise_mode, noise_seed=11)
    run = train(cfg, tmp_path / "r", progress=False, dataset=synthetic)
    model, _, ckpt = load_model(run)
    fresh = create_model("tiny", num_classes=4)
    fresh.draw_noise(11)
    zs = {k: v for k, v in fresh.state_dict().items() if k.endswith(".z")}
    assert len(zs) == 3
    for k, z in zs.items():
        assert torch.equal(ckpt["model"][k], z) and torch.equal(model.state_dict()[k], z), k
    other = create_model("tiny", num_classes=4)
    other.draw_noise(12)
    assert not torch.equal(other.state_dict()["conv1.z"], zs["conv1.z"])
    x = torch.rand(4, 3, 16, 16)
    model.set_operating_point(OperatingPoint(1.0))
    again, _, _ = load_model(run)
    again.set_operating_point(OperatingPoint(1.0))
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_merge_results_keeps_each_costly_attack_where_it_ran():
    """AutoAttack run at λ_n=1 and at λ_n=0 in separate jobs: merging both keeps both (a later merge must not
    blank what an earlier one filled), and points neither measured read None."""
    from floatedge.train.evaluate import format_table, merge_results

    def row(lam, s, bn, **acc):
        return {"lambda_n": lam, "width": 1.0, "lambda_th": 0.0, "noise_scale": s, "bn": bn, "clean_acc": 0.5, **acc}

    base = {"attacks": {"pgd20": "PGD-20"}, "rows": [row(0.0, 0.0, "clean", pgd20_acc=0.1),
                                                      row(0.7, 0.7, "adv", pgd20_acc=0.2),
                                                      row(1.0, 1.0, "adv", pgd20_acc=0.3)]}
    aa1 = {"attacks": {"autoattack": "AA"}, "rows": [row(1.0, 1.0, "adv", autoattack_acc=0.25)]}
    aa0 = {"attacks": {"autoattack": "AA"}, "rows": [row(0.0, 0.0, "clean", autoattack_acc=0.05)]}
    merged = merge_results(merge_results(base, aa1), aa0)
    assert [r["autoattack_acc"] for r in merged["rows"]] == [0.05, None, 0.25]
    assert [r["pgd20_acc"] for r in merged["rows"]] == [0.1, 0.2, 0.3]
    assert "—" in format_table(merged)


def _grid_result(ca, ra):
    """A result over widths (1, 0.5) × λ_th (0, 0.5) × λ_n (0, 0.2, 0.7, 1); ca/ra: (width, λ_th, λ_n) → %."""
    rows = [{"lambda_n": lam, "width": w, "lambda_th": th, "noise_scale": 0.0, "bn": "clean",
             "clean_acc": ca(w, th, lam) / 100, "pgd20_acc": ra(w, th, lam) / 100}
            for w in (1.0, 0.5) for th in (0.0, 0.5) for lam in (0.0, 0.2, 0.7, 1.0)]
    return {"method": "floats", "arch": "resnet20", "dataset": "digits", "n_images": 297, "attacks": {"pgd20": "PGD-20"},
            "rows": rows}


def _boxes(fig):
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    return ax, [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts]


def test_tradeoff_plot_labels_never_overlap():
    """The quickstart's shape: λ_n = 0 and 1 coincide under both thresholds, two widths nearly on top of each other,
    one point where λ_n 0.2 and 0.7 coincide. Every label is readable (no two overlap, none leaves the axes), and
    the labels of coinciding points are merged."""
    ca = lambda w, th, lam: 99.0 - 4 * lam - (0.3 if w < 1 else 0) + (0.6 * lam if th == 0.5 and lam < 1 else 0)
    ra = lambda w, th, lam: 1 + 18 * lam + (0.3 if w < 1 else 0) - (6 * lam if th == 0.5 and lam < 1 else 0)
    res = _grid_result(lambda w, th, lam: 97.0 if (w, th, lam) in ((1.0, 0.0, 0.2), (1.0, 0.0, 0.7)) else ca(w, th, lam),
                       lambda w, th, lam: 10.0 if (w, th, lam) in ((1.0, 0.0, 0.2), (1.0, 0.0, 0.7)) else ra(w, th, lam))
    fig = ev.tradeoff_figure(res)
    ax, boxes = _boxes(fig)
    frame = ax.get_window_extent(fig.canvas.get_renderer())
    for i, (ti, bi) in enumerate(boxes):
        assert frame.x0 <= bi.x0 and bi.x1 <= frame.x1 and frame.y0 <= bi.y0 and bi.y1 <= frame.y1, ti
        for tj, bj in boxes[i + 1:]:
            assert not bi.overlaps(bj), (ti, tj)
    texts = [t for t, _ in boxes]
    assert "0.2, 0.7" in texts  # two λ_n at one spot: one label naming both
    assert len(texts) < 16 and {"0", "1"} <= set(texts)  # λ_n 0 and 1 are the same point under both thresholds
    ev.pyplot().close(fig)


def test_tradeoff_plot_markers_and_axes():
    """Coinciding points stay visible (hollow markers, each curve's smaller than the last), and an axis whose data
    barely differ (CA 99.33% everywhere, one test image is 0.34 points) still spans ≥ MIN_SPAN points."""
    res = _grid_result(lambda w, th, lam: 99.33, lambda w, th, lam: 30 + 10 * lam)
    fig = ev.tradeoff_figure(res)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_marker() not in (None, "None", "")]
    assert len(lines) == 4 and {ln.get_markerfacecolor() for ln in lines} == {"none"}
    sizes = [ln.get_markersize() for ln in lines]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    lo, hi = ax.get_xlim()
    assert hi - lo >= ev.MIN_SPAN and lo < 99.33 < hi and hi <= 100 + ev.MIN_SPAN / 2
    lo, hi = ax.get_ylim()
    assert lo < 30 and hi > 40
    ev.pyplot().close(fig)
