"""The server's record of its last good bundle and operating point, so a restart after a crash serves it.

One small JSON file in the state directory (`StateDirectory=` under systemd), replaced atomically
(`floatedge.fsutil.atomic_write_json`: temp file, fsync, rename) and only once a swap has completed — a crash
at any moment leaves either the previous record or the new one, never half of one, and never a record of a
bundle that did not serve. A record that cannot be read is reported and ignored: the server then starts
from its configured bundle.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from floatedge.fsutil import atomic_write_json

RECORD = "serve-state.json"
VERSION = 1


class StateStore:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.path = directory / RECORD if directory else None
        self.problem: str | None = None  # why the last read found no usable record

    def read(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            rec = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            self.problem = f"{self.path}: unreadable state record ({exc}); starting from the configured bundle"
            return None
        if not isinstance(rec, dict) or rec.get("version") != VERSION or not isinstance(rec.get("bundle"), str):
            self.problem = f"{self.path}: not a floatedge serve state record; starting from the configured bundle"
            return None
        return rec

    def write(self, **record: Any) -> None:
        if self.path is None:
            return
        atomic_write_json(self.path, {"version": VERSION, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      **record})

    def update(self, **changes: Any) -> None:
        """Merge `changes` into the record (the point after a switch, the pin)."""
        rec = self.read()
        if rec is not None:
            rec.update(changes)
            rec.pop("version", None)
            rec.pop("updated", None)
            self.write(**rec)
