"""Control (a floatedge extension under `/v2/floatedge/...`, REST only) and the model-repository load (hot swap).

* `GET /v2/floatedge/state`: the operating point, pin, policy, last switch and its reason, last swap, the
  calibrated CA/RA at the point, recent latency against the SLO, the latest telemetry snapshot.
* `POST /v2/floatedge/point {"lambda_n"?, "width"?}`: switch (reason "manual"); `POST /v2/floatedge/pin`
  (same body, optional) fixes the point against the policy, `POST /v2/floatedge/unpin` releases it.
* `GET|POST /v2/floatedge/policy {"params": {...}}`: the policy's parameters — for the governor its budget (latency
  bound, power cap, temperature ceiling, memory floor, objective, robustness floor) and tuning, changed live and
  answered by a decision at once (the response carries it). docs/governor.md.
* `POST /v2/repository/models/{m}/load {"parameters": {"bundle": "NAME.febundle"}}` (Triton's model repository
  extension, `docs/protocol/extension_model_repository.md`): NAME is a file name in the configured bundle
  directory — never a path — and defaults to the bundle being served (reload after replacing it on disk).

Every endpoint here needs `Authorization: Bearer <token>`, the token read from `token_file` (which must not be
readable by group or others). Without a token file they are refused: a control plane open to anyone who can
reach the port is not an option, whatever the bind address.
"""
from __future__ import annotations

import hmac
import logging
import stat
import threading
import time
from pathlib import Path
from typing import Any

from floatedge.bundle import BundleError
from floatedge.oppoint import OperatingPointError

from .config import ServeConfig
from .core import Core, Slot
from .metrics import Metrics
from .policy import Context, Policy, make_policy
from .protocol import ServeError, bad, number_param
from .state import StateStore
from .trust import check_signature, load_keys

log = logging.getLogger("floatedge.serve")


def read_token(path: str | Path) -> str:
    """The bearer token of `path`: refused if missing, empty, or readable by group/others."""
    path = Path(path)
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"token file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
    if len(text) < 16:
        raise ValueError(f"token file {path} holds a token shorter than 16 characters")
    return text


