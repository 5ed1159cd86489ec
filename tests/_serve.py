"""Shared by the `floatedge serve` tests: real server processes on loopback ports, bundles, signatures, a
reference that computes what a response's logits must be from the bundle itself."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from floatedge.bundle import open_bundle
from floatedge.export.verify import ort_session, run_scalable

ROOT = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def write_token(path: Path) -> str:
    token = os.urandom(24).hex()
    path.write_text(token)
    path.chmod(0o600)
    return token


def make_key(keys_dir: Path, name: str = "ci") -> Path:
    """An Ed25519 key pair (`floatedge.signing`) in `keys_dir`: NAME.pub is trusted there; returns NAME.key."""
    from floatedge.signing import generate_key

    return generate_key(keys_dir, name).private


def sign(bundle: Path, key: Path) -> str:
    from floatedge.signing import sign_bundle

    return sign_bundle(bundle, key)


def copy_bundle(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst


class Reference:
    """The logits a bundle must give at a point: its runtime-scalable graph in a bare ORT session fed λ_n (the
    parity reference `floatedge verify` checks against PyTorch), cached per (bundle, width)."""

    def __init__(self, *bundles: Path) -> None:
        self.bundles = {}
        for b in bundles:
            ob = open_bundle(b)
            self.bundles[ob.manifest["manifest_sha256"]] = ob
        self._sessions: dict[tuple[str, float], Any] = {}

    def logits(self, sha: str, lambda_n: float, width: float, images: np.ndarray) -> np.ndarray:
        b = self.bundles[sha]
        key = (sha, width)
        if key not in self._sessions:
            self._sessions[key] = ort_session(b.model_bytes(width))
        return run_scalable(self._sessions[key], images, lambda_n)


class ServerProc:
    """`floatedge serve` in a subprocess on free loopback ports; stderr (JSON lines) kept in a file."""

    def __init__(self, workdir: Path, bundle: Path, *extra: str, config: Path | None = None,
                 env: dict[str, str] | None = None, token_file: Path | None = None) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.workdir = workdir
        self.log_path = workdir / f"serve-{self.http_port}.log"
        args = [sys.executable, "-m", "floatedge", "serve", str(bundle), "--http-port", str(self.http_port),
                "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port), *extra]
        if config:
            args += ["--config", str(config)]
        if token_file:
            args += ["--token-file", str(token_file)]
        self.token = token_file.read_text().strip() if token_file else None
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 90) -> ServerProc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def events(self) -> list[dict]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def wait_event(self, event: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if e.get("event") == event:
                    return e
            time.sleep(0.005)
        raise TimeoutError(f"no {event!r} event in {timeout}s:\n{self.log()}")

    def metrics(self) -> str:
        """The Prometheus text of the metrics port."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def wait_pending(self, n: int, timeout: float = 30) -> None:
        """Wait until `n` requests are in flight in the server (its nv_inference_pending_request_count)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.metrics().splitlines()
            if sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith("nv_inference_pending_request_count{")) >= n:
                return
            time.sleep(0.02)
        raise TimeoutError(f"fewer than {n} requests in flight after {timeout}s:\n{self.log()}")

    def request(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None,
                token: str | None | bool = None) -> tuple[int, dict, bytes]:
        """One raw HTTP request → (status, headers, body). token=True sends the server's token."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        h = dict(headers or {})
        if token is True:
            token = self.token
        if token:
            h["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(f"http://{self.url}{path}", data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method: str, path: str, body: dict | None = None, token: Any = True) -> tuple[int, Any]:
        status, _, raw = self.request(method, path, body if body is not None else (b"" if method == "POST" else None),
                                      {"Content-Type": "application/json"}, token)
        return status, json.loads(raw) if raw else None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def images(bundle: Path, n: int, seed: int = 0) -> np.ndarray:
    c, h, w = open_bundle(bundle).input_shape
    return np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)
