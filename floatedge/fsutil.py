"""Atomic file writes: write a sibling temp file, fsync, rename. Nothing is ever half written."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def current_umask() -> int:
    """The process umask, read without changing it.

    `os.umask` is the only setter and it is also the only portable getter: reading through it sets the
    mask (briefly to 0), and a file another thread creates in that instant gets mode 0666/0777. So:
    Linux ≥ 4.7 reports it in /proc/self/status as `Umask:` (proc(5)); elsewhere a scratch directory is
    created with mode 0777 and its mode read back (mode = 0777 & ~umask), which touches no process state."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _umask_by_mkdir()


def _umask_by_mkdir() -> int:
    """The umask from the mode a new 0777 directory gets (the fallback of `current_umask`)."""
    parent = tempfile.mkdtemp(prefix=".umask.")  # 0700, ours alone; the probe inside gets 0777 & ~umask
    probe = os.path.join(parent, "probe")
    try:
        os.mkdir(probe, 0o777)
        return 0o777 & ~os.stat(probe).st_mode
    finally:
        if os.path.isdir(probe):
            os.rmdir(probe)
        os.rmdir(parent)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and prove we can write there, or raise OSError with one clear line."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OSError(f"output directory {path} is not writable: it is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        _probe(path)
    except OSError as exc:
        raise OSError(f"output directory {path} is not writable: {exc.strerror or exc}") from None
    return path


def check_destination(path: str | Path) -> Path:
    """Before any work: can `path` be written the way `atomic_write` writes it (missing parents created, a
    temp file beside it, a rename)? Creates nothing; an OSError naming `path` and the directory that refuses."""
    path = Path(path)
    here = path.parent
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise OSError(f"cannot write {path}: {here} is not a directory")
    try:
        _probe(here)
    except OSError as exc:
        raise OSError(f"cannot write {path}: {here} does not take new files ({exc.strerror or exc})") from None
    return path


def _probe(directory: Path) -> None:
    """Create and remove a file in `directory`: OSError where it takes none (read-only, no permission, /proc)."""
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".probe.")
    os.close(fd)
    os.unlink(probe)


def update_markdown_section(path: str | Path, name: str, body: str, header: str = "# Results\n") -> Path:
    """Replace the text between <!-- BEGIN name --> and <!-- END name --> in `path` (append it if new), atomically.
    How benchmarks and `floatedge compare` write their own section of docs/RESULTS.md without touching the rest."""
    import re

    path = Path(path)
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = path.read_text() if path.exists() else header
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    return atomic_write_text(path, text)
