"""The power mode: which nvpmodel mode is active, what the modes are, jetson_clocks, and the one privileged call
that changes the mode.

Reading costs no subprocess when it can: nvpmodel itself records the active mode in
`/var/lib/nvpmodel/status` (`pmode:0002`) and the modes live in `/etc/nvpmodel.conf`
(`< POWER_MODEL ID=2 NAME=15W >`, `CPU_ONLINE CORE_4 0`, `GPU MAX_FREQ 612000000`, `< PM_CONFIG DEFAULT=2 >`),
both world-readable. `nvpmodel -q` (prints `NV Power Mode: 15W` then `2`, jtop `nvpmodel.py`) is the fallback, run
with a timeout; a missing binary, a non-zero exit or unparsable output give the mode "unknown", never an error.

`set_mode` refuses a mode that changes the number of online CPU cores: on Orin NX modes 10W/15W take four cores
offline, which needs a reboot and "fails silently over SSH" (edge.md §2.2), and a running process must not lose
the cores its thread pools were sized for.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .catalogue import Mode
from .sysfs import read_int, read_text, under

UNLIMITED = 2147483647  # nvpmodel's "no cap"
STANDIN_DIRS = ("usr/sbin", "usr/bin")


@dataclass(frozen=True)
class PowerMode:
    id: int | None
    name: str
    source: str = ""  # "status", "nvpmodel -q", or why it is unknown

    @property
    def known(self) -> bool:
        return self.id is not None


UNKNOWN = PowerMode(None, "unknown")


def parse_conf(text: str) -> tuple[list[Mode], int | None]:
    """Modes and default ID from /etc/nvpmodel.conf or from `nvpmodel -p --verbose` output."""
    modes: list[dict] = []
    default: int | None = None
    default_name = None
    for raw in text.splitlines():
        line = re.sub(r"^NVPM VERB:\s*", "", raw.strip()).strip("<> ").strip()
        m = re.match(r"POWER_MODEL:?\s+ID=(\d+)\s+NAME=(\S+)", line)
        if m:
            modes.append({"id": int(m.group(1)), "name": m.group(2), "online": {}, "gpu": None})
            continue
        m = re.match(r"PM_CONFIG:?\s+DEFAULT=(\S+)", line)
        if m:
            val = m.group(1)
            paren = re.search(r"\((\d+)\)", val)
            if val.isdigit() or paren:
                default = int(paren.group(1) if paren else val)
            else:
                default_name = val
            continue
        if not modes:
            continue
        m = re.match(r"CPU_ONLINE\s+CORE_(\d+)\s+(\d)", line)
        if m:
            modes[-1]["online"][int(m.group(1))] = m.group(2) == "1"
            continue
        m = re.match(r"GPU\s+MAX_FREQ\s+(-?\d+)", line)
        if m:
            hz = int(m.group(1))
            modes[-1]["gpu"] = None if hz <= 0 or hz >= UNLIMITED else hz / 1e6
    if default is None and default_name:
        default = next((m["id"] for m in modes if m["name"] == default_name), None)
    out = [Mode(m["id"], m["name"], sum(m["online"].values()) if m["online"] else None, m["gpu"]) for m in modes]
    return out, default


def parse_query(text: str) -> PowerMode:
    """`nvpmodel -q` output → the mode; UNKNOWN when the text is not in that form."""
    m = re.search(r"NV Power Mode:\s*(\S+)\s*\n\s*(\d+)", text)
    if m:
        return PowerMode(int(m.group(2)), m.group(1), "nvpmodel -q")
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    return PowerMode(None, m.group(1), "nvpmodel -q") if m else PowerMode(None, "unknown", "nvpmodel -q: unparsable output")


def modes(root: str | Path = "/") -> tuple[list[Mode], int | None]:
    """The modes /etc/nvpmodel.conf defines ([] when there is none)."""
    return parse_conf(read_text(under(root, "etc/nvpmodel.conf"), limit=1 << 20) or "")


def read_mode(root: str | Path = "/", table: list[Mode] | None = None) -> PowerMode:
    """The active mode from nvpmodel's status file (no subprocess); UNKNOWN when the file is absent or garbage."""
    text = read_text(under(root, "var/lib/nvpmodel/status")) or ""
    m = re.search(r"pmode:(\d+)", text)
    if not m:
        return UNKNOWN
    mid = int(m.group(1))
    table = modes(root)[0] if table is None else table
    name = next((x.name for x in table if x.id == mid), str(mid))
    return PowerMode(mid, name, "status")


