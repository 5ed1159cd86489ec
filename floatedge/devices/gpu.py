"""The integrated GPU through devfreq: load, current/min/max clock.

`/sys/class/devfreq/<gpu>` (a link to the device's `devfreq/<gpu>` directory) holds `cur_freq`, `min_freq`,
`max_freq` and `available_frequencies` in Hz; nvpmodel writes the mode's cap into `max_freq` and jetson_clocks
raises `min_freq` to it. The load is the GPU device's `load` file in per mille (jtop `gpu.py` divides by 10):
`<devfreq>/device/load`, i.e. `/sys/devices/gpu.0/load` on a Nano, `/sys/devices/platform/gpu.0/load` or
`…/bus@0/17000000.gpu/load` on Orin (jetson_stats#360, #556). The GPU's devfreq name differs per SoC and JetPack:
57000000.gpu (Nano), 17000000.gp10b (TX2), 17000000.gv11b (Xavier), 17000000.ga10b (Orin, JP5),
17000000.gpu (Orin, JP6), gpu-gpc-0 (Thor).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .sysfs import listdir, read_int, read_text, under

GPU_NAME = re.compile(r"gpu|gp10b|gv11b|ga10b|gb10b|gm20b", re.I)
LOAD_FALLBACKS = ("sys/devices/gpu.0/load", "sys/devices/platform/gpu.0/load")


@dataclass(frozen=True)
class GpuSource:
    name: str
    devfreq: str
    load: str | None


@dataclass(frozen=True)
class Gpu:
    name: str
    load_pct: float | None
    cur_mhz: float | None
    min_mhz: float | None
    max_mhz: float | None
    available_mhz: tuple[float, ...] = ()


def find_gpu(root: str = "/") -> GpuSource | None:
    base = under(root, "sys/class/devfreq")
    for name in listdir(base):
        if not GPU_NAME.search(name):
            continue
        d = os.path.join(base, name)
        load = os.path.join(d, "device", "load")
        if not os.path.exists(load):
            load = next((str(under(root, p)) for p in LOAD_FALLBACKS if under(root, p).exists()), None)
        return GpuSource(name, d, load)
    return None


def _mhz(path: str) -> float | None:
    hz = read_int(path)
    return None if hz is None else hz / 1e6


def read_gpu(root: str = "/", source: GpuSource | None = None, full: bool = False) -> Gpu | None:
    """The GPU now (None when no GPU devfreq is found). `full` also reads the frequency table."""
    src = source or find_gpu(root)
    if src is None:
        return None
    per_mille = read_int(src.load) if src.load else None
    avail = ()
    if full:
        avail = tuple(int(v) / 1e6 for v in (read_text(f"{src.devfreq}/available_frequencies") or "").split() if v.isdigit())
    return Gpu(src.name, None if per_mille is None else per_mille / 10.0, _mhz(f"{src.devfreq}/cur_freq"),
               _mhz(f"{src.devfreq}/min_freq"), _mhz(f"{src.devfreq}/max_freq"), avail)
