"""Simulated Jetsons: a directory tree with the files, layouts and value formats a real module has, for any
catalogued module and JetPack line, and scenarios that rewrite those files over time.

What is written (every path under `root`; the readers of this package and jtop-style tools read the same):

* identity: `proc/device-tree/{model,compatible,nvidia,dtsfilename}` (NUL-terminated), `etc/nv_tegra_release`,
  `usr/local/cuda/version.json` (`version.txt` for CUDA < 11), the L4T package list `var/lib/dpkg/status`;
* `proc/meminfo`, `proc/cpuinfo`, `proc/stat` (cumulative USER_HZ ticks: loads come from deltas, as on a device),
  `sys/devices/system/cpu/{present,cpuN/online,cpuN/cpufreq/*}`;
* INA3221 rails: hwmon (`in{N}_label`, `in{N}_input`, `curr{N}_input`, `curr{N}_max/crit/crit_alarm`, the in7 'sum
  of shunt voltages' channel) on JetPack 5+, iio (`rail_name_N`, `in_power/voltage/current N_input`,
  `warn/crit_current_limit_N`) on 3.x/4.x; `NC` channels where the board has them;
* `sys/devices/virtual/thermal/thermal_zoneK/{type,temp,trip_point_*}` (+ `sys/class/thermal` links); offline
  sensors read −256000; a removed sensor's directory disappears;
* the GPU's devfreq directory at the module's real path (+ `sys/class/devfreq/<name>` link, `device/load`),
  the EMC rate file, `etc/nvpmodel.conf`, `var/lib/nvpmodel/status`;
* stand-ins on PATH: `usr/sbin/nvpmodel` (-q, -p --verbose, -m ID: rewrites the tree as the mode would) and
  `usr/bin/tegrastats` (--interval MS: prints lines in that JetPack line's format, read from the tree).

Files are replaced atomically (write + rename), so a reader never sees half a value. What the simulator models
on its own: the GPU clock follows load up to the mode's cap, drops to 60 % of it while any zone is above its
passive trip (soctherm-style throttling) or to `gpu_cap_mhz` when a scenario holds it down; power follows clocks
and loads. The numbers are plausible, not measured: they exist so that readers, the sampler and later a governor
can be tested end to end without a Jetson.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import catalogue

USER_HZ = 100
THROTTLE_FRACTION = 0.6
SOC_CPU_MAX_MHZ = {"tegra210": 1479, "tegra186": 2035, "tegra194": 1907, "tegra234": 1984, "tegra264": 2601}  # sim
STATE_FILE = ".floatedge-sim/state.json"
SCENARIO_KEYS = {"mode", "gpu_load", "gpu_cap_mhz", "cpu_load", "mem_used_mb", "jetson_clocks", "overcurrent", "offline",
                 "remove", "restore"}
RAMPABLE = {"gpu_load", "gpu_cap_mhz", "cpu_load", "mem_used_mb"}


@dataclass
class State:
    mode: int
    gpu_load: float = 0.0
    gpu_cap_mhz: float | None = None
    cpu_load: list[float] = field(default_factory=list)
    mem_used_mb: float = 0.0
    temps: dict[str, float] = field(default_factory=dict)
    jetson_clocks: bool = False
    overcurrent: str | None = None
    offline: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    ticks: list[list[float]] = field(default_factory=list)  # per core [busy, total]


def _write(path: Path, text: str | bytes) -> None:
    """Atomic replace without fsync: a simulation in a scratch directory, rewritten many times a second."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    data = text.encode() if isinstance(text, str) else text
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _link(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target, link)


def _rel(src: str, dst: str) -> str:
    """A relative link from the directory of `src` to `dst` (both device-absolute), as real sysfs links are."""
    return os.path.relpath(dst, os.path.dirname(src))


