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
