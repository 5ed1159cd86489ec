"""`floatedge profile`: what each operating point costs on this device, measured on what `floatedge build` made.

Per calibrated operating point (acceptance.calibrated_points) × batch (1, 8, the build's max): p50/p99 latency and
throughput; where the device's telemetry has power (the devices sampler: sysfs INA3221 rails, tegrastats or jtop),
the mean power over the measurement and the energy per image; the peak resident memory while the point ran; and
the cold and warm cost of switching between neighbouring points (the next λ_n at the same width, the next width at
the same λ_n). Written next to the engines, keyed like them, for the server and the governor (issues 12, 13).

The device profile (JSON, schema version 1; `load_profile` reads and checks it)::

    format            "floatedge-device-profile"
    schema_version    1
    key               {part_number, l4t, trt_version, sm, backend, backend_version, provider,
                       bundle_manifest_sha256, engines: {width: engine key digest}}   what the figures depend on
    digest            sha256 of `key` (canonical JSON); the file is CACHE/profiles/profile.<digest[:24]>.json
    created, floatedge_version, seconds
    device            the build report's device (name, part_number, l4t, sm, ram_mb, cpu, backend, provider …)
    bundle            {path, architecture, widths, lambda_th, manifest_sha256}
    engines           {width: {precision, digest, bytes}}
    settings          {batches, rounds, passes, warmup, switch_rounds, telemetry (sampler source), power (bool)}
    points            [{width, lambda_n, lambda_th, precision, clean_acc, robust_acc, attack (the bundle's table:
                        its lowest measured attack at that point, `floatedge.bundle.robust_of`; null when not
                        evaluated), peak_rss_mb,
                        batches: [{batch, rounds, p50_ms, p99_ms, mean_ms, throughput_ips,
                                   power_w, energy_mj_per_image, power_samples}]}]     power: null without telemetry
    switches          [{from: {width, lambda_n}, to: {width, lambda_n}, change ("lambda" | "width"),
                        cold_ms, warm_ms}]   switch + the first batch-1 request at the new point, as a client sees
                                             it: cold on a fresh runtime (the target never prepared), warm once
                                             both points are prepared (median of switch_rounds)
    memory            {rss_start_mb, peak_rss_mb, engine_bytes}
    path              where it was read from (added by run_profile / load_profile, not stored)

Latencies are wall-clock per `infer` call on the runtime (input checks included), after `warmup` calls, the calls
of each figure spread over `passes` passes through every point (so another process's load spreads evenly). Peak memory
is the process's VmHWM, reset before each point (`/proc/self/clear_refs`, Linux ≥ 4.0); on a Jetson the GPU shares
that RAM, so engine memory the driver maps into the process counts too.
"""
from __future__ import annotations

import hashlib
import json
import resource
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from floatedge import __version__
from floatedge.bundle import Bundle, open_bundle, robust_of
from floatedge.fsutil import atomic_write_json
from floatedge.oppoint import OperatingPoint

from .acceptance import calibrated_points
from .engines import EngineCache, EngineKey, load_report, open_built
from .identity import read_identity

PROFILE_FORMAT = "floatedge-device-profile"
PROFILE_SCHEMA = 1
KEY_DEVICE = ("part_number", "l4t", "trt_version", "sm")


class ProfileError(ValueError):
    """No profile for this device and bundle, or one that belongs to another: one line naming which."""


# ------------------------------------------------------------------------------------------ key and path
def profile_key(report: Mapping[str, Any]) -> dict:
    """What a device profile's figures depend on: the device fields of the engines' keys, the backend, the bundle,
    and every engine (a rebuild at another precision gives another profile)."""
    keys = [EngineKey.from_dict(e["key"]) for e in report["engines"]]
    first = keys[0]
    return {**{f: getattr(first, f) for f in KEY_DEVICE}, "backend": report["backend"],
            "backend_version": report["backend_version"], "provider": report.get("provider", ""),
            "bundle_manifest_sha256": report["bundle_manifest_sha256"],
            "engines": {f"{e['width']:g}": k.digest() for e, k in zip(report["engines"], keys, strict=True)}}


def key_digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def profile_path(cache_root: str | Path, key: Mapping[str, Any]) -> Path:
    return Path(cache_root) / "profiles" / f"profile.{key_digest(key)[:24]}.json"


