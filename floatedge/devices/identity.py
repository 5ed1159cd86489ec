"""Which Jetson this is and what it can do, read from files under an injectable root.

Where each value comes from (jetson_stats `jtop/core/jetson_variables.py` reads the same files; edge.md §2.3):

* module part number: `/proc/device-tree/nvidia,dtsfilename` (…tegra234-p3767-0000-p3768-0000-a0.dts: the first
  p-number is the module, the second the carrier), else `/proc/device-tree/compatible` (Thor has no dtsfilename:
  'nvidia,p4071-0000+p3834-0008', 'nvidia,p3834-0008', 'nvidia,tegra264'; the entry without '+' is the module);
* SoC: the `nvidia,tegraNNN` entry of `compatible`; board name: `/proc/device-tree/model`;
* L4T: `/etc/nv_tegra_release` ('# R36 (release), REVISION: 4.3, …') → JetPack by the catalogue's table;
* CUDA: `/usr/local/cuda/version.json` (CUDA ≥ 11) or `version.txt` (10.x); TensorRT: the importable
  `tensorrt` (only when reading this machine, root '/'), else the L4T package list `/var/lib/dpkg/status`;
* RAM: `/proc/meminfo` MemTotal (the GPU shares it); capabilities (sm, DLA cores, precisions, modes): the catalogue,
  because the module, not the datasheet, decides (Orin Nano's DLA is fused off; sm 5.3 has no INT8).
"""
from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import catalogue
from .sysfs import read_text, under

PART_RE = re.compile(r"p\d{4}-\d{4}")
RELEASE_RE = re.compile(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")


@dataclass
class Identity:
    is_jetson: bool
    module: str = ""            # catalogue key, '' when not catalogued
    name: str = ""
    part_number: str = ""
    model: str = ""
    soc: str = ""
    sm: int | None = None
    ram_mb: int | None = None
    l4t: str = ""
    jetpack: str = ""
    cuda: str = ""
    tensorrt: str = ""
    tensorrt_from: str = ""     # "python" or "dpkg"
    dla: int | None = None
    precisions: list[str] = field(default_factory=list)
    modes: list[dict] = field(default_factory=list)
    default_mode: int | None = None
    modes_from: str = ""        # "nvpmodel.conf" (the device's own) or "catalogue"
    cpu: str = ""
    cpu_count: int | None = None
    ort_providers: list[str] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _device_tree(root: Path, name: str) -> str:
    return (read_text(under(root, f"proc/device-tree/{name}")) or "").strip()


def _compatible(root: Path) -> list[str]:
    raw = read_text(under(root, "proc/device-tree/compatible")) or ""
    # NUL-separated on a device; read_text turned NULs into spaces
    return [c for c in raw.split() if c]


def part_number(root: str | Path = "/") -> str:
    """The module's p-number, '' when neither dtsfilename nor compatible names one."""
    root = Path(root)
    dts = _device_tree(root, "nvidia,dtsfilename")
    if dts:
        m = PART_RE.search(Path(dts).name) or PART_RE.search(dts)
        if m:
            return m.group(0)
    for entry in _compatible(root):
        if "+" not in entry and PART_RE.search(entry):
            return PART_RE.search(entry).group(0)
    return ""


def l4t_release(root: str | Path = "/") -> str:
    """'36.4.3' from /etc/nv_tegra_release, '' when absent or not in the documented form."""
    text = read_text(under(root, "etc/nv_tegra_release")) or ""
    m = RELEASE_RE.search(text)
    return f"{m.group(1)}.{m.group(2)}" if m else ""


def jetson_identity(root: str | Path = "/") -> dict[str, str]:
    """{'device': part number or SoC, 'l4t': 'R.M.m'} of a Jetson; empty strings elsewhere.

    What the engine cache key needs (edge.md §3: "cache keyed by TRT version/precision/device"); the runtime's
    TensorRT backend receives it as an argument, it never imports this package."""
    root = Path(root)
    device = part_number(root)
    if not device:
        dts = _device_tree(root, "nvidia,dtsfilename")
        device = Path(dts).stem if dts else ""
    return {"device": device, "l4t": l4t_release(root)}


def _soc(root: Path) -> str:
    for entry in _compatible(root):
        m = re.search(r"tegra\d+", entry)
        if m:
            return m.group(0)
    dts = _device_tree(root, "nvidia,dtsfilename")
    m = re.search(r"tegra\d+", dts)
    return m.group(0) if m else ""


def _cuda(root: Path) -> str:
    text = read_text(under(root, "usr/local/cuda/version.json"))
    if text:
        m = re.search(r'"cuda"\s*:\s*\{[^}]*"version"\s*:\s*"([\d.]+)"', text, re.S)
        if m:
            return m.group(1)
    text = read_text(under(root, "usr/local/cuda/version.txt")) or ""
    m = re.search(r"CUDA Version\s+([\d.]+)", text)
    return m.group(1) if m else ""


def _tensorrt(root: Path) -> tuple[str, str]:
    if str(root) == "/":
        try:
            from importlib.metadata import PackageNotFoundError, version

            for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_bindings", "tensorrt-cu12-bindings"):
                try:
                    return version(dist), "python"
                except PackageNotFoundError:
                    continue
        except Exception:  # noqa: BLE001 - a broken metadata install is "unknown", not a crash
            pass
    text = read_text(under(root, "var/lib/dpkg/status"), limit=8 << 20) or ""
    for block in text.split("\n\n"):
        m = re.search(r"^Package:\s*(tensorrt|libnvinfer\d+)\s*$", block, re.M)
        v = re.search(r"^Version:\s*([\d.]+)", block, re.M)
        if m and v:
            return v.group(1), "dpkg"
    return "", ""


def meminfo_kb(root: str | Path = "/") -> dict[str, int]:
    """/proc/meminfo as {key: kB}; {} when unreadable."""
    out = {}
    for line in (read_text(under(root, "proc/meminfo"), limit=16384) or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0])
    return out


