"""systemd integration without libsystemd: sd_notify over `$NOTIFY_SOCKET`, the watchdog, and the unit file.

sd_notify(3): the service sends one datagram of newline-separated `KEY=VALUE` lines to the AF_UNIX socket
named by `$NOTIFY_SOCKET` (a leading `@` means the abstract namespace: send to `\\0` + the rest); unset means
"not under systemd" and every call is a no-op. `READY=1` completes start-up under `Type=notify`; `STATUS=`
is one line shown by `systemctl status`; `STOPPING=1` announces the shutdown; `WATCHDOG=1` must arrive every
`$WATCHDOG_USEC` (`WatchdogSec=`), sent here at half that period and only while the server's event loop
answers, so a wedged server is restarted (`Restart=on-failure`).

Hardening (systemd.exec(5), `../shared/reference/daemon.md` §3): `ProtectSystem=strict` with the state in
`StateDirectory=`, `ProtectHome`, `PrivateTmp`, `NoNewPrivileges`, `DynamicUser=yes`. `PrivateDevices=` stays
off and the dynamic user joins group `video`: the Jetson GPU nodes (`/dev/nvhost-*`, `/dev/nvmap`) are
root:video 0660 (L4T `99-tegra-devices.rules`) and PrivateDevices would hide them.
`MemoryDenyWriteExecute=` stays off too: CUDA and TensorRT generate code at run time.
"""
from __future__ import annotations

import os
import shlex
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def notify(**fields: str | int) -> bool:
    """Send `KEY=VALUE` lines to systemd; False when not under systemd (or the socket is gone)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or not fields:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    msg = "\n".join(f"{k}={' '.join(str(v).split())}" for k, v in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(msg)
        return True
    except OSError:
        return False


def watchdog_period() -> float | None:
    """Half of `$WATCHDOG_USEC` in seconds when the watchdog is on for this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 2e6)
    except ValueError:
        return None


class Watchdog:
    """Sends `WATCHDOG=1` every half period while `alive()` (the event loop's heartbeat is fresh)."""

    def __init__(self, period_s: float, alive: Callable[[], bool]) -> None:
        self.period_s, self.alive = period_s, alive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="floatedge-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            if self.alive():
                notify(WATCHDOG=1)

    def stop(self) -> None:
        self._stop.set()


def executable() -> str:
    """The absolute path of the `floatedge` command running now (for ExecStart=)."""
    found = shutil.which("floatedge")
    if found:
        return str(Path(found).resolve())
    return f"{Path(sys.executable).resolve()} -m floatedge"


def unit(bundle: str | Path, config: str | Path | None = None, *, name: str = "floatedge",
         watchdog_s: int = 30, user_group: str = "video") -> str:
    """A systemd service unit running `floatedge serve` (Type=notify, watchdog, hardening, state directory)."""
    state = f"%S/{name}"  # %S: the state directory root (/var/lib); StateDirectory= creates %S/NAME
    args = [str(Path(bundle).resolve())]
    if config:
        args += ["--config", str(Path(config).resolve())]
    args += ["--state-dir", state, "--token-file", f"{state}/token"]
    exec_start = f"{executable()} serve {' '.join(shlex.quote(a) for a in args)}"
    make_token = (f"/bin/sh -c 'umask 077; test -s {state}/token || "
                  f"od -An -N32 -tx1 /dev/urandom | tr -dc 0-9a-f > {state}/token'")
    return f"""\
# floatedge serve as a systemd service: `floatedge serve BUNDLE --print-systemd-unit > /etc/systemd/system/{name}.service`
# then `systemctl daemon-reload && systemctl enable --now {name}`. The bearer token for the control endpoints is
# created on first start in {state}/token (mode 0600); read it as root.
[Unit]
Description=floatedge inference server (Open Inference Protocol v2)
After=network.target

[Service]
Type=notify
NotifyAccess=main
ExecStartPre={make_token}
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2s
WatchdogSec={watchdog_s}s
TimeoutStartSec=120s
TimeoutStopSec=30s
KillMode=mixed
Environment=PYTHONUNBUFFERED=1
DynamicUser=yes
SupplementaryGroups={user_group}
StateDirectory={name}
StateDirectoryMode=0700
UMask=0077
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
NoNewPrivileges=yes
PrivateDevices=no
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""


class Heartbeat:
    """The event loop stamps `beat()` regularly; `fresh()` says whether it did within `max_age_s`."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def fresh(self) -> bool:
        return time.monotonic() - self.last < self.max_age_s
