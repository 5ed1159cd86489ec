"""CPU cores: load from `/proc/stat` deltas, online state, cpufreq clocks.

`/proc/stat` lists `cpuN user nice system idle iowait irq softirq steal …` in USER_HZ ticks for the online cores
only; a core's load between two readings is 1 − Δ(idle + iowait)/Δ(total). Online state is
`/sys/devices/system/cpu/online` ('0-3': one read for every core), else `cpuN/online` (cpu0 often has no such file:
it cannot go offline), over the cores in `/sys/devices/system/cpu/present`; clocks are `cpufreq/scaling_cur_freq`
and `cpuinfo_max_freq` in kHz. An nvpmodel mode with fewer cores takes the others offline (edge.md §2.2); tegrastats prints them as `off`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .sysfs import read_int, read_text, under


@dataclass(frozen=True)
class Core:
    index: int
    online: bool
    load_pct: float | None = None
    mhz: float | None = None
    max_mhz: float | None = None


def read_stat(root: str = "/") -> dict[int, tuple[int, int]]:
    """{core: (busy ticks, total ticks)} of the online cores."""
    out = {}
    for line in (read_text(under(root, "proc/stat"), limit=1 << 20) or "").splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        parts = line.split()
        try:
            idx = int(parts[0][3:])
            ticks = [int(v) for v in parts[1:9]]
        except (ValueError, IndexError):
            continue
        if len(ticks) < 4:
            continue
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        out[idx] = (sum(ticks) - idle, sum(ticks))
    return out


def loads(prev: dict[int, tuple[int, int]], cur: dict[int, tuple[int, int]]) -> dict[int, float]:
    """Per-core load (%) between two `read_stat` results; cores without both readings or any elapsed ticks are left out."""
    out = {}
    for idx, (busy, tot) in cur.items():
        if idx in prev and tot > prev[idx][1]:
            out[idx] = max(0.0, min(100.0, 100.0 * (busy - prev[idx][0]) / (tot - prev[idx][1])))
    return out


def present(root: str = "/", which: str = "present") -> list[int]:
    """Core indices from `present` (or `online`): '0-7', '0,2-3'; [] when unreadable."""
    text = read_text(under(root, f"sys/devices/system/cpu/{which}")) or ""
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        if a.isdigit() and (not b or b.isdigit()):
            out += list(range(int(a), int(b or a) + 1))
    return out


def read_cores(root: str = "/", prev: dict | None = None, cur: dict | None = None, indices: list[int] | None = None,
               max_freq: bool = True) -> list[Core]:
    """Every present core: online, load (when `prev` and `cur` stat readings are given), clocks (the maximum, a
    constant, only when `max_freq`)."""
    base = str(under(root, "sys/devices/system/cpu"))
    cores = []
    ld = loads(prev, cur) if prev is not None and cur is not None else {}
    online_set = set(present(root, "online"))  # one read for all cores; per-core files when it is missing
    for i in indices if indices is not None else present(root):
        if online_set:
            online = i in online_set
        else:
            flag = read_int(f"{base}/cpu{i}/online")
            online = flag != 0 if flag is not None else (cur is None or i in cur)
        if not online:
            cores.append(Core(i, False))
            continue
        khz = read_int(f"{base}/cpu{i}/cpufreq/scaling_cur_freq")
        kmax = read_int(f"{base}/cpu{i}/cpufreq/cpuinfo_max_freq") if max_freq else None
        cores.append(Core(i, True, ld.get(i), None if khz is None else khz / 1000.0, None if kmax is None else kmax / 1000.0))
    return cores