def load_profile(bundle: str | Path | Bundle, path: str | Path | None = None, root: str | Path = "/") -> dict:
    """The device profile of `bundle` as built on this device (its build report beside it): from the cache, or from
    `path`. Refused with a ProfileError when it is missing, malformed, or keyed for another device (module, L4T,
    TensorRT, sm — checked against this device's identity under `root` too), bundle or build."""
    b = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
    report = load_report(b)
    want = profile_key(report)
    file = Path(path) if path else profile_path(report["cache"], want)
    if not file.exists():
        raise ProfileError(f"no device profile for this build of {b.path} ({file} missing); run floatedge profile {b.path}")
    try:
        prof = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{file}: not a readable device profile ({exc})") from None
    if not isinstance(prof, dict) or prof.get("format") != PROFILE_FORMAT or not isinstance(prof.get("key"), dict):
        raise ProfileError(f"{file}: not a floatedge device profile")
    if prof.get("schema_version", 0) > PROFILE_SCHEMA:
        raise ProfileError(f"{file}: profile schema {prof.get('schema_version')} is newer than this floatedge reads "
                           f"({PROFILE_SCHEMA})")
    got = prof["key"]
    for name in want:
        if got.get(name) != want[name]:
            raise ProfileError(f"{file} was measured for another {name.replace('_', ' ')} ({got.get(name)!r}; "
                               f"this build has {want[name]!r})")
    ident = read_identity(root, providers=False)
    here = {"part_number": ident.part_number, "l4t": ident.l4t}
    for name, value in here.items():
        if ident.is_jetson and value != got.get(name):
            raise ProfileError(f"{file} was measured on another device ({name} {got.get(name)!r}, this one {value!r})")
    prof["path"] = str(file)
    return prof


# ------------------------------------------------------------------------------------------ measuring
def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (proc(5), Linux ≥ 4.0)
        return True
    except OSError:
        return False


def _rss_mb(field: str = "VmHWM") -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Power:
    """Mean power over a window from the sampler's snapshots (None without power telemetry)."""

    def __init__(self, source: str, root: str | Path, interval: float) -> None:
        from .sampler import Sampler

        self.sampler = Sampler(source, interval, root)
        self.interval = interval
        self.available = False
        if self.sampler.source == "none":
            return
        self.sampler.start()
        first = self.sampler.wait_for(lambda s: True, timeout=max(2.0, 5 * interval))
        self.available = first is not None and first.power_total_mw is not None

    def mean_w(self, t0: float, t1: float) -> tuple[float | None, int]:
        mw = [s.power_total_mw for s in self.sampler.history() if t0 <= s.t <= t1 and s.power_total_mw is not None]
        return (statistics.fmean(mw) / 1000 if mw else None), len(mw)

    def close(self) -> None:
        self.sampler.stop()


def _images(model: Any, batch: int, seed: int = 0) -> np.ndarray:
    spec = model.input_spec
    return np.random.default_rng(seed).random((batch, spec.channels, spec.height, spec.width), dtype=np.float32)


@dataclass
class _Samples:
    """The timed calls of one point × batch, gathered over several passes, and their time windows (for power)."""

    batch: int
    times: list[float] = field(default_factory=list)
    windows: list[tuple[float, float, int]] = field(default_factory=list)  # (t0, t1, images), time.monotonic()

    def take(self, model: Any, x: np.ndarray, calls: int, warmup: int, min_window: float) -> None:
        """`calls` timed calls after `warmup` untimed ones; with power telemetry they go on until the window holds
        at least three snapshots, so every power figure has samples behind it."""
        for _ in range(warmup):
            model.infer(x)
        t_start, n = time.monotonic(), 0
        while n < calls or time.monotonic() - t_start < min_window:
            t0 = time.perf_counter()
            model.infer(x)
            self.times.append(time.perf_counter() - t0)
            n += 1
        self.windows.append((t_start, time.monotonic(), n * self.batch))

    def summary(self, power: _Power | None) -> dict:
        ms = np.array(self.times) * 1e3
        row = {"batch": self.batch, "rounds": len(ms), "p50_ms": float(np.percentile(ms, 50)),
               "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
               "throughput_ips": float(self.batch * len(ms) / ms.sum() * 1e3),
               "power_w": None, "energy_mj_per_image": None, "power_samples": 0}
        if power and power.available:
            joules, seconds, images, count = 0.0, 0.0, 0, 0
            for t0, t1, n in self.windows:
                watts, k = power.mean_w(t0, t1)
                if watts is not None:
                    joules, seconds, images, count = joules + watts * (t1 - t0), seconds + t1 - t0, images + n, count + k
            if count:
                row.update(power_w=joules / seconds, power_samples=count, energy_mj_per_image=joules / images * 1e3)
        return row


