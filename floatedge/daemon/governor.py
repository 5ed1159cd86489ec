"""The governor: which operating point to serve, given what each point costs here and what the budget allows now.

A pure policy. No I/O, no threads, no clock: every call to `Governor.decide(obs)` gets everything it may use in
`obs` (the time included) and returns a `Choice`; the same inputs in the same order give the same decisions, so
it is tested on synthetic profiles and traces without a device (tests/test_governor.py). The server
(`floatedge serve --policy governor`, floatedge/daemon/policies.py) feeds it and applies its choices.

**Inputs.** The candidate points with their calibrated CA/RA (the bundle's table, as the device profile carries
it) and their profiled cost (`floatedge profile`: p50 latency per batch, power where it was measured, peak RSS);
the budget (`Budget`: a latency bound in ms at a percentile, end to end — queue and compute — as MLPerf's Server
scenario states its SLO, a 99th-percentile bound on Poisson arrivals, ../shared/reference/daemon.md §5; an
optional power cap, temperature ceiling and free-memory floor; the objective — robust accuracy by default, clean,
or a weighted mix — and a robustness floor λ_n ≥ f an application may raise at run time); and, at each call, the
requests completed since the last one (end-to-end latency, time in the model call, the point and batch they ran
at), the latest telemetry snapshot (floatedge.devices.sampler.Snapshot as JSON) and the number of requests the
runtime runs at once.

**The latency model.** A point p's end-to-end latency at the budget's percentile q is predicted as

    L_q(p) = O + ξ_q · t_p(b) · bias_p · (1 − u) / (1 − u_p)     (the last factor only for a point dearer than now)

t_p(b) is the profiled p50 at the recent mean batch b (interpolated between profiled batches); O the fixed part of
what the server adds outside the model call (HTTP, decoding, encoding; the median over the window, the same for
every point); ξ_q the *slowdown*: the q-quantile of (end-to-end latency − O) ÷ t_p(b) over recent requests,
whichever point each ran at. Everything beyond the fixed part — the model call slowed by co-runners or clocks, and
the waiting for a thread or a runtime slot, which grows with the point's cost — is in ξ_q, so the prediction is
exact at the current point and scales with the profiled cost elsewhere. Queueing grows faster than linearly near
saturation, so for a dearer point the M/M/1 factor moves it from today's utilisation u (arrival rate × median
model-call time ÷ concurrency: a median, which a backlog's waits barely move) to u_p = u · t_p / t_now, and
u_p ≥ 0.95 does not fit; a cheaper point keeps the linear scaling, which overstates its latency a little (the
safe side). bias_p is what a failed step up to p taught: by how much p was under-predicted, halving every 30 s.

**Why this estimator.** ALERT (Wan et al., USENIX ATC'20; daemon.md §5) predicts every configuration's latency as
its profiled latency times one global slowdown factor tracked by a Kalman filter, because interference from
co-runners and clock changes slows every configuration by about the same factor — a factor learnt at one point
transfers to all. We keep that idea and its filter (a scalar Kalman filter with a random-walk state) and change
three things for a server: (1) we filter the *tail* factor ξ_q, not the mean, because the SLO bounds a
percentile and interference widens the tail more than it moves the median; (2) each period measures the
window's quantile (a high quantile of a few samples is biased low) with the variance of a quantile estimate —
(tail scale)² ÷ n·(1−q), the samples beyond it — so a thin window moves it little; (3) a jump far outside the
filter's confidence (an innovation beyond 3σ: a co-runner started) re-opens the filter at once, and so does
telemetry announcing a change — a throttling edge, a power-mode switch, CPU cores going offline — which also scales the
prior by the GPU clock ratio it reports, so the governor moves on the telemetry before the latencies show it.
Throttling and the power mode are read from the snapshot, never guessed. Power is predicted the same way:
profiled watts × the ratio of measured to predicted power at the current point.

**The decision.** The feasible points meet every limit with a margin (predicted ≤ bound × (1 − margin)), stay
under the temperature ceiling (above it only points cheaper than the current one) and above the memory floor;
among them the best by the objective wins, ties going to the faster. Latency is predicted at the slowdown's estimate
and at its upper bound ξ_q + confidence·σ (ALERT chooses by the probability its filter's mean and variance give of
meeting the deadline): a step up is judged at the estimate (the dwell guards it), a step down at the upper bound, so
that one step suffices — right after an abrupt change the window still mixes the old device with a backlog that is
building, and under CPU contention the tail grows faster than linearly with a point's cost. A device the telemetry
announces worse is judged at the upper bound until `min_samples` requests have measured it; the re-opened filter's
σ is about its own size, so that is a step to a point that fits three times the clock-scaled slowdown: the clock
ratio is a lower bound on what such a change costs (the load that heats a device comes with it).
Hysteresis: when the budget is broken — observed q-quantile over the bound at the current point, its prediction
over the bound, power over the cap, a zone at the ceiling, free memory under the floor — the governor steps down at
once to the best feasible point; it steps up only after the better point has been feasible for `dwell_s` without
interruption (a clock per point, running from the earliest start of its own and the dearer points'), and a step
up that has to be undone within a dwell doubles the next dwell (up to ×16), so a border case cannot make it
oscillate. Changes the operator makes (budget, floor, objective) are answered at the next decision. A budget
no point meets is reported (`violation`) and the fastest point served, and the governor stays there until a
better one fits. Every choice carries its reason: the limit, predicted and observed figures.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, NamedTuple

from floatedge.bundle import robust_of

OBJECTIVES = ("robust", "clean", "weighted")
PRIORITIES = ("slo", "floor")
MAX_BACKOFF = 16
BIAS_HALF_LIFE_S = 30.0


class GovernorInputError(ValueError):
    """A profile, table or budget the governor cannot use: one line naming what is wrong."""


# --------------------------------------------------------------------------------------------- points
@dataclass(frozen=True)
class PointCost:
    """One operating point: its calibrated accuracies and its profiled cost on this device."""

    lambda_n: float
    width: float
    clean: float | None
    robust: float | None
    latency_ms: tuple[tuple[int, float], ...]  # (batch, p50 ms), batch ascending
    power_w: float | None = None
    rss_mb: float | None = None

    @cached_property
    def key(self) -> tuple[float, float]:
        return (round(self.width, 6), round(self.lambda_n, 6))

    def compute_ms(self, batch: float = 1.0) -> float:
        """Profiled p50 at `batch` images: linear between profiled batches, proportional beyond the largest."""
        pts = self.latency_ms
        if batch <= pts[0][0] or len(pts) == 1:
            b0, ms0 = pts[0]
            return ms0 if batch <= b0 else ms0 * batch / b0
        for (b0, ms0), (b1, ms1) in zip(pts, pts[1:], strict=False):
            if batch <= b1:
                return ms0 + (ms1 - ms0) * (batch - b0) / (b1 - b0)
        b1, ms1 = pts[-1]
        return ms1 * batch / b1

    def label(self) -> str:
        return f"λn={self.lambda_n:g} w={self.width:g}"


def points_from_profile(profile: Mapping[str, Any], table: Sequence[Mapping[str, Any]] | None = None,
                        bundle_sha256: str | None = None) -> list[PointCost]:
    """The candidate points of a device profile (floatedge.devices.profile's JSON). Refused with a
    GovernorInputError when it belongs to another bundle (`bundle_sha256`), has no latency figures, or when a
    profiled point has no CA/RA in the profile or in `table` (the bundle's calibration table)."""
    if not isinstance(profile, Mapping) or not isinstance(profile.get("points"), list) or not profile["points"]:
        raise GovernorInputError("the device profile has no points (run floatedge profile on the bundle)")
    key = profile.get("key") or {}
    if bundle_sha256 is not None and key.get("bundle_manifest_sha256") != bundle_sha256:
        raise GovernorInputError(f"the device profile was measured for another bundle "
                                 f"({str(key.get('bundle_manifest_sha256'))[:12]}…, this one {bundle_sha256[:12]}…); "
                                 "run floatedge profile on the bundle being served")
    rows = {(round(float(r["width"]), 6), round(float(r["lambda_n"]), 6)): r for r in (table or ())}
    out = []
    for p in profile["points"]:
        w, lam = float(p["width"]), float(p["lambda_n"])
        row = rows.get((round(w, 6), round(lam, 6)), {})
        clean = p.get("clean_acc", row.get("clean_acc"))
        robust = robust_of(row)[0]  # the table's lowest measured attack (floatedge.bundle.robust_of)
        if robust is None:
            robust = p.get("robust_acc")
        if table is not None and rows and (round(w, 6), round(lam, 6)) not in rows:
            raise GovernorInputError(f"the device profile has the point λn={lam:g} w={w:g}, which the bundle's table "
                                     "does not: the profile belongs to another bundle")
        lat = tuple(sorted((int(b["batch"]), float(b["p50_ms"])) for b in p.get("batches") or ()
                           if b.get("p50_ms") is not None and float(b["p50_ms"]) > 0))
        if not lat:
            raise GovernorInputError(f"the device profile has no latency for λn={lam:g} w={w:g}")
        watts = [float(b["power_w"]) for b in p.get("batches") or () if b.get("power_w") is not None]
        out.append(PointCost(lam, w, None if clean is None else float(clean), None if robust is None else float(robust),
                             lat, watts[0] if watts else None, p.get("peak_rss_mb")))
    return out


# --------------------------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class Budget:
    """What the operator allows. `latency_ms` 0: no latency bound. `floor`: λ_n ≥ floor. `priority`: which
    wins when no point at or above the floor meets the budget — "slo" (serve below the floor, say so) or
    "floor" (serve the fastest point at the floor, report the violation)."""

    latency_ms: float = 0.0
    percentile: float = 99.0
    power_w: float | None = None
    temp_c: float | None = None
    mem_free_mb: float | None = None
    objective: str = "robust"
    weight: float = 0.5  # weighted objective: weight × RA + (1 − weight) × CA
    floor: float = 0.0
    priority: str = "slo"

    def check(self) -> Budget:
        def number(name: str, lo: float, hi: float = math.inf, none_ok: bool = False) -> None:
            v = getattr(self, name)
            if v is None and none_ok:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise GovernorInputError(f"{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")

        number("latency_ms", 0)
        number("percentile", 50, 99.99)
        number("power_w", 0, none_ok=True)
        number("temp_c", 0, 200, none_ok=True)
        number("mem_free_mb", 0, none_ok=True)
        number("weight", 0, 1)
        number("floor", 0, 1)
        if self.objective not in OBJECTIVES:
            raise GovernorInputError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.priority not in PRIORITIES:
            raise GovernorInputError(f"priority must be one of {', '.join(PRIORITIES)}, got {self.priority!r}")
        return self

    def score(self, p: PointCost) -> float | None:
        if self.objective == "robust":
            return p.robust
        if self.objective == "clean":
            return p.clean
        if p.robust is None or p.clean is None:
            return None
        return self.weight * p.robust + (1 - self.weight) * p.clean


@dataclass(frozen=True)
class Tuning:
    """How the governor reacts. margin: a point fits when predicted ≤ bound × (1 − margin); confidence: … predicted
    with the slowdown at its upper bound, the filter's estimate + `confidence` × its σ; dwell_s: headroom must last
    this long before a step up; window_s: the observed percentile is taken over this many seconds at the current
    point, from at least `min_samples` requests (and a device the telemetry announced worse counts as unmeasured
    until that many requests finished on it); noise: the slowdown's random-walk drift per √s (relative);
    temp_hysteresis_c: no step up until this far under the ceiling."""

    margin: float = 0.15
    confidence: float = 2.0
    dwell_s: float = 5.0
    window_s: float = 3.0
    min_samples: int = 20
    noise: float = 0.3
    temp_hysteresis_c: float = 3.0

    def check(self) -> Tuning:
        for name, lo, hi in (("margin", 0, 0.9), ("confidence", 0, 10), ("dwell_s", 0, 3600), ("window_s", 0.1, 600),
                             ("noise", 0, 10), ("temp_hysteresis_c", 0, 50)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise GovernorInputError(f"{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int) or self.min_samples < 1:
            raise GovernorInputError(f"min_samples must be an integer ≥ 1, got {self.min_samples!r}")
        return self


# --------------------------------------------------------------------------------------------- observations
class Request(NamedTuple):
    """One completed request: `done` (the caller's clock, seconds), end-to-end seconds, seconds in the model call
    (waiting for a runtime slot included), and where it ran. A named tuple: the server builds one per request."""

    done: float
    e2e_s: float
    service_s: float
    lambda_n: float
    width: float
    batch: int = 1


@dataclass(frozen=True)
class Observation:
    """Everything one decision may use. `requests`: completed requests, oldest first (the governor remembers what
    it has seen: passing the same ones again is harmless). `telemetry`: the latest snapshot as JSON (None: latency
    only). `servers`: requests the runtime runs at once."""

    now: float
    lambda_n: float
    width: float
    requests: Sequence[Request] = ()
    telemetry: Mapping[str, Any] | None = None
    servers: int = 1


@dataclass(frozen=True)
class Choice:
    """A decision: serve (lambda_n, width) — the current point when `switch` is False — because of `limit`
    ("latency", "power", "thermal", "memory", "floor", "headroom", "budget", "objective", "start"), with the
    figures behind it in `detail` and one readable line in `reason`."""

    lambda_n: float
    width: float
    switch: bool
    limit: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


class Slowdown:
    """A scalar Kalman filter on a slowdown factor (random-walk state): `x` the estimate, `p` its variance."""

    def __init__(self, x: float = 1.0, p: float = 1.0, noise: float = 0.05) -> None:
        self.x, self.p, self.noise = float(x), float(p), float(noise)
        self.t: float | None = None

    def predict(self, now: float) -> None:
        if self.t is not None and now > self.t:
            self.p += (self.noise * self.x) ** 2 * (now - self.t)
        self.t = now

    def update(self, z: float, r: float) -> float:
        """Fold in measurement `z` of variance `r`; a jump beyond 3σ re-opens the filter (returns the innovation)."""
        innovation = z - self.x
        if innovation * innovation > 9 * (self.p + r):
            self.p += innovation * innovation
        k = self.p / (self.p + r)
        self.x = max(1e-3, self.x + k * innovation)
        self.p = (1 - k) * self.p
        return innovation

    def reopen(self, scale: float = 1.0) -> None:
        """Telemetry announced a change: shift the prior by `scale` and trust the next measurement."""
        self.x *= scale
        self.p += self.x * self.x

    @property
    def sigma(self) -> float:
        return math.sqrt(max(self.p, 0.0))


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (q in [0, 1]) by linear interpolation between order statistics (numpy's default)."""
    s = sorted(values)
    if not s:
        return math.nan
    pos = (len(s) - 1) * q
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# --------------------------------------------------------------------------------------------- the governor
class Governor:
    def __init__(self, points: Iterable[PointCost], budget: Budget, tuning: Tuning | None = None) -> None:
        self.points = list(points)
        if not self.points:
            raise GovernorInputError("the governor needs at least one operating point")
        self.budget = budget.check()
        self.tuning = (tuning or Tuning()).check()
        missing = [p.label() for p in self.points if self.budget.score(p) is None]
        if missing:
            raise GovernorInputError(f"objective {self.budget.objective!r} needs calibrated accuracy at every point; "
                                     f"none for {', '.join(missing)} (export the bundle with --eval)")
        self.by_key = {p.key: p for p in self.points}
        self.xi_q = Slowdown(noise=self.tuning.noise)
        self.xi_50 = Slowdown(noise=self.tuning.noise)
        self.power_ratio = Slowdown(noise=self.tuning.noise)
        self._seen = -math.inf  # newest request already folded into the filters
        self._since = -math.inf  # requests before this (a telemetry event) no longer describe the device
        self._recent: list[Request] = []  # requests of the last window_s, any point
        self._fixed = 0.0  # the median time outside the model call over them (ms)
        self._cost: dict[tuple, float | None] = {}  # (width, λn, batch) as requests give them → profiled ms
        self._tele: dict[str, Any] = {}  # what the last snapshot said: mode, throttling, cores, clock
        self._throttle_scale = 1.0  # the slowdown assumed when throttling started
        self._switched_at = -math.inf
        self._up_at = -math.inf
        self._backoff = 1
        self._bias: dict[tuple, tuple[float, float]] = {}  # point → (under-prediction of a failed step up, when)
        self._fit_since: dict[tuple, float] = {}  # a point better than the current one → since when it fits
        self._dirty = True  # the budget changed: answer it at the next decision
        self.events: list[str] = []  # telemetry events seen in the last decision
        self._unmeasured: str | None = None  # the worse device the telemetry announced, until requests measure it
        self.status: dict[str, Any] = {}

    # -------------------------------------------------------------------- settings
    def set_budget(self, budget: Budget) -> None:
        budget.check()
        missing = [p.label() for p in self.points if budget.score(p) is None]
        if missing:
            raise GovernorInputError(f"objective {budget.objective!r} needs calibrated accuracy at every point; none "
                                     f"for {', '.join(missing)}")
        self.budget = budget
        self._dirty = True
        self._fit_since = {}

    def set_tuning(self, tuning: Tuning) -> None:
        self.tuning = tuning.check()
        for f in (self.xi_q, self.xi_50, self.power_ratio):
            f.noise = tuning.noise

    # -------------------------------------------------------------------- observing
    def _telemetry(self, snap: Mapping[str, Any] | None) -> tuple[list[str], bool]:
        """Events the snapshot announces since the last one, each re-opening the slowdown filters, and whether one
        of them makes the device worse: throttling started, a power mode with a lower GPU cap (or an unknown one),
        fewer CPU cores online."""
        if not snap:
            return [], False
        cpus = snap.get("cpu") or ()
        now = {"mode": snap.get("mode_id", snap.get("mode")), "throttled": bool(snap.get("throttled")),
               "cores": sum(1 for c in cpus if c and c.get("online", True)) if cpus else None,
               "gpu_mhz": snap.get("gpu_mhz"), "gpu_max_mhz": snap.get("gpu_max_mhz")}
        before, self._tele = self._tele, now
        if not before:
            return [], False
        events, scale, worse = [], 1.0, False
        if now["mode"] != before["mode"]:
            events.append(f"power mode {before['mode']} → {now['mode']}")
            if now["gpu_max_mhz"] and before["gpu_max_mhz"]:
                scale *= before["gpu_max_mhz"] / now["gpu_max_mhz"]
                worse = now["gpu_max_mhz"] < before["gpu_max_mhz"]
            else:
                worse = True  # a mode whose clocks the snapshot does not say: assume the worst until measured
        if now["throttled"] != before["throttled"]:
            reasons = ", ".join(snap.get("throttle_reasons") or ()) or "no reason given"
            events.append(f"throttling {'started' if now['throttled'] else 'ended'} ({reasons})")
            if now["throttled"]:  # the clock under load before and after: how much slower the model will run
                self._throttle_scale = min(4.0, max(1.0, before["gpu_mhz"] / now["gpu_mhz"])) \
                    if now["gpu_mhz"] and before["gpu_mhz"] else 1.0
                scale *= self._throttle_scale
                worse = True
            else:  # undo what the start assumed (the clock now also follows a load that may have stopped)
                scale /= self._throttle_scale
                self._throttle_scale = 1.0
        if now["cores"] is not None and before["cores"] is not None and now["cores"] != before["cores"]:
            events.append(f"online CPU cores {before['cores']} → {now['cores']}")
            worse = worse or now["cores"] < before["cores"]
        if events:
            scale = min(4.0, max(0.25, scale))
            for f in (self.xi_q, self.xi_50):
                f.reopen(scale)
        return events, worse

    def _fold(self, obs: Observation) -> int:
        """Fold the requests not seen yet into the slowdown filters; returns how many were new."""
        fresh = [r for r in obs.requests if r.done > self._seen]
        horizon = obs.now - self.tuning.window_s
        self._recent = [r for r in self._recent if r.done >= horizon] + [r for r in fresh if r.done >= horizon]
        self._fixed = self._fixed_ms()
        for f in (self.xi_q, self.xi_50, self.power_ratio):
            f.predict(obs.now)
        if not fresh:
            return 0
        new = max(r.done for r in fresh)
        fixed = self._fixed
        ratios = []
        for r in self._recent if self._recent else fresh:
            t = self._cost_ms(r)
            if t is not None and r.done > self._since:
                ratios.append(max(r.e2e_s * 1e3 - fixed, 0.05 * t) / t)
        n_new = sum(1 for r in fresh if r.done > self._since)
        self._seen = new
        if ratios and n_new:
            q = self.budget.percentile / 100
            # the window's quantile (a high quantile of a few samples is biased low); its standard error, for a tail
            # of scale s ≈ (z_q − z_50) / ln(0.5 / (1 − q)), is about s / √(n·(1 − q)), n·(1−q) the samples beyond it
            # — n counting only the requests new since the last decision: the windows of successive decisions
            # overlap, and the filter must not hear the same request again at every (short) control period
            zq, z50 = quantile(ratios, q), quantile(ratios, 0.5)
            scale = (zq - z50) / math.log(0.5 / (1 - q))
            n = min(n_new, len(ratios))
            self.xi_q.update(zq, (scale ** 2 + (0.02 * zq) ** 2) / (n * (1 - q)))
            self.xi_50.update(z50, ((0.1 * z50) ** 2) / n)
        return len(fresh)

    def _cost_ms(self, r: Request) -> float | None:
        """The profiled latency of the point and batch `r` ran at (None: not a profiled point), looked up once."""
        k = (r.width, r.lambda_n, r.batch)
        if k not in self._cost:
            p = self.by_key.get((round(r.width, 6), round(r.lambda_n, 6)))
            self._cost[k] = None if p is None else p.compute_ms(r.batch)
        return self._cost[k]

    # -------------------------------------------------------------------- predicting
    def _fixed_ms(self) -> float:
        """The fixed part of what the server adds outside the model call (HTTP, decoding): the median over the
        window. What lies beyond it — waiting for a thread or a runtime slot — grows with the point's cost and is
        part of the slowdown."""
        return quantile([max(0.0, r.e2e_s - r.service_s) * 1e3 for r in self._recent], 0.5) if self._recent else 0.0

    def _window(self, obs: Observation) -> dict[str, Any]:
        """What the last window_s shows: the overhead outside the model, the arrival rate, the mean batch, and the
        observed percentile at the current point (only requests finished after the last switch)."""
        q = self.budget.percentile / 100
        recent = self._recent
        here = [r for r in recent if r.done > self._switched_at and math.isclose(r.width, obs.width)
                and math.isclose(r.lambda_n, obs.lambda_n)]
        out: dict[str, Any] = {"n": len(recent), "n_here": len(here)}
        if recent:
            arrivals = [r.done - r.e2e_s for r in recent]
            span = max(obs.now - min(arrivals), 1e-3)
            out["rate"] = len(recent) / max(span, self.tuning.window_s * 0.5)
            out["overhead_ms"] = self._fixed
            out["batch"] = sum(r.batch for r in recent) / len(recent)
            service = quantile([r.service_s for r in recent], 0.5)
            out["utilisation"] = out["rate"] * service / max(1, obs.servers)
        else:
            out.update(rate=0.0, overhead_ms=0.0, batch=1.0, utilisation=0.0)
        if len(here) >= self.tuning.min_samples:
            out["observed_ms"] = quantile([r.e2e_s * 1e3 for r in here], q)
        return out

    def predict(self, p: PointCost, win: Mapping[str, Any], cur: PointCost | None = None, now: float = 0.0,
                xi: float | None = None) -> float:
        """Predicted end-to-end latency (ms) of `p` at the budget's percentile: the fixed overhead plus the slowdown
        (the filter's estimate, or `xi`) times the profiled latency at the recent batch, times what a failed step up
        to `p` taught (`_bias`). For a
        point dearer than the current one the queueing grows as in an M/M/1 queue, 1/(1 − u), u the utilisation
        from the arrival rate and the median model-call time (a median, so a backlog's waits barely move it);
        saturated (inf) from u = 0.95."""
        b = win["batch"]
        model = (self.xi_q.x if xi is None else xi) * p.compute_ms(b) * self._bias_at(p.key, now)
        if cur is not None and p.compute_ms(b) > cur.compute_ms(b):
            u_now = min(win["utilisation"], 0.9)
            u_p = u_now * p.compute_ms(b) / cur.compute_ms(b)
            if u_p >= 0.95:
                return math.inf
            model *= (1 - u_now) / (1 - u_p)
        return win["overhead_ms"] + model

    def _bias_at(self, key: tuple, now: float) -> float:
        """How much a failed step up to this point was under-predicted, decaying by half every BIAS_HALF_LIFE_S."""
        if key not in self._bias:
            return 1.0
        miss, at = self._bias[key]
        return 1.0 + (miss - 1.0) * 0.5 ** (max(0.0, now - at) / BIAS_HALF_LIFE_S)

    def predict_power(self, p: PointCost) -> float | None:
        return None if p.power_w is None else p.power_w * self.power_ratio.x

    # -------------------------------------------------------------------- deciding
    def decide(self, obs: Observation) -> Choice:
        bud, tun = self.budget, self.tuning
        cur = self.by_key.get((round(obs.width, 6), round(obs.lambda_n, 6)))
        self.events, worse = self._telemetry(obs.telemetry)
        if self.events:  # what finished before the change shows the old device: the filters start from the prior
            self._seen = max([self._seen, *(r.done for r in obs.requests)])
            self._since = self._switched_at = obs.now  # and the observed percentile restarts
            self._fit_since = {}  # headroom seen on the old device does not count
            self._backoff, self._bias = 1, {}  # nor do failed probes
            self._unmeasured = "; ".join(self.events) if worse else None
        self._fold(obs)
        win = self._window(obs)
        if self._unmeasured and sum(1 for r in self._recent if r.done > self._since) >= tun.min_samples:
            self._unmeasured = None  # the changed device has been measured
        snap = obs.telemetry or {}
        # power: measured over predicted at the current point
        watts = snap.get("power_total_mw")
        watts = None if watts is None else watts / 1e3
        if watts is not None and cur is not None and cur.power_w:
            self.power_ratio.update(watts / cur.power_w, (0.05 * watts / cur.power_w) ** 2)
        temps = [float(v) for v in (snap.get("temps_c") or {}).values() if isinstance(v, (int, float))]
        temp = max(temps) if temps else None
        free = None
        if snap.get("ram_total_mb") is not None and snap.get("ram_used_mb") is not None:
            free = float(snap["ram_total_mb"]) - float(snap["ram_used_mb"])

        # the latency at the slowdown's estimate (`pred`) and at its upper bound (`upper`, the estimate + confidence
        # × σ, the way ALERT uses its filter's variance): a step up is judged at the estimate (the dwell guards it), a
        # step down — and anything on a device the telemetry announced worse and no request has measured yet — at the
        # upper bound, so that one step is enough
        xi_hi = self.xi_q.x + tun.confidence * self.xi_q.sigma
        pred = {p.key: self.predict(p, win, cur, obs.now) for p in self.points}
        upper = {p.key: self.predict(p, win, cur, obs.now, xi_hi) for p in self.points}
        bound = bud.latency_ms
        observed = win.get("observed_ms")
        over = bool(bound) and cur is not None and observed is not None and observed > bound
        if over and math.isfinite(pred[cur.key]) and pred[cur.key] > win["overhead_ms"]:
            # observed worse than the model says here: scale every point's model part by the miss before choosing
            miss = (observed - win["overhead_ms"]) / (pred[cur.key] - win["overhead_ms"])
            if miss > 1:
                pred, upper = ({k: win["overhead_ms"] + (v - win["overhead_ms"]) * miss for k, v in d.items()}
                               for d in (pred, upper))
        fit_ms = bound * (1 - tun.margin) if bound else math.inf
        with_power = all(p.power_w is not None for p in self.points)
        cost = {p.key: (self.predict_power(p) if with_power else p.compute_ms(1.0)) for p in self.points}
        rss = {p.key: p.rss_mb or 0.0 for p in self.points}
        hot = bud.temp_c is not None and temp is not None and cur is not None
        short = bud.mem_free_mb is not None and free is not None and free < bud.mem_free_mb and cur is not None

        def relief(p: PointCost, measure: Mapping[tuple, float]) -> bool:
            """`p` costs less than the current point by `measure`, or nothing does and it is the cheapest."""
            return measure[p.key] < measure[cur.key] or (p.key == cur.key and
                                                         min(measure.values()) >= measure[cur.key])

        watts_over = bool(bud.power_w) and watts is not None and cur is not None and cur.power_w is not None \
            and watts > bud.power_w

        def misses(p: PointCost) -> str | None:
            """The first limit `p` does not meet with the margin, or None."""
            if judge[p.key] > fit_ms:
                return "latency"
            if over and p.compute_ms(win["batch"]) >= cur.compute_ms(win["batch"]):
                return "latency"  # observed over the bound here: whatever the model says, nothing as slow fits
            pw = self.predict_power(p)
            if bud.power_w and pw is not None and pw > bud.power_w * (1 - tun.margin):
                return "power"
            if watts_over and (pw is None or pw >= self.predict_power(cur)):
                return "power"  # measured over the cap here: only points that draw less
            if hot and temp >= bud.temp_c and not relief(p, cost):
                return "thermal"  # at the ceiling: only cheaper points
            if hot and temp >= bud.temp_c - tun.temp_hysteresis_c and cost[p.key] > cost[cur.key]:
                return "thermal"  # near it: no step up
            if short and not relief(p, rss):
                return "memory"  # under the memory floor: only points that hold less
            return None

        def fits(p: PointCost) -> bool:
            return misses(p) is None

        judge = pred

        # -- is the budget broken at the current point?
        broken: list[tuple[str, str]] = []
        if cur is None:
            broken.append(("start", f"the current point λn={obs.lambda_n:g} w={obs.width:g} is not a profiled point"))
        else:
            if over:
                broken.append(("latency", f"observed p{bud.percentile:g} {observed:.1f} ms > bound {bound:g} ms"))
            elif bound and pred[cur.key] > bound:
                broken.append(("latency", f"predicted p{bud.percentile:g} {pred[cur.key]:.1f} ms > bound {bound:g} ms"))
            elif bound and self._unmeasured and upper[cur.key] > bound:
                broken.append(("latency", f"{self._unmeasured}: until {tun.min_samples} requests measure the device, "
                                          f"the slowdown is taken at its upper bound {xi_hi:.2f}, and there p"
                                          f"{bud.percentile:g} is predicted {self._fmt(upper[cur.key])} > bound "
                                          f"{bound:g} ms"))
            if bud.power_w and watts is not None and watts > bud.power_w:
                broken.append(("power", f"power {watts:.2f} W > cap {bud.power_w:g} W"))
            if bud.temp_c is not None and temp is not None and temp >= bud.temp_c:
                broken.append(("thermal", f"temperature {temp:.1f} °C ≥ ceiling {bud.temp_c:g} °C"))
            if bud.mem_free_mb is not None and free is not None and free < bud.mem_free_mb:
                broken.append(("memory", f"free memory {free:.0f} MB < floor {bud.mem_free_mb:g} MB"))

        # -- the target: the best feasible point, honouring the floor while the budget allows
        judge = upper if broken or self._unmeasured else pred  # and no step up onto a device not yet measured
        floor_pts = [p for p in self.points if p.lambda_n >= bud.floor - 1e-9]
        notes: list[str] = []
        feasible_floor = [p for p in floor_pts if fits(p)]
        feasible_all = [p for p in self.points if fits(p)]
        violation = False
        if feasible_floor:
            target = self._best(feasible_floor, pred)
        elif not floor_pts:
            target = self._best(feasible_all, pred) if feasible_all else self._fastest(self.points, pred)
            violation = not feasible_all
            notes.append(f"no point has λn ≥ {bud.floor:g}")
        elif bud.priority == "slo" and feasible_all:
            target = self._best(feasible_all, pred)
            notes.append(f"the floor λn ≥ {bud.floor:g} cannot be met within the budget (fastest point at the floor, "
                         f"{self._fastest(floor_pts, pred).label()}, predicted {self._fmt(pred[self._fastest(floor_pts, pred).key])}); "
                         f"serving below it")
        else:
            pool = floor_pts if bud.priority == "floor" else self.points
            target = self._fastest(pool, pred)
            violation = True
            notes.append(f"no point meets the budget: the fastest{' at the floor' if pool is floor_pts else ''}, "
                         f"{target.label()}, is predicted {self._fmt(pred[target.key])} against {self._bound_text()}; "
                         f"serving it")
        if cur is not None and cur.lambda_n < bud.floor - 1e-9 and target.lambda_n >= bud.floor - 1e-9:
            broken.append(("floor", f"λn={cur.lambda_n:g} is under the floor {bud.floor:g}"))

        detail = {"bound_ms": bound or None, "percentile": bud.percentile,
                  "observed_ms": None if observed is None else round(observed, 3),
                  "predicted_ms": None if cur is None else self._round(pred[cur.key]),
                  "target_predicted_ms": self._round(pred[target.key]),
                  "target_upper_ms": self._round(upper[target.key]),
                  "slowdown": round(self.xi_q.x, 4), "slowdown_sigma": round(self.xi_q.sigma, 4),
                  "slowdown_upper": round(xi_hi, 4), "unmeasured": bool(self._unmeasured),
                  "slowdown_p50": round(self.xi_50.x, 4), "overhead_ms": round(win["overhead_ms"], 3),
                  "rate_per_s": round(win["rate"], 2), "utilisation": round(win["utilisation"], 3),
                  "samples": win["n_here"], "violation": violation,
                  "telemetry": "latency only (no telemetry)" if not obs.telemetry else "snapshot"}
        if watts is not None:
            detail["power_w"] = round(watts, 3)
        if temp is not None:
            detail["temperature_c"] = temp
        if free is not None:
            detail["free_mb"] = round(free)
        if self.events:
            detail["events"] = list(self.events)
        self.status = {"point": None if cur is None else cur.label(), "target": target.label(), **detail,
                       "predicted": [{"lambda_n": p.lambda_n, "width": p.width, "ms": self._round(pred[p.key]),
                                      "upper_ms": self._round(upper[p.key]), "fits": fits(p)} for p in self.points],
                       "notes": notes,
                       "budget": self.budget_dict(), "dwell_s": tun.dwell_s * self._backoff}
        here = cur is not None and target.key == cur.key
        tail = ("; " + "; ".join(notes)) if notes else ""

        # -- hysteresis
        if broken and not here:
            limit, why = broken[0]
            if self._up_at > self._switched_at - 1e-9 and obs.now - self._up_at < tun.dwell_s * self._backoff:
                self._backoff = min(MAX_BACKOFF, self._backoff * 2)  # the last step up did not hold
                if limit == "latency" and observed is not None and cur is not None:  # remember by how much it erred
                    plain = self.predict(cur, win) - win["overhead_ms"]
                    if plain > 0:
                        miss = max(1.0, (observed - win["overhead_ms"]) / plain)
                        self._bias[cur.key] = (max(miss, self._bias_at(cur.key, obs.now)), obs.now)
            return self._switch(obs, target, limit, f"{why}: → {target.label()} (predicted "
                                                    f"{self._fmt(pred[target.key])}, {self._fmt(upper[target.key])} "
                                                    f"at the slowdown's upper bound){tail}", detail)
        if here:
            self._fit_since = {}
            if self._dirty:
                self._dirty = False
            if obs.now - self._up_at > 4 * tun.dwell_s * self._backoff:
                self._backoff = 1
            limit = broken[0][0] if broken else ("budget" if violation else "hold")
            why = broken[0][1] if broken else f"{target.label()} is the best point that fits"
            return Choice(cur.lambda_n, cur.width, False, limit, why + tail, detail)
        better = cur is None or self._rank(target, pred) > self._rank(cur, pred)
        if not better:
            self._fit_since = {}
            # the current point holds (not broken) but is not the best feasible: stay unless the operator asked
            if self._dirty:
                self._dirty = False
                limit = misses(cur) or "objective"
                return self._switch(obs, target, limit, f"{cur.label()} does not meet the {limit} limit with the "
                                                        f"{tun.margin:.0%} margin: → {target.label()} (predicted "
                                                        f"{self._fmt(pred[target.key])}){tail}", detail)
            return Choice(cur.lambda_n, cur.width, False, "hold", f"{cur.label()} still meets the budget "
                          f"(predicted {self._fmt(pred[cur.key])}){tail}", detail)
        if self._dirty:  # the operator changed the budget: answered now, not after a dwell
            self._dirty = False
            return self._switch(obs, target, "objective", f"budget changed: → {target.label()} (predicted "
                                                          f"{self._fmt(pred[target.key])}){tail}", detail)
        # the dwell, per point: each better point must have fitted without interruption for it (a target that
        # flips between two better points, as estimates near a border do, restarts neither's clock)
        ups = [p for p in self.points if fits(p) and (cur is None or self._rank(p, pred) > self._rank(cur, pred))]
        self._fit_since = {p.key: self._fit_since.get(p.key, obs.now) for p in ups}
        dwell = tun.dwell_s * self._backoff
        # a dearer point fitting means a cheaper one would have too: each clock runs from the earliest of its own and
        # those of the dearer points (so two λn of one width, a hair apart in profiled cost, share one)
        b = win["batch"]
        since_at = {p.key: min(self._fit_since[q.key] for q in ups if q.compute_ms(b) >= p.compute_ms(b)) for p in ups}
        held = [p for p in ups if obs.now - since_at[p.key] + 1e-9 >= dwell]
        if held:
            target = self._best(held, pred)
        since = obs.now - since_at[target.key]
        detail["headroom_s"] = round(since, 3)
        if held:
            self._up_at = obs.now
            keep = {p.key: self._fit_since[p.key] for p in ups if self._rank(p, pred) > self._rank(target, pred)}
            up = self._switch(obs, target, "headroom", f"headroom for {since:.1f} s ≥ dwell {dwell:g} s: → "
                                                       f"{target.label()} (predicted {self._fmt(pred[target.key])}, "
                                                       f"{self._fmt(upper[target.key])} at the slowdown's upper "
                                                       f"bound, against {self._bound_text()}){tail}", detail)
            self._fit_since = keep  # a better point's clock runs on through a step up to a lesser one
            return up
        return Choice(cur.lambda_n, cur.width, False, "headroom", f"{target.label()} fits (predicted "
                      f"{self._fmt(pred[target.key])}) for {since:.1f} s of the {dwell:g} s dwell{tail}", detail)

    # -------------------------------------------------------------------- helpers
    def _switch(self, obs: Observation, target: PointCost, limit: str, reason: str, detail: dict) -> Choice:
        self._switched_at = obs.now
        self._fit_since = {}
        self._dirty = False
        return Choice(target.lambda_n, target.width, True, limit, reason, detail)

    def _rank(self, p: PointCost, pred: Mapping[tuple, float]) -> tuple[float, float]:
        s = self.budget.score(p)
        return (-math.inf if s is None else s, -p.compute_ms(1.0))

    def _best(self, pts: Sequence[PointCost], pred: Mapping[tuple, float]) -> PointCost:
        return max(pts, key=lambda p: self._rank(p, pred))

    def _fastest(self, pts: Sequence[PointCost], pred: Mapping[tuple, float]) -> PointCost:
        return min(pts, key=lambda p: (pred[p.key], p.compute_ms(1.0), -(self.budget.score(p) or 0)))

    def _bound_text(self) -> str:
        b = self.budget
        parts = [f"p{b.percentile:g} ≤ {b.latency_ms:g} ms"] if b.latency_ms else []
        if b.power_w:
            parts.append(f"≤ {b.power_w:g} W")
        return ", ".join(parts) or "no latency bound"

    @staticmethod
    def _fmt(ms: float) -> str:
        return "saturated" if math.isinf(ms) else f"{ms:.1f} ms"

    @staticmethod
    def _round(ms: float) -> float | None:
        return None if math.isinf(ms) else round(ms, 3)

    def budget_dict(self) -> dict[str, Any]:
        b = self.budget
        return {"latency_ms": b.latency_ms, "percentile": b.percentile, "power_w": b.power_w, "temp_c": b.temp_c,
                "mem_free_mb": b.mem_free_mb, "objective": b.objective, "weight": b.weight, "floor": b.floor,
                "priority": b.priority}


BUDGET_KEYS = tuple(f for f in Budget.__dataclass_fields__)
TUNING_KEYS = tuple(f for f in Tuning.__dataclass_fields__)


def split_params(params: Mapping[str, Any], budget: Budget, tuning: Tuning) -> tuple[Budget, Tuning, dict[str, Any]]:
    """Apply `params` (budget and tuning keys, by name) to copies of `budget` and `tuning`; the rest is returned."""
    b = {k: v for k, v in params.items() if k in BUDGET_KEYS}
    t = {k: v for k, v in params.items() if k in TUNING_KEYS}
    rest = {k: v for k, v in params.items() if k not in BUDGET_KEYS and k not in TUNING_KEYS}
    for name in ("power_w", "temp_c", "mem_free_mb"):  # 0 or "" turns a limit off
        if name in b and b[name] in (0, "", None):
            b[name] = None
    return replace(budget, **b).check(), replace(tuning, **t).check(), rest


__all__ = ["Budget", "Choice", "Governor", "GovernorInputError", "Observation", "PointCost", "Request", "Slowdown",
           "Tuning", "points_from_profile", "quantile", "split_params", "BUDGET_KEYS", "TUNING_KEYS"]
