"""Power rails from the INA3221 monitors, read the two ways JetPack exposes them.

Found as jtop finds them (jetson_stats `jtop/core/power.py`): every `/sys/bus/i2c/devices/*` whose `name` says
`ina3221` (`ina3221x` on JetPack 4), then

* JetPack 5+ (hwmon): `hwmon/hwmon*/in{N}_label` names channel N; `in{N}_input` mV, `curr{N}_input` mA,
  `curr{N}_max` (warning) and `curr{N}_crit` mA, `curr{N}_crit_alarm`; power = mV·mA/1000;
* JetPack ≤ 4 (iio): `iio:device*/rail_name_{N}`; `in_power{N}_input` mW, `in_voltage{N}_input` mV,
  `in_current{N}_input` mA, `warn_current_limit_{N}`, `crit_current_limit_{N}` (these may read "32760 ma").

Channels labelled `NC` (not connected, AGX Orin) and the 'sum of shunt voltages' channel (in7) are skipped. The
total is the input rail (`VDD_IN`, Nano's `POM_5V_IN`) when the board has one, else the sum of the rails (AGX
Xavier/Orin/Thor have no input rail; jtop's `total_power` does the same).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .sysfs import listdir, read_int, read_text, under

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


@dataclass(frozen=True)
class RailSource:
    name: str
    kind: str  # "hwmon" or "iio"
    dir: str
    index: int
    warn_ma: int | None = None
    crit_ma: int | None = None


@dataclass(frozen=True)
class Rail:
    name: str
    mw: float | None
    mv: float | None = None
    ma: float | None = None
    warn_ma: int | None = None
    crit_ma: int | None = None
    crit_alarm: bool | None = None


@dataclass(frozen=True)
class Power:
    rails: tuple[Rail, ...]
    total_mw: float | None
    total_from: str  # the input rail's name, "sum", or "" when nothing was read

    def by_name(self) -> dict[str, float]:
        return {r.name: r.mw for r in self.rails if r.mw is not None}


def _skipped(label: str) -> bool:
    return label.upper() == "NC" or label.upper().startswith("NC ") or "sum of shunt" in label.lower()


def find_rails(root: str = "/") -> list[RailSource]:
    """Every rail channel of every INA3221 under `root` (empty on a machine without one)."""
    out: list[RailSource] = []
    base = under(root, "sys/bus/i2c/devices")
    for dev in listdir(base):
        path = os.path.join(base, dev)
        name = read_text(os.path.join(path, "name")) or ""
        if not name.lower().startswith("ina3221"):
            continue
        for sub in listdir(path):
            if sub == "hwmon":
                for hw in listdir(os.path.join(path, "hwmon")):
                    out += _channels(os.path.join(path, "hwmon", hw), "hwmon")
            elif sub.startswith("iio:device"):
                out += _channels(os.path.join(path, sub), "iio")
    return out


# The two layouts of an INA3221 channel: hwmon (JetPack 5+) and iio (JetPack 4): label file, and the files of its
# warn/crit current limits (N = the channel's index).
_LAYOUTS = {
    "hwmon": (r"in(\d+)_label", "curr{n}_max", "curr{n}_crit"),
    "iio": (r"rail_name_(\d+)", "warn_current_limit_{n}", "crit_current_limit_{n}"),
}


def _channels(d: str, kind: str) -> list[RailSource]:
    label_re, warn, crit = _LAYOUTS[kind]
    out = []
    for f in listdir(d):
        m = re.fullmatch(label_re, f)
        if not m:
            continue
        label = read_text(os.path.join(d, f))
        if not label or _skipped(label):
            continue
        n = int(m.group(1))
        out.append(RailSource(label, kind, d, n, read_int(os.path.join(d, warn.format(n=n))),
                              read_int(os.path.join(d, crit.format(n=n)))))
    return out


def read_rail(src: RailSource) -> Rail:
    """One rail now; values that cannot be read are None (the rail stays listed)."""
    d, n = src.dir, src.index
    if src.kind == "hwmon":
        mv, ma = read_int(f"{d}/in{n}_input"), read_int(f"{d}/curr{n}_input")
        mw = mv * ma / 1000.0 if mv is not None and ma is not None else None
        alarm = read_int(f"{d}/curr{n}_crit_alarm")
    else:
        mw, mv, ma = (read_int(f"{d}/{k}{n}_input") for k in ("in_power", "in_voltage", "in_current"))
        if mw is None and mv is not None and ma is not None:
            mw = mv * ma / 1000.0
        alarm = None
    return Rail(src.name, None if mw is None else float(mw), mv, ma, src.warn_ma, src.crit_ma,
                None if alarm is None else bool(alarm))


def total(rails: dict[str, float]) -> tuple[float | None, str]:
    """(total mW, where it came from): the input rail, else the sum of the rails."""
    for name in INPUT_RAILS:
        if name in rails:
            return rails[name], name
    return (float(sum(rails.values())), "sum") if rails else (None, "")


def read_power(root: str = "/", sources: list[RailSource] | None = None) -> Power:
    rails = tuple(read_rail(s) for s in (find_rails(root) if sources is None else sources))
    tot, frm = total({r.name: r.mw for r in rails if r.mw is not None})
    return Power(rails, tot, frm)
