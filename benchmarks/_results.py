"""Shared by the benchmark scripts: write one named section of docs/RESULTS.md in place."""
from __future__ import annotations

import platform
from pathlib import Path

import torch

from floatedge.fsutil import update_markdown_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "RESULTS.md"
FIGURES = ROOT / "docs" / "results"
CIFAR10 = ROOT.parent / "shared" / "data" / "cifar-10-batches-py"


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def shown(path: str | Path) -> str:
    """A path as a command in docs/RESULTS.md shows it: relative to the repository root when inside it, so the
    command runs from the root of any clone (never this machine's absolute path)."""
    p = Path(path)
    try:
        return p.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def shown_args(argv: list[str]) -> str:
    """Command-line arguments as `shown` writes paths (other arguments unchanged)."""
    return " ".join(shown(a) if a.startswith("/") else a for a in argv)


def update_section(name: str, body: str) -> Path:
    """Write this benchmark's section of docs/RESULTS.md (the rest of the file is left as it is)."""
    return update_markdown_section(RESULTS, name, body,
                                   header="# Results\n\nEvery figure here is written by a script in `benchmarks/`.\n")