def _cpu(root: Path) -> tuple[str, int | None]:
    text = read_text(under(root, "proc/cpuinfo"), limit=1 << 20) or ""
    names = re.findall(r"^(?:model name|Processor|CPU part)\s*:\s*(.+)$", text, re.M)
    count = len(re.findall(r"^processor\s*:", text, re.M)) or None
    if str(root) == "/":
        count = os.cpu_count() or count
    name = names[0].strip() if names else (platform.processor() or platform.machine() if str(root) == "/" else "")
    return name, count


def ort_providers() -> list[str]:
    """ONNX Runtime's execution providers here ([] when it is not installed)."""
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except Exception:  # noqa: BLE001 - absent or broken: nothing to offer
        return []


def read_identity(root: str | Path = "/", providers: bool = True) -> Identity:
    """Everything `floatedge device info` prints. Never raises for missing or garbage files."""
    root = Path(root)
    part = part_number(root)
    soc = _soc(root)
    l4t = l4t_release(root)
    mem = meminfo_kb(root)
    cpu, ncpu = _cpu(root)
    is_jetson = bool(part or soc or l4t)
    ident = Identity(is_jetson=is_jetson, part_number=part, soc=soc, l4t=l4t, model=_device_tree(root, "model"),
                     ram_mb=mem["MemTotal"] // 1024 if "MemTotal" in mem else None, cpu=cpu, cpu_count=ncpu,
                     ort_providers=ort_providers() if providers else [])
    if not is_jetson:
        ident.note = "not a Jetson (no NVIDIA device tree, no /etc/nv_tegra_release)"
        return ident
    ident.jetpack = catalogue.jetpack_for_l4t(l4t) if l4t else ""
    ident.cuda = _cuda(root)
    ident.tensorrt, ident.tensorrt_from = _tensorrt(root)
    mod = catalogue.by_part_number(part) if part else None
    if mod is None and soc:
        same = catalogue.by_soc(soc)
        if len(same) == 1:
            mod = same[0]
    if mod is None:
        ident.note = f"Jetson part {part or '?'} ({soc or 'unknown SoC'}) is not in the catalogue"
        return ident
    ident.module, ident.name, ident.sm, ident.dla = mod.key, mod.name, mod.sm, mod.dla
    ident.soc = ident.soc or mod.soc
    ident.precisions = list(mod.precisions)
    # the modes this device defines (its nvpmodel.conf), else the catalogue's for its JetPack line
    from .nvpmodel import modes as conf_modes

    modes, default = conf_modes(root)
    ident.modes_from = "nvpmodel.conf"
    if not modes:
        modes, default = mod.modes(ident.jetpack if ident.jetpack[:1].isdigit() else None)
        ident.modes_from = "catalogue"
    ident.modes = [asdict(m) for m in modes]
    ident.default_mode = default
    if not ident.tensorrt and ident.jetpack:
        try:
            ident.tensorrt, ident.tensorrt_from = catalogue.jetpack_line(ident.jetpack)["tensorrt"], "catalogue"
        except KeyError:
            pass
    return ident