class SimJetson:
    """One simulated device under `root`. `build()` writes it; `update(**changes)` changes the state and rewrites
    what depends on it; `advance(seconds)` lets CPU time pass in /proc/stat."""

    def __init__(self, root: str | Path, module: str, jetpack: str | None = None, state: State | None = None) -> None:
        self.root = Path(root)
        self.mod = catalogue.module(module)
        self.jetpack = str(jetpack or self.mod.latest_jetpack())
        if catalogue._line(self.jetpack) not in self.mod.jetpacks:
            raise ValueError(f"{self.mod.key} runs JetPack {', '.join(self.mod.jetpacks)}, not {self.jetpack}")
        self.line = catalogue.jetpack_line(self.jetpack)
        self.modes, default = self.mod.modes(self.jetpack)
        n = self.mod.cpu_cores
        self.gpu_max = max([m.gpu_max_mhz for m in self.modes if m.gpu_max_mhz] or [1000.0])
        self.cpu_max = max([m.cpu_max_mhz for m in self.modes if m.cpu_max_mhz] or [SOC_CPU_MAX_MHZ.get(self.mod.soc, 1500)])
        passive = catalogue.sim_value("trip_passive_c" if self.mod.soc in ("tegra234", "tegra264") else "legacy_trip_passive_c")
        critical = catalogue.sim_value("trip_critical_c" if self.mod.soc in ("tegra234", "tegra264") else "legacy_trip_critical_c")
        self.trips = {z: ((passive, "passive"), (critical, "critical")) for z in self.mod.thermal
                      if not z.startswith(("PMIC", "thermal-fan", "tj-"))}
        self.state = state or State(mode=default, cpu_load=[5.0] * n, mem_used_mb=round(self.mod.ram_mb * 0.25),
                                    temps={z: (catalogue.sim_value("pmic_die_c") if z == "PMIC-Die" else 40.0) for z in self.mod.thermal},
                                    ticks=[[0.0, 0.0] for _ in range(n)])
        self.written: dict = {}
        self._cache: dict[Path, str] = {}

    # ------------------------------------------------------------------ paths
    def p(self, device_path: str) -> Path:
        return self.root / device_path.lstrip("/")

    @property
    def gpu_devfreq(self) -> str:
        return self.mod.gpu_devfreq(self.jetpack)

    def mode(self) -> catalogue.Mode:
        return next(m for m in self.modes if m.id == self.state.mode)

    # ------------------------------------------------------------------ build (static files)
    def build(self) -> SimJetson:
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"--root {self.root}: not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        mod, line = self.mod, self.line
        dt = "/proc/device-tree"
        _write(self.p(f"{dt}/model"), mod.model.encode() + b"\0")
        compatible = mod.raw.get("compatible")
        if compatible is None:  # 'nvidia,<carrier>+<module>', 'nvidia,<module>', 'nvidia,<soc>' (edge.md §2.3, jetson_stats#711)
            import re

            pnums = re.findall(r"p\d{4}-\d{4}", mod.dts)
            first = f"nvidia,{pnums[1]}+{pnums[0]}" if len(pnums) > 1 else f"nvidia,{mod.model.lower()}"
            compatible = [first, f"nvidia,{mod.part_numbers[0]}", f"nvidia,{mod.soc}"]
        _write(self.p(f"{dt}/compatible"), b"".join(c.encode() + b"\0" for c in compatible))
        if mod.dts:
            _write(self.p(f"{dt}/nvidia,dtsfilename"),
                   f"/dvs/git/dirty/git-master_linux/kernel/kernel-dts/{mod.dts}".encode() + b"\0")
        major, _, rev = line["l4t"].partition(".")
        _write(self.p("/etc/nv_tegra_release"),
               f"# R{major} (release), REVISION: {rev}, GCID: 38968081, BOARD: {line['board']}, EABI: aarch64, "
               "DATE: Wed Jan  8 01:49:37 UTC 2025\n")
        cuda = line["cuda"]
        if int(cuda.split(".")[0]) >= 11:
            _write(self.p("/usr/local/cuda/version.json"), json.dumps({"cuda": {"name": "CUDA SDK", "version": f"{cuda}.0"}}, indent=3))
        else:
            _write(self.p("/usr/local/cuda/version.txt"), f"CUDA Version {cuda}.300\n")
        trt = line["tensorrt"]
        _write(self.p("/var/lib/dpkg/status"),
               f"Package: nvidia-l4t-core\nStatus: install ok installed\nVersion: {line['l4t']}-20250108\n\n"
               f"Package: libnvinfer{trt.split('.')[0]}\nStatus: install ok installed\nVersion: {trt}-1+cuda{cuda}\n\n")
        n = mod.cpu_cores
        _write(self.p("/proc/cpuinfo"), "".join(f"processor\t: {i}\nmodel name\t: ARMv8 Processor rev 1 (v8l)\n\n" for i in range(n)))
        _write(self.p("/sys/devices/system/cpu/present"), f"0-{n - 1}\n")
        self._build_power()
        self._build_thermal()
        self._build_gpu()
        self._write_conf()
        self._write_standins()
        self.write()
        return self

    def _rails(self) -> list[dict]:
        return self.mod.power_layout(self.jetpack)

    def _build_power(self) -> None:
        hwmon = self.line["power"] == "hwmon"
        for k, dev in enumerate(self._rails()):
            base = f"/sys/bus/i2c/devices/{dev['bus']}"
            _write(self.p(f"{base}/name"), "ina3221\n" if hwmon else "ina3221x\n")
            crit = dev.get("crit_ma") or [None] * len(dev["rails"])
            for j, name in enumerate(dev["rails"]):
                if hwmon:
                    d = f"{base}/hwmon/hwmon{k + 1}"
                    _write(self.p(f"{d}/in{j + 1}_label"), f"{name}\n")
                    _write(self.p(f"{d}/curr{j + 1}_max"), f"{crit[j] or 32760}\n")
                    _write(self.p(f"{d}/curr{j + 1}_crit"), f"{crit[j] or 32760}\n")
                else:
                    d = f"{base}/iio:device{k}"
                    _write(self.p(f"{d}/rail_name_{j}"), f"{name}\n")
                    _write(self.p(f"{d}/warn_current_limit_{j}"), "32760 ma\n")
                    _write(self.p(f"{d}/crit_current_limit_{j}"), "32760 ma\n")
            if hwmon:
                d = f"{base}/hwmon/hwmon{k + 1}"
                _write(self.p(f"{d}/name"), "ina3221\n")
                _write(self.p(f"{d}/in7_label"), "sum of shunt voltages\n")
                _write(self.p(f"{d}/in7_input"), "40\n")

    def _build_thermal(self) -> None:
        for k, name in enumerate(self.mod.thermal):
            d = f"/sys/devices/virtual/thermal/thermal_zone{k}"
            _write(self.p(f"{d}/type"), f"{name}\n")
            for i, (temp, kind) in enumerate(self.trips.get(name, ())):
                _write(self.p(f"{d}/trip_point_{i}_temp"), f"{int(temp * 1000)}\n")
                _write(self.p(f"{d}/trip_point_{i}_type"), f"{kind}\n")
            _link(self.p(f"/sys/class/thermal/thermal_zone{k}"), _rel(f"/sys/class/thermal/thermal_zone{k}", d))

    def _build_gpu(self) -> None:
        d = self.gpu_devfreq
        name = os.path.basename(d)
        dev = os.path.dirname(os.path.dirname(d))
        freqs = sorted({round(self.gpu_max * f / 10) * 10 for f in (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)} |
                       {m.gpu_max_mhz for m in self.modes if m.gpu_max_mhz} | {self.gpu_max})
        _write(self.p(f"{d}/available_frequencies"), " ".join(str(int(f * 1e6)) for f in freqs) + "\n")
        _link(self.p(f"{d}/device"), _rel(f"{d}/device", dev))
        _link(self.p(f"/sys/class/devfreq/{name}"), _rel(f"/sys/class/devfreq/{name}", d))

    def conf_text(self) -> str:
        """/etc/nvpmodel.conf in nvpmodel's own syntax, from the catalogue's modes."""
        _, default = self.mod.modes(self.jetpack)
        out = ["# simulated by floatedge from the catalogue", "< PARAM TYPE=FILE NAME=CPU_ONLINE >"]
        out += [f"CORE_{i} /sys/devices/system/cpu/cpu{i}/online" for i in range(self.mod.cpu_cores)]
        for m in self.modes:
            out.append(f"< POWER_MODEL ID={m.id} NAME={m.name} >")
            cores = m.cores or self.mod.cpu_cores
            out += [f"CPU_ONLINE CORE_{i} {1 if i < cores else 0}" for i in range(self.mod.cpu_cores)]
            out.append(f"GPU MAX_FREQ {int(m.gpu_max_mhz * 1e6) if m.gpu_max_mhz else 2147483647}")
        out.append(f"< PM_CONFIG DEFAULT={default} >")
        return "\n".join(out) + "\n"

    def _write_conf(self) -> None:
        _write(self.p("/etc/nvpmodel.conf"), self.conf_text())

    def _write_standins(self) -> None:
        for rel, fn in (("/usr/sbin/nvpmodel", "nvpmodel_main"), ("/usr/bin/tegrastats", "tegrastats_main")):
            script = (f"#!{sys.executable}\n# floatedge simulated {os.path.basename(rel)} for {self.mod.key} (JetPack {self.jetpack})\n"
                      f"import sys\nfrom floatedge.devices.simulate import {fn}\nsys.exit({fn}({str(self.root)!r}, sys.argv[1:]))\n")
            _write(self.p(rel), script)
            os.chmod(self.p(rel), 0o755)

    # ------------------------------------------------------------------ dynamic files
    def gpu_mhz(self) -> float:
        """The clock the GPU runs at in this state: load-driven up to the mode's cap, then held down by a scenario's
        cap or by thermal throttling."""
        st, cap = self.state, self.mode().gpu_max_mhz or self.gpu_max
        lo = catalogue.sim_value("gpu_min_mhz")
        cur = cap if st.jetson_clocks or st.gpu_load >= 50 else max(lo, cap * (0.3 + 0.7 * st.gpu_load / 50.0))
        if st.gpu_cap_mhz is not None:
            cur = min(cur, st.gpu_cap_mhz)
        if self.thermally_throttled():
            cur = min(cur, THROTTLE_FRACTION * cap)
        return round(cur, 2)

    def thermally_throttled(self) -> bool:
        return any(self.state.temps.get(z, 0) >= trips[0][0] for z, trips in self.trips.items()
                   if z not in self.state.offline and z not in self.state.removed)

    def online(self) -> list[bool]:
        cores = self.mode().cores or self.mod.cpu_cores
        return [i < cores for i in range(self.mod.cpu_cores)]

    def cpu_mhz(self, i: int) -> int:
        cap = self.mode().cpu_max_mhz or self.cpu_max
        load = self.state.cpu_load[i] if i < len(self.state.cpu_load) else 0.0
        return int(cap if self.state.jetson_clocks else max(catalogue.sim_value("cpu_min_mhz"), cap * (0.4 + 0.6 * load / 100)))

    def rail_mw(self) -> dict[str, float]:
        """Power per rail name from loads and clocks (a simple model; only its plausibility matters)."""
        st = self.state
        on = self.online()
        cpu = sum(150 + 12 * st.cpu_load[i] * self.cpu_mhz(i) / 1500 for i in range(len(on)) if on[i])
        gpu = 100 + 40 * st.gpu_load * self.gpu_mhz() / 1000
        soc, ddr = 1100.0, 400 + 0.05 * st.mem_used_mb
        out = {}
        for dev in self._rails():
            for name in dev["rails"]:
                u = name.upper()
                if u == "NC":
                    v = 0.0
                elif "IN" in u.split("_") or u.endswith("_IN"):
                    v = 1500 + cpu + gpu + soc + ddr
                elif "GPU" in u and "CPU" in u:
                    v = cpu + gpu
                elif "GPU" in u:
                    v = gpu + (soc if "SOC" in u else 0)
                elif "CPU" in u:
                    v = cpu + (soc * 0.3 if "SOC" in u else 0)
                elif "SOC" in u:
                    v = soc
                elif "DDR" in u or "VDDQ" in u or "VDDRQ" in u:
                    v = ddr
                elif "5V" in u:
                    v = 1500.0
                else:
                    v = 0.0
                out[name] = v
        return out

    def write(self) -> None:
        """Rewrite every file that depends on the state; `self.written` keeps what was written, in reader units."""
        st, mod, w = self.state, self.mod, {}
        on = self.online()
        for i, flag in enumerate(on):
            d = f"/sys/devices/system/cpu/cpu{i}"
            if i > 0:
                self._put(self.p(f"{d}/online"), f"{int(flag)}\n")
            cap = int((self.mode().cpu_max_mhz or self.cpu_max) * 1000)
            self._put(self.p(f"{d}/cpufreq/cpuinfo_max_freq"), f"{int(self.cpu_max * 1000)}\n")
            self._put(self.p(f"{d}/cpufreq/scaling_max_freq"), f"{cap}\n")
            low = cap if st.jetson_clocks else int(catalogue.sim_value("cpu_min_mhz") * 1000)
            self._put(self.p(f"{d}/cpufreq/scaling_min_freq"), f"{low}\n")
            self._put(self.p(f"{d}/cpufreq/scaling_cur_freq"), f"{self.cpu_mhz(i) * 1000}\n")
        self._put(self.p("/sys/devices/system/cpu/online"), _ranges([i for i, flag in enumerate(on) if flag]) + "\n")
        w["cpu_mhz"] = {i: float(self.cpu_mhz(i)) for i in range(len(on)) if on[i]}
        w["online"] = on
        self._write_stat()
        total_kb, used_kb = mod.ram_mb * 1024, int(st.mem_used_mb * 1024)
        swap_kb = mod.ram_mb * 512
        self._put(self.p("/proc/meminfo"),
               f"MemTotal:       {total_kb} kB\nMemFree:        {max(0, total_kb - used_kb - 102400)} kB\n"
               f"MemAvailable:   {total_kb - used_kb} kB\nBuffers:           20480 kB\nCached:           81920 kB\n"
               f"SwapTotal:      {swap_kb} kB\nSwapFree:       {swap_kb} kB\n")
        w["ram_total_mb"], w["ram_used_mb"], w["swap_used_mb"] = total_kb / 1024, used_kb / 1024, 0.0
        # thermal
        w["temps"] = {}
        for k, name in enumerate(mod.thermal):
            d = self.p(f"/sys/devices/virtual/thermal/thermal_zone{k}")
            if name in st.removed:
                self._drop(d)
                continue
            if not (d / "type").exists():
                self._build_thermal()
            mc = -256000 if name in st.offline else int(round(st.temps.get(name, 40.0) * 1000))
            self._put(d / "temp", f"{mc}\n")
            w["temps"][name] = None if mc == -256000 else mc / 1000
        # GPU
        d, mhz = self.gpu_devfreq, self.gpu_mhz()
        cap = self.mode().gpu_max_mhz or self.gpu_max
        self._put(self.p(f"{d}/cur_freq"), f"{int(mhz * 1e6)}\n")
        self._put(self.p(f"{d}/max_freq"), f"{int(cap * 1e6)}\n")
        self._put(self.p(f"{d}/min_freq"), f"{int((cap if st.jetson_clocks else catalogue.sim_value('gpu_min_mhz')) * 1e6)}\n")
        per_mille = int(round(st.gpu_load * 10))
        self._put(self.p(f"{os.path.dirname(os.path.dirname(d))}/load"), f"{per_mille}\n")
        w["gpu"] = {"load": per_mille / 10, "mhz": int(mhz * 1e6) / 1e6, "max_mhz": int(cap * 1e6) / 1e6}
        emc_hz = 2133000000 if mod.soc == "tegra234" else 1600000000
        self._put(self.p(mod.emc_rate), f"{emc_hz}\n")
        w["emc_mhz"] = emc_hz / 1e6
        # power
        w["rails"] = self._write_power()
        self._put(self.p("/var/lib/nvpmodel/status"), f"pmode:{st.mode:04d}\n")
        w["mode"] = (st.mode, self.mode().name)
        self.written = w
        self.save()

    def _write_power(self) -> dict[str, float]:
        hwmon = self.line["power"] == "hwmon"
        mw = self.rail_mw()
        out = {}
        for k, dev in enumerate(self._rails()):
            base = f"/sys/bus/i2c/devices/{dev['bus']}"
            if dev["bus"] in self.state.removed:
                self._drop(self.p(base))
                continue
            if not self.p(f"{base}/name").exists():
                self._build_power()
            for j, name in enumerate(dev["rails"]):
                mv = 5000 if ("IN" in name.upper().split("_") or "5V" in name.upper()) else 1000
                ma = int(round(mw[name] * 1000 / mv))
                if hwmon:
                    d = f"{base}/hwmon/hwmon{k + 1}"
                    self._put(self.p(f"{d}/in{j + 1}_input"), f"{mv}\n")
                    self._put(self.p(f"{d}/curr{j + 1}_input"), f"{ma}\n")
                    self._put(self.p(f"{d}/curr{j + 1}_crit_alarm"), f"{int(self.state.overcurrent == name)}\n")
                    val = mv * ma / 1000.0
                else:
                    d = f"{base}/iio:device{k}"
                    val = float(int(round(mw[name])))
                    self._put(self.p(f"{d}/in_power{j}_input"), f"{int(val)}\n")
                    self._put(self.p(f"{d}/in_voltage{j}_input"), f"{mv}\n")
                    self._put(self.p(f"{d}/in_current{j}_input"), f"{ma}\n")
                if name != "NC":
                    out[name] = val
        return out

    def _write_stat(self) -> None:
        on = self.online()
        lines, agg = [], [0, 0, 0, 0]
        rows = []
        for i, flag in enumerate(on):
            busy, total = (int(v) for v in self.state.ticks[i])
            user, system, idle = busy * 3 // 4, busy - busy * 3 // 4, total - busy
            if flag:
                rows.append(f"cpu{i} {user} 0 {system} {idle} 0 0 0 0 0 0")
                agg = [agg[0] + user, 0, agg[2] + system, agg[3] + idle]
        lines.append(f"cpu  {agg[0]} 0 {agg[2]} {agg[3]} 0 0 0 0 0 0")
        lines += rows
        lines += ["intr 0", "ctxt 0", f"btime {int(time.time()) - 3600}", "processes 1", "procs_running 1", "procs_blocked 0"]
        self._put(self.p("/proc/stat"), "\n".join(lines) + "\n")

    def advance(self, seconds: float) -> None:
        """Let `seconds` of CPU time pass at the current loads (online cores only), then rewrite /proc/stat."""
        on = self.online()
        for i, flag in enumerate(on):
            if flag:
                ticks = seconds * USER_HZ
                self.state.ticks[i][0] += ticks * self.state.cpu_load[i] / 100.0
                self.state.ticks[i][1] += ticks
        self._write_stat()

    def _put(self, path: Path, text: str) -> None:
        """Write a dynamic file only when its content changes (a tick then costs a few writes, not a hundred)."""
        if self._cache.get(path) != text or not path.exists():
            _write(path, text)
            self._cache[path] = text

    def _drop(self, path: Path) -> None:
        _remove_tree(path)
        for p in [p for p in self._cache if path in p.parents]:
            del self._cache[p]

    # ------------------------------------------------------------------ changes
    def update(self, **changes) -> None:
        """Change the state (scenario keys, plus `temps={zone: °C}`) and rewrite the files."""
        st = self.state
        for key, val in changes.items():
            if key == "temps":
                for zone, t in val.items():
                    self._zone(zone)
                    st.temps[zone] = float(t)
            elif key == "mode":
                self._apply_mode(int(val))
            elif key == "cpu_load":
                st.cpu_load = [float(v) for v in val] if isinstance(val, list) else [float(val)] * self.mod.cpu_cores
            elif key in ("offline", "remove"):
                names = [val] if isinstance(val, str) else list(val)
                target = st.offline if key == "offline" else st.removed
                target[:] = sorted(set(target) | set(names))
            elif key == "restore":
                names = set([val] if isinstance(val, str) else val)
                st.offline = [n for n in st.offline if n not in names]
                st.removed = [n for n in st.removed if n not in names]
            elif key in ("gpu_load", "mem_used_mb"):
                setattr(st, key, float(val))
            elif key == "gpu_cap_mhz":
                st.gpu_cap_mhz = None if val is None else float(val)
            elif key in ("jetson_clocks", "overcurrent"):
                setattr(st, key, val)
            else:
                raise KeyError(f"unknown simulator setting {key!r}")
        self.write()

    def _zone(self, zone: str) -> None:
        if zone not in self.mod.thermal:
            raise KeyError(f"{self.mod.key} has no thermal zone {zone!r}; zones: {', '.join(self.mod.thermal)}")

    def _apply_mode(self, mode_id: int) -> None:
        if not any(m.id == mode_id for m in self.modes):
            raise ValueError(f"{self.mod.key} on JetPack {self.jetpack} has no power mode {mode_id}; "
                             f"modes: {', '.join(f'{m.id} {m.name}' for m in self.modes)}")
        self.state.mode = mode_id

    # ------------------------------------------------------------------ persistence (for the stand-ins)
    def save(self) -> None:
        _write(self.root / STATE_FILE, json.dumps({"module": self.mod.key, "jetpack": self.jetpack, "state": asdict(self.state)}))

    @classmethod
    def load(cls, root: str | Path) -> SimJetson:
        saved = json.loads((Path(root) / STATE_FILE).read_text())
        return cls(root, saved["module"], saved["jetpack"], State(**saved["state"]))

    def sync_mode(self) -> None:
        """Adopt a mode set from outside (the nvpmodel stand-in) while a scenario plays."""
        from .nvpmodel import read_mode

        mode = read_mode(self.root, self.modes)
        if mode.known and mode.id != self.state.mode:
            self.state.mode = mode.id


