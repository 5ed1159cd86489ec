"""Reading sysfs/procfs files under an injectable root, the way every reader in this package does it.

A Jetson's sysfs is not an ordinary file system: a file may be missing (another module, another JetPack),
unreadable (debugfs without root), empty, garbage, or fail with EAGAIN while its sensor is power-gated (Orin's
`cv*-thermal` zones do; on Python 3.10 `Path.read_text()` then raises TypeError instead of OSError, a failure
seen in public Jetson logs). So every read here returns None for "no value", never raises, and the callers turn
None into "unknown"/offline. Paths are joined to `root` so that the same code reads `/sys` on a device and a
simulated tree (`floatedge device simulate`) in a test.
"""
from __future__ import annotations

import os
from pathlib import Path


def under(root: str | Path, path: str) -> Path:
    """`path` (absolute, as on the device) inside `root`."""
    return Path(root) / path.lstrip("/")


def read_text(path: str | Path, limit: int = 65536) -> str | None:
    """The file's text stripped of NULs and surrounding blanks, or None when it cannot be read or is empty."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (OSError, ValueError):
        return None
    try:
        data = os.read(fd, limit)
    except (OSError, TypeError, ValueError):
        return None
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace").replace("\0", " ").strip()
    return text or None


def read_int(path: str | Path) -> int | None:
    """The first integer in the file ("32760 ma" → 32760), or None."""
    text = read_text(path, 256)
    if text is None:
        return None
    head = text.split()[0]
    try:
        return int(head)
    except ValueError:
        try:
            return int(float(head))
        except ValueError:
            return None


def listdir(path: str | Path) -> list[str]:
    """Sorted entries of a directory (natural order: thermal_zone2 before thermal_zone10), [] when absent."""
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted(names, key=natural_key)


def natural_key(name: str) -> tuple:
    """'thermal_zone10' sorts after 'thermal_zone2'."""
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def check_root(root: str | Path) -> Path:
    """The root as a Path, or ValueError with one clear line when it is not a directory."""
    p = Path(root)
    if not p.is_dir():
        raise ValueError(f"--root {root}: not a directory")
    return p
