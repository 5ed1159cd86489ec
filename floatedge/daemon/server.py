"""`floatedge serve` put together: the core, REST (uvicorn), gRPC, metrics, signals, systemd, the timers.

Start-up: read the last-good record (a restart after a crash serves that bundle), open and warm the bundle,
bind every port, then `READY=1`. SIGTERM/SIGINT: readiness turns false, `STOPPING=1`, the HTTP listener
closes, a new inference call on a connection still open (gRPC's listener stays until the drain ends) gets 503 /
UNAVAILABLE, requests in flight finish (up to `drain_timeout_s` in all), exit 0. gRPC is not stopped at the signal:
`grpc.Server.stop` "immediately stops service of new RPCs" (grpcio's API docs) but the status a new call then gets
is CANCELLED or UNAVAILABLE by timing (both seen in tests/test_serve_grpc.py), and clients retry only on the
latter; so the server refuses new calls itself and stops gRPC once no call is in flight (or the time is up).
SIGHUP: re-read the config file and apply what can change live. Logs are JSON lines on stderr, one per event
(start, switch, swap, pin, reload, stop), each with its reason.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import start_http_server

from .config import ServeConfig, load_config
from .control import Controller
from .core import Core
from .metrics import Metrics
from .state import StateStore
from .systemd import Heartbeat, Watchdog, notify, watchdog_period
from .telemetry import metric_view, open_sampler, read

log = logging.getLogger("floatedge.serve")
_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, message, and the record's `extra` fields (event, reason...)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STD})
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger("floatedge")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: since 0.29 `Server.capture_signals` re-raises a caught SIGTERM
    after shutting down (uvicorn/server.py), which would end the process by the signal instead of exit 0.
    The server installs its own handlers on the loop instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def choose_bundle(cfg: ServeConfig, state: StateStore) -> tuple[Path, dict | None, bool]:
    """(bundle to serve, point to start at, pinned): the last good record when it is for this command line's
    bundle and still intact in the bundle directory; else the configured bundle."""
    rec = state.read()
    if state.problem:
        log.warning(state.problem, extra={"event": "state_ignored"})
    if rec and rec.get("argument") == cfg.bundle_path.name and rec.get("bundle_dir") == str(cfg.bundles):
        path = cfg.bundles / rec["bundle"]
        if path.exists() and "/" not in rec["bundle"]:
            log.info("resuming the last good bundle", extra={"event": "resume", "bundle": rec["bundle"],
                                                             "point": rec.get("point"), "pinned": rec.get("pinned")})
            return path, rec.get("point"), bool(rec.get("pinned"))
        log.warning("the last good bundle is gone; serving the configured one",
                    extra={"event": "resume_failed", "bundle": rec["bundle"]})
    return cfg.bundle_path, None, cfg.pinned


class Server:
    def __init__(self, cfg: ServeConfig, config_path: str | None = None, overrides: dict[str, Any] | None = None) -> None:
        self.cfg, self.config_path, self.overrides = cfg, config_path, overrides or {}
        self.metrics = Metrics()
        self.metrics.set_slo(cfg.slo_ms / 1e3)
        self.state = StateStore(cfg.state_path)
        self.core = Core(cfg, self.metrics)
        self.control = Controller(cfg, self.core, self.metrics, self.state)
        self.heartbeat = Heartbeat(max_age_s=max(2.0, (watchdog_period() or 1.0) * 2))
        self.pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="floatedge-http")
        self.exit_code = 0
        self.sampler: Any = None
        self.grpc: Any = None  # the gRPC server while serving
        self.drain_until: float | None = None  # time.monotonic() by which requests in flight must have finished

    # -- start
    def load(self) -> None:
        path, point, pinned = choose_bundle(self.cfg, self.state)
        self.core.pinned = pinned
        slot = self.core.open_slot(path, point, check=self.control.check)
        self.core.on_point_change.append(self._point_changed)
        self.core.install(slot, "startup")
        self.control.attach(startup=True)  # the governor's device profile for this bundle, checked
        self.control.record()

    def _point_changed(self, point: Any, pinned: bool, reason: str) -> None:
        notify(STATUS=f"serving {self.cfg.name} at λn={point.lambda_n:g} width={point.width:g}"
                      f"{' (pinned)' if pinned else ''}")
        if reason not in ("startup", "swap"):
            self.control.record()

    async def run(self) -> int:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        from .http import build_app  # starlette only once serving

        app = build_app(self.core, self.control, self.pool)
        ucfg = uvicorn.Config(app, host=cfg.host, port=cfg.http_port, log_level="warning", access_log=False,
                              lifespan="off", timeout_graceful_shutdown=max(1, int(cfg.drain_timeout_s)),
                              timeout_keep_alive=30, server_header=False)
        http = _Uvicorn(ucfg)
        if cfg.grpc_port:
            from .grpc_server import start_grpc

            self.grpc = start_grpc(self.core, cfg.host, cfg.grpc_port, cfg.workers, cfg.max_body_bytes)
        metrics_server = None
        if cfg.metrics_port:
            metrics_server, _ = start_http_server(cfg.metrics_port, addr=cfg.host, registry=self.metrics.registry)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, http, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        tasks = [asyncio.create_task(self._every(0.25, self.heartbeat.beat)),
                 asyncio.create_task(self._every(lambda: cfg.policy_interval_s, self._policy)),
                 asyncio.create_task(self._telemetry())]
        watchdog = Watchdog(watchdog_period(), self.heartbeat.fresh).start() if watchdog_period() else None

        serving = asyncio.create_task(http.serve())
        while not http.started and not serving.done():
            await asyncio.sleep(0.01)
        if serving.done():  # could not bind
            await serving
            raise OSError(f"cannot listen for HTTP on {cfg.host}:{cfg.http_port}")
        p = self.core.point()
        log.info("serving", extra={"event": "ready", "model": cfg.name, "bundle": self.core.slot.path.name,
                                   "http": f"{cfg.host}:{cfg.http_port}", "grpc": cfg.grpc_port or None,
                                   "metrics": cfg.metrics_port or None, "point": p.to_dict(),
                                   "batching": cfg.batching})
        notify(READY=1, STATUS=f"serving {cfg.name} at λn={p.lambda_n:g} width={p.width:g}")
        await serving  # returns once a signal stopped it and requests in flight finished
        for t in tasks:
            t.cancel()
        if self.grpc is not None:  # calls in flight finish while new ones are refused, then the listener goes
            until = self.drain_until or time.monotonic() + cfg.drain_timeout_s
            if self.core.slot is not None:
                await loop.run_in_executor(None, self.core.slot.idle, max(0.0, until - time.monotonic()))
            await loop.run_in_executor(None, self.grpc.stop(max(0.0, until - time.monotonic())).wait)
        if metrics_server is not None:
            metrics_server.shutdown()
        if watchdog:
            watchdog.stop()
        if self.sampler is not None:
            self.sampler.stop()
        slot = self.core.slot
        if slot is not None:
            await loop.run_in_executor(None, slot.close, cfg.drain_timeout_s)
        self.pool.shutdown(wait=True)
        log.info("stopped", extra={"event": "stopped"})
        return self.exit_code

    # -- signals and timers
    def _stop(self, http: uvicorn.Server, sig: int) -> None:
        if self.core.draining:
            return
        self.core.draining = True  # from here Core.infer refuses new calls (HTTP 503, gRPC UNAVAILABLE)
        self.drain_until = time.monotonic() + self.cfg.drain_timeout_s
        notify(STOPPING=1, STATUS="draining requests in flight")
        log.info("stopping", extra={"event": "stopping", "signal": signal.Signals(sig).name})
        http.should_exit = True

    def _reload(self) -> None:
        if not self.config_path:
            log.info("SIGHUP without --config: nothing to re-read", extra={"event": "reload"})
            return
        try:
            new = load_config(self.config_path, {**self.overrides, "bundle": self.cfg.bundle})
            ignored = self.control.reload(new)
        except ValueError as exc:
            log.error("reload refused, settings unchanged", extra={"event": "reload_failed", "error": str(exc)})
            return
        log.info("config reloaded", extra={"event": "reload", "needs_restart": ignored})

    async def _every(self, period: Any, fn: Any) -> None:
        while True:
            await asyncio.sleep(period() if callable(period) else period)
            fn()

    def _policy(self) -> None:
        if self.control.policy.name != "manual":  # the manual policy never moves the point
            threading.Thread(target=self.control.policy_tick, daemon=True).start()

    async def _telemetry(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        if cfg.telemetry_source == "off":
            self.control.telemetry_source = "none: telemetry_source = off"
            return
        sampler, source = await loop.run_in_executor(None, open_sampler, cfg.telemetry_source,
                                                     cfg.telemetry_interval_s, cfg.telemetry_root)
        self.control.telemetry_source = source
        self.sampler = sampler
        while sampler is not None:
            try:
                snap = await loop.run_in_executor(None, read, sampler)
            except Exception as exc:  # noqa: BLE001 - telemetry never stops the server
                self.control.telemetry_source = f"none: the sampler failed ({type(exc).__name__}: {exc})"
                return
            self.control.telemetry = snap
            self.metrics.telemetry.snapshot = metric_view(snap)
            await asyncio.sleep(self.cfg.telemetry_interval_s)


def serve(cfg: ServeConfig, config_path: str | None = None, overrides: dict[str, Any] | None = None) -> int:
    setup_logging(cfg.log_level)
    server = Server(cfg, config_path, overrides)
    server.load()
    try:
        import uvloop  # noqa: F401 - measured: the faster loop where it is installed

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop) if hasattr(asyncio, "Runner") else None
    except ImportError:
        runner = None
    if runner is not None:
        with runner:
            return runner.run(server.run())
    return asyncio.run(server.run())