class Controller:
    def __init__(self, cfg: ServeConfig, core: Core, metrics: Metrics, state: StateStore) -> None:
        self.cfg, self.core, self.metrics, self.state = cfg, core, metrics, state
        self.token = read_token(cfg.token_file) if cfg.token_file else None
        self.keys = load_keys(cfg.trusted_keys) if cfg.trusted_keys else None
        self.policy: Policy = make_policy(cfg.policy, cfg.params)
        self.telemetry: dict[str, Any] | None = None
        self.telemetry_source = "none"
        self.last_decision: dict[str, Any] | None = None
        self._swap_lock = threading.Lock()
        self._tick_lock = threading.Lock()  # one policy decision at a time (timer, live changes)

    # ----------------------------------------------------------------------------------- auth
    def authorize(self, header: str | None) -> None:
        if self.token is None:
            raise ServeError(403, "control endpoints are disabled: start the server with --token-file")
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ServeError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise ServeError(401, "wrong bearer token")

    # ----------------------------------------------------------------------------------- state
    def state_view(self) -> dict[str, Any]:
        core = self.core
        slot = core.slot
        return {
            "model": self.cfg.name, "ready": core.ready(),
            "operating_point": core.point().to_dict() if slot else None, "pinned": core.pinned,
            "policy": {"name": self.policy.name, "params": self.policy.params(),
                       "interval_s": self.cfg.policy_interval_s, "status": getattr(self.policy, "status", None),
                       "last_decision": self.last_decision},
            "last_switch": core.last_switch, "last_swap": core.last_swap,
            "calibrated": core.calibrated(), "bundle": slot.describe() if slot else None,
            "latency": {"slo_ms": self.cfg.slo_ms, **self.metrics.recent_quantiles()},
            "batching": {"enabled": self.cfg.batching, "delay_ms": self.cfg.batch_delay_ms, "max": self.cfg.batch_max},
            "telemetry": self.telemetry, "telemetry_source": self.telemetry_source,
        }

    def set_point(self, body: dict[str, Any], reason: str = "manual") -> dict[str, Any]:
        body = body or {}
        unknown = set(body) - {"lambda_n", "width"}
        if unknown:
            raise bad(f"unknown field(s) {', '.join(sorted(unknown))}; the point takes lambda_n and width")
        lam, width = number_param(body, "lambda_n"), number_param(body, "width")
        if lam is None and width is None and reason != "pin":
            raise bad("give lambda_n and/or width")
        if lam is None and width is None:
            return {"switch": None, **self.state_view()}
        record = self.core.set_point(lam, width, reason)
        return {"switch": record, **self.state_view()}

    def pin(self, body: dict[str, Any] | None) -> dict[str, Any]:
        self.core.pinned = True
        out = self.set_point(body or {}, reason="pin")
        self.core._point_changed("pin")
        log.info("pin", extra={"event": "pin", "point": self.core.point().to_dict()})
        return out

    def unpin(self) -> dict[str, Any]:
        self.core.pinned = False
        self.core._point_changed("unpin")
        log.info("unpin", extra={"event": "unpin"})
        return self.state_view()

    def set_policy(self, body: dict[str, Any]) -> dict[str, Any]:
        params = (body or {}).get("params", {})
        if not isinstance(params, dict):
            raise bad("params must be an object")
        profile = self.policy.params().get("profile")
        with self._tick_lock:
            try:
                self.policy.set_params(params)
            except ValueError as exc:
                raise bad(str(exc)) from None
        log.info("policy", extra={"event": "policy", "policy": self.policy.name, "params": self.policy.params()})
        if self.policy.params().get("profile") != profile:
            self.attach()
        decision = self.policy_tick() if self.policy.name != "manual" else None  # a change is answered now
        return {"name": self.policy.name, "params": self.policy.params(), "decision": decision}

    def policy_tick(self) -> dict[str, Any] | None:
        """One policy decision (the server's timer, and at once after a live change); nothing while pinned or
        without a model. Logged (event "decision") when it moves the point or says something new; returns it."""
        core = self.core
        slot = core.slot
        if slot is None or core.pinned or core.draining:
            return None
        with self._tick_lock:
            now = time.perf_counter()
            ctx = Context(core.point(), slot.bundle.table(), slot.bundle.widths,
                          tuple(self.metrics._recent)[-256:], self.cfg.slo_ms / 1e3, self.telemetry, now=now,
                          requests=tuple(r for r in tuple(core.requests) if r[0] > now - 60.0),
                          servers=int(getattr(slot.runtime, "concurrency", 0) or 1))
            decision = self.policy.decide(ctx)
            status = getattr(self.policy, "status", None)
            self.metrics.governor.status = status if self.policy.name == "governor" else None
            if decision is None:
                return None
            limit = str(decision.detail.get("limit", "policy"))
            out = {"policy": self.policy.name, "reason": decision.reason, "limit": limit, "at": time.time(),
                   "switch": None, "detail": decision.detail}
            if decision.lambda_n is not None or decision.width is not None:
                try:
                    out["switch"] = core.set_point(decision.lambda_n, decision.width, "policy")
                except ServeError as exc:
                    log.warning("policy decision refused", extra={"event": "policy_refused", "error": exc.message,
                                                                   "reason": decision.reason})
                    return None
                self.metrics.decisions.labels(self.policy.name, limit).inc()
                self.last_decision = out  # the last one that moved the point (the status says what holds it now)
            log.info("decision", extra={"event": "decision", "policy": self.policy.name, "limit": limit,
                                        "reason": decision.reason, "moved": out["switch"] is not None,
                                        "to": out["switch"]["to"] if out["switch"] else None,
                                        "detail": decision.detail})
            return out

    def attach(self, startup: bool = False) -> None:
        """Give a policy that takes them (ladder, governor) the profiled points of the bundle being served: the
        device profile from `floatedge profile` (or the policy's `profile` path), checked for this device, bundle
        and build. Without one the ladder climbs the widths and the governor holds the point, saying why — except
        at start-up, where a governor without a profile is a configuration error."""
        policy, slot = self.policy, self.core.slot
        if slot is None or not hasattr(policy, "attach"):
            return
        from floatedge.devices.profile import load_profile

        from .governor import points_from_profile

        try:
            prof = load_profile(slot.bundle, policy.params().get("profile") or None)
            points, problem = points_from_profile(prof, slot.bundle.table(), slot.sha), None
        except (ValueError, OSError, KeyError) as exc:
            points, problem = None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        with self._tick_lock:
            policy.attach(points, problem)
        problem = problem or getattr(policy, "problem", None)
        if problem and startup and policy.name == "governor":
            raise ValueError(f"--policy governor: {problem}")
        if problem:
            log.warning("policy has no device profile", extra={"event": "policy_profile", "policy": policy.name,
                                                               "error": problem})
        else:
            log.info("policy has the device profile", extra={"event": "policy_profile", "policy": policy.name,
                                                             "points": len(points or ()), "profile": prof["path"]})

    # ----------------------------------------------------------------------------------- hot swap
    def bundle_path(self, name: Any) -> Path:
        """A bundle of the configured directory, by file name; anything else is refused (no paths)."""
        if not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".") or "/" in name \
                or "\\" in name or "\0" in name or len(name) > 255:
            raise bad(f"bundle must be a file name in the bundle directory (no paths), got {name!r}")
        base = self.cfg.bundles
        path = base / name
        try:
            inside = path.resolve().parent == base.resolve()
        except OSError:
            inside = False
        if not inside:
            raise bad(f"bundle {name!r} resolves outside the bundle directory")
        if not path.exists():
            raise ServeError(404, f"no bundle {name!r} in the bundle directory")
        return path

    def check(self, bundle: Any) -> None:
        if self.keys is not None:
            key = check_signature(bundle, self.keys)
            log.info("signature ok", extra={"event": "signature", "bundle": Path(bundle.path).name, "key": key})

    def load(self, model: str, body: dict[str, Any] | None) -> dict[str, Any]:
        core = self.core
        if model != self.cfg.name:
            raise ServeError(404, f"unknown model {model!r}; this server serves {self.cfg.name!r} (load replaces its "
                                  "bundle)")
        params = (body or {}).get("parameters") or {}
        if not isinstance(params, dict):
            raise bad("parameters must be an object")
        unknown = set(params) - {"bundle"}
        if unknown:
            raise bad(f"unknown load parameter(s) {', '.join(sorted(unknown))}; floatedge takes 'bundle' (a file "
                      "name in the bundle directory)")
        current = core.slot
        name = params.get("bundle", current.path.name if current else None)
        path = self.bundle_path(name)
        if not self._swap_lock.acquire(blocking=False):
            raise ServeError(409, "another load is in progress; retry when it has finished")
        try:
            return self._swap(path)
        finally:
            self._swap_lock.release()

    def _swap(self, path: Path) -> dict[str, Any]:
        core = self.core
        old = core.slot
        t0 = time.perf_counter()
        log.info("swap started", extra={"event": "swap_started", "bundle": path.name,
                                        "serving": old.path.name if old else None})
        point = core.point().to_dict() if old else None
        try:
            new = core.open_slot(path, point, check=self.check)
        except (BundleError, OperatingPointError, OSError, ValueError, RuntimeError) as exc:
            self.metrics.swaps.labels("failed").inc()
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            keeps = f"{old.path.name} keeps serving" if old else "nothing is serving"
            core.last_swap = {"bundle": path.name, "ok": False, "error": why, "at": time.time()}
            log.warning("swap failed", extra={"event": "swap_failed", "bundle": path.name, "error": why})
            raise ServeError(400, f"load of {path.name} failed, {keeps}: {why}") from None
        with core._switch_lock:  # no switch between reading the point and serving the new bundle at it
            if old is not None:  # a switch made while the new bundle was opening: carry it over
                p = core._start_point(new.bundle, old.runtime.operating_point.to_dict())
                if p != new.runtime.operating_point:
                    new.runtime.set_operating_point(p.lambda_n, p.width)
            retired = core.install(new, "swap")
        seconds = time.perf_counter() - t0
        self.record()
        self.attach()  # the policy's points are the new bundle's (or it says why there are none)
        self.metrics.swaps.labels("ok").inc()
        core.last_swap = {"bundle": path.name, "ok": True, "sha256": new.sha, "seconds": round(seconds, 3),
                          "at": time.time(), "replaced": retired.path.name if retired else None}
        log.info("swap", extra={"event": "swap", **core.last_swap})
        if retired is not None:
            threading.Thread(target=self._retire, args=(retired,), daemon=True, name="floatedge-retire").start()
        return {"loaded": path.name, "sha256": new.sha, "seconds": round(seconds, 3),
                "operating_point": new.runtime.operating_point.to_dict()}

    def _retire(self, slot: Slot) -> None:
        slot.close(self.cfg.drain_timeout_s)

    def record(self) -> None:
        """Write the last-good record: the bundle serving, its checksum, the point and the pin."""
        slot = self.core.slot
        if slot is None:
            return
        try:
            self.state.write(bundle=slot.path.name, bundle_dir=str(self.cfg.bundles), sha256=slot.sha,
                             argument=self.cfg.bundle_path.name, model=self.cfg.name,
                             point=slot.runtime.operating_point.to_dict(), pinned=self.core.pinned)
        except OSError as exc:
            log.error("cannot write the state record", extra={"event": "state_error", "error": str(exc)})

    def reload(self, cfg: ServeConfig) -> list[str]:
        """SIGHUP: apply the live settings of a re-read config; return the changed ones that need a restart."""
        old = self.cfg
        ignored = [k for k in ("host", "http_port", "grpc_port", "metrics_port", "backend", "mode", "threads",
                               "workers", "bundle_dir", "model_name", "state_dir", "batching", "trusted_keys",
                               "max_batch", "max_body_mb")
                   if getattr(cfg, k) != getattr(old, k)]
        if cfg.token_file:
            self.token = read_token(cfg.token_file)
        profile = self.policy.params().get("profile")
        if cfg.policy != self.policy.name:
            with self._tick_lock:
                self.policy = make_policy(cfg.policy, cfg.params)
            self.attach()
        else:
            with self._tick_lock:
                self.policy.set_params(cfg.params)
            if self.policy.params().get("profile") != profile:
                self.attach()
        for k in ("slo_ms", "batch_delay_ms", "batch_max", "policy_params", "token_file", "policy_interval_s",
                  "telemetry_interval_s", "log_level", "drain_timeout_s", "governor", "policy"):
            setattr(old, k, getattr(cfg, k))
        self.metrics.set_slo(cfg.slo_ms / 1e3)
        slot = self.core.slot
        if slot is not None and slot.batcher is not None:
            slot.batcher.configure(cfg.batch_max, cfg.batch_delay_ms / 1e3)
        logging.getLogger("floatedge").setLevel(cfg.log_level.upper())
        return ignored