def measure(model: Any, batch: int, rounds: int, warmup: int, power: _Power | None) -> dict:
    """p50/p99, throughput (and power) of `rounds` calls at `batch` at the model's current point."""
    s = _Samples(batch)
    s.take(model, _images(model, batch), rounds, warmup, 3 * power.interval if power and power.available else 0.0)
    return s.summary(power)


def neighbours(points: Sequence[OperatingPoint]) -> list[tuple[OperatingPoint, OperatingPoint, str]]:
    """Pairs of neighbouring points: the next λ_n at the same width, and the next narrower width at the same λ_n."""
    by = {(p.width, p.lambda_n): p for p in points}
    widths = sorted({p.width for p in points}, reverse=True)
    out = []
    for w in widths:
        lams = sorted(lam for (pw, lam) in by if pw == w)
        out += [(by[(w, a)], by[(w, b)], "lambda") for a, b in zip(lams, lams[1:], strict=False)]
    for a, b in zip(widths, widths[1:], strict=False):
        out += [(by[(a, lam)], by[(b, lam)], "width") for (pw, lam) in sorted(by) if pw == a and (b, lam) in by]
    return out


def _switch_ms(model: Any, to: OperatingPoint, x: np.ndarray) -> float:
    t0 = time.perf_counter()
    model.set_operating_point(lambda_n=to.lambda_n, width=to.width, lambda_th=to.lambda_th)
    model.infer(x)
    return (time.perf_counter() - t0) * 1e3


def switch_costs(bundle: Bundle, pairs: Sequence[tuple[OperatingPoint, OperatingPoint, str]], rounds: int,
                 open_options: Mapping[str, Any]) -> list[dict]:
    out = []
    for a, b, change in pairs:
        with open_built(bundle, point=a, **open_options) as model:
            x = _images(model, 1)
            model.infer(x)
            cold = _switch_ms(model, b, x)
            warm = []
            for _ in range(rounds):
                _switch_ms(model, a, x)
                warm.append(_switch_ms(model, b, x))
        out.append({"from": {"width": a.width, "lambda_n": a.lambda_n}, "to": {"width": b.width, "lambda_n": b.lambda_n},
                    "change": change, "cold_ms": cold, "warm_ms": float(np.median(warm))})
    return out


