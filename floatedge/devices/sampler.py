"""One thread that takes a `Snapshot` of the device every interval, keeps the last N in a ring buffer, and never
blocks a caller.

Sources (one per sampler):

* `sysfs` (default on a Jetson): the readers of this package over the files, the layout found once and found
  again when a sensor disappears (rate-limited); the power mode from nvpmodel's status file (no subprocess);
* `tegrastats`: a live `tegrastats --interval MS` whose lines are parsed as they come (the process paces it);
* `jtop`: jetson-stats' service (AGPL-3.0, optional: `pip install floatedge[jtop]`), used only when its socket
  `/run/jtop.sock` answers;
* `none` (default off a Jetson): snapshots with a timestamp and whatever /proc gives (CPU, RAM).

A reading that fails is recorded in `Snapshot.errors` and the thread keeps going. `latest()` and `history()`
read the deque without a lock (appends and reads of a deque are atomic in CPython), so no caller waits for a read.
"""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import cpu, gpu, memory, nvpmodel, power, thermal, throttle
from .sysfs import check_root

SOURCES = ("auto", "sysfs", "tegrastats", "jtop", "none")
REDISCOVER_S = 5.0


@dataclass(frozen=True)
class Snapshot:
    """The device at one moment. `t` is time.monotonic(); None means "not known now" (unreadable, offline)."""

    t: float
    source: str
    ram_used_mb: float | None = None
    ram_total_mb: float | None = None
    swap_used_mb: float | None = None
    cpu: tuple[dict | None, ...] = ()
    gpu_load: float | None = None
    gpu_mhz: float | None = None
    gpu_max_mhz: float | None = None  # the clock the power mode allows
    emc_load: float | None = None
    emc_mhz: float | None = None
    temps_c: dict[str, float] = field(default_factory=dict)
    power_mw: dict[str, float] = field(default_factory=dict)
    power_total_mw: float | None = None
    mode: str = "unknown"
    mode_id: int | None = None
    jetson_clocks: str = "unknown"
    throttled: bool = False
    throttle_reasons: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def to_json(self) -> dict:
        d = asdict(self)
        d["cpu"] = list(self.cpu)
        d["throttle_reasons"] = list(self.throttle_reasons)
        d["errors"] = list(self.errors)
        return d


class SysfsSource:
    """Reads the device's files; `read()` is one snapshot. Layout discovery is cached."""

    name = "sysfs"

    def __init__(self, root: str | Path = "/") -> None:
        self.root = str(root)
        self._prev_stat: dict | None = None
        self._found_at = -1e9
        self.discover()

    def discover(self) -> None:
        self.rails = power.find_rails(self.root)
        self.zones = thermal.find_zones(self.root)
        self.gpu = gpu.find_gpu(self.root)
        self.emc = memory.find_emc(self.root)
        self.cores = cpu.present(self.root)
        self.modes, _ = nvpmodel.modes(self.root)
        self._found_at = time.monotonic()
        found = (len(self.rails), len(self.zones), self.gpu is not None)
        self._first = getattr(self, "_first", None) or found
        self._missing = any(f < e for f, e in zip(found, self._first, strict=True))  # a sensor went away: look again later

    def _rediscover(self) -> None:
        if time.monotonic() - self._found_at >= REDISCOVER_S:
            self.discover()

    def read(self) -> Snapshot:
        errors = []
        t = time.monotonic()
        stat = cpu.read_stat(self.root)
        cores = cpu.read_cores(self.root, self._prev_stat, stat, self.cores, max_freq=False)
        self._prev_stat = stat
        mem = memory.read_memory(self.root, self.emc)
        zones = thermal.read_thermal(self.root, self.zones)
        rails = power.read_power(self.root, self.rails)
        g = gpu.read_gpu(self.root, self.gpu) if self.gpu else None
        mode = nvpmodel.read_mode(self.root, self.modes)
        cap = next((m.gpu_max_mhz for m in self.modes if m.id == mode.id), None) if mode.known else None
        allowed = cap or (g.max_mhz if g else None)
        if self.gpu and (g is None or g.cur_mhz is None):
            errors.append(f"gpu: {self.gpu.name} unreadable")
        gone = [z.name for z in zones if z.temp_c is None] + [r.name for r in rails.rails if r.mw is None]
        if gone or self._missing or (self.gpu and g and g.cur_mhz is None):
            self._rediscover()
        errors += [f"offline: {n}" for n in gone]
        th = throttle.infer(zones, g.load_pct if g else None, g.cur_mhz if g else None, allowed, rails.rails)
        return Snapshot(
            t=t, source=self.name, ram_used_mb=mem.ram_used_mb, ram_total_mb=mem.ram_total_mb, swap_used_mb=mem.swap_used_mb,
            cpu=tuple({"load": c.load_pct, "mhz": c.mhz} if c.online else None for c in cores),
            gpu_load=g.load_pct if g else None, gpu_mhz=g.cur_mhz if g else None, gpu_max_mhz=allowed, emc_mhz=mem.emc_mhz,
            temps_c={z.name: z.temp_c for z in zones if z.temp_c is not None}, power_mw=rails.by_name(),
            power_total_mw=rails.total_mw, mode=mode.name, mode_id=mode.id,
            jetson_clocks=nvpmodel.jetson_clocks(self.root, self.gpu.devfreq if self.gpu else None, self.cores[:1]),
            throttled=th.active, throttle_reasons=th.reasons, errors=tuple(errors))

    def close(self) -> None:
        pass


