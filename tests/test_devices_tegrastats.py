"""The tegrastats parser on real lines from public sources, one JetPack line after another (3.x to 7.2), and on
malformed input. Every line is cited beside its expected values (and in tests/data/tegrastats/SOURCES.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from floatedge.cli import main
from floatedge.devices.tegrastats import KEYS, parse_line

DATA = Path(__file__).parent / "data" / "tegrastats"


def lines(name: str) -> list[str]:
    return [ln for ln in (DATA / name).read_text().splitlines() if ln.strip()]


# (file, line index, expected values). Sources: DD = DataDog/datadog-agent pkg/collector/corechecks/nvidia/jetson/
# jetson_test.go; BZ = henrygd/beszel agent/gpu_test.go; TE = lesomnus/tegra-exporter stats/parse_test.go.
CASES = [
    # DD tx1Sample — TX1, JetPack 3.x/4.x: bare mW, IRAM, one clock per core
    ("datadog-tx1.log", 0, {"ram_used_mb": 1179, "ram_total_mb": 3983, "swap_used_mb": None, "gpu_load": 0, "gpu_mhz": 76,
                            "emc_load": 7, "cpu0": {"load": 1, "mhz": 102}, "temps": {"AO": 42.5, "Tdiode": 42.75, "thermal": 38.5},
                            "power": {"VDD_IN": 2532, "VDD_CPU": 76, "VDD_GPU": 19}, "total": 2532}),
    # DD tx2Sample — TX2, JetPack 4: two offline cores, VDD_SYS_* rails
    ("datadog-tx2-jp4.log", 0, {"ram_used_mb": 2344, "swap_used_mb": 0, "cores": [1, None, None, 1, 0, 2], "gpu_mhz": 624,
                                "temps": {"BCPU": 37.5, "MCPU": 37.5}, "power": {"VDD_4V0_WIFI": 0, "VDD_SYS_DDR": 883}, "total": 3056}),
    # DD nanoSample — Nano, JetPack 4: POM_5V_IN is the input rail
    ("datadog-nano-jp4.log", 0, {"ram_used_mb": 534, "ram_total_mb": 3964, "swap_used_mb": 5, "gpu_mhz": 76,
                                 "power": {"POM_5V_IN": 1022, "POM_5V_GPU": 0, "POM_5V_CPU": 204}, "total": 1022, "temps": {"PMIC": 100}}),
    # DD agXSample — AGX Xavier, JetPack 4: no input rail (total = sum), GPU both a temperature and a rail, MTS fg/bg
    ("datadog-agx-xavier-jp4.log", 0, {"ram_total_mb": 31927, "cores": [2, 0, 0, 0, None, None, None, None], "gpu_mhz": 318,
                                       "temps": {"GPU": 37.5, "AUX": 36}, "power": {"GPU": 0, "SYS5V": 1482},
                                       "total": 0 + 311 + 932 + 0 + 621 + 1482}),
    # DD xavierNxSample — Xavier NX, JetPack 4, GPU busy
    ("datadog-xavier-nx-jp4.log", 0, {"gpu_load": 62, "gpu_mhz": 306, "emc_load": 10, "cpu5": {"load": 8, "mhz": 1267},
                                      "power": {"VDD_CPU_GPU_CV": 738}, "total": 4067}),
    # DD voltageUnitSample — Orin NX 16GB, JetPack 5: mW suffix, CV0@/SOC2@ upper case, tj@ lower case
    ("datadog-orin-nx-jp5.log", 0, {"ram_total_mb": 15388, "cores": [6, 9, 5, 16, None, None, None, None], "gpu_mhz": 611,
                                    "temps": {"CV0": 45.812, "tj": 48.875, "CV2": 45.75}, "power": {"VDD_IN": 5299}, "total": 5299}),
    # DD r36Sample — AGX Orin, JetPack 6: two GPCs, engines, runs of spaces
    ("datadog-agx-orin-jp6.log", 0, {"ram_used_mb": 29114, "swap_used_mb": 4915, "gpu_load": 0, "gpu_mhz": 305, "emc_load": 1,
                                     "cpu5": {"load": 100, "mhz": 2201}, "temps": {"cpu": 53.062, "gpu": 47.812},
                                     "power": {"VIN_SYS_5V0": 4767}, "total": 3205 + 4405 + 4767}),
    # DD orinSample — AGX Orin 64GB, non-root: GR3D_FREQ without a clock, no EMC
    ("datadog-agx-orin-nonroot.log", 0, {"ram_total_mb": 62840, "gpu_load": 0, "gpu_mhz": None, "emc_load": None,
                                         "total": 4940 + 988 + 4442}),
    # BZ "more valid data" — Orin Nano 8GB, JetPack 6: timestamp, GR3D_FREQ 63%@[621]
    ("beszel-orin-nano-jp6.log", 0, {"ram_used_mb": 6185, "ram_total_mb": 7620, "swap_used_mb": 851, "gpu_load": 63, "gpu_mhz": 621,
                                     "emc_load": 43, "temps": {"tj": 53.968, "soc2": 52.437}, "power": {"VDD_CPU_GPU_CV": 4667},
                                     "total": 12479}),
    # BZ "orin nano" — Orin Nano, non-root, 2025
    ("beszel-orin-nano-nonroot.log", 0, {"ram_used_mb": 3452, "swap_used_mb": 1518, "gpu_load": 0, "cpu4": {"load": 2, "mhz": 729},
                                         "temps": {"soc0": 50}, "total": 4824}),
    # GDWR/jetson_exporter#14 — AGX Orin 64GB: CV0/CV1/GPU/CV2 at -256C (offline, left out), NC rails skipped
    ("exporter14-agx-orin.log", 0, {"ram_used_mb": 4321, "gpu_mhz": 0, "absent_temps": ["CV0", "CV1", "GPU", "CV2"],
                                    "temps": {"CPU": 44.562, "Tboard": 32, "tj": 44.343}, "no_power": ["NC"],
                                    "power": {"VDDQ_VDD2_1V8AO": 301}, "total": 2340 + 390 + 4025 + 301}),
    # rbonghi/jetson_stats jtop/tests/test_06_tegra_parse.py TEGRASTATS_ORIN_JP7 — AGX Orin, JetPack 7.2 (L4T R39.2)
    ("jtop-agx-orin-jp72.log", 0, {"ram_used_mb": 20642, "swap_used_mb": None, "gpu_load": 12, "gpu_mhz": 1300, "emc_load": 3,
                                   "temps": {"cpu": 52.968, "gpu": 47.625}, "power": {"VDD_GPU_SOC": 5139, "VIN_SYS_5V0": 5500},
                                   "total": 5139 + 3268 + 5500}),
    # TE "6.8.12" — AGX Thor, L4T R38.4: GR3D_FREQ @[0,0,0] has clocks and no load
    ("tegra-exporter-thor-jp71.log", 0, {"ram_total_mb": 125773, "gpu_load": None, "gpu_mhz": 0, "ncores": 14,
                                         "temps": {"soc012": 33.781, "soc345": 34.5}, "power": {"VDD_CPU_SOC_MSS": 4165},
                                         "total": 0 + 4165 + 4126}),
    # TE "5.15.148" — AGX Orin on L4T R36.4.4 with NVENC 79%@166 and VIC 36%@115 busy
    ("tegra-exporter-agx-orin-jp62.log", 0, {"ram_used_mb": 18207, "cpu0": {"load": 14, "mhz": 2188}, "gpu_mhz": 0,
                                             "total": 2412 + 1607 + 4707}),
    # rbonghi/jetson_stats#15 — Nano, 2019 (JetPack 4.2)
    ("jtop15-nano-jp42.log", 0, {"ram_total_mb": 3957, "cpu0": {"load": 17, "mhz": 1428}, "power": {"POM_5V_CPU": 943}, "total": 2830}),
    # martinkersner/gtop#2 — TX1, JetPack ≤ 3.1: `cpu [14%,43%,11%,12%]@1912` (one shared clock), EMC, GR3D, EDP limit
    ("gtop2-tx1-jp3.log", 0, {"ram_used_mb": 748, "swap_used_mb": 0, "cores": [14, 43, 11, 12], "cpu0": {"load": 14, "mhz": 1912},
                              "gpu_load": 52, "gpu_mhz": 998, "emc_load": 24, "total": None}),
    # martinkersner/gtop#3 — TX2-class, JetPack 3.2: lower-case `cpu [`; the non-root line has nothing else
    ("gtop3-tx2-jp32.log", 0, {"ram_used_mb": 2417, "cores": [0, 0, 0, 0, 0, 0], "gpu_load": None, "emc_load": None}),
    ("gtop3-tx2-jp32.log", 1, {"ram_used_mb": 2440, "gpu_load": 5, "gpu_mhz": 1275, "emc_load": 0, "cpu1": {"load": 0, "mhz": 2035}}),
    # martinkersner/gtop#7 — AGX Xavier 16GB, JetPack 4.2: EMC_FREQ/GR3D_FREQ without clocks
    ("gtop7-agx-xavier-jp42.log", 0, {"ram_used_mb": 14700, "gpu_load": 0, "gpu_mhz": None, "emc_load": 0,
                                      "total": 463 + 618 + 2936 + 0 + 309 + 3306}),
    # FindHao/tx-utils#3 — TX2, 2019
    ("txutils3-tx2-jp42.log", 0, {"ram_used_mb": 2020, "cpu1": {"load": 21, "mhz": 345}, "power": {"VDD_4V0_WIFI": 633}, "total": 3140}),
]


def test_at_least_fifteen_real_lines_covering_jetpack_3_to_7():
    assert len(CASES) >= 15
    names = " ".join(c[0] for c in CASES)
    for tag in ("jp3", "jp4", "jp5", "jp6", "jp7"):
        assert tag in names, tag


@pytest.mark.parametrize("name, index, want", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_real_line(name, index, want):
    s = parse_line(lines(name)[index])
    assert s.unparsed == []
    for key in ("ram_used_mb", "ram_total_mb", "swap_used_mb", "gpu_load", "gpu_mhz", "emc_load"):
        if key in want:
            assert getattr(s, key) == want[key], key
    if "cores" in want:
        assert [None if c is None else c["load"] for c in s.cpu] == want["cores"]
    if "ncores" in want:
        assert len(s.cpu) == want["ncores"]
    for key, core in want.items():
        if key.startswith("cpu") and key[3:].isdigit():
            assert s.cpu[int(key[3:])] == core
    for zone, temp in want.get("temps", {}).items():
        assert s.temps_c[zone] == temp, zone
    for zone in want.get("absent_temps", []):
        assert zone not in s.temps_c
    for rail, mw in want.get("power", {}).items():
        assert s.power_mw[rail] == mw, rail
    for rail in want.get("no_power", []):
        assert rail not in s.power_mw
    if "total" in want:
        assert s.power_total_mw == want["total"]
    assert list(s.to_json()) == list(KEYS)


def test_early_jetpack5_second_gpc_field():
    """jetson_stats#362 (Orin NX, early JetPack 5): 'GR3D_FREQ 99%@917 GR3D2_FREQ 99%@0' is one GPU load and two
    GPC clocks, not two GPUs."""
    s = parse_line("GR3D_FREQ 99%@917 GR3D2_FREQ 99%@0")
    assert (s.gpu_load, s.gpu_mhz, s.gpc_mhz, s.unparsed) == (99, 917, (917, 0), [])


@pytest.mark.parametrize("line, unparsed", [
    ("RAM lots/ofMB GR3D_FREQ 5%@300", ["RAM", "lots/ofMB"]),
    ("CPU [5%@1200,bogus] GR3D_FREQ 7%", ["CPU [5%@1200,bogus]"]),
    ("GR3D_FREQ fast VDD_IN 100mW/90mW", ["GR3D_FREQ fast"]),
    ("NEWENGINE ?!? FANCY@3.2X VDD_IN 5mW/5mW", ["NEWENGINE", "?!?", "FANCY@3.2X"]),
    ("", []),
    ("RAM", ["RAM"]),
])
def test_unknown_or_malformed_fields_are_kept_not_fatal(line, unparsed):
    s = parse_line(line)
    assert s.unparsed == unparsed
    if "VDD_IN" in line:
        assert s.power_total_mw is not None


def test_cli_json_lines_have_exactly_the_documented_keys():
    r = CliRunner().invoke(main, ["device", "tegrastats", str(DATA / "gtop3-tx2-jp32.log"), "--json"])
    assert r.exit_code == 0, r.output
    objs = [json.loads(x) for x in r.output.splitlines()]
    assert len(objs) == 2 and all(list(o) == list(KEYS) for o in objs)
    assert objs[1]["cpu"][1] == {"load": 0.0, "mhz": 2035.0}


def test_cli_reads_stdin_and_reports_bad_files_in_one_line(tmp_path):
    r = CliRunner().invoke(main, ["device", "tegrastats", "-"], input=(DATA / "datadog-nano-jp4.log").read_text())
    assert r.exit_code == 0 and "RAM 534/3964 MB" in r.output
    r = CliRunner().invoke(main, ["device", "tegrastats", str(tmp_path / "missing.log")])
    assert r.exit_code == 1 and r.output.strip().startswith("Error:") and "No such file" in r.output
    assert "Traceback" not in r.output
    (tmp_path / "empty.log").write_text("\n\n")
    r = CliRunner().invoke(main, ["device", "tegrastats", str(tmp_path / "empty.log")])
    assert r.exit_code == 1 and "no tegrastats lines" in r.output
