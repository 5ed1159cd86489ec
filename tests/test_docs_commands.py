"""Every command in README.md and docs/*.md runs as written, in order, from the root of a fresh copy of the repository.

Which blocks run: each fenced block labelled `bash`/`sh`/`shell` (run by `bash -euo pipefail`) or `python` (run by
`python -c`), in document order — README.md first, then docs/*.md by name — all in one working copy, so a doc may
use what the README's walkthrough made (`runs/floats`, `model.febundle`). Nothing in a block is substituted. A bash
block runs with `-e`: a failing command fails the block, as a failed step would stop a reader (so a block that starts
and stops a server must leave exit status 0).

A block is illustrative, and skipped, when the last line before it is `<!-- not-run: REASON -->` (200 epochs on
CIFAR-10, a Jetson, `pip install`); the reason is required and shown in the test's output. Unlabelled blocks and
`text` blocks are output, diagrams or synopses; an unlabelled one that starts like a command is an error (label it
`bash` to run it, or `text` if it is a synopsis). The walkthrough in README.md is sized to run in well under a
minute on 2 CPU cores.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
COMMAND = re.compile(r"^\s*(\$ )?(floatedge|python|pip|torchrun|bash|cd)\b")
SCRIPT = re.compile(r"^\s*[\w./-]+\.py\b")  # `benchmarks/export_bundle.py --run ...`
# what a fresh clone does not have: git metadata, build and test caches, and the gitignored outputs at the root
NOT_IN_A_CLONE = {"__pycache__", ".pytest_cache", ".ruff_cache", ".benchmarks"}
NOT_IN_A_CLONE_AT_ROOT = {".git", "runs", "build", "dist", "data", "cifar-10-batches-py"}


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    not_run: str | None  # the reason, when marked illustrative

    def __str__(self) -> str:
        return f"{self.doc}:{self.line} ({self.lang or 'unlabelled'})"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, with their language and the `not-run` reason before each."""
    out: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
        assert end is not None, f"{path.name}:{i + 1}: unclosed code fence"
        before = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        marker = NOT_RUN.search(before)
        out.append(Block(str(path.relative_to(ROOT)), i + 1, lang, "\n".join(lines[i + 1:end]) + "\n",
                         marker.group(1) if marker else None))
        i = end + 1
    return out


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def all_blocks() -> list[Block]:
    return [b for doc in documents() for b in blocks(doc)]


def to_run() -> list[Block]:
    return [b for b in all_blocks() if b.lang in RUN and b.not_run is None]


def fresh_copy(dst: Path) -> Path:
    """The repository as a fresh clone has it (tracked sources and docs; no runs, bundles, caches)."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in NOT_IN_A_CLONE or n.endswith(".egg-info")}
        if Path(folder).resolve() == ROOT:
            skip |= {n for n in names if n in NOT_IN_A_CLONE_AT_ROOT or n.endswith((".febundle", ".onnx", ".pt"))}
        return skip

    return Path(shutil.copytree(ROOT, dst / ROOT.name, ignore=ignore))


# ------------------------------------------------------------------------------------------------- the rules
def test_blocks_follow_the_rules():
    """Every illustrative block says why; no command hides in an unlabelled block; the walkthrough covers the
    pipeline (so marking everything not-run cannot pass)."""
    found = all_blocks()
    assert found, "no code blocks found"
    for b in found:
        if b.not_run is not None:
            assert b.not_run, f"{b}: `<!-- not-run: REASON -->` needs a reason"
            assert b.lang in RUN, f"{b}: only runnable blocks (bash, python) can be marked not-run"
        if not b.lang:
            first = next((ln for ln in b.code.splitlines() if ln.strip()), "")
            assert not COMMAND.match(first), f"{b} starts with a command: label it bash (runs) or text (a synopsis)"
    readme = [b for b in to_run() if b.doc == "README.md"]
    ran = {m.group(1) for b in readme for m in re.finditer(r"^floatedge (\w+)", b.code, re.M)}
    assert {"train", "eval", "export", "inspect", "verify", "static", "bench", "models"} <= ran, sorted(ran)
    assert any(b.lang == "python" for b in readme), "the README's runtime snippet must run"


def test_commands_shown_use_no_machine_paths():
    """A command in the docs (a code block line or a `code span` starting with floatedge/python) must run from the
    root of any clone: no absolute path among its arguments (docs/RESULTS.md once showed `--run /tmp/issue4/r20`)."""
    bad = []
    for doc in documents():
        text = doc.read_text(encoding="utf-8")
        spans = re.findall(r"`([^`\n]+)`", text) + [ln for b in blocks(doc) for ln in b.code.splitlines()]
        for cmd in spans:
            if (COMMAND.match(cmd) or SCRIPT.match(cmd)) and any(arg.startswith("/") for arg in cmd.split()):
                bad.append(f"{doc.name}: {cmd.strip()}")
    assert not bad, "\n".join(bad)


def test_the_marker_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    doc = tmp_path / "x.md"
    doc.write_text("text\n\n<!-- not-run: needs a Jetson -->\n```bash\nfloatedge x\n```\n\n```python\nprint(1)\n```\n"
                   "```\n$ floatedge y\n```\n")
    got = blocks(doc)
    assert [(b.line, b.lang, b.not_run) for b in got] == [(4, "bash", "needs a Jetson"), (8, "python", None),
                                                          (11, "", None)]
    assert got[0].code == "floatedge x\n" and COMMAND.match(got[2].code)


# ------------------------------------------------------------------------------------------- run them all
@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> dict:
    """One fresh copy shared by the documents, run in order: README.md's walkthrough first, then each doc."""
    repo = fresh_copy(tmp_path_factory.mktemp("clone"))
    assert not (repo / "runs").exists() and (repo / "README.md").exists()
    return {"repo": repo, "failed": []}


def run_block(b: Block, repo: Path) -> None:
    # one torch/OpenMP thread per command, as in the rest of the suite (conftest): on a shared 2-core machine two
    # spinning OpenMP threads per command made `floatedge export` take 40 s of CPU instead of 2.6 s
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = ["bash", "-euo", "pipefail", "-c", b.code] if RUN[b.lang] == "bash" else [sys.executable, "-c", b.code]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    shown = f"{b} failed (exit {proc.returncode}):\n{b.code}\n--- stdout\n{proc.stdout[-3000:]}\n" \
            f"--- stderr\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, shown
    assert "Traceback" not in proc.stderr, shown


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d.relative_to(ROOT).as_posix() for d in documents()])
def test_commands_run_as_written(clone, doc):
    """Each document's blocks in order, in the copy the README's walkthrough ran in (a failing document does not
    hide the others' results; one that follows a failed README is skipped, the README's failure is the cause)."""
    if doc != "README.md" and "README.md" in clone["failed"]:
        pytest.skip("README.md's walkthrough failed, and this document continues it")
    print("illustrative, not run:" + "".join(f"\n  {b}: {b.not_run}" for b in blocks(ROOT / doc) if b.not_run))
    try:
        for b in blocks(ROOT / doc):
            if b.lang in RUN and b.not_run is None:
                run_block(b, clone["repo"])
    except BaseException:
        clone["failed"].append(doc)
        raise