class NoneSource(SysfsSource):
    """Off a Jetson: CPU and RAM from /proc, nothing else."""

    name = "none"

    def discover(self) -> None:
        self.rails, self.zones, self.gpu, self.emc, self.modes = [], [], None, None, []
        self.cores = cpu.present(self.root)
        self._found_at = time.monotonic()

    def read(self) -> Snapshot:
        stat = cpu.read_stat(self.root)
        cores = cpu.read_cores(self.root, self._prev_stat, stat, self.cores)
        self._prev_stat = stat
        mem = memory.read_memory(self.root)
        return Snapshot(t=time.monotonic(), source=self.name, ram_used_mb=mem.ram_used_mb, ram_total_mb=mem.ram_total_mb,
                        swap_used_mb=mem.swap_used_mb,
                        cpu=tuple({"load": c.load_pct, "mhz": c.mhz} if c.online else None for c in cores))


def snapshot_from_tegrastats(stats, t: float, mode: nvpmodel.PowerMode = nvpmodel.UNKNOWN, zones=None) -> Snapshot:
    """A parsed tegrastats line as a Snapshot. Throttling needs trip points, which tegrastats does not print:
    pass the zones found in sysfs to have it inferred."""
    th = throttle.Throttle(False)
    if zones:
        named = [thermal.Zone(z.name, stats.temps_c.get(z.name.split("-")[0]) or stats.temps_c.get(z.name.split("-")[0].upper()),
                              z.trips) for z in zones]
        th = throttle.infer(named)
    return Snapshot(t=t, source="tegrastats", ram_used_mb=stats.ram_used_mb, ram_total_mb=stats.ram_total_mb,
                    swap_used_mb=stats.swap_used_mb, cpu=tuple(stats.cpu), gpu_load=stats.gpu_load, gpu_mhz=stats.gpu_mhz,
                    emc_load=stats.emc_load, emc_mhz=stats.emc_mhz, temps_c=dict(stats.temps_c), power_mw=dict(stats.power_mw),
                    power_total_mw=stats.power_total_mw, mode=mode.name, mode_id=mode.id, throttled=th.active,
                    throttle_reasons=th.reasons, errors=tuple(f"unparsed: {u}" for u in stats.unparsed))


def jtop_available() -> bool:
    """True when jetson-stats is importable and its service socket exists."""
    import importlib.util

    return importlib.util.find_spec("jtop") is not None and Path("/run/jtop.sock").exists()


def snapshot_from_jtop(j, t: float) -> Snapshot:
    """A Snapshot from a connected `jtop.jtop` (daemon.md §4: power {'rail': {NAME: {power…}}, 'tot': {power}} mW,
    temperature {NAME: {online, temp}}, nvpmodel, jetson_clocks, memory)."""
    pw = getattr(j, "power", {}) or {}
    temps = getattr(j, "temperature", {}) or {}
    mem = (getattr(j, "memory", {}) or {}).get("RAM", {})
    nvp = getattr(j, "nvpmodel", None)
    return Snapshot(
        t=t, source="jtop", ram_used_mb=mem.get("used", 0) / 1024 if mem else None, ram_total_mb=mem.get("tot", 0) / 1024 if mem else None,
        temps_c={k: v["temp"] for k, v in temps.items() if v.get("online") and v.get("temp", -256) > -256},
        power_mw={k: float(v["power"]) for k, v in pw.get("rail", {}).items()},
        power_total_mw=pw.get("tot", {}).get("power"), mode=str(getattr(nvp, "name", nvp) or "unknown"),
        jetson_clocks=str(getattr(getattr(j, "jetson_clocks", None), "status", "unknown")))