def run_profile(bundle_path: str | Path | Bundle, *, batches: Sequence[int] | None = None, rounds: int = 50,
                warmup: int = 5, switch_rounds: int = 3, passes: int = 3, telemetry: str = "auto", root: str | Path = "/",
                interval: float = 0.05, echo: Callable[[str], None] = lambda s: None, **open_options: Any) -> dict:
    """Profile what `floatedge build` made for the bundle on this device; write and return the device profile.

    The `rounds` calls of each point × batch are spread over `passes` passes through all the points, so a burst of
    load from another process lands on every point alike instead of making one point look slow."""
    if rounds < 1 or warmup < 0 or switch_rounds < 1 or passes < 1:
        raise ProfileError(f"rounds, switch rounds and passes must be ≥ 1 and warm-up ≥ 0, got {rounds}, "
                           f"{switch_rounds}, {passes}, {warmup}")
    passes = min(passes, rounds)
    t_all = time.perf_counter()
    b = bundle_path if isinstance(bundle_path, Bundle) else open_bundle(bundle_path)
    report = load_report(b)
    key = profile_key(report)
    most = int(report["settings"]["max_batch"])
    sizes = sorted({int(n) for n in (batches or (1, 8, most))})
    if sizes[0] < 1 or sizes[-1] > most:
        raise ProfileError(f"batches must be between 1 and the build's max batch {most}, got {', '.join(map(str, sizes))}")
    points = calibrated_points(b)
    precision = {float(e["width"]): e["precision"] for e in report["engines"]}
    power = _Power(telemetry, root, interval)
    rss_start = _rss_mb("VmRSS")
    samples = {(i, n): _Samples(n) for i in range(len(points)) for n in sizes}
    peak = dict.fromkeys(range(len(points)), 0.0)
    per_pass = [rounds // passes + (k < rounds % passes) for k in range(passes)]
    min_window = 3 * power.interval / passes if power.available else 0.0
    try:
        with open_built(b, point=points[0], **open_options) as model:
            images = {n: _images(model, n) for n in sizes}
            for k, calls in enumerate(per_pass):  # passes over all points: load bursts hit every point alike
                for i, p in enumerate(points):
                    model.set_operating_point(lambda_n=p.lambda_n, width=p.width, lambda_th=p.lambda_th)
                    _reset_peak_rss()
                    for n in sizes:
                        samples[(i, n)].take(model, images[n], calls, warmup if k == 0 else 1, min_window)
                    peak[i] = max(peak[i], _rss_mb())
    finally:
        power.close()
    rows = []
    for i, p in enumerate(points):
        row = b.lookup(p) or {}
        robust, attack = robust_of(row)
        rows.append({"width": p.width, "lambda_n": p.lambda_n, "lambda_th": p.lambda_th,
                     "precision": precision[p.width], "clean_acc": row.get("clean_acc"),
                     "robust_acc": robust, "attack": attack,
                     "peak_rss_mb": peak[i], "batches": [samples[(i, n)].summary(power) for n in sizes]})
        echo(format_point(rows[-1]))
    switches = switch_costs(b, neighbours(points), switch_rounds, open_options)
    for s in switches:
        echo(f"switch {s['from']['width']:g}/{s['from']['lambda_n']:g} → {s['to']['width']:g}/{s['to']['lambda_n']:g} "
             f"({s['change']}): cold {s['cold_ms']:.2f} ms, warm {s['warm_ms']:.2f} ms")
    cache = EngineCache(report["cache"])
    prof = {
        "format": PROFILE_FORMAT, "schema_version": PROFILE_SCHEMA, "key": key, "digest": key_digest(key),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "floatedge_version": __version__,
        "device": report["device"],
        "bundle": {"path": str(b.path), "architecture": b.architecture, "widths": list(b.widths),
                   "lambda_th": b.lambda_th, "manifest_sha256": b.manifest["manifest_sha256"]},
        "engines": {f"{e['width']:g}": {"precision": e["precision"], "digest": e["digest"], "bytes": e["bytes"]}
                    for e in report["engines"]},
        "settings": {"batches": sizes, "rounds": rounds, "passes": passes, "warmup": warmup, "switch_rounds": switch_rounds,
                     "telemetry": power.sampler.source, "power": power.available},
        "points": rows, "switches": switches,
        "memory": {"rss_start_mb": rss_start, "peak_rss_mb": max((r["peak_rss_mb"] for r in rows), default=None),
                   "engine_bytes": sum(int(e["bytes"]) for e in report["engines"])},
        "seconds": round(time.perf_counter() - t_all, 3),
    }
    prof["path"] = str(atomic_write_json(profile_path(cache.root, key), prof))  # the file holds all but `path`
    return prof


def format_point(r: Mapping[str, Any]) -> str:
    parts = []
    for f in r["batches"]:
        s = f"b{f['batch']}: p50 {f['p50_ms']:.2f} / p99 {f['p99_ms']:.2f} ms, {f['throughput_ips']:.0f} img/s"
        if f["power_w"] is not None:
            s += f", {f['power_w']:.2f} W, {f['energy_mj_per_image']:.2f} mJ/img"
        parts.append(s)
    return f"width {r['width']:g} λ_n {r['lambda_n']:g} ({r['precision']}): " + "; ".join(parts) + \
        f"; peak RSS {r['peak_rss_mb']:.0f} MB"


__all__ = ["PROFILE_FORMAT", "PROFILE_SCHEMA", "ProfileError", "profile_key", "profile_path", "load_profile",
           "run_profile", "neighbours", "measure", "key_digest"]
