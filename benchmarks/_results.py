"""Shared by the benchmark scripts: write one named section of docs/RESULTS.md in place."""
from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

from floatedge.fsutil import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "RESULTS.md"
FIGURES = ROOT / "docs" / "results"
CIFAR10 = ROOT.parent / "shared" / "data" / "cifar-10-batches-py"


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def update_section(name: str, body: str) -> Path:
    """Replace the text between <!-- BEGIN name --> and <!-- END name --> (append the section if new)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Results\n\nEvery figure here is written by a script in `benchmarks/`.\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    return atomic_write_text(RESULTS, text)
