"""Memory: `/proc/meminfo` (on a Jetson the GPU allocates from the same RAM, so this is the GPU's budget too) and
the EMC (external memory controller) clock where it is readable.

Used RAM is MemTotal − MemAvailable. The EMC clock lives in debugfs, readable by root only:
`/sys/kernel/debug/bpmp/debug/clk/emc/rate` (tegra186/194/234), `/sys/kernel/debug/clk/override.emc/clk_rate`
(tegra210) (jetson_stats#323), `/sys/class/devfreq/bwmgr/cur_freq` on Thor (jetson_stats#825), all in Hz.
EMC load has no documented sysfs file: it comes from tegrastats (`EMC_FREQ 3%@2133`) only.
"""
from __future__ import annotations

from dataclasses import dataclass

from .identity import meminfo_kb
from .sysfs import read_int, under

EMC_RATE = ("sys/kernel/debug/bpmp/debug/clk/emc/rate", "sys/kernel/debug/clk/override.emc/clk_rate",
            "sys/class/devfreq/bwmgr/cur_freq")


@dataclass(frozen=True)
class Memory:
    ram_total_mb: float | None
    ram_used_mb: float | None
    swap_total_mb: float | None
    swap_used_mb: float | None
    emc_mhz: float | None = None


def find_emc(root: str = "/") -> str | None:
    return next((str(under(root, p)) for p in EMC_RATE if under(root, p).exists()), None)


def read_memory(root: str = "/", emc: str | None = None) -> Memory:
    kb = meminfo_kb(root)
    mb = lambda k: kb[k] / 1024.0 if k in kb else None
    total, avail = mb("MemTotal"), mb("MemAvailable")
    if avail is None and "MemFree" in kb:  # kernels before 3.14 have no MemAvailable
        avail = (kb["MemFree"] + kb.get("Buffers", 0) + kb.get("Cached", 0)) / 1024.0
    stotal, sfree = mb("SwapTotal"), mb("SwapFree")
    hz = read_int(emc) if emc else None
    return Memory(total, None if total is None or avail is None else total - avail, stotal,
                  None if stotal is None or sfree is None else stotal - sfree, None if hz is None else hz / 1e6)
