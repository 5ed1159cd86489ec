"""floatedge.devices: identity and catalogue, telemetry readers against simulated Jetsons, the sampler while a
scenario plays, the commands. Everything runs here (no Jetson): the simulator writes the files a real module has
and the readers read them back."""
from __future__ import annotations

from pathlib import Path

import pytest

from floatedge.devices import catalogue
from floatedge.devices.identity import jetson_identity, read_identity


# ------------------------------------------------------------------------------------------ identity
def _tree(root: Path, dts: str | None, release: str | None, compatible: str | None = None) -> Path:
    if dts is not None or compatible is not None:
        (root / "proc/device-tree").mkdir(parents=True)
    if dts is not None:
        (root / "proc/device-tree/nvidia,dtsfilename").write_bytes(dts.encode() + b"\0")
    if compatible is not None:
        (root / "proc/device-tree/compatible").write_bytes(compatible.replace(" ", "\0").encode() + b"\0")
    if release is not None:
        (root / "etc").mkdir(parents=True)
        (root / "etc/nv_tegra_release").write_text(release)
    return root


@pytest.mark.parametrize("dts, release, compatible, want", [
    # real dtsfilename / nv_tegra_release strings (Orin NX JP6.2, Xavier NX JP5.1, Nano JP4.6)
    ("/dvs/git/dirty/git-master_linux/kernel-dts/tegra234-p3767-0000-p3768-0000-a0.dts",
     "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 2025", None,
     {"device": "p3767-0000", "l4t": "36.4.3"}),
    ("hardware/nvidia/platform/t19x/jakku/kernel-dts/tegra194-p3668-0001-p3509-0000.dts",
     "# R35 (release), REVISION: 3.1, GCID: 32827747, BOARD: t186ref, EABI: aarch64, DATE: Sun Mar 19 2023", None,
     {"device": "p3668-0001", "l4t": "35.3.1"}),
    ("tegra210-p3448-0000-p3449-0000-b00.dts", "# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref", None,
     {"device": "p3448-0000", "l4t": "32.7.4"}),
    # AGX Thor has no dtsfilename: the module is the compatible entry without '+' (jetson_stats#711)
    (None, "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64",
     "nvidia,p4071-0000+p3834-0008 nvidia,p3834-0008 nvidia,tegra264", {"device": "p3834-0008", "l4t": "38.2.0"}),
    (None, None, None, {"device": "", "l4t": ""}),
    ("garbage-without-a-part-number.dts", "# not a release line", None, {"device": "garbage-without-a-part-number", "l4t": ""}),
])
def test_jetson_identity(tmp_path, dts, release, compatible, want):
    assert jetson_identity(_tree(tmp_path, dts, release, compatible)) == want


