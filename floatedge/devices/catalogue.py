"""The Jetson catalogue: `catalogue.json` beside this file, data with a cited source per fact, and the few
look-ups every other module needs (by name, by part number, by L4T release; modes per JetPack line).

The data is a file, not code, so that adding a module or correcting a fact is an edit a reviewer can check
against the cited source; `problems()` is what the tests run to keep every fact sourced.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PATH = Path(__file__).with_name("catalogue.json")


@functools.lru_cache(maxsize=1)
def data() -> dict[str, Any]:
    return json.loads(PATH.read_text())


@dataclass(frozen=True)
class Mode:
    """One nvpmodel power mode: its ID, name, CPU cores it keeps online and GPU clock cap (MHz) where known."""

    id: int
    name: str
    cores: int | None = None
    gpu_max_mhz: float | None = None
    cpu_max_mhz: float | None = None


@dataclass(frozen=True)
class Module:
    key: str
    raw: dict

    def __getattr__(self, name: str) -> Any:  # name, soc, sm, dla, ram_mb, cpu_cores, part_numbers, ...
        try:
            return self.raw[name]
        except KeyError:
            raise AttributeError(name) from None

    def modes(self, jetpack: str | None = None) -> tuple[list[Mode], int]:
        """(modes, default ID) for a JetPack line (Orin Nano/NX tables change with the Super release)."""
        table = self.raw["modes"]
        entry = table.get(_line(jetpack or ""), table["default"]) if jetpack else table["default"]
        return [Mode(**m) for m in entry["list"]], int(entry["default"])

    def mode(self, mode_id: int, jetpack: str | None = None) -> Mode | None:
        return next((m for m in self.modes(jetpack)[0] if m.id == mode_id), None)

    def power_layout(self, jetpack: str) -> list[dict]:
        return self.raw.get("power_by_jetpack", {}).get(_line(jetpack), self.raw["power"])

    def gpu_devfreq(self, jetpack: str) -> str:
        paths = self.raw["gpu_devfreq"]
        return paths.get(_line(jetpack), paths.get("default") or next(iter(paths.values())))

    def latest_jetpack(self) -> str:
        return self.raw["jetpacks"][-1]


def _line(jetpack: str) -> str:
    """'6.2.1' → '6.2', the JetPack line the catalogue keys on."""
    m = re.match(r"(\d+)\.(\d+)", str(jetpack))
    return f"{m.group(1)}.{m.group(2)}" if m else str(jetpack)


def names() -> list[str]:
    """The module names `floatedge device simulate` takes."""
    return list(data()["modules"])


def module(name: str) -> Module:
    """A module by catalogue name or alias; KeyError with the valid names otherwise."""
    mods, aliases = data()["modules"], data()["aliases"]
    key = aliases.get(name, name)
    if key not in mods:
        raise KeyError(f"unknown module {name!r}; known: {', '.join(names())} (aliases: {', '.join(aliases)})")
    return Module(key, mods[key])


def by_part_number(part: str) -> Module | None:
    """The module whose part number (p3767-0000) matches, or None."""
    for key, raw in data()["modules"].items():
        if part in raw["part_numbers"]:
            return Module(key, raw)
    return None


def by_soc(soc: str) -> list[Module]:
    return [Module(k, r) for k, r in data()["modules"].items() if r["soc"] == soc]


def jetpack_line(jetpack: str) -> dict:
    """The catalogue entry of a JetPack line ('6.2' → L4T, TensorRT, CUDA, layouts); KeyError if unknown."""
    lines = data()["jetpacks"]
    key = _line(jetpack)
    if key not in lines:
        raise KeyError(f"unknown JetPack line {jetpack!r}; known: {', '.join(lines)}")
    return lines[key]


def jetpack_for_l4t(l4t: str) -> str:
    """'36.4.3' → '6.2'; a release not in the table maps by its major (R32 → 4.x …); '' if nothing fits."""
    table = data()["l4t_to_jetpack"]
    if l4t in table:
        return table[l4t]
    major = l4t.split(".")[0]
    return {"28": "3.x", "32": "4.x", "35": "5.x", "36": "6.x", "38": "7.x", "39": "7.x"}.get(major, "")


def sim_value(name: str) -> Any:
    return data()["sim"][name]


def problems() -> list[str]:
    """Every fact without a source, or citing a source id that the `sources` table lacks."""
    d = data()
    ids = set(d["sources"])
    bad = []

    def check(where: str, obj: dict, skip: set[str]) -> None:
        src = obj.get("src", {})
        for field in obj:
            if field in skip or field == "src":
                continue
            cite = src.get(field)
            if not cite:
                bad.append(f"{where}.{field}: no source")
            elif not any(re.search(rf"(?<![\w-]){re.escape(i)}(?![\w-])", cite) for i in ids):
                bad.append(f"{where}.{field}: cites no known source ({cite!r})")

    for key, raw in d["modules"].items():
        check(f"modules.{key}", raw, {"power_by_jetpack"} if "power_by_jetpack" not in raw.get("src", {}) else set())
        for jp in raw["jetpacks"]:
            if _line(jp) not in d["jetpacks"]:
                bad.append(f"modules.{key}: JetPack {jp} is not in the jetpacks table")
    for key, raw in d["jetpacks"].items():
        check(f"jetpacks.{key}", raw, set())
    check("sim", d["sim"], {"about"})
    if not any(i in d["l4t_to_jetpack"]["src"] for i in ids):
        bad.append("l4t_to_jetpack: no source")
    return bad
