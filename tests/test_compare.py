"""`floatedge compare` end to end at a tiny scale: plan, interleaved training, resume, report, bad input."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from floatedge.cli import main
from floatedge.train.compare import CompareConfig, CompareError, compare, plan
from floatedge.train.trainer import load_checkpoint, read_log

TINY = dict(arch="tiny", dataset="synthetic", epochs=2, batch_size=32, eval_limit=24, attacks=("fgsm",), pgd_steps=1,
            lambdas=(0.0, 0.2, 0.7, 1.0), seeds=(0, 1), threads=1)


class Interrupt(Exception):
    pass


def test_plan_covers_the_methods_seeds_and_slim_widths():
    names = [r.name for r in plan(CompareConfig(**TINY, slim=True))]
    assert names == ["float_s0", "oat_s0", "float_s1", "oat_s1", "pgdat_l0_s0", "pgdat_l0.2_s0", "pgdat_l0.7_s0",
                     "pgdat_l1_s0", "pgdat_l1_s1", "floats_s0", "oats_s0"]
    slim = {r.name: r.widths for r in plan(CompareConfig(**TINY, slim=True))}
    assert slim["oats_s0"] == (1.0, 0.5) and slim["float_s0"] == (1.0,)


def test_compare_end_to_end_with_interruption_and_resume(tmp_path):
    out, md = tmp_path / "cmp", tmp_path / "docs" / "RESULTS.md"
    cfg = CompareConfig(**TINY, slim=True)
    events: list[dict] = []

    def stop_after_five(e):
        events.append(e)
        if sum(x["event"] == "epoch" for x in events) == 13:  # all 11 first epochs, then 2 second epochs
            raise Interrupt

    with pytest.raises(Interrupt):
        compare(cfg, out, callback=stop_after_five)
    done = {r.name: load_checkpoint(out / "runs" / r.name)["epoch"] for r in plan(cfg)}
    assert sorted(done.values()) == [1] * 9 + [2] * 2  # interleaved: every run's epoch 1 before any epoch 2
    finished = [n for n, e in done.items() if e == 2]
    mtimes = {n: (out / "runs" / n / "checkpoint.pt").stat().st_mtime_ns for n in finished}

    resumed: list[dict] = []
    summary = compare(cfg, out, callback=resumed.append, results_md=md)
    trained = [(e["run"], e["epoch"]) for e in resumed if e["event"] == "epoch"]
    assert sorted(trained) == sorted((n, 2) for n, e in done.items() if e == 1)  # nothing retrained
    assert {e["run"] for e in resumed if e["event"] == "skip"} >= set(finished)
    for n in finished:
        assert (out / "runs" / n / "checkpoint.pt").stat().st_mtime_ns == mtimes[n]
    for r in plan(cfg):
        assert [e["epoch"] for e in read_log(out / "runs" / r.name)] == [1, 2]

    # the report: curves for every method and λ, timing, parameters, figures, a RESULTS.md section
    ts = summary["time_summary"]
    assert ts["float"] > 0 and ts["oat"] > 0 and ts["float_over_oat"] == pytest.approx(ts["float"] / ts["oat"])
    assert set(ts["pgdat_by_lambda"]) == {"0", "0.2", "0.7", "1"}
    methods = {(g["method"], g["lambda"]) for g in summary["spread"]}
    assert {("float", 0.2), ("oat", 0.7), ("pgdat", 1.0), ("oats", 0.0), ("floats", 1.0)} <= methods
    two_seeds = [g for g in summary["spread"] if g["method"] in ("float", "oat") and g["width"] == 1.0]
    assert two_seeds and all(g["n_seeds"] == 2 for g in two_seeds)
    assert summary["params"]["oat"]["film"] > 0 and summary["params"]["float"]["film"] == 0
    for f in ("fig7.png", "fig8.png", "fig9.png", "report.md", "compare.json"):
        assert (out / f).stat().st_size > 0
    text = md.read_text()
    assert "<!-- BEGIN compare -->" in text and "FLOAT/OAT" in text and "results/compare_fig7.png" in text
    assert (md.parent / "results" / "compare_fig9.png").exists()

    # a third call does no training and no evaluation, and leaves the same numbers
    again: list[dict] = []
    summary2 = compare(cfg, out, callback=again.append)
    assert {e["event"] for e in again} == {"skip"}
    assert summary2["spread"] == summary["spread"]


@pytest.mark.parametrize("change,msg", [
    (dict(epochs=1), "epoch budget"),
    (dict(epochs=0), "epoch budget"),
    (dict(lambdas=(0.5,)), "≥ 2 distinct"),
    (dict(lambdas=(0.0, 1.5)), "[0, 1]"),
    (dict(lambdas=(0.0, 0.2, 0.2)), "repeats"),
    (dict(spread_lambda=0.5), "not in the λ set"),
    (dict(seeds=()), "seeds"),
    (dict(attacks=("cw",)), "unknown attack"),
    (dict(batch_size=4), "too small"),
])
def test_bad_settings_are_refused(change, msg):
    with pytest.raises(CompareError, match=None) as exc:
        CompareConfig(**{**TINY, **change})
    assert msg in str(exc.value) and "\n" not in str(exc.value)


def test_cli_refuses_nonsense_in_one_line(tmp_path):
    r = CliRunner().invoke(main, ["compare", "--dataset", "synthetic", "--epochs", "1", "--out", str(tmp_path / "c")])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "epoch budget" in r.output
    r = CliRunner().invoke(main, ["compare", "--dataset", "synthetic", "--lambdas", "0,abc", "--out", str(tmp_path)])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "λ set" in r.output


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "compare_config.json").write_text(json.dumps({**CompareConfig(**TINY).to_dict(), "epochs": 5}))
    with pytest.raises(CompareError, match="epochs=5"):
        compare(CompareConfig(**TINY), out)
    (out / "compare_config.json").write_text(json.dumps({**CompareConfig(**TINY).to_dict(), "eval_limit": 9}))
    from floatedge.train.compare import _check_resume

    _check_resume(out, CompareConfig(**TINY))  # evaluation settings may change: only the evaluation is redone
