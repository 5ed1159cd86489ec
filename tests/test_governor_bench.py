"""The governor benchmark's metric code (benchmarks/governor.py) on a hand-made request log with known answers."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from governor import (  # noqa: E402
    beats,
    frontier,
    hindsight,
    oracle,
    parse_fractions,
    policy_metrics,
    reaction_times,
    relabel,
    sweep_report,
    table_scores,
    windows,
)

WIDE, NARROW = (1.0, 1.0), (1.0, 0.5)
SCORES = {WIDE: (0.40, 0.70), NARROW: (0.20, 0.60)}
BOUND = 50.0


def row(t, ms, point, ok=True):
    return (t, ms, point[0], point[1], ok)


def test_table_scores_take_the_bundle_threshold_and_the_first_attack():
    table = [{"lambda_n": 1.0, "width": 1.0, "lambda_th": 0.5, "clean_acc": 0.7, "pgd20_acc": 0.4},
             {"lambda_n": 1.0, "width": 1.0, "lambda_th": 0.0, "clean_acc": 0.1, "pgd20_acc": 0.1}]
    assert table_scores(table, 0.5) == {WIDE: (0.4, 0.7)}


def test_policy_metrics_on_a_hand_made_log():
    # 10 requests: 6 wide (2 over the bound), 3 narrow, 1 failed
    log = [row(0.1 * i, 60.0 if i in (1, 4) else 20.0, WIDE) for i in range(6)]
    log += [row(1 + 0.1 * i, 10.0, NARROW) for i in range(3)] + [row(2.0, 5.0, NARROW, ok=False)]
    m = policy_metrics(log, SCORES, BOUND)
    assert m["n"] == 10 and m["failed"] == 1
    assert m["violation_rate"] == pytest.approx(3 / 10)  # 2 over the bound + the failed one
    assert m["ra"] == pytest.approx((6 * 0.40 + 3 * 0.20) / 9) and m["ca"] == pytest.approx((6 * 0.7 + 3 * 0.6) / 9)


def test_windows_oracle_and_hindsight():
    # two static runs over 3 windows of 2 s: wide meets the bound in windows 0 and 2, breaks it in window 1
    wide = [row(0.5, 20, WIDE), row(1.5, 20, WIDE), row(2.5, 90, WIDE), row(3.5, 80, WIDE), row(4.5, 30, WIDE)]
    narrow = [row(0.5, 10, NARROW), row(2.5, 15, NARROW), row(3.0, 12, NARROW), row(4.5, 11, NARROW)]
    assert [len(w) for w in windows(wide, 6.0)] == [2, 2, 1]
    o = oracle({WIDE: wide, NARROW: narrow}, SCORES, BOUND, 6.0)
    assert o["choices"] == [WIDE, NARROW, WIDE]
    assert o["n"] == 2 + 2 + 1 and o["violation_rate"] == 0.0
    assert o["ra"] == pytest.approx((2 * 0.4 + 2 * 0.2 + 1 * 0.4) / 5)
    # a window where nothing met: the run with the fewest violations there
    worse = [row(2.5, 70, NARROW), row(3.0, 12, NARROW)]
    o = oracle({WIDE: wide, NARROW: worse}, SCORES, BOUND, 6.0)
    assert o["choices"][1] == NARROW and o["violation_rate"] == pytest.approx(1 / 5)
    stat = {"wide": policy_metrics(wide, SCORES, BOUND), "narrow": policy_metrics(narrow, SCORES, BOUND)}
    assert hindsight(stat) == "narrow"  # wide breaks the bar (40%), narrow is within it
    stat["narrow"]["violation_rate"] = 0.5
    assert hindsight(stat) == "wide"  # none within: the fewest violations


def test_reaction_times_and_who_beats_whom():
    changes = [(10.0, "worse", True), (20.0, "better", False), (30.0, "worse", True)]
    moves = [(10.4, -0.25), (12.0, -0.25), (26.0, +0.5)]  # the last change is never answered
    assert reaction_times(changes, moves, 40.0) == [pytest.approx(0.4), pytest.approx(6.0), None]
    g = {"violation_rate": 0.005, "ra": 0.30}
    assert beats(g, {"violation_rate": 0.04, "ra": 0.30}) and beats(g, {"violation_rate": 0.005, "ra": 0.25})
    assert not beats(g, {"violation_rate": 0.001, "ra": 0.35}) and not math.isnan(g["ra"])


def test_a_static_run_stands_for_another_lambda_of_its_width():
    log = [row(0.1, 20, WIDE), row(0.2, 30, WIDE, ok=False)]
    other = (0.7, 1.0)
    assert relabel(log, other) == [(0.1, 20, 0.7, 1.0, True), (0.2, 30, 1.0, 1.0, False)]
    m = policy_metrics(relabel(log, other), {**SCORES, other: (0.5, 0.6)}, BOUND)
    assert m["ra"] == 0.5 and m["failed"] == 1


def test_the_ladder_frontier_verdict_on_hand_made_figures():
    g = {"violation_rate": 0.01, "ra": 0.15}
    ladders = {"1": {"violation_rate": 0.25, "ra": 0.18},  # more RA, more violations: not beaten, not dominating
               "0.25": {"violation_rate": 0.02, "ra": 0.15},  # beaten: more violations at equal RA
               "0.15": {"violation_rate": 0.01, "ra": 0.14}}  # beaten: less RA at equal violations
    fr = frontier(g, ladders)
    assert fr["beats"] == {"1": False, "0.25": True, "0.15": True} and fr["dominating"] == []
    ladders["0.1"] = {"violation_rate": 0.005, "ra": 0.15}  # as robust with fewer violations: dominates
    fr = frontier(g, ladders)
    assert not fr["beats"]["0.1"] and fr["dominating"] == ["0.1"]


@pytest.mark.parametrize("text", ["", "0.3,x", "0,0.5", "3"])
def test_ladder_sweep_fractions_refused(text):
    with pytest.raises(ValueError, match="--ladder-sweep"):
        parse_fractions(text)
    assert parse_fractions("0.35, 0.25,0.15") == [0.35, 0.25, 0.15]


def test_sweep_report_states_each_verdict_and_the_frontier():
    m = {"ca": 0.25, "p99_ms": 50.0, "switches": 3, "load_average": [1.0, 2.0]}
    g = {**m, "violation_rate": 0.009, "ra": 0.15}
    ladders = {"wide": {**m, "violation_rate": 0.2, "ra": 0.17, "latency_ms": 40, "run": "full run"},
               "tight": {**m, "violation_rate": 0.03, "ra": 0.14, "latency_ms": 6, "run": "this sweep"}}
    out = {"governor (full run)": g, "ladders": ladders, "frontier": frontier(g, ladders), "server_ms": 40,
           "load_average_start": [1.0, 1.0, 1.0], "seconds_total": 60}
    args = type("A", (), {"seconds": 150, "rate": 60, "ladder_sweep": "0.15", "slo_ms": 40})
    text = sweep_report(out, args)
    assert "| wide | 40 | full run | 20.00% | 17.00 |" in text and text.count("**no**") == 1 and text.count("**yes**") == 1
    assert "beats 1 of 2 ladder settings by the rule (tight)" in text and "none dominates the governor" in text
    assert "breaking the SLO on 20.00%–20.00%" in text and "(the fewest: 3.00%)" in text
