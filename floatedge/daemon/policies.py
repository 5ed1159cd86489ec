"""The policies `floatedge serve --policy` selects besides "manual": `static`, `ladder` and `governor`, behind the
server's policy interface (floatedge/daemon/policy.py: `params`, `set_params`, `decide(ctx)`), plus what the
server tells a policy about the bundle it serves: `attach(points, problem)` — the candidate points with their
profiled cost (floatedge/daemon/governor.py `PointCost`, from the device profile) or why there are none.

* `static`: one point, held (`lambda_n`, `width`; the benchmark's static most-robust and fastest).
* `ladder`: Dynamic-OFA's runtime rule (`UoS-EEC/DynamicOFA:runtime_demo/runtime_adjustment/imagenet_eval_helper.py`,
  `validate()`: the mean of the last 20 latencies against the constraint), one rung at a time: down when the mean
  of the last `window` latencies at the current rung breaks the bound, up when it is under the bound by `margin`.
  The rungs are the Pareto points of the profile (cheaper and worse by the objective, one after another), or
  without a profile one point per width, narrowest first.
* `governor`: floatedge's (governor.py): its budget and tuning are its parameters; `latency_ms` 0 takes the
  server's `slo_ms`.

All of them decide from what the server passes in the context and hold no clock of their own.
"""
from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

from floatedge.bundle import robust_of

from .governor import (
    BUDGET_KEYS,
    TUNING_KEYS,
    Budget,
    Governor,
    GovernorInputError,
    Observation,
    PointCost,
    Request,
    Tuning,
    split_params,
)
from .policy import Context, Decision


def _number(params: dict[str, Any], key: str, lo: float, hi: float) -> float:
    v = params[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{key} must be a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _unknown(params: dict[str, Any], known: tuple[str, ...], name: str) -> None:
    extra = sorted(set(params) - set(known))
    if extra:
        raise ValueError(f"the {name} policy has no parameter(s) {', '.join(extra)}; it takes {', '.join(known)}")


def _requests(ctx: Context) -> tuple[Request, ...]:
    return tuple(r if isinstance(r, Request) else Request(*r) for r in ctx.requests)


def _at(p: Any, lambda_n: float, width: float) -> bool:
    return math.isclose(p.lambda_n, lambda_n, abs_tol=1e-9) and math.isclose(p.width, width, abs_tol=1e-9)


class StaticPolicy:
    """Hold one point: (`lambda_n`, `width`); `width` 0 means the bundle's widest."""

    name = "static"
    KEYS = ("lambda_n", "width")

    def __init__(self) -> None:
        self.lambda_n, self.width = 1.0, 0.0

    def params(self) -> dict[str, Any]:
        return {"lambda_n": self.lambda_n, "width": self.width}

    def set_params(self, params: dict[str, Any]) -> None:
        _unknown(params, self.KEYS, self.name)
        lam = _number(params, "lambda_n", 0, 1) if "lambda_n" in params else self.lambda_n
        width = _number(params, "width", 0, 1) if "width" in params else self.width
        self.lambda_n, self.width = lam, width

    def decide(self, ctx: Context) -> Decision | None:
        width = self.width or max(ctx.widths)
        if _at(ctx.point, self.lambda_n, width):
            return None
        return Decision(self.lambda_n, width, f"static point λn={self.lambda_n:g} w={width:g}",
                        {"limit": "static"})


class _WithPoints:
    """What the server attaches: the profiled points of the bundle being served, or why there are none."""

    points: list[PointCost] | None = None
    problem: str | None = None

    def attach(self, points: list[PointCost] | None, problem: str | None = None) -> None:
        self.points, self.problem = points, problem


class LadderPolicy(_WithPoints):
    name = "ladder"
    KEYS = ("latency_ms", "window", "margin", "objective", "floor")

    def __init__(self) -> None:
        self.latency_ms, self.window, self.margin, self.objective, self.floor = 0.0, 20, 0.3, "robust", 0.0
        self._since = -math.inf  # requests finished before the last switch are not the new rung's
        self.status: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "window": self.window, "margin": self.margin,
                "objective": self.objective, "floor": self.floor}

    def set_params(self, params: dict[str, Any]) -> None:
        _unknown(params, self.KEYS, self.name)
        new = dict(self.params())
        for key, lo, hi in (("latency_ms", 0, 1e6), ("margin", 0, 0.95), ("floor", 0, 1)):
            if key in params:
                new[key] = _number(params, key, lo, hi)
        if "window" in params:
            w = params["window"]
            if isinstance(w, bool) or not isinstance(w, int) or w < 1:
                raise ValueError(f"window must be an integer ≥ 1, got {w!r}")
            new["window"] = w
        if "objective" in params:
            if params["objective"] not in ("robust", "clean"):
                raise ValueError(f"objective must be robust or clean, got {params['objective']!r}")
            new["objective"] = params["objective"]
        for k, v in new.items():
            setattr(self, k, v)

    def rungs(self, ctx: Context) -> list[tuple[float, float]]:
        """(λn, width) from cheapest to best: each next rung costs more and scores higher."""
        acc = "robust" if self.objective == "robust" else "clean"
        if self.points:
            cands = [(p.compute_ms(1.0), getattr(p, acc), p.lambda_n, p.width) for p in self.points
                     if p.lambda_n >= self.floor - 1e-9]
        else:  # no profile: a rung per width, narrowest first, at that width's best calibrated λn
            cands = []
            for r in ctx.table:
                score = r.get("clean_acc") if acc == "clean" else robust_of(r)[0]
                if float(r["lambda_n"]) >= self.floor - 1e-9 and score is not None:
                    cands.append((float(r["width"]), float(score), float(r["lambda_n"]), float(r["width"])))
        out: list[tuple[float, float]] = []
        best = -math.inf
        for _cost, score, lam, width in sorted(cands, key=lambda c: (c[0], -(c[1] or 0))):
            if score is not None and score > best:
                out.append((lam, width))
                best = score
        return out

    def decide(self, ctx: Context) -> Decision | None:
        bound = self.latency_ms or ctx.slo_s * 1e3
        rungs = self.rungs(ctx)
        if not bound or not rungs:
            self.status = {"problem": "no latency bound (latency_ms or slo_ms)" if not bound else "no rungs"}
            return None
        here = next((i for i, (lam, w) in enumerate(rungs) if _at(ctx.point, lam, w)), None)
        if here is None:  # off the ladder (start, manual switch): the top rung, then the rule takes over
            self._since = ctx.now
            lam, w = rungs[-1]
            return Decision(lam, w, f"ladder: start at the top rung λn={lam:g} w={w:g}", {"limit": "start"})
        lat = [r.e2e_s * 1e3 for r in _requests(ctx) if r.done > self._since and _at(r, *rungs[here])]
        self.status = {"rung": here, "rungs": len(rungs), "bound_ms": bound, "samples": len(lat)}
        if len(lat) < self.window:
            return None
        mean = sum(lat[-self.window:]) / self.window
        self.status["mean_ms"] = round(mean, 3)
        if mean > bound and here > 0:
            to, limit, why = here - 1, "latency", f"mean of the last {self.window} {mean:.1f} ms > {bound:g} ms"
        elif mean < bound * (1 - self.margin) and here < len(rungs) - 1:
            to, limit, why = here + 1, "headroom", f"mean of the last {self.window} {mean:.1f} ms < " \
                                                   f"{bound * (1 - self.margin):.1f} ms"
        else:
            return None
        self._since = ctx.now
        lam, w = rungs[to]
        return Decision(lam, w, f"ladder: {why}: → λn={lam:g} w={w:g}", {"limit": limit, "mean_ms": round(mean, 3),
                                                                        "bound_ms": bound})