def test_identity_off_jetson_says_so_and_still_reports_cpu_and_ram(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal:       16384000 kB\nMemAvailable:    8000000 kB\n")
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nmodel name\t: Test CPU\nprocessor\t: 1\nmodel name\t: Test CPU\n")
    ident = read_identity(tmp_path, providers=False)
    assert not ident.is_jetson and "not a Jetson" in ident.note
    assert (ident.cpu, ident.cpu_count, ident.ram_mb) == ("Test CPU", 2, 16000)


# ------------------------------------------------------------------------------------------ catalogue
def test_every_catalogue_fact_has_a_source():
    assert catalogue.problems() == []


def test_catalogue_lookups():
    assert catalogue.module("orin-nx").key == "orin-nx-16gb"
    assert catalogue.by_part_number("p3767-0001").key == "orin-nx-8gb"
    assert catalogue.jetpack_for_l4t("36.4.3") == "6.2" and catalogue.jetpack_for_l4t("32.7.9") == "4.x"
    modes, default = catalogue.module("orin-nx-16gb").modes("6.2")
    assert default == 4 and [m.name for m in modes] == ["MAXN_SUPER", "10W", "15W", "25W", "40W"]
    assert "int8" not in catalogue.module("nano").precisions  # sm 5.3: FP16 yes, INT8 no (edge.md §1.5)
    assert catalogue.module("orin-nano-8gb").dla == 0  # fused off
    with pytest.raises(KeyError, match="unknown module 'orin-mega'"):
        catalogue.module("orin-mega")


# ------------------------------------------------------------------------------------------ readers vs simulated trees
import threading  # noqa: E402
import time  # noqa: E402

from click.testing import CliRunner  # noqa: E402

from floatedge.cli import main  # noqa: E402
from floatedge.devices import cpu, gpu, memory, nvpmodel, power, sampler, thermal, throttle  # noqa: E402
from floatedge.devices.simulate import SimJetson, load_scenario, play, render_tegrastats, resolve_scenario, set_start  # noqa: E402
from floatedge.devices.tegrastats import parse_line  # noqa: E402

# eight modules over JetPack 4, 5, 6 and 7: iio and hwmon rails, -therm and -thermal zones, every GPU devfreq layout
TREES = [("nano", "4.6"), ("tx2", "4.6"), ("agx-xavier", "4.6"), ("xavier-nx", "5.1"), ("agx-orin-64gb", "5.1"),
         ("orin-nx-16gb", "6.0"), ("orin-nano-8gb", "6.2"), ("thor", "7.1")]


def pair(mode: nvpmodel.PowerMode) -> tuple:
    return mode.id, mode.name


def _busy(sim: SimJetson) -> None:
    """A distinctive state, then one second of CPU time so that /proc/stat deltas carry the loads."""
    n = sim.mod.cpu_cores
    zones = sim.mod.thermal
    sim.update(gpu_load=73, cpu_load=[(10 + 7 * i) % 97 for i in range(n)], mem_used_mb=sim.mod.ram_mb // 3,
               temps={z: 41.5 + i for i, z in enumerate(zones) if z != "PMIC-Die"}, offline=[zones[1]])
    sim.advance(1.0)


@pytest.mark.parametrize("module, jetpack", TREES)
def test_readers_read_back_what_the_simulator_wrote(tmp_path, module, jetpack):
    sim = SimJetson(tmp_path, module, jetpack).build()
    prev = cpu.read_stat(tmp_path)
    _busy(sim)
    w = sim.written
    # identity
    ident = __import__("floatedge.devices.identity", fromlist=["read_identity"]).read_identity(tmp_path, providers=False)
    line = catalogue.jetpack_line(jetpack)
    assert (ident.module, ident.part_number, ident.l4t, ident.jetpack) == (sim.mod.key, sim.mod.part_numbers[0], line["l4t"],
                                                                          catalogue.jetpack_for_l4t(line["l4t"]))
    assert (ident.cuda.startswith(line["cuda"]), ident.tensorrt, ident.tensorrt_from) == (True, line["tensorrt"], "dpkg")
    assert jetson_identity(tmp_path) == {"device": sim.mod.part_numbers[0], "l4t": line["l4t"]}
    assert ident.modes_from == "nvpmodel.conf" and [m["id"] for m in ident.modes] == [m.id for m in sim.modes]
    # power: every rail but NC, the input rail or the sum as the total
    pw = power.read_power(tmp_path)
    assert pw.by_name() == w["rails"] and "NC" not in pw.by_name()
    inputs = [r for r in ("VDD_IN", "POM_5V_IN") if r in w["rails"]]
    assert pw.total_mw == (w["rails"][inputs[0]] if inputs else sum(w["rails"].values()))
    assert pw.total_from == (inputs[0] if inputs else "sum")
    assert {s.kind for s in power.find_rails(tmp_path)} == {"iio" if line["power"] == "iio" else "hwmon"}
    # thermal: temperatures, offline sensor, passive trips
    zones = {z.name: z for z in thermal.read_thermal(tmp_path)}
    assert {n: z.temp_c for n, z in zones.items()} == w["temps"]
    assert zones[sim.mod.thermal[1]].online is False
    for name, trips in sim.trips.items():
        assert zones[name].passive_c == trips[0][0]
    # GPU
    g = gpu.read_gpu(tmp_path, full=True)
    assert (g.load_pct, g.cur_mhz, g.max_mhz) == (w["gpu"]["load"], w["gpu"]["mhz"], w["gpu"]["max_mhz"])
    assert g.available_mhz and max(g.available_mhz) >= g.max_mhz
    # CPU: loads from the /proc/stat delta, offline cores, clocks
    cores = cpu.read_cores(tmp_path, prev, cpu.read_stat(tmp_path))
    assert [c.online for c in cores] == w["online"]
    for c in cores:
        if c.online:
            assert c.load_pct == pytest.approx(sim.state.cpu_load[c.index], abs=1e-9) and c.mhz == w["cpu_mhz"][c.index]
    # memory and EMC
    m = memory.read_memory(tmp_path, memory.find_emc(tmp_path))
    assert (m.ram_total_mb, m.ram_used_mb, m.swap_used_mb, m.emc_mhz) == (w["ram_total_mb"], w["ram_used_mb"], 0.0, w["emc_mhz"])
    # power mode: status file, nvpmodel.conf, and the stand-in binary agree
    mode = nvpmodel.read_mode(tmp_path)
    assert (mode.id, mode.name) == w["mode"]
    assert pair(nvpmodel.query(tmp_path)) == (mode.id, mode.name)
    table, default = nvpmodel.modes(tmp_path)
    assert [(m.id, m.name, m.cores) for m in table] == [(m.id, m.name, m.cores or sim.mod.cpu_cores) for m in sim.modes]
    assert default == sim.mod.modes(jetpack)[1]
    assert nvpmodel.jetson_clocks(tmp_path, gpu.find_gpu(tmp_path).devfreq) == "off"
    sim.update(jetson_clocks=True)
    assert nvpmodel.jetson_clocks(tmp_path, gpu.find_gpu(tmp_path).devfreq) == "on"


@pytest.mark.parametrize("module, jetpack", [("tx2", "3.3"), ("nano", "4.6"), ("orin-nx-16gb", "5.1"), ("agx-orin-64gb", "6.2"),
                                             ("thor", "7.0"), ("orin-nano-8gb", "7.2")])
def test_simulated_tegrastats_lines_parse_back_to_the_tree(tmp_path, module, jetpack):
    """The stand-in prints each JetPack line's format; parsing it gives what the sysfs readers give."""
    sim = SimJetson(tmp_path, module, jetpack).build()
    _busy(sim)
    s = parse_line(render_tegrastats(sim))
    assert s.unparsed == [] and s.ram_used_mb == int(sim.written["ram_used_mb"])
    assert s.power_mw == {k: round(v) for k, v in sim.written["rails"].items()}
    assert s.gpu_mhz == round(sim.written["gpu"]["mhz"])
    assert s.gpu_load == (None if sim.line["tegrastats"] == "jp7" else 73)
    online = sum(1 for c in s.cpu if c is not None)
    assert online == sum(sim.written["online"]) and len(s.cpu) == sim.mod.cpu_cores
    assert len(s.temps_c) == sum(1 for t in sim.written["temps"].values() if t is not None)


def test_bad_files_read_as_unknown_never_raise(tmp_path):
    sim = SimJetson(tmp_path, "orin-nx-16gb", "6.2").build()
    zone0 = tmp_path / "sys/devices/virtual/thermal/thermal_zone0"
    (zone0 / "temp").write_text("garbage\n")
    (tmp_path / "sys/devices/virtual/thermal/thermal_zone2/temp").write_text("")
    (tmp_path / "sys/devices/virtual/thermal/thermal_zone3/temp").unlink()
    (tmp_path / "sys/devices/virtual/thermal/thermal_zone3/temp").mkdir()  # read() fails: IsADirectoryError
    hw = next((tmp_path / "sys/bus/i2c/devices/1-0040/hwmon").iterdir())
    (hw / "curr1_input").write_bytes(b"\xff\xfe\x00")
    (tmp_path / sim.gpu_devfreq.lstrip("/") / "cur_freq").write_text("-")
    (tmp_path / "proc/meminfo").write_text("MemTotal: lots kB\n")
    (tmp_path / "proc/stat").write_text("cpu0 a b c\ncpu1 1 2\n")
    (tmp_path / "var/lib/nvpmodel/status").write_text("pmode:??\n")
    zones = {z.name: z.temp_c for z in thermal.read_thermal(tmp_path)}
    assert zones["cpu-thermal"] is None and zones["cv0-thermal"] is None and zones["cv1-thermal"] is None
    assert zones["gpu-thermal"] == 40.0
    assert power.read_power(tmp_path).by_name().get("VDD_IN") is None
    assert gpu.read_gpu(tmp_path).cur_mhz is None
    assert memory.read_memory(tmp_path).ram_total_mb is None
    assert cpu.read_stat(tmp_path) == {}
    assert nvpmodel.read_mode(tmp_path) == nvpmodel.UNKNOWN
    snap = sampler.SysfsSource(tmp_path).read()
    assert snap.mode == "unknown" and snap.ram_used_mb is None and any("offline" in e for e in snap.errors)


def test_nvpmodel_query_without_a_binary_or_with_a_failing_one(tmp_path):
    assert nvpmodel.query(tmp_path) == nvpmodel.PowerMode(None, "unknown", "nvpmodel not found")
    stub = tmp_path / "usr/sbin/nvpmodel"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\necho 'NVPM ERROR: not root' >&2\nexit 1\n")
    stub.chmod(0o755)
    mode = nvpmodel.query(tmp_path)
    assert mode.name == "unknown" and "not root" in mode.source
    stub.write_text("#!/bin/sh\necho 'NVPM WARN: fan mode is not set!'\necho 'NV Power Mode: MODE_15W'\necho 2\n")
    assert pair(nvpmodel.query(tmp_path)) == (2, "MODE_15W")


def test_nvpmodel_verbose_output_parses_like_the_conf():
    """The format of `nvpmodel -p --verbose` (jetson_stats tests/nvpmodel, show_verbose_nano)."""
    text = ("NVPM VERB: PM_CONFIG: DEFAULT=MAXN(0)\nNVPM VERB: POWER_MODEL: ID=0 NAME=MAXN\nNVPM VERB: CPU_ONLINE CORE_0 1\n"
            "NVPM VERB: CPU_ONLINE CORE_1 1\nNVPM VERB: GPU MAX_FREQ 2147483647\nNVPM VERB: \nNVPM VERB: POWER_MODEL: ID=1 NAME=5W\n"
            "NVPM VERB: CPU_ONLINE CORE_0 1\nNVPM VERB: CPU_ONLINE CORE_1 0\nNVPM VERB: GPU MAX_FREQ 640000000\n")
    modes, default = nvpmodel.parse_conf(text)
    assert default == 0 and [(m.id, m.name, m.cores, m.gpu_max_mhz) for m in modes] == [(0, "MAXN", 2, None), (1, "5W", 1, 640.0)]


def test_set_mode_refuses_a_core_count_change_and_switches_otherwise(tmp_path):
    SimJetson(tmp_path, "orin-nx-16gb", "6.0").build()  # default 15W: 4 cores online
    with pytest.raises(ValueError, match="refusing mode 3 25W: it runs 8 CPU cores and 4 are online"):
        nvpmodel.set_mode(3, tmp_path)
    with pytest.raises(ValueError, match="power mode 9 is not defined"):
        nvpmodel.set_mode(9, tmp_path)
    assert pair(nvpmodel.set_mode(1, tmp_path)) == (1, "10W")  # 10W keeps the same four cores
    assert pair(nvpmodel.read_mode(tmp_path)) == (1, "10W")


@pytest.mark.parametrize("zones, gpu, rails, reasons", [
    ([thermal.Zone("gpu-thermal", 99.5, (thermal.Trip(99.0, "passive"),))], (10, 300, 918), [], ["thermal: gpu-thermal"]),
    ([thermal.Zone("PMIC-Die", 100.0, ())], (10, 300, 918), [], []),  # no passive trip: never counts
    ([thermal.Zone("gpu-thermal", None, (thermal.Trip(99.0, "passive"),))], (95, 918, 918), [], []),  # offline, at the cap
    ([], (95, 612, 918), [], ["clock: GPU 95% busy at 612 MHz"]),
    ([], (50, 300, 918), [], []),  # not loaded: a low clock is the governor's choice
    ([], (None, None, None), [power.Rail("VDD_IN", 5000.0, crit_alarm=True)], ["over-current: VDD_IN"]),
])
def test_throttling_rule(zones, gpu, rails, reasons):
    th = throttle.infer(zones, *gpu, rails=rails)
    assert th.active == bool(reasons) and len(th.reasons) == len(reasons)
    assert all(r.startswith(want) for r, want in zip(th.reasons, reasons, strict=True))


# ------------------------------------------------------------------------------------------ sampler
def test_sampler_never_blocks_a_caller(tmp_path, monkeypatch):
    SimJetson(tmp_path, "nano", "4.6").build()
    gate = threading.Event()
    real = sampler.SysfsSource.read

    def slow(self):
        gate.wait(10)  # a read stuck in the kernel
        return real(self)

    monkeypatch.setattr(sampler.SysfsSource, "read", slow)
    with sampler.Sampler("sysfs", 0.01, tmp_path) as s:
        assert s.latest() is None and s.history() == []  # returns while the reading thread is stuck
        gate.set()
        assert s.wait_for(lambda x: True, 5) is not None


def test_sampler_keeps_running_when_a_sensor_disappears(tmp_path, monkeypatch):
    monkeypatch.setattr(sampler, "REDISCOVER_S", 0.0)
    sim = SimJetson(tmp_path, "agx-orin-64gb", "6.2").build()
    with sampler.Sampler("sysfs", 0.01, tmp_path, capacity=50) as s:
        assert s.wait_for(lambda x: "gpu-thermal" in x.temps_c and "VDD_GPU_SOC" in x.power_mw, 5)
        sim.update(remove=["gpu-thermal", "1-0040"])
        gone = s.wait_for(lambda x: "gpu-thermal" not in x.temps_c and "VDD_GPU_SOC" not in x.power_mw, 5)
        assert gone is not None and gone.power_mw == {"VDDQ_VDD2_1V8AO": sim.written["rails"]["VDDQ_VDD2_1V8AO"]}
        sim.update(restore=["gpu-thermal", "1-0040"])
        back = s.wait_for(lambda x: "gpu-thermal" in x.temps_c and "VDD_GPU_SOC" in x.power_mw, 5)
        assert back is not None and s._thread.is_alive() and len(s.ring) <= 50


def _play_while_sampling(tmp_path, name: str, time_scale: float) -> list:
    sc = load_scenario(resolve_scenario(name))
    sim = SimJetson(tmp_path, sc.module, sc.jetpack).build()
    set_start(sim, sc)
    sim.advance(1.0)
    with sampler.Sampler("sysfs", 0.01, tmp_path, capacity=10_000) as s:
        play(sim, sc, time_scale=time_scale, tick=0.01)
        done = time.monotonic()
        assert s.wait_for(lambda x: x.t > done, 10) is not None  # one snapshot of the final state, however busy the machine
        return s.history()


def test_scenario_nano_heating_throttles_then_recovers(tmp_path):
    snaps = [x for x in _play_while_sampling(tmp_path, "nano-5w-heating", 20.0) if "GPU-therm" in x.temps_c]
    flags = [x.throttled for x in snaps]
    first, last = flags.index(True), len(flags) - 1 - flags[::-1].index(True)
    assert not any(flags[:first]) and not any(flags[last + 1:]) and all(flags[first:last + 1])  # one episode
    hot = snaps[first]
    assert hot.temps_c["GPU-therm"] >= 97.0 and hot.mode == "5W"
    assert any(r.startswith("thermal: GPU-therm") for r in hot.throttle_reasons)
    assert any(r.startswith("clock:") for r in snaps[(first + last) // 2].throttle_reasons)  # the GPU held at 60 % of 640 MHz
    assert snaps[(first + last) // 2].gpu_mhz == pytest.approx(0.6 * 640)
    assert snaps[-1].temps_c["GPU-therm"] < 97.0 and snaps[-1].gpu_load == 10.0


def test_scenario_orin_nx_25w_to_10w(tmp_path):
    snaps = _play_while_sampling(tmp_path, "orin-nx-25w-to-10w", 10.0)
    modes = [x.mode for x in snaps]
    assert modes[0] == "25W" and modes[-1] == "10W" and modes.count("25W") + modes.count("10W") == len(modes)
    before, after = snaps[0], snaps[-1]  # (snapshots during the switch may see it half done, as on a device)
    assert sum(c is not None for c in before.cpu) == 8 and sum(c is not None for c in after.cpu) == 4
    assert (before.gpu_max_mhz, after.gpu_max_mhz) == (918, 612)
    assert after.power_total_mw < before.power_total_mw and not after.throttled


def test_scenario_agx_orin_corun_hold_down_is_detected(tmp_path):
    snaps = _play_while_sampling(tmp_path, "agx-orin-corun", 10.0)
    held = [x for x in snaps if x.gpu_mhz == 420.75 and x.gpu_load == 98]
    assert held and all(x.throttled and any(r.startswith("clock:") for r in x.throttle_reasons) for x in held)
    flagged = [x for x in snaps if x.throttled]  # the episode, give or take a half-written tick at each end
    assert {r.split(":")[0] for x in flagged for r in x.throttle_reasons} == {"clock", "over-current"}
    assert len(flagged) <= len(held) + 4
    assert max(x.ram_used_mb for x in snaps) == 40000 and not snaps[-1].throttled and snaps[-1].gpu_load == 40


def test_tegrastats_source_reads_the_stand_in(tmp_path):
    sim = SimJetson(tmp_path, "orin-nano-8gb", "6.2").build()
    sim.update(gpu_load=55)
    with sampler.Sampler("tegrastats", 0.05, tmp_path) as s:
        snap = s.wait_for(lambda x: x.ram_total_mb is not None, 20)
    assert snap is not None and snap.source == "tegrastats" and snap.gpu_load == 55 and snap.mode == sim.mode().name
    assert snap.power_total_mw == round(sim.written["rails"]["VDD_IN"]) and not snap.errors


# ------------------------------------------------------------------------------------------ commands
def invoke(*args, **kw):
    r = CliRunner().invoke(main, list(args), **kw)
    assert "Traceback" not in r.output, r.output
    return r


def test_device_info_on_this_machine():
    r = invoke("device", "info")
    assert r.exit_code == 0
    if not Path("/etc/nv_tegra_release").exists():
        assert r.output.startswith("not a Jetson") and "ONNX Runtime providers:" in r.output and "MB RAM" in r.output
    r = invoke("device", "info", "--json")
    assert r.exit_code == 0 and "is_jetson" in __import__("json").loads(r.output)


def test_device_commands_on_a_simulated_orin(tmp_path):
    root = str(tmp_path / "fe-orin")
    r = invoke("device", "simulate", "orin-nx", "--root", root, "--jetpack", "6.0")
    assert r.exit_code == 0 and "Jetson Orin NX 16GB" in r.output
    r = invoke("device", "info", "--root", root, "--json")
    info = __import__("json").loads(r.output)
    assert (info["module"], info["jetpack"], info["tensorrt"], info["dla"]) == ("orin-nx-16gb", "6.0", "8.6.2", 2)
    r = invoke("device", "watch", "--root", root, "--json", "--count", "2", "--interval", "0.05")
    snaps = [__import__("json").loads(x) for x in r.output.splitlines()]
    assert r.exit_code == 0 and len(snaps) == 2 and snaps[1]["mode"] == "15W" and snaps[1]["power_total_mw"] > 0
    r = invoke("device", "mode", "--root", root, "--set", "3")
    assert r.exit_code == 1 and "refusing mode 3 25W" in r.output
    r = invoke("device", "tegrastats", "--root", root, "--json", "--count", "2", "--interval", "0.05")  # the live stand-in
    lines = [__import__("json").loads(x) for x in r.output.splitlines()]
    assert r.exit_code == 0 and len(lines) == 2 and lines[0]["ram_total_mb"] == 15388 and lines[0]["unparsed"] == []
    r = invoke("device", "catalogue", "--json")
    assert r.exit_code == 0 and set(__import__("json").loads(r.output)) == set(catalogue.names())


@pytest.mark.parametrize("args, message", [
    (["device", "info", "--root", "/no/such/dir"], "not a directory"),
    (["device", "simulate", "orin-mega", "--root", "{tmp}/x"], "unknown module 'orin-mega'"),
    (["device", "simulate", "nano", "--root", "{tmp}/x", "--jetpack", "6.2"], "runs JetPack 4.6, not 6.2"),
    (["device", "simulate", "nano", "--root", "{tmp}/x", "--scenario", "{tmp}/back.json"], "goes back in time"),
    (["device", "simulate", "nano", "--root", "{tmp}/x", "--scenario", "{tmp}/unknown.json"], "unknown module 'nano-9000'"),
    (["device", "simulate", "nano", "--root", "{tmp}/x", "--scenario", "{tmp}/zone.json"], "has no thermal zone 'gpu-thermal'"),
    (["device", "simulate", "nano", "--root", "{tmp}/file", "--scenario", "nano-5w-heating"], "not a directory"),
    (["device", "watch", "--root", "{tmp}", "--interval", "0"], "interval must be > 0"),
    (["device", "watch", "--root", "{tmp}", "--source", "jtop"], "jtop source:"),
    (["device", "tegrastats", "--root", "{tmp}"], "tegrastats not found"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    (tmp_path / "back.json").write_text('{"module": "nano", "events": [{"t": 5, "set": {"gpu_load": 1}}, {"t": 2, "set": {}}]}')
    (tmp_path / "unknown.json").write_text('{"module": "nano-9000", "events": []}')
    (tmp_path / "zone.json").write_text('{"module": "nano", "events": [{"t": 1, "set": {"temp.gpu-thermal": 80}}]}')
    (tmp_path / "file").write_text("")
    r = invoke(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1
