"""`floatedge serve` settings: one dataclass, filled from defaults, then the TOML file, then the command line.

Every option has a TOML key of the same name (docs/serve.md lists them with an example file); command-line
flags override the file. SIGHUP re-reads the file: the options in `LIVE` take effect at once, the others
(addresses, ports, backend) need a restart and are reported as such.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - JetPack 6's Python 3.10
    import tomli as tomllib

from floatedge.bundle import SUFFIX

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
LIVE = ("slo_ms", "batch_delay_ms", "batch_max", "policy_params", "token_file", "policy_interval_s",
        "telemetry_interval_s", "log_level", "governor", "policy")
POLICY_NAMES = ("manual", "static", "ladder", "governor")  # floatedge/daemon/policy.py, policies.py


class ConfigError(ValueError):
    """A setting that cannot be used, named with its key."""


@dataclass
class ServeConfig:
    bundle: str = ""  # the bundle to serve (`floatedge serve BUNDLE`)
    bundle_dir: str = ""  # hot swaps load bundles from here only; default: the bundle's directory
    model_name: str = ""  # the model's protocol name; default: the bundle's file name without .febundle
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001  # 0: no gRPC
    metrics_port: int = 8002  # 0: no metrics endpoint
    token_file: str = ""  # bearer token for control, policy and repository endpoints; unset: they are refused
    state_dir: str = ""  # last good bundle record; default $STATE_DIRECTORY (systemd), else none
    trusted_keys: str = ""  # directory of Ed25519 public keys; set: bundles must carry a valid signature
    backend: str = "auto"
    mode: str = "auto"
    threads: int = 1  # ONNX Runtime intra-op threads per request
    workers: int = 8  # threads decoding and running requests (per transport)
    max_batch: int = 64  # images per request at most (model config's max_batch_size)
    max_body_mb: float = 16.0  # request body limit (HTTP and gRPC)
    batching: bool = False  # dynamic batching (measured: docs/serve.md)
    batch_delay_ms: float = 2.0
    batch_max: int = 16
    lambda_n: float = 0.0  # start point; a recorded pinned point wins after a restart
    width: float = 0.0  # 0: the bundle's widest
    pinned: bool = False
    slo_ms: float = 0.0  # p99 latency objective reported against (0: none)
    policy: str = "manual"  # manual, static, ladder, governor (docs/governor.md)
    policy_params: dict = field(default_factory=dict)
    governor: dict = field(default_factory=dict)  # the [governor] table: the governor's budget and tuning
    policy_interval_s: float = 1.0
    telemetry_interval_s: float = 1.0
    telemetry_source: str = "auto"  # floatedge.devices sampler source: auto, sysfs, tegrastats, jtop, none; off: no sampler
    telemetry_root: str = "/"  # the filesystem the sampler reads (a `floatedge device simulate` tree in tests)
    drain_timeout_s: float = 20.0
    log_level: str = "info"

    # -- derived
    @property
    def bundle_path(self) -> Path:
        return Path(self.bundle).expanduser().resolve()

    @property
    def bundles(self) -> Path:
        return Path(self.bundle_dir).expanduser().resolve() if self.bundle_dir else self.bundle_path.parent

    @property
    def name(self) -> str:
        """The model's protocol name: `model_name`, else the bundle's file name without `.febundle`."""
        if self.model_name:
            return self.model_name
        stem = self.bundle_path.name
        return stem[: -len(SUFFIX)] if stem.endswith(SUFFIX) else Path(stem).stem

    @property
    def state_path(self) -> Path | None:
        d = self.state_dir or os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(d).expanduser().resolve() if d else None

    @property
    def params(self) -> dict:
        """The selected policy's parameters: `[governor]` for the governor (with `policy_params` over it), else
        `policy_params`."""
        return {**self.governor, **self.policy_params} if self.policy == "governor" else dict(self.policy_params)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))

    def check(self) -> ServeConfig:
        """Raise ConfigError naming the first unusable setting."""
        if not self.bundle:
            raise ConfigError("no bundle given: floatedge serve BUNDLE (or `bundle = ...` in the config)")
        if not NAME_RE.match(self.name):
            raise ConfigError(f"model name {self.name!r} must be letters, digits, '_', '.', '-' (at most 128), "
                              "starting with a letter or digit; set --model-name")
        for key in ("http_port", "grpc_port", "metrics_port"):
            v = getattr(self, key)
            if not 0 <= v <= 65535:
                raise ConfigError(f"{key} must be 0..65535, got {v}")
        if self.http_port == 0:
            raise ConfigError("http_port must be set (0 is allowed only for grpc_port and metrics_port)")
        ports = [p for p in (self.http_port, self.grpc_port, self.metrics_port) if p]
        if len(set(ports)) != len(ports):
            raise ConfigError(f"http_port, grpc_port and metrics_port must differ, got {ports}")
        for key, lo in (("threads", 1), ("workers", 1), ("max_batch", 1), ("batch_max", 1)):
            if getattr(self, key) < lo:
                raise ConfigError(f"{key} must be ≥ {lo}, got {getattr(self, key)}")
        for key in ("max_body_mb", "batch_delay_ms", "slo_ms", "policy_interval_s", "telemetry_interval_s",
                    "drain_timeout_s", "lambda_n", "width"):
            v = getattr(self, key)
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"{key} must be a finite number ≥ 0, got {v}")
        if self.max_body_mb <= 0:
            raise ConfigError("max_body_mb must be > 0")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        if self.telemetry_source not in ("auto", "sysfs", "tegrastats", "jtop", "none", "off"):
            raise ConfigError(f"telemetry_source must be auto, sysfs, tegrastats, jtop, none or off, got "
                              f"{self.telemetry_source!r}")
        if not isinstance(self.policy_params, dict):
            raise ConfigError("policy_params must be a table")
        if not isinstance(self.governor, dict):
            raise ConfigError("governor must be a table ([governor])")
        if self.policy not in POLICY_NAMES:
            raise ConfigError(f"policy must be one of {', '.join(POLICY_NAMES)}, got {self.policy!r}")
        return self


FIELDS = {f.name: f for f in dataclasses.fields(ServeConfig)}


def _coerce(key: str, value: Any) -> Any:
    want = type(getattr(ServeConfig(), key))
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {want.__name__}, got {value!r}")
    return value


def read_toml(path: str | Path) -> dict[str, Any]:
    """The settings of a TOML file, each checked by name and type (an unknown key is an error, not ignored)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    data = {**data.pop("serve", {}), **data}  # a [serve] table or top-level keys
    out = {}
    for key, value in data.items():
        if key not in FIELDS:
            raise ConfigError(f"config {path}: unknown setting {key!r}; known: {', '.join(FIELDS)}")
        out[key] = _coerce(key, value)
    return out


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> ServeConfig:
    """Defaults, then the file, then the command line (`overrides`, None values skipped)."""
    values: dict[str, Any] = read_toml(path) if path else {}
    values.update({k: _coerce(k, v) for k, v in overrides.items() if v is not None})
    return ServeConfig(**values).check()
