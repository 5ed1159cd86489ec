"""Thermal zones: `/sys/devices/virtual/thermal/thermal_zone*/{type,temp}` and their trip points.

`temp` is in millidegrees; −256000 (tegrastats prints `-256C`) means the sensor is offline (jtop's
`temperature.py` treats it so; AGX Orin shows CV0/CV1/GPU at −256 C when they are power-gated, GDWR/jetson_exporter#14),
and Orin's `cv*-thermal` files can fail with EAGAIN while the DLA is off — both read here as offline, never as a
number. Trip points (`trip_point_{i}_temp`, `trip_point_{i}_type`: passive, active, hot, critical) are read
when the zones are found: a passive trip is where the kernel starts cooling by slowing clocks (on Orin, the
`*-sw-throttle` trips at 99 °C of tegra234.dtsi), which is what `throttle.py` compares against.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .sysfs import listdir, read_int, read_text, under

OFFLINE_MC = -256000
ZONE_DIRS = ("sys/devices/virtual/thermal", "sys/class/thermal")


@dataclass(frozen=True)
class Trip:
    temp_c: float
    type: str


@dataclass(frozen=True)
class ZoneSource:
    name: str
    dir: str
    trips: tuple[Trip, ...] = ()


@dataclass(frozen=True)
class Zone:
    name: str
    temp_c: float | None  # None: offline or unreadable
    trips: tuple[Trip, ...] = ()

    @property
    def online(self) -> bool:
        return self.temp_c is not None

    @property
    def passive_c(self) -> float | None:
        """The lowest passive trip, where the kernel starts slowing clocks; None when the zone has none."""
        passive = [t.temp_c for t in self.trips if t.type == "passive"]
        return min(passive) if passive else None


def find_zones(root: str = "/") -> list[ZoneSource]:
    for rel in ZONE_DIRS:
        base = under(root, rel)
        zones = [z for z in listdir(base) if z.startswith("thermal_zone")]
        if zones:
            return [_source(os.path.join(base, z)) for z in zones]
    return []


def _source(d: str) -> ZoneSource:
    trips = []
    i = 0
    while True:
        t = read_int(f"{d}/trip_point_{i}_temp")
        kind = read_text(f"{d}/trip_point_{i}_type")
        if t is None and kind is None:
            break
        if t is not None and kind:
            trips.append(Trip(t / 1000.0, kind))
        i += 1
    return ZoneSource(read_text(f"{d}/type") or os.path.basename(d), d, tuple(trips))


def read_zone(src: ZoneSource) -> Zone:
    mc = read_int(f"{src.dir}/temp")
    temp = None if mc is None or mc <= OFFLINE_MC else mc / 1000.0
    return Zone(src.name, temp, src.trips)


def read_thermal(root: str = "/", sources: list[ZoneSource] | None = None) -> list[Zone]:
    return [read_zone(s) for s in (find_zones(root) if sources is None else sources)]
