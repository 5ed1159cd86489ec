"""A small discrete-event server for the governor's tests: Poisson arrivals, `servers` FIFO slots, service time =
profiled latency × a slowdown trace × log-normal noise, plus a server overhead. Drives any policy that takes
`decide(Observation) -> Choice` every `period` seconds and applies its switches at once."""
from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from floatedge.daemon.governor import Observation, PointCost, Request

# three widths × λ_n 0, 0.7, 1: wider and more robust is slower to compute only through width
WIDTH_MS = {1.0: 8.0, 0.75: 5.6, 0.5: 2.7}
RA = {1.0: 40.0, 0.75: 36.0, 0.5: 30.0}
CA = {1.0: 80.0, 0.75: 76.0, 0.5: 70.0}


def synthetic_points(power: bool = False) -> list[PointCost]:
    out = []
    for w, ms in WIDTH_MS.items():
        for lam in (0.0, 0.7, 1.0):
            out.append(PointCost(lam, w, CA[w] - 8 * lam, RA[w] * (0.3 + 0.7 * lam), ((1, ms), (8, ms * 6)),
                                 (2.0 + 6.0 * w) if power else None, 100 + 200 * w))
    return out


@dataclass
class Run:
    times: list[float] = field(default_factory=list)  # control period ends
    points: list[tuple[float, float]] = field(default_factory=list)  # (λn, width) after each decision
    choices: list = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def switches(self) -> list[float]:
        return [c_t for c_t, c in zip(self.times, self.choices, strict=True) if c.switch]


def simulate(policy, slowdown: Callable[[float], float], seconds: float, rate: float = 60.0, servers: int = 2,
             period: float = 0.5, seed: int = 0, start: tuple[float, float] = (1.0, 1.0), noise: float = 0.15,
             overhead_ms: float = 0.8, telemetry: Callable[[float], dict | None] | None = None,
             points: list[PointCost] | None = None, on_tick: Callable[[float, object], None] | None = None) -> Run:
    rng = np.random.default_rng(seed)
    pts = {(p.width, p.lambda_n): p for p in (points or synthetic_points())}
    point = start
    free = [0.0] * servers  # when each slot frees up
    heapq.heapify(free)
    t_arr = 0.0
    pending: list[Request] = []
    run = Run()
    tick = period
    while tick <= seconds + 1e-9:
        # every arrival before this tick is served at the point current when it arrives
        while True:
            gap = rng.exponential(1.0 / rate)
            if t_arr + gap > tick:
                break  # memoryless: the next period draws its arrivals afresh from the tick
            t_arr += gap
            p = pts[(point[1], point[0])]
            svc = p.compute_ms(1) / 1e3 * slowdown(t_arr) * math.exp(rng.normal(0, noise))
            slot = heapq.heappop(free)
            start_t = max(t_arr, slot)
            done = start_t + svc
            heapq.heappush(free, done)
            over = overhead_ms / 1e3 * (1 + rng.exponential(0.3))
            pending.append(Request(done + over, done + over - t_arr, done - t_arr, point[0], point[1], 1))
        finished = [r for r in pending if r.done <= tick]
        pending = [r for r in pending if r.done > tick]
        run.requests += finished
        obs = Observation(tick, point[0], point[1], tuple(finished), telemetry(tick) if telemetry else None, servers)
        choice = policy.decide(obs)
        if on_tick:
            on_tick(tick, policy)
        if choice.switch:
            point = (choice.lambda_n, choice.width)
        run.times.append(tick)
        run.points.append(point)
        run.choices.append(choice)
        t_arr = tick
        tick += period
    return run


def violation_share(run: Run, bound_ms: float) -> float:
    if not run.requests:
        return 0.0
    return sum(r.e2e_s * 1e3 > bound_ms for r in run.requests) / len(run.requests)
