"""The real TensorRT API differences that matter to floatedge, per version, written to docs/RESULTS.md.

Reads the surface of the real Python bindings (tests/trt_surface.json, which tests/test_trt_conformance.py checks
against the live bindings of each version) for every TensorRT name the runner and loader mention
(floatedge/runtime/trt/{loader,runner}.py, by AST) and tabulates where versions differ: a member present in some
versions only, or a signature whose parameters differ. No network, no GPU; about a second.

    python benchmarks/trt_api_table.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _results import update_section  # noqa: E402
from trt_bindings import VERSIONS, load_snapshot, parse_signature, trt_names_in_source  # noqa: E402


def _params(info: dict) -> str:
    """A member's shape in one version: its parameter lists (one per overload), or what kind of member it is."""
    if info["kind"] in ("method", "static"):
        shapes = ["(" + ", ".join(p["name"] + ("=…" if p["default"] else "") for p in parse_signature(s)["params"][1:]) + ")"
                  for s in info["sigs"]]
        return " / ".join(f"{x} ×{shapes.count(x)}" if shapes.count(x) > 1 else x for x in dict.fromkeys(shapes))
    if info["kind"] == "property":
        return "property " + ("r" if info["get"] else "") + ("w" if info["set"] else "")
    return info["kind"]


def rows() -> tuple[list[tuple[str, list[str]]], int]:
    """(name, one cell per version) for every runner-used TensorRT member whose presence or signature differs
    between versions; and how many used members are the same in all."""
    snap = load_snapshot()
    names = trt_names_in_source()
    cells: dict[str, list[str]] = {}
    for i, v in enumerate(VERSIONS):
        s = snap[v]
        for name in names:
            for owner, info in s["classes"].items():
                if info["members"] and name in info["members"] and owner in ("Builder", "IBuilderConfig", "OnnxParser",
                                                                             "OnnxParserRefitter", "Runtime", "ICudaEngine",
                                                                             "IExecutionContext", "Refitter", "Logger",
                                                                             "IOptimizationProfile", "ITimingCache"):
                    cells.setdefault(f"{owner}.{name}", ["—"] * len(VERSIONS))[i] = _params(info["members"][name])
            for enum, members in s["enums"].items():
                if name in members and enum in ("BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType",
                                                "WeightsRole", "ExecutionContextAllocationStrategy"):
                    cells.setdefault(f"{enum}.{name}", ["—"] * len(VERSIONS))[i] = "yes"
            if s["module"].get(name) == "class":
                cells.setdefault(name, ["—"] * len(VERSIONS))[i] = "class"
    differ = [(k, v) for k, v in sorted(cells.items()) if len(set(v)) > 1]
    return differ, len(cells) - len(differ)


def main() -> None:
    t0 = time.perf_counter()
    differ, same = rows()
    head = "| TensorRT member used by floatedge | " + " | ".join(VERSIONS) + " |"
    lines = [head, "|---" * (len(VERSIONS) + 1) + "|"]
    lines += [f"| `{k}` | " + " | ".join(f"`{c}`" if c.startswith("(") else c for c in v) + " |" for k, v in differ]
    body = (f"Where the real TensorRT Python bindings differ, per version, in what the TensorRT backend uses "
            f"(`python benchmarks/trt_api_table.py`: every TensorRT name in `floatedge/runtime/trt/loader.py` and "
            f"`runner.py`, looked up in the bindings' own pybind11 signatures, `tests/trt_surface.json`, which "
            f"`tests/test_trt_conformance.py` checks against the installed bindings). Parameters are the keyword names "
            f"(`=…`: has a default; `/`: overloads; ×n: n overloads with those names and other types); — absent. "
            f"{same} more members the backend uses are identical in all "
            f"{len(VERSIONS)} versions. The runner takes each difference through `TrtApi` (`trt/common.py`); the "
            f"conformance test runs its paths on each version and found no call left that the real bindings reject.\n\n"
            + "\n".join(lines)
            + f"\n\nComputed from the snapshot, no GPU, in {time.perf_counter() - t0:.1f} s on this machine (2 vCPU, shared).\n")
    print(body)
    update_section("TensorRT API per version", body)


if __name__ == "__main__":
    main()
