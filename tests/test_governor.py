"""The governor (floatedge/daemon/governor.py) as a pure policy on synthetic profiles and traces, the static and
ladder policies, and the policies behind the server's interface. The server end to end: test_governor_serve.py."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _govsim import RA, WIDTH_MS, simulate, synthetic_points, violation_share  # noqa: E402

from floatedge.daemon.governor import (  # noqa: E402
    Budget,
    Governor,
    GovernorInputError,
    Observation,
    PointCost,
    Request,
    Tuning,
    points_from_profile,
    quantile,
    split_params,
)
from floatedge.daemon.policies import GovernorPolicy, LadderPolicy, StaticPolicy  # noqa: E402
from floatedge.daemon.policy import Context, make_policy  # noqa: E402
from floatedge.oppoint import OperatingPoint  # noqa: E402


def gov(**budget) -> Governor:
    tuning = {k: budget.pop(k) for k in list(budget) if k in Tuning.__dataclass_fields__}
    return Governor(synthetic_points(power="power" in budget or budget.pop("with_power", False)),
                    Budget(**{"latency_ms": 25.0, **budget}), Tuning(**tuning))


def step(t: float, at: float, before: float, after: float):
    return lambda x: after if x >= at else before


# ------------------------------------------------------------------------------------------- inputs
def profile_of(points: list[PointCost], sha: str = "abc") -> dict:
    return {"key": {"bundle_manifest_sha256": sha},
            "points": [{"width": p.width, "lambda_n": p.lambda_n, "lambda_th": 0.5, "clean_acc": p.clean,
                        "robust_acc": p.robust, "attack": "pgd20", "peak_rss_mb": p.rss_mb,
                        "batches": [{"batch": b, "p50_ms": ms, "power_w": None} for b, ms in p.latency_ms]}
                       for p in points]}


def test_profile_of_another_bundle_is_refused():
    prof = profile_of(synthetic_points(), sha="abc")
    assert len(points_from_profile(prof, bundle_sha256="abc")) == 9
    with pytest.raises(GovernorInputError, match="another bundle"):
        points_from_profile(prof, bundle_sha256="def")
    table = [{"lambda_n": 0.0, "width": 1.0, "lambda_th": 0.5, "clean_acc": 80, "pgd20_acc": 12}]
    with pytest.raises(GovernorInputError, match="table does not"):
        points_from_profile(prof, table)
    with pytest.raises(GovernorInputError, match="no points"):
        points_from_profile({"points": []})
    prof["points"][0]["batches"] = []
    with pytest.raises(GovernorInputError, match="no latency"):
        points_from_profile(prof)


def test_accuracy_missing_or_budget_unusable_is_named():
    bare = [PointCost(1.0, 1.0, None, None, ((1, 1.0),))]
    with pytest.raises(GovernorInputError, match="calibrated accuracy"):
        Governor(bare, Budget())
    for bad, match in (({"percentile": 20}, "percentile"), ({"objective": "speed"}, "objective"),
                       ({"floor": 1.5}, "floor"), ({"latency_ms": -1}, "latency_ms"), ({"margin": 2}, "margin"),
                       ({"min_samples": 0}, "min_samples"), ({"priority": "x"}, "priority")):
        with pytest.raises(GovernorInputError, match=match):
            split_params(bad, Budget(), Tuning())
    b, t, rest = split_params({"latency_ms": 30, "power_w": 0, "dwell_s": 2, "profile": "p.json"}, Budget(), Tuning())
    assert (b.latency_ms, b.power_w, t.dwell_s, rest) == (30, None, 2, {"profile": "p.json"})


def test_interpolates_the_profile_and_quantiles():
    p = PointCost(0, 1, 1, 1, ((1, 2.0), (8, 9.0)))
    assert p.compute_ms(1) == 2.0 and p.compute_ms(4.5) == pytest.approx(5.5) and p.compute_ms(16) == 18.0
    assert quantile([1, 2, 3, 4], 0.5) == 2.5 and quantile([5], 0.99) == 5


# ------------------------------------------------------------------------------------------- behaviour
def test_monotone_response_to_slowdown_and_to_the_bound():
    """More slowdown never buys a more expensive point; a looser bound never a less robust one."""
    costs, scores = [], []
    for s in (1.0, 1.6, 2.5, 4.0, 8.0):
        run = simulate(gov(), lambda t, s=s: s, 20)
        lam, w = run.points[-1]
        costs.append(WIDTH_MS[w])
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1], costs
    for bound in (6, 12, 20, 30, 60):
        g = gov(latency_ms=bound)
        lam, w = simulate(g, lambda t: 1.6, 20).points[-1]
        scores.append(RA[w] * (0.3 + 0.7 * lam))
    assert scores == sorted(scores) and scores[0] < scores[-1], scores


def test_follows_a_trace_down_at_once_and_back_after_the_dwell():
    g = gov(dwell_s=5.0)
    run = simulate(g, lambda t: 3.0 if 20 <= t < 40 else 1.0, 60)
    downs = [t for t, p, c in zip(run.times, run.points, run.choices, strict=True) if c.switch and t >= 20]
    assert downs and downs[0] <= 21.0, downs  # within two 0.5 s periods of the slowdown
    assert run.points[int(39 / 0.5)][1] < 1.0  # still down at the end of the episode
    back = next(t for t, p in zip(run.times, run.points, strict=True) if t > 40 and p == (1.0, 1.0))
    assert 45.0 <= back <= 49.0, back  # up only after the dwell, not long after it
    assert violation_share(run, 25) < 0.02
    up = next(c for t, c in zip(run.times, run.choices, strict=True) if t == back)
    assert up.limit == "headroom" and "dwell" in up.reason and up.detail["target_predicted_ms"] < 25


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_flapping_on_a_noisy_steady_load(seed):
    """A load near the border of two points, with heavy noise: at most one switch per dwell period."""
    run = simulate(gov(latency_ms=20, dwell_s=5.0), lambda t: 1.0, 120, seed=seed, noise=0.3)
    switches = run.switches()
    assert len(switches) <= 120 / 5.0 and len(switches) <= 6, switches
    # probes that do not hold come ever more rarely: the dwell doubles after each
    ups = [t for t, c in zip(run.times, run.choices, strict=True) if c.switch and c.limit == "headroom"]
    gaps = [b - a for a, b in zip(ups, ups[1:], strict=False)]
    assert gaps == sorted(gaps), ups
    assert violation_share(run, 20) < 0.01


def test_the_floor_is_honoured_within_one_period():
    g = gov(objective="clean")
    seen = {}

    def raise_floor(t, policy):
        if math.isclose(t, 20.0):
            policy.set_budget(Budget(latency_ms=25.0, objective="clean", floor=0.7))
        seen[t] = None

    run = simulate(g, lambda t: 1.0, 30, on_tick=raise_floor)
    before = run.points[int(19.5 / 0.5) - 1]
    assert before[0] == 0.0  # the clean objective serves λn = 0
    assert run.points[int(20.0 / 0.5) - 1][0] == 0.0  # the tick that raised it decided before the change
    assert run.points[int(20.5 / 0.5) - 1][0] >= 0.7  # the next decision honours it
    assert violation_share(run, 25) < 0.01


def test_a_floor_no_point_meets_within_the_budget_is_named():
    pts = [PointCost(0.0, 1.0, 80, 10, ((1, 2.0),)), PointCost(1.0, 1.0, 70, 40, ((1, 50.0),))]
    g = Governor(pts, Budget(latency_ms=25, floor=0.7, objective="clean"))
    c = g.decide(Observation(1.0, 0.0, 1.0))
    assert not c.switch and any("cannot be met" in n for n in g.status["notes"]) and "serving below" in c.reason
    g.set_budget(Budget(latency_ms=25, floor=0.7, objective="clean", priority="floor"))
    c = g.decide(Observation(2.0, 0.0, 1.0))
    assert c.switch and c.lambda_n == 1.0 and c.detail["violation"] is True


def test_an_impossible_budget_serves_the_fastest_reports_it_and_never_oscillates():
    run = simulate(gov(latency_ms=1.0), lambda t: 1.0, 60)
    assert len(run.switches()) == 1 and run.points[-1][1] == 0.5
    assert all(c.detail["violation"] for c in run.choices[1:])
    assert "no point meets the budget" in run.choices[0].reason


def test_throttling_read_from_telemetry_moves_before_the_latencies_do():
    """The simulated device throttles at 20 s (clock 1000 → 400 MHz) and requests slow down from then on: with
    telemetry the governor steps down on the snapshot; without it, only once latencies show it."""
    def tele(t):
        hot = t >= 20.0
        return {"throttled": hot, "throttle_reasons": ["thermal: gpu-thermal 99 °C"] if hot else [], "mode_id": 2,
                "gpu_mhz": 400.0 if hot else 1000.0, "gpu_max_mhz": 1000.0, "temps_c": {"gpu-thermal": 60.0}}

    slow = step(0, 20.0, 1.0, 2.5)
    with_t = simulate(gov(), slow, 30, telemetry=tele)
    without = simulate(gov(), slow, 30)
    first_with = next(t for t in with_t.switches() if t >= 20)
    first_without = next(t for t in without.switches() if t >= 20)
    assert first_with == 20.0 and first_without > first_with
    c = with_t.choices[with_t.times.index(20.0)]
    assert any("throttling started" in e for e in c.detail["events"]) and c.detail["telemetry"] == "snapshot"
    assert without.choices[-1].detail["telemetry"].startswith("latency only")


def mode_change(at: float, clocks: tuple[float, float] = (918.0, 612.0)):
    """The snapshot of a device that drops from power mode 3 to mode 1 at `at` (GPU cap `clocks[0]` → `clocks[1]`)."""
    def tele(t):
        low = t >= at
        return {"mode_id": 1 if low else 3, "gpu_mhz": clocks[low], "gpu_max_mhz": clocks[low], "throttled": False}
    return tele


def test_a_worse_device_announced_by_telemetry_steps_straight_down_and_climbs_back_after_the_dwell():
    """Power mode 25W → 10W at 20 s, and the requests slow down 3× from then on: at the snapshot's tick the
    governor goes in one step to the point that fits at the slowdown's upper bound (the fastest here), never via
    the width in between; and where the lower mode turns out harmless it climbs back once measured, after the dwell."""
    run = simulate(gov(), step(0, 20.0, 1.0, 3.0), 30, telemetry=mode_change(20.0), period=0.1)
    moves = [(t, p) for t, p, c in zip(run.times, run.points, run.choices, strict=True) if c.switch and t > 1]
    assert moves and moves[0][0] == pytest.approx(20.0) and moves[0][1][1] == 0.5, moves
    assert len(moves) == 1, moves  # straight down, and it stays
    c = run.choices[next(i for i, t in enumerate(run.times) if t == pytest.approx(20.0))]
    assert c.limit == "latency" and "power mode 3 → 1" in c.reason and "upper bound" in c.reason
    assert c.detail["unmeasured"] is True and c.detail["slowdown_upper"] > 2 * c.detail["slowdown"]
    # the lower mode that does not slow anything: down on the snapshot, back up once measured and after the dwell
    harmless = simulate(gov(dwell_s=3.0), lambda t: 1.0, 40, telemetry=mode_change(20.0))
    downs = [t for t, c in zip(harmless.times, harmless.choices, strict=True) if c.switch and t >= 20]
    assert downs[0] == 20.0 and harmless.points[-1] == (1.0, 1.0)
    back = next(t for t, p in zip(harmless.times, harmless.points, strict=True) if t > 20 and p == (1.0, 1.0))
    assert 23.0 <= back <= 27.0, back
    # with a bound far above every point the same snapshot moves nothing: even the upper bound fits
    roomy = simulate(gov(latency_ms=200.0), lambda t: 1.0, 30, telemetry=mode_change(20.0))
    assert not [t for t, c in zip(roomy.times, roomy.choices, strict=True) if c.switch and t >= 1]


def test_a_better_mode_is_not_a_reason_to_step_down():
    run = simulate(gov(latency_ms=40.0), lambda t: 1.0, 30, telemetry=mode_change(20.0, (612.0, 918.0)))
    assert not [t for t, c in zip(run.times, run.choices, strict=True) if c.switch and t >= 1]
    assert any(c.detail.get("events") for c in run.choices) and not any(c.detail["unmeasured"] for c in run.choices)


@pytest.mark.parametrize("seed", [0, 1])
def test_no_flapping_at_a_short_control_period(seed):
    """The same noisy border at a 0.1 s control period: five times the decisions, still at most one switch per
    dwell period."""
    run = simulate(gov(latency_ms=20, dwell_s=5.0), lambda t: 1.0, 120, seed=seed, noise=0.3, period=0.1)
    switches = run.switches()
    assert len(switches) <= 120 / 5.0 and len(switches) <= 6, switches
    assert all(b - a >= 0.1 for a, b in zip(switches, switches[1:], strict=False))
    assert violation_share(run, 20) < 0.01


def test_power_cap_with_profiled_and_measured_power():
    g = gov(with_power=True, power_w=8.0, latency_ms=100)  # 2 + 6w W: w1 8 W, w0.75 6.5 W, w0.5 5 W
    c = g.decide(Observation(1.0, 1.0, 1.0, telemetry={"power_total_mw": 8000.0}))
    assert c.switch and c.width == 0.75 and c.limit == "power", c
    # the device draws a third more than profiled: the cap breaks at 0.75 and the prediction moves to 0.5
    c = g.decide(Observation(2.0, 1.0, 0.75, telemetry={"power_total_mw": 8700.0}))
    assert c.switch and c.width == 0.5 and "power 8.70 W > cap 8 W" in c.reason


def test_temperature_ceiling_steps_down_and_waits_to_cool():
    g = gov(temp_c=85.0, latency_ms=100, dwell_s=2.0)

    def at(t, lam, w, temp):
        return g.decide(Observation(t, lam, w, telemetry={"temps_c": {"gpu-thermal": temp}}))

    assert not at(0.5, 1.0, 1.0, 70).switch
    c = at(1.0, 1.0, 1.0, 86)
    assert c.switch and c.width == 0.75 and c.limit == "thermal"
    c = at(1.5, 1.0, 0.75, 86)
    assert c.switch and c.width == 0.5  # still at the ceiling: one more rung
    for t in (2.0, 4.0, 6.0):  # cooling but within the hysteresis: no step up
        assert not at(t, 1.0, 0.5, 83).switch
    assert not at(6.5, 1.0, 0.5, 75).switch  # cool: headroom starts
    c = at(8.6, 1.0, 0.5, 75)
    assert c.switch and c.width == 1.0 and c.limit == "headroom"


def test_memory_floor_moves_to_a_smaller_point():
    g = gov(mem_free_mb=1000, latency_ms=100)
    c = g.decide(Observation(1.0, 1.0, 1.0, telemetry={"ram_total_mb": 8000, "ram_used_mb": 7500}))
    assert c.switch and c.width < 1.0 and c.limit == "memory" and "free memory 500 MB" in c.reason


def test_requests_at_points_outside_the_profile_are_ignored_and_no_load_keeps_the_prior():
    g = gov()
    reqs = tuple(Request(0.01 * i, 0.0012, 0.001, 0.3, 1.0) for i in range(1, 50))  # λn 0.3: not profiled
    c = g.decide(Observation(1.0, 1.0, 1.0, reqs))
    assert not c.switch and c.detail["slowdown"] == 1.0


# ------------------------------------------------------------------------------------------- policies
def ctx(point=(1.0, 1.0), requests=(), now=10.0, slo_ms=25.0, telemetry=None) -> Context:
    return Context(OperatingPoint(point[0], point[1], 0.5), [], (1.0, 0.75, 0.5), slo_s=slo_ms / 1e3,
                   telemetry=telemetry, now=now, requests=tuple(requests), servers=2)


def reqs(ms: float, point=(1.0, 1.0), n=20, t0=5.0):
    return [(t0 + 0.01 * i, ms / 1e3, ms / 2e3, point[0], point[1], 1) for i in range(n)]


def test_static_policy_holds_its_point():
    p = make_policy("static", {"lambda_n": 0.7, "width": 0.5})
    d = p.decide(ctx())
    assert (d.lambda_n, d.width) == (0.7, 0.5) and p.decide(ctx((0.7, 0.5))) is None
    with pytest.raises(ValueError, match="no parameter"):
        StaticPolicy().set_params({"speed": 1})
    with pytest.raises(ValueError, match="lambda_n"):
        StaticPolicy().set_params({"lambda_n": 2})


def test_ladder_steps_one_rung_on_the_mean_of_the_last_20():
    lad = LadderPolicy()
    lad.attach(synthetic_points())
    assert lad.rungs(ctx()) == [(1.0, 0.5), (1.0, 0.75), (1.0, 1.0)]
    assert lad.decide(ctx(requests=reqs(30, n=19))) is None  # 19 latencies: not yet
    d = lad.decide(ctx(requests=reqs(30)))
    assert (d.lambda_n, d.width) == (1.0, 0.75) and "mean of the last 20 30.0 ms > 25 ms" in d.reason
    # the next rung needs 20 latencies of its own, finished after the switch
    assert lad.decide(ctx((1.0, 0.75), reqs(30, (1.0, 0.75), t0=5.0), now=11.0)) is None
    d = lad.decide(ctx((1.0, 0.75), reqs(10, (1.0, 0.75), t0=12.0), now=13.0))
    assert d.width == 1.0 and d.detail["limit"] == "headroom"  # 10 ms < 25 × (1 − 0.3)
    assert lad.decide(ctx((1.0, 0.75), reqs(20, (1.0, 0.75), t0=20.0), now=21.0)) is None  # in between: stay
    bare = LadderPolicy()  # no profile: a rung per width from the table
    table = [{"lambda_n": lam, "width": w, "lambda_th": 0.5, "clean_acc": 50, "pgd20_acc": RA[w] * lam}
             for w in (1.0, 0.5) for lam in (0.0, 1.0)]
    c = Context(OperatingPoint(1.0, 1.0, 0.5), table, (1.0, 0.5), slo_s=0.025)
    assert bare.rungs(c) == [(1.0, 0.5), (1.0, 1.0)]


def test_governor_policy_behind_the_server_interface():
    p = make_policy("governor", {"latency_ms": 0, "dwell_s": 2})
    assert isinstance(p, GovernorPolicy) and p.params()["dwell_s"] == 2
    d = p.decide(ctx())
    assert d is not None and d.lambda_n is None and "holds the point" in d.reason  # no profile: holds, says why
    assert p.decide(ctx()) is None  # said once
    p.attach(synthetic_points())
    d = p.decide(ctx(requests=reqs(60)))  # slo_ms 25 is the bound when latency_ms is 0
    assert d.width is not None and d.width < 1.0 and d.detail["limit"] == "latency" and d.detail["bound_ms"] == 25
    assert p.status["control"].startswith("latency only")
    with pytest.raises(ValueError, match="no parameter"):
        p.set_params({"bogus": 1})
    with pytest.raises(ValueError, match="objective"):
        p.set_params({"objective": "fast"})
    p.set_params({"floor": 0.7, "objective": "clean"})
    assert p.gov.budget.floor == 0.7 and p.params()["objective"] == "clean"


def test_the_policy_hands_the_governor_each_request_once_and_decides_as_the_pure_governor():
    """The server passes a minute of requests at every period; the policy passes on only the new ones, and its
    decisions are the pure governor's fed each request once."""
    rng = np.random.default_rng(3)
    pol = make_policy("governor", {"latency_ms": 25.0, "dwell_s": 2.0})
    pol.attach(synthetic_points())
    pure = Governor(synthetic_points(), Budget(latency_ms=25.0), Tuning(dwell_s=2.0))
    point, log, seen, widths = (1.0, 1.0), [], 0.0, []
    for k in range(1, 201):
        now = 0.1 * k
        slow = 3.0 if 8.0 <= now < 12.0 else 1.0
        while seen < now:
            seen += rng.exponential(1 / 60)
            ms = WIDTH_MS[point[1]] * slow * rng.lognormal(0, 0.2)
            log.append((seen, ms / 1e3 + 0.001, ms / 1e3, point[0], point[1], 1))
        done = [r for r in log if r[0] <= now]
        d = pol.decide(ctx(point, [r for r in done if r[0] > now - 60], now=now))
        c = pure.decide(Observation(now, point[0], point[1], tuple(Request(*r) for r in done if r[0] > now - 0.1 - 1e-9),
                                    None, 2))
        moved = d is not None and d.width is not None
        assert moved == c.switch, (now, d, c)
        if c.switch:
            assert (d.lambda_n, d.width) == (c.lambda_n, c.width)
            point = (c.lambda_n, c.width)
            widths.append(point[1])
    assert min(widths) < 1.0 and widths[-1] == 1.0, widths  # down in the slow spell, back after it
    assert pol.gov.status["slowdown"] == pure.status["slowdown"]
