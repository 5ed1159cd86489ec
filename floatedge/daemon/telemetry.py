"""Device telemetry for the server, from `floatedge.devices` when that package offers a sampler.

The devices stage owns reading the hardware (sysfs, tegrastats, jtop); the server only asks it for the latest
snapshot every `telemetry_interval_s` and shows it (GET /v2/floatedge/state, `floatedge_device_*` metrics).
When no sampler is importable or none works on this machine, telemetry is simply absent and the server says
so (`telemetry_source`: "none: <why>"); nothing else depends on it.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

log = logging.getLogger("floatedge.serve")


def open_sampler() -> tuple[Any | None, str]:
    """(a sampler with `.sample()` or `.snapshot()`, its description) or (None, why there is none)."""
    try:
        from floatedge.devices import sampler as mod  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, f"none: floatedge.devices has no sampler ({exc})"
    for name in ("open_sampler", "Sampler"):
        factory = getattr(mod, name, None)
        if factory is None:
            continue
        try:
            s = factory()
            return s, f"floatedge.devices.sampler.{name}"
        except Exception as exc:  # noqa: BLE001 - no telemetry is a normal state on a workstation
            return None, f"none: {name}() failed ({type(exc).__name__}: {exc})"
    return None, "none: floatedge.devices.sampler offers no open_sampler()/Sampler"


def read(sampler: Any) -> dict[str, Any] | None:
    """The sampler's latest snapshot as a plain dict (for JSON and the metrics), or None."""
    for method in ("latest", "sample", "snapshot", "read"):
        fn = getattr(sampler, method, None)
        if callable(fn):
            snap = fn()
            break
    else:
        return None
    if snap is None:
        return None
    if hasattr(snap, "to_dict"):
        return dict(snap.to_dict())
    if dataclasses.is_dataclass(snap):
        return dataclasses.asdict(snap)
    return dict(snap) if isinstance(snap, dict) else None


def metric_view(snap: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fields the metrics export, found under the names a snapshot is likely to use."""
    if not snap:
        return None

    def first(*keys: str) -> Any:
        for k in keys:
            if snap.get(k) is not None:
                return snap[k]
        return None

    power = first("power_w", "power", "rails_w")
    if isinstance(power, dict):
        power = {k: (v.get("power_w") if isinstance(v, dict) else v) for k, v in power.items()}
    temps = first("temperatures_c", "temperature_c", "temperatures", "temps")
    if isinstance(temps, dict):
        temps = {k: (v.get("temp_c") if isinstance(v, dict) else v) for k, v in temps.items()}
    return {"power_w": power if isinstance(power, dict) else ({"total": power} if power is not None else {}),
            "temperatures_c": temps if isinstance(temps, dict) else {},
            "gpu_load": first("gpu_load", "gpu_util", "gpu"), "cpu_load": first("cpu_load", "cpu_util"),
            "throttled": first("throttled", "throttling")}
