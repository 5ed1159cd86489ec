"""Throttling, inferred — Jetsons publish no "throttled" flag (jtop has none either, daemon.md §4).

The rule, and why:

1. **thermal**: an online zone at or above its lowest *passive* trip point. Passive trips are where the kernel's
   thermal framework starts cooling by lowering clocks (tegra234.dtsi: `*-sw-throttle`, passive, 99 °C), so above
   one the clocks are being held down by definition. Zones without a passive trip (PMIC-Die reads a constant
   100 °C on older modules) are never counted.
2. **clock**: the GPU is loaded (≥ `LOADED_PCT`) yet runs below `HELD_FRACTION` of the clock the power mode allows.
   devfreq's governor raises the clock with sustained load, so a busy GPU held well under its mode's cap is being
   capped by something else (soctherm, an over-current event, a co-runner's EMC pressure). "Allowed" is the mode's
   GPU cap (`GPU MAX_FREQ` in nvpmodel.conf) when known, else devfreq's `max_freq`.
3. **over-current**: an INA3221 channel raised `curr*_crit_alarm` (JetPack 5+ hwmon); the board's over-current
   protection throttles then.

Each reason names its evidence, so a governor can log why it stepped down. A single sample decides; the sampler's
history is there for anyone who wants hysteresis.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

LOADED_PCT = 80.0
HELD_FRACTION = 0.85


@dataclass(frozen=True)
class Throttle:
    active: bool
    reasons: tuple[str, ...] = ()


def infer(zones: Iterable = (), gpu_load_pct: float | None = None, gpu_mhz: float | None = None,
          allowed_mhz: float | None = None, rails: Iterable = ()) -> Throttle:
    """Zones (`thermal.Zone`), GPU load and clock, the clock the mode allows, rails (`power.Rail`) → Throttle."""
    reasons = []
    for z in zones:
        passive = z.passive_c
        if z.temp_c is not None and passive is not None and z.temp_c >= passive:
            reasons.append(f"thermal: {z.name} {z.temp_c:.1f} °C ≥ passive trip {passive:.1f} °C")
    if (gpu_load_pct is not None and gpu_mhz is not None and allowed_mhz and gpu_load_pct >= LOADED_PCT
            and gpu_mhz < HELD_FRACTION * allowed_mhz):
        reasons.append(f"clock: GPU {gpu_load_pct:.0f}% busy at {gpu_mhz:.0f} MHz < {HELD_FRACTION:.0%} of the "
                       f"{allowed_mhz:.0f} MHz the mode allows")
    for r in rails:
        if getattr(r, "crit_alarm", None):
            reasons.append(f"over-current: {r.name} critical-current alarm")
    return Throttle(bool(reasons), tuple(reasons))
