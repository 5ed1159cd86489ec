"""The package's layout, enforced: data flows one way and the device side never needs torch.

Stages, lowest first (docs/architecture.md):

    core (oppoint, fsutil, errors)  →  bundle (+ signing)  →  graph  →  runtime  →  devices  →  daemon  →  fleet
    train  →  export                                                                            (workstation)

A device-side module may import only its own stage and lower ones. The workstation stages sit on top of the
shared lower stages: `train` may use core and bundle; `export` may use train, core, bundle and graph — but
neither may use the runtime or anything above it, and nothing on the device side may import them.
`floatedge.cli` (the command dispatcher) and `floatedge.__main__` collect commands from every stage and are
exempt. Imports inside functions count: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "floatedge"

DEVICE_RANK = {"core": 0, "bundle": 1, "graph": 2, "runtime": 3, "devices": 4, "daemon": 5, "fleet": 6}
WORKSTATION_MAY_IMPORT = {
    "train": {"core", "bundle", "train"},
    "export": {"core", "bundle", "graph", "train", "export"},
}
EXEMPT = {"floatedge.cli", "floatedge.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in {"oppoint", "fsutil", "errors"}:
        return "core"
    if parts[1] == "signing":  # signs and checks a bundle's manifest: part of the bundle stage
        return "bundle"
    return parts[1]


def floatedge_imports(path: Path) -> set[str]:
    """Every floatedge module a file imports, absolute or relative, at any depth of the file."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "floatedge"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "floatedge":
                found.add(target)
    return found


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def violations() -> list[str]:
    bad = []
    for mod, path in all_modules().items():
        if mod in EXEMPT:
            continue
        mine = stage(mod)
        for target in floatedge_imports(path):
            theirs = stage(target)
            if mine in DEVICE_RANK:
                ok = theirs in DEVICE_RANK and DEVICE_RANK[theirs] <= DEVICE_RANK[mine]
            elif mine in WORKSTATION_MAY_IMPORT:
                ok = theirs in WORKSTATION_MAY_IMPORT[mine]
            else:
                ok = False
                bad.append(f"{mod}: stage {mine!r} is not in the layout table (add it to tests/test_layout.py)")
                break
            if not ok:
                bad.append(f"{mod} ({mine}) imports {target} ({theirs})")
    return bad


def test_every_module_has_a_stage():
    known = set(DEVICE_RANK) | set(WORKSTATION_MAY_IMPORT)
    unknown = {m for m in all_modules() if m not in EXEMPT and stage(m) not in known}
    assert not unknown, f"modules outside the layout: {sorted(unknown)}"


def test_imports_flow_one_way():
    assert violations() == []


def test_the_checker_catches_a_backward_import(tmp_path, monkeypatch):
    """The rule bites: a runtime module importing the trainer, or graph importing runtime, is reported."""
    fake = tmp_path / "floatedge"
    (fake / "runtime").mkdir(parents=True)
    (fake / "graph").mkdir()
    (fake / "runtime" / "x.py").write_text("def f():\n    from floatedge.train.trainer import train\n")
    (fake / "graph" / "y.py").write_text("from ..runtime import base\n")
    (fake / "oppoint.py").write_text("import floatedge.bundle\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    assert sorted(violations()) == [
        "floatedge.graph.y (graph) imports floatedge.runtime (runtime)",
        "floatedge.oppoint (core) imports floatedge.bundle (bundle)",
        "floatedge.runtime.x (runtime) imports floatedge.train.trainer (train)",
    ]


DEVICE_SIDE = sorted(m for m in all_modules() if m not in EXEMPT and stage(m) in DEVICE_RANK)

HIDE_TORCH = """
import importlib, importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is hidden in this test (imported as {name})")
sys.meta_path.insert(0, NoTorch())
bad = []
for mod in sys.argv[1:]:
    try:
        importlib.import_module(mod)
    except ImportError as exc:
        bad.append(f"{mod}: {exc}")
assert "torch" not in sys.modules
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def test_device_side_imports_with_torch_hidden():
    assert "floatedge.runtime.onnxrt" in DEVICE_SIDE and "floatedge.graph.static" in DEVICE_SIDE
    proc = subprocess.run([sys.executable, "-c", HIDE_TORCH, *DEVICE_SIDE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("command", ["bench", "inspect", "static", "verify"])
def test_device_commands_run_with_torch_hidden(command):
    """The commands a device runs start (their --help) without torch."""
    code = HIDE_TORCH.split("bad = []")[0] + (
        "from click.testing import CliRunner\nfrom floatedge.cli import main\n"
        f"r = CliRunner().invoke(main, [{command!r}, '--help'])\nprint(r.output)\nsys.exit(r.exit_code)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Usage:" in proc.stdout


def test_a_closed_pipe_is_not_an_error():
    """`floatedge … | head`: the reader leaving early ends the command quietly with exit 0."""
    proc = subprocess.run(f"{sys.executable} -m floatedge device catalogue | true; echo ${{PIPESTATUS[0]}}", shell=True,
                          capture_output=True, text=True, timeout=120, executable="/bin/bash")
    assert proc.stdout.strip() == "0"
    assert "Error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