def _ranges(idx: list[int]) -> str:
    """[0, 1, 2, 5] → '0-2,5', the kernel's cpu list format."""
    out, start = [], None
    for k, i in enumerate(idx):
        if start is None:
            start = i
        if k + 1 == len(idx) or idx[k + 1] != i + 1:
            out.append(f"{start}-{i}" if i != start else f"{i}")
            start = None
    return ",".join(out)


def _remove_tree(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------- scenarios
@dataclass
class Scenario:
    module: str
    jetpack: str | None
    events: list[dict]
    description: str = ""
    start: dict = field(default_factory=dict)
    end_s: float = 0.0
    name: str = ""


def load_scenario(path: str | Path) -> Scenario:
    """A scenario file (JSON, or TOML on Python 3.11+), checked: a known module and JetPack line, known settings
    and zones, numeric times that never go backwards. ValueError/KeyError with one clear line otherwise."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise OSError(f"scenario {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        else:
            raw = json.loads(text)
    except ImportError:
        raise ValueError(f"scenario {path}: TOML needs Python 3.11 (use JSON)") from None
    except ValueError as exc:
        raise ValueError(f"scenario {path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({exc})") from None
    return check_scenario(raw, str(path))


def check_scenario(raw: dict, where: str = "scenario") -> Scenario:
    if not isinstance(raw, dict) or "module" not in raw:
        raise ValueError(f"{where}: needs a 'module' (one of {', '.join(catalogue.names())})")
    try:
        mod = catalogue.module(str(raw["module"]))
    except KeyError as exc:
        raise KeyError(f"{where}: {exc.args[0]}") from None
    jp = raw.get("jetpack")
    if jp is not None and catalogue._line(str(jp)) not in mod.jetpacks:
        raise ValueError(f"{where}: {mod.key} runs JetPack {', '.join(mod.jetpacks)}, not {jp}")
    modes = {m.id for m in mod.modes(str(jp) if jp else None)[0]}
    events = raw.get("events", [])
    if not isinstance(events, list):
        raise ValueError(f"{where}: 'events' must be a list")
    last = 0.0
    for k, ev in enumerate([{"t": 0, "set": raw.get("start", {})}] + events):
        label = "start" if k == 0 else f"event {k}"
        if not isinstance(ev, dict) or not isinstance(ev.get("t"), (int, float)) or isinstance(ev.get("t"), bool):
            raise ValueError(f"{where}: {label} needs a numeric time 't' in seconds")
        if ev["t"] < last:
            raise ValueError(f"{where}: {label} at t={ev['t']} s goes back in time (the previous event is at t={last} s)")
        last = float(ev["t"])
        for kind in ("set", "ramp"):
            for key, val in (ev.get(kind) or {}).items():
                _check_key(where, label, kind, key, val, mod, modes)
        if ev.get("ramp") and not isinstance(ev.get("over"), (int, float)):
            raise ValueError(f"{where}: {label} ramps, so it needs 'over' (seconds)")
        unknown = set(ev) - {"t", "set", "ramp", "over", "note"}
        if unknown:
            raise ValueError(f"{where}: {label} has unknown fields {sorted(unknown)}")
    end = max([float(e["t"]) + float(e.get("over", 0)) for e in events] + [0.0])
    return Scenario(mod.key, str(jp) if jp else None, events, raw.get("description", ""), raw.get("start", {}),
                    float(raw.get("end", end + 1.0)), raw.get("name", ""))


def _check_key(where, label, kind, key, val, mod, modes) -> None:
    if key.startswith("temp."):
        zone = key[5:]
        if zone not in mod.thermal:
            raise KeyError(f"{where}: {label}: {mod.key} has no thermal zone {zone!r} (zones: {', '.join(mod.thermal)})")
        if not isinstance(val, (int, float)):
            raise ValueError(f"{where}: {label}: {key} must be a number (°C)")
        return
    if key not in SCENARIO_KEYS:
        raise KeyError(f"{where}: {label}: unknown setting {key!r} (known: temp.<zone>, {', '.join(sorted(SCENARIO_KEYS))})")
    if kind == "ramp" and key not in RAMPABLE:
        raise ValueError(f"{where}: {label}: {key} cannot ramp (rampable: temp.<zone>, {', '.join(sorted(RAMPABLE))})")
    if key == "mode" and val not in modes:
        raise ValueError(f"{where}: {label}: {mod.key} has no power mode {val!r} (modes: {sorted(modes)})")


def _changes(values: dict) -> dict:
    out, temps = {}, {}
    for k, v in values.items():
        if k.startswith("temp."):
            temps[k[5:]] = v
        else:
            out[k] = v
    if temps:
        out["temps"] = temps
    return out


def scenario_state(sc: Scenario, t: float, base: dict) -> dict:
    """The settings in force at scenario time `t`: every `set` at or before t, ramps interpolated from the value
    the setting had when the ramp began. `base` gives the starting values of rampable settings."""
    cur = dict(base)
    cur.update(sc.start)
    for ev in sc.events:
        if ev["t"] > t:
            break
        cur.update(ev.get("set") or {})
        for key, target in (ev.get("ramp") or {}).items():
            start = cur.get(key, target)
            start = start if isinstance(start, (int, float)) else float(target)
            frac = 1.0 if ev["over"] <= 0 else min(1.0, (t - ev["t"]) / ev["over"])
            cur[key] = start + (target - start) * frac
    return cur


def set_start(sim: SimJetson, sc: Scenario) -> None:
    """Put the device in the scenario's starting state (before anyone starts reading it)."""
    if sc.start:
        sim.update(**_changes(sc.start))


def play(sim: SimJetson, sc: Scenario, time_scale: float = 1.0, tick: float = 0.05, stop: threading.Event | None = None,
         on_change=None) -> None:
    """Play a scenario on a built simulator in real time divided by `time_scale` (10 → ten times faster), rewriting
    the files every `tick` wall seconds and letting CPU time pass in /proc/stat. `on_change(t, settings)` is called
    when the settings change (the benchmark times how soon a snapshot shows it)."""
    if time_scale <= 0:
        raise ValueError("time_scale must be > 0")
    base = {"gpu_load": sim.state.gpu_load, "mem_used_mb": sim.state.mem_used_mb, "cpu_load": sim.state.cpu_load[0],
            **{f"temp.{z}": t for z, t in sim.state.temps.items()}}
    t0 = last = time.monotonic()
    applied: dict = {}
    times = sorted({float(ev["t"]) for ev in sc.events})
    while True:
        now = time.monotonic()
        t = (now - t0) * time_scale
        sim.advance(now - last)
        last = now
        sim.sync_mode()
        # every event's settings are written at least once, even when a slow tick jumps past a short episode
        while times and times[0] <= t:
            at = times.pop(0)
            applied = _apply(sim, scenario_state(sc, at, base), applied, at, on_change)
        applied = _apply(sim, scenario_state(sc, min(t, sc.end_s), base), applied, t, on_change)
        if t >= sc.end_s or (stop is not None and stop.is_set()):
            return
        if stop is not None:
            stop.wait(tick)
        else:
            time.sleep(tick)


def _apply(sim: SimJetson, want: dict, applied: dict, t: float, on_change) -> dict:
    diff = {k: v for k, v in want.items() if applied.get(k) != v}
    if diff:
        sim.update(**_changes(diff))
        if on_change is not None:
            on_change(t, diff)
    return {**applied, **diff}


def scenarios_dir() -> Path:
    return Path(__file__).with_name("scenarios")


def shipped_scenarios() -> list[Path]:
    return sorted(scenarios_dir().glob("*.json"))


def resolve_scenario(name: str | Path) -> Path:
    """A scenario path, or the name of a shipped one ('orin-nx-25w-to-10w')."""
    p = Path(name)
    if p.exists():
        return p
    shipped = scenarios_dir() / f"{name}.json"
    if shipped.exists():
        return shipped
    raise OSError(f"scenario {name}: no such file (shipped: {', '.join(s.stem for s in shipped_scenarios())})")


# ---------------------------------------------------------------------- stand-ins
def _temp_name(zone: str, fmt: str) -> str:
    fixed = {"thermal-fan-est": "thermal", "PMIC-Die": "PMIC", "Tboard_tegra": "Tboard", "Tdiode_tegra": "Tdiode"}
    if zone in fixed:
        return fixed[zone]
    base = zone.replace("-thermal", "").replace("-therm", "")
    if base == "tj" or not zone.endswith("-thermal"):
        return base  # AO, CPU, GPU, AUX (…-therm) as they are; tj lower-case on every line
    return base.lower() if fmt in ("jp6", "jp7", "jp72") else base.upper()  # JP5 CPU@, CV0@ / JP6+ cpu@, cv0@


def render_tegrastats(sim: SimJetson, fmt: str | None = None, avg: dict | None = None, when: float | None = None) -> str:
    """A tegrastats line in the given format (the JetPack line's by default), from the tree as the readers see it."""
    from . import cpu, gpu, memory, power, thermal

    fmt = fmt or sim.line["tegrastats"]
    root = str(sim.root)
    parts = []
    if fmt not in ("jp3", "jp4"):
        parts.append(time.strftime("%m-%d-%Y %H:%M:%S", time.localtime(when)))
    mem = memory.read_memory(root)
    parts.append(f"RAM {int(mem.ram_used_mb or 0)}/{int(mem.ram_total_mb or 0)}MB (lfb 4x4MB)")
    parts.append(f"SWAP {int(mem.swap_used_mb or 0)}/{int(mem.swap_total_mb or 0)}MB (cached 0MB)")
    if sim.mod.soc == "tegra210":
        parts.append("IRAM 0/252kB(lfb 252kB)")
    entries = ["off" if not c.online else f"{int(round(sim.state.cpu_load[c.index]))}%@{int(c.mhz or 0)}"
               for c in cpu.read_cores(root)]
    parts.append(f"CPU [{','.join(entries)}]")
    g = gpu.read_gpu(root)
    parts.append("EMC_FREQ 12%@2133" if sim.mod.soc == "tegra234" else "EMC_FREQ 12%@1600")
    load, mhz = int(round(g.load_pct or 0)), int(round(g.cur_mhz or 0))
    gpcs = sim.mod.raw.get("gpcs", 2 if sim.mod.key.startswith("agx-orin") else 1)
    if fmt == "jp7":
        parts.append(f"GR3D_FREQ @[{','.join([str(mhz)] * gpcs)}]")
    elif fmt in ("jp6", "jp72"):
        parts.append(f"GR3D_FREQ {load}%@[{','.join([str(mhz)] * gpcs)}]")
    else:
        parts.append(f"GR3D_FREQ {load}%@{mhz}")
    if fmt in ("jp6", "jp7", "jp72") and sim.mod.dla:
        parts.append(" ".join(f"NVDLA{i} off" for i in range(sim.mod.dla)))
    parts.append("APE 174")
    for z in thermal.read_thermal(root):
        name = _temp_name(z.name, fmt)
        val = "-256" if z.temp_c is None else f"{round(z.temp_c, 3):g}"
        parts.append(f"{name}@{val}C/{val}C" if fmt == "jp72" else f"{name}@{val}C")
    avg = avg if avg is not None else {}
    for r in power.read_power(root).rails:
        cur = int(round(r.mw or 0))
        avg[r.name] = (avg.get(r.name, cur) + cur) // 2
        if fmt in ("jp3", "jp4"):
            parts.append(f"{r.name} {cur}/{avg[r.name]}")
        elif fmt == "jp72":
            parts.append(f"{r.name} {cur}mW/{avg[r.name]}mW/{max(cur, avg[r.name])}mW")
        else:
            parts.append(f"{r.name} {cur}mW/{avg[r.name]}mW")
    return " ".join(parts)


def tegrastats_main(root: str, argv: list[str]) -> int:
    """The simulated `tegrastats [--interval MS]`: a line per interval until killed."""
    interval_ms = 1000
    if "--interval" in argv:
        try:
            interval_ms = max(1, int(argv[argv.index("--interval") + 1]))
        except (IndexError, ValueError):
            print("tegrastats: --interval needs milliseconds", file=sys.stderr)
            return 2
    avg: dict = {}
    try:
        while True:
            sim = SimJetson.load(root)
            print(render_tegrastats(sim, avg=avg), flush=True)
            time.sleep(interval_ms / 1000)
    except (KeyboardInterrupt, BrokenPipeError):
        return 0


def nvpmodel_main(root: str, argv: list[str]) -> int:
    """The simulated `nvpmodel`: -q [--verbose], -p --verbose, -m ID (rewrites the tree as the mode would)."""
    sim = SimJetson.load(root)
    if "-m" in argv or "--mode" in argv:
        flag = "-m" if "-m" in argv else "--mode"
        try:
            mode_id = int(argv[argv.index(flag) + 1])
            sim.update(mode=mode_id)
        except (IndexError, ValueError) as exc:
            print(f"NVPM ERROR: {exc}", file=sys.stderr)
            return 1
        return 0
    if "-q" in argv or "--query" in argv:
        m = sim.mode()
        print(f"NV Power Mode: {m.name}\n{m.id}")
        return 0
    if "-p" in argv:
        print("NVPM VERB: Config file: /etc/nvpmodel.conf\nNVPM VERB: parsing done for /etc/nvpmodel.conf")
        for line in sim.conf_text().splitlines():
            if line.startswith("<"):
                line = line.strip("<> ").replace("POWER_MODEL ", "POWER_MODEL: ").replace("PM_CONFIG ", "PM_CONFIG: ")
            print(f"NVPM VERB: {line}")
        return 0
    print("usage: nvpmodel [-q] [-p --verbose] [-m ID]", file=sys.stderr)
    return 2