class GovernorPolicy(_WithPoints):
    name = "governor"
    KEYS = (*BUDGET_KEYS, *TUNING_KEYS, "profile")

    def __init__(self) -> None:
        self.budget, self.tuning, self.profile = Budget(), Tuning(), ""
        self.gov: Governor | None = None
        self._said: tuple | None = None
        self._last = -math.inf  # the newest request already handed to the governor (it keeps its own window)
        self.status: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self.budget, k) for k in BUDGET_KEYS}
        out.update({k: getattr(self.tuning, k) for k in TUNING_KEYS})
        out["profile"] = self.profile
        return out

    def set_params(self, params: dict[str, Any]) -> None:
        _unknown(params, self.KEYS, self.name)
        try:
            budget, tuning, rest = split_params(params, self.budget, self.tuning)
        except GovernorInputError as exc:
            raise ValueError(str(exc)) from None
        if "profile" in rest and not isinstance(rest["profile"], str):
            raise ValueError(f"profile must be a path (a string), got {rest['profile']!r}")
        if self.gov is not None:
            try:
                self.gov.set_budget(budget)
                self.gov.set_tuning(tuning)
            except GovernorInputError as exc:
                raise ValueError(str(exc)) from None
        self.budget, self.tuning = budget, tuning
        self.profile = rest.get("profile", self.profile)

    def attach(self, points: list[PointCost] | None, problem: str | None = None) -> None:
        super().attach(points, problem)
        self.gov, self._last = None, -math.inf
        if points:
            try:
                self.gov = Governor(points, self.budget, self.tuning)
            except GovernorInputError as exc:
                self.problem = str(exc)

    def _effective(self, ctx: Context) -> None:
        """`latency_ms` 0: the server's slo_ms is the bound."""
        want = self.budget.latency_ms or ctx.slo_s * 1e3
        if self.gov is not None and self.gov.budget.latency_ms != want:
            self.gov.budget = replace(self.gov.budget, latency_ms=want)

    def decide(self, ctx: Context) -> Decision | None:
        if self.gov is None:
            self.status = {"problem": self.problem or "no device profile attached", "holding": True}
            return self._say(("problem", self.problem), f"governor holds the point: {self.status['problem']}", {})
        self._effective(ctx)
        # only the requests it has not seen: the server passes a minute of them at every (short) control period
        fresh = tuple(r if isinstance(r, Request) else Request(*r) for r in ctx.requests if r[0] > self._last)
        self._last = max([self._last, *(r.done for r in fresh)])
        obs = Observation(ctx.now, ctx.point.lambda_n, ctx.point.width, fresh, ctx.telemetry, max(1, int(ctx.servers)))
        c = self.gov.decide(obs)
        self.status = {**self.gov.status, "limit": c.limit, "reason": c.reason,
                       "control": "latency only (no telemetry)" if not ctx.telemetry else "latency and telemetry"}
        detail = {"limit": c.limit, **c.detail}
        # what a decision to stay says, without its figures (they change at every period)
        notes = tuple(re.sub(r"[-\d.]+", "#", n) for n in self.gov.status.get("notes") or ())
        if c.switch:
            self._said = (c.limit, c.detail.get("violation"), notes)
            return Decision(c.lambda_n, c.width, c.reason, detail)
        return self._say((c.limit if c.limit != "headroom" else "hold", c.detail.get("violation"), notes), c.reason,
                         detail)

    def _say(self, key: tuple, reason: str, detail: dict[str, Any]) -> Decision | None:
        """A decision to stay is logged once when what it says changes (a violation starts or ends, a limit)."""
        if key == self._said:
            return None
        self._said = key
        return Decision(None, None, reason, detail)


POLICIES = {"static": StaticPolicy, "ladder": LadderPolicy, "governor": GovernorPolicy}
