"""Issue 14: the stronger and different attacks, and the one rule that makes a table's RA the lowest measured.

Each attack is checked to be at least as strong as PGD-20 on a small model fitted to real CIFAR-10 images (the
`trained` fixture of test_attacks.py: a noisy FLOAT tiny model at s = 1, BN_A); the DLR loss on hand-computed
logits and against the reference implementation's; `robust_of` on hand-made rows; and every reader of a table
(evaluate, merge, export, inspect, governor, ladder policy, metrics, governor benchmark) on a row whose first
attack is not its strongest.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_attacks import trained  # noqa: F401  (the module-scoped fixture: a tiny noisy model on CIFAR-10)

from floatedge.bundle import open_bundle, robust_of, with_robust
from floatedge.cli import main
from floatedge.oppoint import BN_ADV
from floatedge.train.attacks import ATTACKS, EPS, NoiseFree, dlr_loss, pgd_best, run_attack
from floatedge.train.evaluate import EvalError, evaluate, format_table, merge_results, save_result

ROOT = Path(__file__).resolve().parents[1]


def _acc(m, x, y) -> float:
    with torch.no_grad():
        return (m(x).argmax(1) == y).float().mean().item()


# ------------------------------------------------------------------------------------------ DLR
def test_dlr_loss_by_hand():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0], [0.0, 5.0, 1.0, 4.0]])
    y = torch.tensor([0, 2, 3])
    # row 0: y is the top (3), the best other is 2, spread z_π1 − z_π3 = 3 − 1: −(3 − 2)/2 = −0.5
    # row 1: y = 2 is second, the top other is 3: −(2 − 3)/2 = +0.5
    # row 2: y = 3 has 4, the top other 5, spread 5 − 1 = 4: −(4 − 5)/4 = +0.25
    assert dlr_loss(z, y).tolist() == pytest.approx([-0.5, 0.5, 0.25])
    assert dlr_loss(10 * z + 7, y).tolist() == pytest.approx([-0.5, 0.5, 0.25])  # scale- and shift-invariant


def test_dlr_loss_matches_the_reference_implementation():
    from pyautoattack.autopgd_base import APGDAttack

    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(64, 10, generator=g), torch.randint(0, 10, (64,), generator=g)
    z[:8, :] = z[:8, :] + 5 * torch.nn.functional.one_hot(y[:8], 10)  # some rows with y on top
    ref = APGDAttack.dlr_loss(None, z, y)  # pyautoattack/autopgd_base.py; it uses no attribute of self
    assert torch.allclose(dlr_loss(z, y), ref, atol=1e-6)


# ------------------------------------------------------------------------------------------ strength
@pytest.fixture(scope="module")
def pgd20_acc(trained):  # noqa: F811
    m, x, y = trained
    return _acc(m, run_attack("pgd20", m, x, y, seed=0), y)


@pytest.mark.parametrize("name", ["pgd100x5-ce", "pgd100x5-dlr", "noisefree-pgd100x5", "apgd-ce-t"])
def test_every_strong_attack_is_at_least_as_strong_as_pgd20(trained, pgd20_acc, name):  # noqa: F811
    m, x, y = trained
    clean = _acc(m, x, y)
    adv = run_attack(name, m, x, y, seed=0)
    assert (adv - x).abs().max().item() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    acc = _acc(m, adv, y)
    assert acc <= pgd20_acc, (name, acc, pgd20_acc)
    assert acc < clean - 0.1, (name, acc, clean)


def test_worst_case_over_restarts_and_iterates(trained):  # noqa: F811
    """Keeping the worst iterate of 5 restarts beats (or ties) the final iterate of one run of the same length,
    per image: whatever one run fools stays fooled."""
    m, x, y = trained
    one = pgd_best(m, x, y, steps=10, restarts=1, generator=torch.Generator().manual_seed(0))
    five = pgd_best(m, x, y, steps=10, restarts=5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fooled_one, fooled_five = m(one).argmax(1) != y, m(five).argmax(1) != y
    assert bool((fooled_five | ~fooled_one).all())  # restarts 2–5 only add fooled images
    assert fooled_five.sum() >= fooled_one.sum()


def test_noise_free_twin_is_s0_bn_a_and_leaves_the_point(trained):  # noqa: F811
    m, x, y = trained
    before = [(c.noise_scale, c.bn, c.width_idx) for c in m.conditional_layers()]
    twin = NoiseFree(m)
    with torch.no_grad():
        got, noisy = twin(x[:8]), m(x[:8])
        m.set_state(0.0, BN_ADV, 1.0)
        want = m(x[:8])
        s, bn, idx = before[0]
        m.set_state(s, bn, m.widths[idx])
    assert torch.equal(got, want) and not torch.allclose(got, noisy)  # the noise really changes the output
    assert [(c.noise_scale, c.bn, c.width_idx) for c in m.conditional_layers()] == before


def test_transfer_needs_a_source_and_from_the_model_itself_is_pgd(trained):  # noqa: F811
    m, x, y = trained
    with pytest.raises(ValueError, match="needs a source"):
        run_attack("transfer-pgd20", m, x, y)
    assert torch.equal(run_attack("transfer-pgd20", None, x, y, seed=3, source=m), run_attack("pgd20", m, x, y, seed=3))
    assert ATTACKS["transfer-pgd100"].needs_source and not ATTACKS["pgd100x5-ce"].needs_source


# ------------------------------------------------------------------------------------------ the rule
def test_robust_of_takes_the_lowest_measured_attack():
    assert robust_of({"clean_acc": 0.9, "pgd20_acc": 0.3, "autoattack_acc": 0.25}) == (0.25, "autoattack")
    assert robust_of({"clean_acc": 0.9, "pgd20_acc": 0.3, "autoattack_acc": None}) == (0.3, "pgd20")  # not run there
    assert robust_of({"clean_acc": 0.9}) == (None, None)
    assert robust_of({"pgd20_acc": 0.3, "robust_acc": 0.2, "robust_attack": "apgd-ce-t"}) == (0.2, "apgd-ce-t")
    assert robust_of({"pgd20_acc": 0.1, "robust_acc": 0.2, "robust_attack": "apgd-ce-t"}) == (0.1, "pgd20")
    assert robust_of({"pgd20_acc": 0.3, "flag_acc": True}) == (0.3, "pgd20")
    row = with_robust({"clean_acc": 0.8, "pgd20_acc": 0.4, "pgd100x5-dlr_acc": 0.35})
    assert (row["robust_acc"], row["robust_attack"]) == (0.35, "pgd100x5-dlr") and robust_of(row) == (0.35, "pgd100x5-dlr")


def test_eval_rows_report_the_lowest_and_merge_recomputes_it(float_run, tmp_path):
    res = evaluate(float_run, lambdas=(0.0, 1.0), lambda_ths=(0.0,), attacks=("fgsm", "pgd7"), limit=24, progress=False)
    for r in res["rows"]:
        assert r["robust_acc"] == min(r["fgsm_acc"], r["pgd7_acc"])
        assert r[f"{r['robust_attack']}_acc"] == r["robust_acc"]
    assert len(res["checkpoint_sha256"]) == 64
    extra = {**res, "attacks": {"made-up": "x"}, "rows": [{**res["rows"][1], "made-up_acc": 0.0}]}
    merged = merge_results(res, extra)
    assert [(r["robust_acc"], r["robust_attack"]) for r in merged["rows"]][1] == (0.0, "made-up")
    assert merged["rows"][0]["made-up_acc"] is None and merged["rows"][0]["robust_attack"] in ("fgsm", "pgd7")
    assert "RA % (lowest)" in format_table(merged) and "0.00 made-up" in format_table(merged)


def test_eval_transfer_from_the_run_itself_equals_pgd20_at_its_point(float_run):
    """The source is set to λ_n = 1 (s = 1, BN_A), so there the transfer examples are PGD-20's, seed for seed; the
    examples are made once and reused at λ_n = 0."""
    res = evaluate(float_run, lambdas=(0.0, 1.0), lambda_ths=(0.0,), attacks=("pgd20", "transfer-pgd20"), limit=24,
                   progress=False, transfer_from=float_run)
    at1 = next(r for r in res["rows"] if r["lambda_n"] == 1.0)
    assert at1["transfer-pgd20_acc"] == at1["pgd20_acc"]
    assert "source" in res["attacks"]["transfer-pgd20"]
    with pytest.raises(EvalError, match="--transfer-from"):
        evaluate(float_run, lambdas=(1.0,), attacks=("transfer-pgd20",), limit=8, progress=False)


def test_eval_cli_refuses_transfer_without_a_source(float_run, tmp_path):
    r = CliRunner().invoke(main, ["eval", str(float_run), "--attacks", "transfer-pgd100", "--out", str(tmp_path / "e.json")])
    assert r.exit_code != 0 and "--transfer-from" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "e.json").exists()


def test_export_table_names_the_strongest_attack_also_from_an_old_eval(float_run, tmp_path):
    res = evaluate(float_run, lambdas=(0.0, 1.0), lambda_ths=(0.5,), attacks=("fgsm", "pgd7"), limit=16, progress=False)
    for r in res["rows"]:  # an eval result written before robust_acc existed, where the first attack is not the lowest
        del r["robust_acc"], r["robust_attack"]
        r["fgsm_acc"], r["pgd7_acc"] = 0.5, 0.25
    save_result(res, tmp_path / "old.json")
    out = tmp_path / "m.febundle"
    shown = CliRunner().invoke(main, ["export", str(float_run), "--out", str(out), "--eval", str(tmp_path / "old.json"),
                                      "--acceptance", "0"])
    assert shown.exit_code == 0, shown.output
    rows = open_bundle(out).manifest["operating_points"]["rows"]
    assert {(r["robust_acc"], r["robust_attack"]) for r in rows} == {(0.25, "pgd7")}
    for text in (shown.output, CliRunner().invoke(main, ["inspect", str(out)]).output):
        assert "RA % reported" in text and "25.00  pgd7" in text
    res["checkpoint_sha256"] = "0" * 64  # an evaluation of other weights (or another noise draw) is refused
    (tmp_path / "other.json").write_text(json.dumps(res))
    bad = CliRunner().invoke(main, ["export", str(float_run), "--out", str(tmp_path / "x.febundle"), "--eval",
                                    str(tmp_path / "other.json"), "--acceptance", "0"])
    assert bad.exit_code != 0 and "checkpoint_sha256" in bad.output and not (tmp_path / "x.febundle").exists()


def test_a_bundle_written_before_robust_acc_reports_its_lowest_attack(tmp_path):
    from test_bundle import FILES, _manifest

    from floatedge.bundle import write_bundle

    m = _manifest()
    m["operating_points"]["attacks"]["apgd-ce-t"] = "APGD-CE + APGD-T"
    m["operating_points"]["rows"][0]["apgd-ce-t_acc"] = 0.2  # below PGD-20's 0.3; no robust_acc in the rows
    b = open_bundle(write_bundle(tmp_path / "old.febundle", m, FILES))
    row = b.lookup(b.operating_point(1.0, 1.0))  # what the server reports at the point (GET status, metrics)
    assert (row["robust_acc"], row["robust_attack"], row["pgd20_acc"]) == (0.2, "apgd-ce-t", 0.3)
    assert [(r["robust_acc"], r["robust_attack"]) for r in b.table()] == [(0.2, "apgd-ce-t"), (0.1, "pgd20")]


# ------------------------------------------------------------------------------------------ the readers
ROW = {"lambda_n": 1.0, "width": 1.0, "lambda_th": 0.5, "clean_acc": 0.7, "pgd20_acc": 0.4, "apgd-ce-t_acc": 0.3}


def test_governor_ladder_metrics_and_benchmark_read_the_lowest():
    from floatedge.daemon.governor import points_from_profile
    from floatedge.daemon.metrics import Metrics
    from floatedge.daemon.policies import LadderPolicy
    from floatedge.daemon.policy import Context
    from floatedge.oppoint import OperatingPoint

    profile = {"points": [{"width": 1.0, "lambda_n": 1.0, "lambda_th": 0.5, "clean_acc": 0.7, "robust_acc": 0.4,
                           "attack": "pgd20", "batches": [{"batch": 1, "p50_ms": 2.0}]}]}
    (p,) = points_from_profile(profile, [ROW])
    assert p.robust == 0.3
    (p,) = points_from_profile(profile)  # no table: the profile's own figure
    assert p.robust == 0.4

    low = {**ROW, "lambda_n": 0.0, "width": 0.5, "pgd20_acc": 0.45, "apgd-ce-t_acc": 0.25}
    ladder = LadderPolicy()
    ctx = Context(point=OperatingPoint(0.0, 0.5, 0.5), table=[low, ROW], widths=(1.0, 0.5))
    # scores width 0.5 → 0.25, width 1 → 0.3: the dearer rung is more robust (by the first attack it looked less so)
    assert ladder.rungs(ctx) == [(0.0, 0.5), (1.0, 1.0)]

    m = Metrics()
    m.set_point(OperatingPoint(1.0, 1.0, 0.5), False, ROW)
    kinds = {s.labels["kind"]: s.value for fam in m.registry.collect() if fam.name == "floatedge_calibrated_accuracy"
             for s in fam.samples}
    assert kinds["robust"] == 0.3 and kinds["pgd20"] == 0.4 and kinds["apgd-ce-t"] == 0.3 and kinds["clean"] == 0.7

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from governor import table_scores
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert table_scores([ROW], 0.5) == {(1.0, 1.0): (0.3, 0.7)}
    assert math.isclose(robust_of(ROW)[0], 0.3)
