"""Device telemetry for the server, from `floatedge.devices.sampler` (the devices stage owns reading the hardware:
sysfs, tegrastats, jtop; off a Jetson its "none" source still gives CPU load and RAM from /proc).

The server starts one `Sampler` (its own thread, a ring of snapshots, `latest()` never blocks), shows the latest
`Snapshot` in GET /v2/floatedge/state and exports it as `floatedge_device_*` metrics. If the sampler cannot be
started, telemetry is absent and the state says why (`telemetry_source`: "none: ..."); nothing else depends on it.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("floatedge.serve")


def open_sampler(source: str = "auto", interval: float = 1.0, root: str = "/") -> tuple[Any | None, str]:
    """(a started sampler, its source) or (None, why there is none)."""
    try:
        from floatedge.devices.sampler import Sampler
    except ImportError as exc:
        return None, f"none: floatedge.devices has no sampler ({exc})"
    try:
        sampler = Sampler(source=source, interval=interval, root=root).start()
    except Exception as exc:  # noqa: BLE001 - no telemetry is a normal state; the server runs without it
        return None, f"none: the sampler did not start ({type(exc).__name__}: {exc})"
    return sampler, f"floatedge.devices.sampler ({sampler.source})"


def read(sampler: Any) -> dict[str, Any] | None:
    """The latest snapshot as JSON-able dict, or None before the first one."""
    snap = sampler.latest()
    return None if snap is None else snap.to_json()


def metric_view(snap: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the `floatedge_device_*` metrics export: watts per rail (and total), °C per zone, GPU and CPU load as
    ratios 0..1 (the snapshot has percentages), throttling as 0/1."""
    if not snap:
        return None
    power = {k: v / 1e3 for k, v in (snap.get("power_mw") or {}).items() if v is not None}
    if snap.get("power_total_mw") is not None:
        power["total"] = snap["power_total_mw"] / 1e3
    loads = [c["load"] for c in snap.get("cpu") or () if c and c.get("load") is not None]
    gpu = snap.get("gpu_load")
    return {"power_w": power, "temperatures_c": dict(snap.get("temps_c") or {}),
            "gpu_load": None if gpu is None else gpu / 100, "cpu_load": sum(loads) / len(loads) / 100 if loads else None,
            "throttled": 1 if snap.get("throttled") else 0}
