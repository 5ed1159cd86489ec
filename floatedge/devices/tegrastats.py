"""tegrastats lines → numbers, for every format from JetPack 3.x to 7.2 (edge.md §2.4), never a crash.

A line is space-separated `KEY value` groups whose keys vary by board, JetPack and root vs non-root:

* an optional `MM-DD-YYYY HH:MM:SS` timestamp (JetPack 5+);
* `RAM used/totalMB (lfb NxSIZE)`, `SWAP used/totalMB (cached NMB)`, `IRAM used/totalkB(lfb NkB)` (Nano/TX1);
* `CPU [5%@1200,off,…]` (JetPack 3.3+), `cpu [0%@1994,…]` (3.2), `cpu [14%,43%]@1912` (3.1 and older: one clock);
* `EMC_FREQ 3%@2133` / `EMC_FREQ 0%` / `EMC 0%@1600`; `GR3D_FREQ 37%`, `37%@300`, `37%@[300]`, `37%@[305,305]`,
  `@[1000,1000,1000]` (Thor: clocks only), `GR3D 5%@1275` (3.2); early JetPack 5 adds `GR3D2_FREQ` per GPC
  (jetson_stats#362: the same load, another GPC's clock);
* temperatures `GPU@40C`, `tj@52.5C`, `gpu@47.6C/47.6C` (JetPack 7.2 doubles them), `-256C` = offline (left out);
* rails `VDD_IN 3500/3400` (JetPack ≤ 4, mW), `VDD_IN 3500mW/3400mW` (5/6), `VDD_IN 5139mW/5139mW/5139mW` (7.2):
  the first value is the current one; `NC` channels are skipped;
* engines (`NVENC off`, `NVDEC 25%@200`, `NVDLA0 off`, `VIC_FREQ 729`, `APE 174`, `MTS fg 0% bg 0%`,
  `EDP limit 1912` …) are recognised and not reported; runs of spaces occur (AGX Orin, JetPack 6).

Anything else lands in `unparsed`, kept verbatim. `--json` prints `to_json()`: exactly the keys in `KEYS`.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .power import INPUT_RAILS
from .sysfs import under

KEYS = ("ram_used_mb", "ram_total_mb", "swap_used_mb", "cpu", "gpu_load", "gpu_mhz", "emc_load", "temps_c",
        "power_mw", "power_total_mw", "unparsed")

DATE = re.compile(r"\d{2}-\d{2}-\d{4}")
TIME = re.compile(r"\d{2}:\d{2}:\d{2}")
MEM = re.compile(r"(\d+)/(\d+)(kB|MB|GB)")
TEMP = re.compile(r"([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C(?:/-?\d+(?:\.\d+)?C)*")
RAIL = re.compile(r"(\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?")
LOADFREQ = re.compile(r"(?:(\d+)%)?(?:@\[?([\d,]*)\]?)?")
CORE = re.compile(r"(\d+)%(?:@(\d+))?")
ENGINE_VALUE = re.compile(r"off|\d+|\d+%(?:@\[?[\d,]+\]?)?|@\[?[\d,]+\]?")
ENGINE_KEY = re.compile(r"[A-Z][A-Z0-9_]*")
UNIT_MB = {"kB": 1 / 1024, "MB": 1.0, "GB": 1024.0}


@dataclass
class TegraStats:
    ram_used_mb: float | None = None
    ram_total_mb: float | None = None
    swap_used_mb: float | None = None
    cpu: list[dict | None] = field(default_factory=list)
    gpu_load: float | None = None
    gpu_mhz: float | None = None
    emc_load: float | None = None
    temps_c: dict[str, float] = field(default_factory=dict)
    power_mw: dict[str, float] = field(default_factory=dict)
    power_total_mw: float | None = None
    unparsed: list[str] = field(default_factory=list)
    timestamp: str = ""
    emc_mhz: float | None = None
    gpc_mhz: tuple[float, ...] = ()

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in KEYS}


def _mb(m: re.Match) -> tuple[float, float]:
    f = UNIT_MB[m.group(3)]
    return int(m.group(1)) * f, int(m.group(2)) * f


def _load_freq(value: str) -> tuple[float | None, list[float]] | None:
    m = LOADFREQ.fullmatch(value)
    if not m or (m.group(1) is None and m.group(2) is None):
        return None
    freqs = [float(v) for v in (m.group(2) or "").split(",") if v]
    return (None if m.group(1) is None else float(m.group(1))), freqs


def _cpu(value: str, shared_mhz: float | None) -> list[dict | None] | None:
    cores: list[dict | None] = []
    for entry in value.split(","):
        entry = entry.strip()
        if entry == "off":
            cores.append(None)
            continue
        m = CORE.fullmatch(entry)
        if not m:
            return None
        mhz = float(m.group(2)) if m.group(2) else shared_mhz
        cores.append({"load": float(m.group(1)), "mhz": mhz})
    return cores


def parse_line(line: str) -> TegraStats:
    """One tegrastats line → TegraStats. Unknown or malformed groups go to `unparsed`; nothing raises."""
    s = TegraStats()
    tok = line.split()
    i, n = 0, len(tok)
    if n >= 2 and DATE.fullmatch(tok[0]) and TIME.fullmatch(tok[1]):
        s.timestamp = f"{tok[0]} {tok[1]}"
        i = 2
    while i < n:
        key = tok[i]
        val = tok[i + 1] if i + 1 < n else ""
        up = key.upper()
        if key in ("RAM", "SWAP", "IRAM") and (m := MEM.match(val)):
            used, total = _mb(m)
            if key == "RAM":
                s.ram_used_mb, s.ram_total_mb = used, total
            elif key == "SWAP":
                s.swap_used_mb = used
            i += 2
            # '(lfb 10x4MB)', '(cached 0MB)', IRAM's '0/252kB(lfb' '252kB)': skip to the closing parenthesis
            if "(" in val and not val.endswith(")"):
                while i < n and not tok[i - 1].endswith(")"):
                    i += 1
            elif i < n and tok[i].startswith("("):
                while i < n and not tok[i].endswith(")"):
                    i += 1
                i += 1
            continue
        if up == "CPU" and val.startswith("["):
            body, _, tail = val[1:].partition("]")
            shared = float(tail[1:]) if tail.startswith("@") and tail[1:].isdigit() else None
            cores = _cpu(body, shared)
            if cores is None:
                s.unparsed.append(f"{key} {val}")
            else:
                s.cpu = cores
            i += 2
            continue
        if up in ("EMC_FREQ", "EMC", "GR3D_FREQ", "GR3D", "GR3D2_FREQ"):
            lf = _load_freq(val)
            if lf is None:
                s.unparsed.append(f"{key} {val}")
            elif up.startswith("EMC"):
                s.emc_load = lf[0]
                s.emc_mhz = lf[1][0] if lf[1] else s.emc_mhz
            elif up == "GR3D2_FREQ":
                s.gpc_mhz += tuple(lf[1])
            else:
                s.gpu_load = lf[0]
                s.gpc_mhz = tuple(lf[1])
                s.gpu_mhz = max(lf[1]) if lf[1] else None
            i += 2
            continue
        if key == "MTS" and i + 4 < n and tok[i + 1] == "fg" and tok[i + 3] == "bg":
            i += 5
            continue
        if key == "EDP" and val == "limit" and i + 2 < n:
            i += 3
            continue
        m = TEMP.fullmatch(key)
        if m:
            t = float(m.group(2))
            if t > -256:
                s.temps_c[m.group(1)] = t
            i += 1
            continue
        m = RAIL.fullmatch(val) if ENGINE_KEY.fullmatch(key) else None
        if m:
            if key != "NC":
                s.power_mw[key] = float(m.group(1))
            i += 2
            continue
        if ENGINE_KEY.fullmatch(key) and ENGINE_VALUE.fullmatch(val):
            i += 2  # an engine: NVENC off, NVDEC 25%@200, VIC_FREQ 729, APE 174, OFA_FREQ @0 …
            continue
        s.unparsed.append(key)
        i += 1
    s.power_total_mw = next((s.power_mw[r] for r in INPUT_RAILS if r in s.power_mw), None)
    if s.power_total_mw is None and s.power_mw:
        s.power_total_mw = float(sum(s.power_mw.values()))
    return s


def parse_lines(lines: Iterable[str]) -> Iterator[TegraStats]:
    for line in lines:
        if line.strip():
            yield parse_line(line)


def binary(root: str | Path = "/") -> str | None:
    """The tegrastats executable: the simulator's stand-in under a root, the real one at '/'."""
    for d in ("usr/bin", "usr/sbin"):
        p = under(root, f"{d}/tegrastats")
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return shutil.which("tegrastats") if str(root) == "/" else None


def spawn(interval_s: float = 1.0, root: str | Path = "/") -> subprocess.Popen:
    """A live `tegrastats --interval MS` whose stdout yields lines; OSError when there is no tegrastats."""
    exe = binary(root)
    if exe is None:
        raise OSError("tegrastats not found (not a Jetson, or not on PATH)")
    return subprocess.Popen([exe, "--interval", str(max(1, int(interval_s * 1000)))], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, bufsize=1)