def binary(root: str | Path = "/") -> str | None:
    """The nvpmodel executable: the simulator's stand-in under a root, the real one on PATH at '/'."""
    for d in STANDIN_DIRS:
        p = under(root, f"{d}/nvpmodel")
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return shutil.which("nvpmodel") if str(root) == "/" else None


def _run(root: str | Path, args: list[str], timeout: float) -> tuple[int, str]:
    exe = binary(root)
    if exe is None:
        return 127, "nvpmodel not found"
    try:
        p = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return 124, f"nvpmodel {' '.join(args)} timed out after {timeout:g} s"
    except OSError as exc:
        return 126, f"nvpmodel: {exc.strerror or exc}"
    return p.returncode, p.stdout + p.stderr


def query(root: str | Path = "/", timeout: float = 4.0) -> PowerMode:
    """`nvpmodel -q`, parsed (jtop allows it 4 s). Missing binary, non-root refusal, timeout: the mode is unknown."""
    rc, out = _run(root, ["-q"], timeout)
    if rc != 0:
        return PowerMode(None, "unknown", out.strip().splitlines()[-1] if out.strip() else f"nvpmodel exit {rc}")
    return parse_query(out)


def current_mode(root: str | Path = "/") -> PowerMode:
    mode = read_mode(root)
    return mode if mode.known else query(root)


def jetson_clocks(root: str | Path = "/", gpu_devfreq: str | None = None, cores: list[int] | None = None) -> str:
    """'on' when jetson_clocks has pinned the clocks (GPU devfreq and the online CPUs — all, or `cores`: minimum =
    maximum), 'off', or 'unknown' when the files cannot be read. Inference from what the jetson_clocks script writes."""
    pairs = []
    if gpu_devfreq:
        pairs.append((read_int(f"{gpu_devfreq}/min_freq"), read_int(f"{gpu_devfreq}/max_freq")))
    base = str(under(root, "sys/devices/system/cpu"))
    for i in cores if cores is not None else range(256):
        d = f"{base}/cpu{i}"
        if cores is None and not os.path.isdir(d):
            break
        if read_int(f"{d}/online") == 0:
            continue
        pairs.append((read_int(f"{d}/cpufreq/scaling_min_freq"), read_int(f"{d}/cpufreq/scaling_max_freq")))
    if not pairs or any(a is None or b is None for a, b in pairs):
        return "unknown"
    return "on" if all(a == b for a, b in pairs) else "off"


def online_cores(root: str | Path = "/") -> int:
    base = under(root, "sys/devices/system/cpu")
    return sum(1 for i in range(256) if (base / f"cpu{i}").is_dir() and read_int(base / f"cpu{i}/online") != 0)


def set_mode(mode_id: int, root: str | Path = "/", timeout: float = 30.0) -> PowerMode:
    """Switch to nvpmodel mode `mode_id` (explicit and privileged: root on a device). Refuses an unknown mode and a
    mode that changes the online core count; raises PermissionError/ValueError/OSError with one clear line."""
    table, _ = modes(root)
    target = next((m for m in table if m.id == mode_id), None)
    if target is None:
        known = ", ".join(f"{m.id} {m.name}" for m in table) or "none (no /etc/nvpmodel.conf)"
        raise ValueError(f"power mode {mode_id} is not defined here; modes: {known}")
    now = online_cores(root)
    if target.cores is not None and target.cores != now:
        raise ValueError(f"refusing mode {mode_id} {target.name}: it runs {target.cores} CPU cores and {now} are online now; "
                         "a core-count change needs a reboot (set it with nvpmodel and reboot)")
    if str(root) == "/" and hasattr(os, "geteuid") and os.geteuid() != 0:
        raise PermissionError("changing the power mode needs root (sudo)")
    rc, out = _run(root, ["-m", str(mode_id)], timeout)
    if rc != 0:
        raise OSError(f"nvpmodel -m {mode_id} failed: {out.strip().splitlines()[-1] if out.strip() else f'exit {rc}'}")
    return current_mode(root)