class Sampler:
    """Snapshots every `interval` seconds from one source into a ring of `capacity`.

        with Sampler(interval=0.1) as s:
            s.latest()          # newest Snapshot or None, never waits
            s.history(50)       # oldest first
    """

    def __init__(self, source: str = "auto", interval: float = 1.0, root: str | Path = "/", capacity: int = 600,
                 on_snapshot: Callable[[Snapshot], None] | None = None) -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
        if not interval > 0:
            raise ValueError(f"interval must be > 0 s, got {interval}")
        self.root = str(check_root(root))
        self.interval = float(interval)
        self.source = self._choose(source)
        self.ring: collections.deque[Snapshot] = collections.deque(maxlen=int(capacity))
        self.on_snapshot = on_snapshot
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader = None
        self._proc = None

    def _choose(self, source: str) -> str:
        if source != "auto":
            return source
        from .identity import part_number

        on_jetson = bool(part_number(self.root)) or (Path(self.root) / "etc/nv_tegra_release").exists()
        return "sysfs" if on_jetson else "none"

    # -- lifecycle
    def start(self) -> Sampler:
        if self._thread is not None:
            return self
        self._stop.clear()
        target = self._run_tegrastats if self.source == "tegrastats" else self._run_polling
        self._thread = threading.Thread(target=target, name=f"floatedge-sampler-{self.source}", daemon=True)
        if self.source == "tegrastats":
            from . import tegrastats

            self._proc = tegrastats.spawn(self.interval, self.root)
        elif self.source == "jtop":
            if not jtop_available():
                raise OSError("jtop source: jetson-stats is not installed or its service socket /run/jtop.sock is missing "
                              "(pip install -e '.[jtop]' and run the jtop service)")
            from jtop import jtop  # optional, AGPL-3.0, only when asked for

            self._reader = jtop(interval=self.interval)
            self._reader.start()
        else:
            self._reader = (SysfsSource if self.source == "sysfs" else NoneSource)(self.root)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except Exception:  # noqa: BLE001 - it is being torn down either way
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.source == "jtop" and self._reader is not None:
            self._reader.close()
        self._thread = None

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- reading (never blocks)
    def latest(self) -> Snapshot | None:
        try:
            return self.ring[-1]
        except IndexError:
            return None

    def history(self, n: int | None = None) -> list[Snapshot]:
        items = list(self.ring)
        return items if n is None else items[-n:]

    def wait_for(self, predicate: Callable[[Snapshot], bool], timeout: float) -> Snapshot | None:
        """The first new snapshot satisfying `predicate` within `timeout` s (for tests and scripts, not for a server)."""
        deadline = time.monotonic() + timeout
        seen = self.latest()
        while time.monotonic() < deadline:
            cur = self.latest()
            if cur is not None and cur is not seen:
                seen = cur
                if predicate(cur):
                    return cur
            time.sleep(min(0.01, self.interval / 4))
        return None

    # -- the thread
    def _push(self, snap: Snapshot) -> None:
        self.ring.append(snap)
        if self.on_snapshot is not None:
            try:
                self.on_snapshot(snap)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the sampler
                self.failures += 1

    def _run_polling(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                if self.source == "jtop":
                    snap = snapshot_from_jtop(self._reader, time.monotonic())
                else:
                    snap = self._reader.read()
            except Exception as exc:  # noqa: BLE001 - a sensor's failure is data, not the end of the thread
                self.failures += 1
                snap = Snapshot(t=time.monotonic(), source=self.source, errors=(f"{type(exc).__name__}: {exc}",))
            self._push(snap)
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (a slow read, a suspended process): skip, do not burst
                next_at = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def _run_tegrastats(self) -> None:
        from . import tegrastats

        zones = thermal.find_zones(self.root)
        table, _ = nvpmodel.modes(self.root)
        for line in self._proc.stdout:
            if self._stop.is_set():
                break
            if not line.strip():
                continue
            try:
                snap = snapshot_from_tegrastats(tegrastats.parse_line(line), time.monotonic(),
                                                nvpmodel.read_mode(self.root, table), zones)
            except Exception as exc:  # noqa: BLE001
                self.failures += 1
                snap = Snapshot(t=time.monotonic(), source="tegrastats", errors=(f"{type(exc).__name__}: {exc}",))
            self._push(snap)
