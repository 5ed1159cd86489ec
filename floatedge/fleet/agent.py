"""The device side of `floatedge deploy`: what the playbook runs on each device, one step per call.

    python -m floatedge.fleet.agent STEP --root ROOT --state STATE [options]     → one JSON object on stdout

Every step that changes the device is atomic, so a run that fails anywhere — unreachable mid-way, disk full
mid-copy, a build that fails, a server that never gets ready — leaves the release that was serving in place:

    <root><state>/                       (state: /var/lib/floatedge-fleet)
        incoming/<id>.febundle           the copy Ansible makes (temp file + rename, checksummed)
        releases/<id>/model.febundle     a staged release: the bundle as a tar, checked (sha256, every file's
                  release.json           checksum, the signature when the device has trusted keys) …
                  engines/               … what `floatedge build` / `profile` made for this device (when present)
                  serve.toml             the server's config, and its systemd unit (`floatedge serve
                  floatedge.service      --print-systemd-unit`, when present), both for this release
        current  -> releases/<id>        the release in service (a symlink, switched by rename)
        previous -> releases/<id>        the one before: `floatedge deploy --rollback` swaps the two

    <root>/etc/systemd/system/floatedge.service   the current release's unit (a copy; atomic)
    <root>/etc/floatedge/serve.toml               -> <state>/current/serve.toml (the config in force)
    <root>/etc/floatedge/trusted-keys/*.pub        the device's trusted keys: present, it refuses other bundles

`id` is the first 12 hex digits of the bundle tar's sha256. Steps: `facts` (read only), `stage`, `prepare`,
`activate`, `finish` (prune to current + previous), `restore` (after a failure: put back what was serving),
`rollback`. A step that fails prints one line on stderr and exits 1; the playbook reports that line.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from floatedge import __version__
from floatedge.bundle import BundleError, open_bundle
from floatedge.fsutil import atomic_write_json, atomic_write_text
from floatedge.signing import read_signature, verify_signature

STATE_DIR = "/var/lib/floatedge-fleet"
UNIT = "floatedge.service"
UNIT_DIR = "etc/systemd/system"
CONFIG_LINK = "etc/floatedge/serve.toml"
TRUST_DIR = "etc/floatedge/trusted-keys"
BUNDLE = "model.febundle"
RECORD = "release.json"
RELEASE_RE = re.compile(r"^[0-9a-f]{12}$")
COMMAND_TIMEOUT_S = 3600  # an engine build on a Nano takes minutes (edge.md §3: 6–12 min first-boot builds)


class FleetError(ValueError):
    """A deploy step that cannot be done on this device, with one line saying why."""


class Device:
    """One device's release store under `root` (a simulated device's directory in the tests, "/" on a Jetson)."""

    def __init__(self, root: str | Path, state: str = STATE_DIR) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FleetError(f"device root {self.root} is not a directory")
        self.state = self.under(state)
        self.releases, self.incoming = self.state / "releases", self.state / "incoming"

    def under(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def trust_dir(self) -> Path | None:
        """The trusted-keys directory when it holds a key: the device then refuses unsigned and foreign bundles."""
        d = self.under(TRUST_DIR)
        return d if d.is_dir() and any(d.glob("*.pub")) else None

    @property
    def systemd(self) -> bool:
        """A service manager to restart the server with: systemd booted (sd_booted(3): /run/systemd/system exists)
        and this is the real root, not a simulated one."""
        return self.root == Path("/") and Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None

    def release(self, rid: str) -> Path:
        if not RELEASE_RE.match(rid or ""):
            raise FleetError(f"bad release id {rid!r} (12 hex digits)")
        return self.releases / rid

    def link(self, name: str) -> str | None:
        """The release `current` / `previous` points at, None if unset or dangling."""
        p = self.state / name
        if not p.is_symlink():
            return None
        rid = Path(os.readlink(p)).name
        return rid if RELEASE_RE.match(rid) and (self.releases / rid).is_dir() else None

    def set_link(self, name: str, rid: str | None) -> None:
        """Point `name` at release `rid` (None: remove it) by renaming a new symlink over the old: never absent."""
        p = self.state / name
        if rid is None:
            if p.is_symlink():
                p.unlink()
            return
        tmp = self.state / f".{name}.{os.getpid()}.tmp"
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(f"releases/{rid}", tmp)
        os.replace(tmp, p)

    def present(self) -> list[str]:
        if not self.releases.is_dir():
            return []
        return sorted(p.name for p in self.releases.iterdir() if p.is_dir() and RELEASE_RE.match(p.name))

    def record(self, rid: str) -> dict:
        try:
            return json.loads((self.release(rid) / RECORD).read_text())
        except (OSError, ValueError):
            return {"id": rid}

    def update_record(self, rid: str, **fields) -> dict:
        rec = {**self.record(rid), **fields}
        atomic_write_json(self.release(rid) / RECORD, rec)
        return rec

    def install(self, rid: str) -> dict:
        """Install release `rid`'s unit (a copy, atomically) and point the config link at `current`'s."""
        out = {"unit": None, "config": None}
        unit = self.release(rid) / UNIT
        if unit.is_file():
            dest = self.under(UNIT_DIR) / UNIT
            atomic_write_text(dest, unit.read_text())
            out["unit"] = str(dest)
        if (self.release(rid) / "serve.toml").is_file():
            link = self.under(CONFIG_LINK)
            link.parent.mkdir(parents=True, exist_ok=True)
            target = os.path.relpath(self.state / "current" / "serve.toml", link.parent)
            if not (link.is_symlink() and os.readlink(link) == target):
                tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
                if tmp.is_symlink() or tmp.exists():
                    tmp.unlink()
                os.symlink(target, tmp)
                os.replace(tmp, link)
            out["config"] = str(link)
        return out

    def clean(self) -> list[str]:
        """Remove what an interrupted step left: incoming copies, half-made release directories, temp links."""
        gone = []
        for d in (self.incoming, self.releases, self.state):
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if d == self.incoming or p.name.startswith("."):
                    _remove(p)
                    gone.append(p.name)
        return gone


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ floatedge commands
def _floatedge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`floatedge ARGS` with this interpreter, its bin directory first on PATH (so `serve --print-systemd-unit`
    names this installation's `floatedge` in ExecStart=, not another one found on PATH)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", "floatedge", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


def available_commands() -> set[str]:
    """The commands this floatedge has (`floatedge --help`), so the playbook runs `build`/`profile` only where
    the installed version has them."""
    proc = _floatedge("--help")
    text = proc.stdout.split("Commands:", 1)[-1] if proc.returncode == 0 else ""
    return {m.group(1) for m in re.finditer(r"^\s{2}([a-z][\w-]*)\s", text, re.M)}


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_step(name: str, dev: Device, bundle: Path, out_dir: Path, extra: str, commands: set[str]) -> dict:
    """Run `floatedge NAME BUNDLE` (build or profile) when this floatedge has it, passing `--cache OUT_DIR` and
    `--root ROOT` where the command takes them; the record says what ran, how long, and its last line."""
    if name not in commands:
        return {"ran": False, "why": f"this floatedge ({__version__}) has no `{name}` command"}
    help_text = _floatedge(name, "--help").stdout
    args = [name, str(bundle)]
    if "--cache" in help_text:
        out_dir.mkdir(parents=True, exist_ok=True)
        args += ["--cache", str(out_dir)]
    if "--root" in help_text and dev.root != Path("/"):
        args += ["--root", str(dev.root)]
    args += shlex.split(extra)
    t0 = time.monotonic()
    try:
        proc = _floatedge(*args, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FleetError(f"floatedge {name} did not finish in {COMMAND_TIMEOUT_S} s") from None
    rec = {"ran": True, "command": "floatedge " + " ".join(args), "rc": proc.returncode,
           "seconds": round(time.monotonic() - t0, 2), "last_line": _last_line(proc.stdout)}
    if proc.returncode != 0:
        raise FleetError(f"floatedge {name} failed (exit {proc.returncode}): {_last_line(proc.stderr or proc.stdout)}")
    return rec


def toml_config(settings: dict) -> str:
    """The server's settings as TOML (scalars, lists of scalars, one level of tables inline)."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        raise FleetError(f"server setting value {v!r} is not a TOML scalar, list or table")

    lines = ["# floatedge serve settings for this release, written by `floatedge deploy` (docs/deploy.md);",
             "# change them in the inventory (floatedge_serve_settings), not here: the next deploy rewrites this file"]
    for k, v in settings.items():
        if not re.match(r"^[a-z_]+$", str(k)):
            raise FleetError(f"bad server setting name {k!r}")
        lines.append(f"{k} = {value(v)}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ steps
def facts(dev: Device) -> dict:
    from floatedge.devices.identity import read_identity

    try:
        ident = read_identity(dev.root)
        who = {"module": ident.name or ("not a Jetson" if not ident.is_jetson else "unknown Jetson"),
               "part_number": ident.part_number, "jetpack": ident.jetpack, "tensorrt": ident.tensorrt}
    except Exception as exc:  # noqa: BLE001 - identity is informative: a reader's failure must not stop a deploy
        who = {"module": f"unknown ({exc})", "part_number": "", "jetpack": "", "tensorrt": ""}
    free = shutil.disk_usage(dev.state if dev.state.is_dir() else dev.root).free
    return {**who, "floatedge": __version__, "python": sys.executable, "current": dev.link("current"),
            "previous": dev.link("previous"), "releases": dev.present(), "systemd": dev.systemd,
            "trusted_keys": str(dev.trust_dir) if dev.trust_dir else None, "free_bytes": free}


def stage(dev: Device, rid: str, sha256: str, trust: str | None) -> dict:
    """Check the copy Ansible made in incoming/ and make it release `rid`: its sha256 is the workstation's, every
    file passes its checksum, and — where the device has trusted keys — the signature is by one of them. Any
    failure removes the copy; nothing else is touched."""
    dest = dev.release(rid)
    src = dev.incoming / f"{rid}.febundle"
    if dest.is_dir():
        _remove(src)
        return {"release": rid, "staged": False, "why": "already on the device", **_signature_of(dev, rid)}
    try:
        if not src.is_file():
            raise FleetError(f"no copied bundle at {src}")
        actual = _sha256(src)
        if actual != sha256:
            raise FleetError(f"the copied bundle is corrupt: sha256 {actual}, the workstation's is {sha256}")
        open_bundle(src)
        trusted = Path(trust) if trust else dev.trust_dir
        if trusted is not None:
            signer, checked = verify_signature(src, trusted, files=False), True
        else:
            sig = read_signature(src)
            signer, checked = (sig["key_id"] if sig else None), False
        tmp = dev.releases / f".{rid}.tmp"
        _remove(tmp)
        tmp.mkdir(parents=True)
        os.replace(src, tmp / BUNDLE)
        b = open_bundle(tmp / BUNDLE, verify=False)
        atomic_write_json(tmp / RECORD, {
            "id": rid, "sha256": sha256, "signer": signer, "signature_checked": checked,
            "architecture": b.architecture, "method": b.manifest.get("method"), "widths": list(b.widths),
            "created": b.manifest.get("created"), "staged": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        os.replace(tmp, dest)
    except BaseException:
        _remove(src)
        _remove(dev.releases / f".{rid}.tmp")
        raise
    return {"release": rid, "staged": True, **_signature_of(dev, rid)}


def _signature_of(dev: Device, rid: str) -> dict:
    rec = dev.record(rid)
    signer = rec.get("signer")
    if signer is None:
        return {"signature": "unsigned (no trusted keys on the device)"}
    return {"signature": f"{'trusted' if rec.get('signature_checked') else 'not checked'}: key {signer}"}


def prepare(dev: Device, rid: str, build_args: str, profile_args: str, settings: dict) -> dict:
    """Build and profile for this device (when this floatedge has `build` / `profile`), then write the server's
    config and its systemd unit (when it has `serve --print-systemd-unit`) into the release directory. A release
    prepared before by the same floatedge with the same arguments and settings (a redeploy after a rollback) keeps
    what it has: its engines and profile are this device's already."""
    rdir = dev.release(rid)
    if not rdir.is_dir():
        raise FleetError(f"release {rid} is not staged on this device")
    cfg = dict(settings)
    if dev.trust_dir is not None:
        cfg.setdefault("trusted_keys", str(dev.trust_dir))
    recipe = {"floatedge": __version__, "build_args": build_args, "profile_args": profile_args, "config": cfg}
    old = dev.record(rid)
    if old.get("recipe") == recipe and (rdir / "serve.toml").is_file():
        rec = {k: old[k] for k in ("build", "profile", "unit")}
        return {"release": rid, **rec, "reused": True, "summary": {**_summary(rec, reused=True), **_signature_of(dev, rid)}}
    bundle, engines = rdir / BUNDLE, rdir / "engines"
    commands = available_commands()
    rec = {"build": run_step("build", dev, bundle, engines, build_args, commands)}
    rec["profile"] = run_step("profile", dev, bundle, engines, profile_args, commands)
    atomic_write_text(rdir / "serve.toml", toml_config(cfg))
    if "serve" in commands and "--print-systemd-unit" in _floatedge("serve", "--help").stdout:
        proc = _floatedge("serve", str(bundle), "--config", str(rdir / "serve.toml"), "--print-systemd-unit")
        if proc.returncode != 0:
            raise FleetError(f"floatedge serve --print-systemd-unit failed: {_last_line(proc.stderr or proc.stdout)}")
        atomic_write_text(rdir / UNIT, proc.stdout)
        rec["unit"] = {"ran": True}
    else:
        (rdir / UNIT).unlink(missing_ok=True)
        rec["unit"] = {"ran": False, "why": f"this floatedge ({__version__}) has no `serve --print-systemd-unit`"}
    dev.update_record(rid, **rec, recipe=recipe)
    return {"release": rid, **rec, "reused": False, "summary": {**_summary(rec), **_signature_of(dev, rid)}}


def _summary(rec: dict, reused: bool = False) -> dict:
    """One line per step for the deploy summary: ran (how long), skipped (why), or reused from an earlier deploy."""
    def line(r: dict) -> str:
        if not r["ran"]:
            return f"skipped: {r['why']}"
        took = f"ran ({r['seconds']:g} s)" if "seconds" in r else "ran"
        return f"reused ({took} when first deployed)" if reused else took

    return {k: line(r) for k, r in rec.items()}


def activate(dev: Device, rid: str) -> dict:
    """Make `rid` current and the release that was current previous (unless it already is current), then install
    its unit and config. Older releases stay until `finish`, so a failure after this can still `restore`."""
    if not dev.release(rid).is_dir():
        raise FleetError(f"release {rid} is not staged on this device")
    cur = dev.link("current")
    if cur != rid:
        dev.set_link("previous", cur)
        dev.set_link("current", rid)
    return {"current": rid, "previous": dev.link("previous"), "switched": cur != rid, **dev.install(rid),
            "systemd": dev.systemd}


def finish(dev: Device) -> dict:
    """Keep the current and previous releases (bundle, engines, profile, unit), drop the others."""
    keep = {dev.link("current"), dev.link("previous")}
    dropped = [rid for rid in dev.present() if rid not in keep]
    for rid in dropped:
        shutil.rmtree(dev.releases / rid)
    dev.clean()
    return {"current": dev.link("current"), "previous": dev.link("previous"), "dropped": dropped}


def restore(dev: Device, current: str | None, previous: str | None, drop: str | None) -> dict:
    """After a failed deploy: `current` and `previous` back to what they were, that release's unit and config
    reinstalled, the failed release and every leftover removed."""
    switched = dev.link("current") != current
    for name, rid in (("previous", previous), ("current", current)):
        dev.set_link(name, rid if rid and (dev.releases / rid).is_dir() else None)
    installed = dev.install(current) if current and switched and (dev.releases / current).is_dir() else {}
    if drop and drop not in (current, previous) and RELEASE_RE.match(drop):
        _remove(dev.releases / drop)
    return {"current": dev.link("current"), "previous": dev.link("previous"), "switched": switched,
            "cleaned": dev.clean(), **installed, "systemd": dev.systemd}


def rollback(dev: Device) -> dict:
    """Swap current and previous: the release before the last deploy serves again, with its own engines, unit and
    config; rolling back twice returns to where it was."""
    cur, prev = dev.link("current"), dev.link("previous")
    if prev is None:
        raise FleetError(f"no previous release to roll back to (current: {cur or 'none'})")
    dev.set_link("previous", cur)
    dev.set_link("current", prev)
    return {"current": prev, "previous": cur, **dev.install(prev), "systemd": dev.systemd,
            **_signature_of(dev, prev)}


# ------------------------------------------------------------------------------------------ command line
def _emit(obj: dict) -> None:
    click.echo(json.dumps(obj, sort_keys=True))


def _step(fn):
    """One step: its JSON on stdout; a user-facing failure as one line on stderr, exit 1."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _emit(fn(*args, **kwargs))
        except (FleetError, BundleError, ValueError, OSError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            click.echo(msg, err=True)
            sys.exit(1)

    return wrapper


@click.group()
@click.option("--root", default="/", show_default=True, help="The device's filesystem root.")
@click.option("--state", default=STATE_DIR, show_default=True, help="The release store, under --root.")
@click.pass_context
def agent(ctx: click.Context, root: str, state: str) -> None:
    """Device-side steps of `floatedge deploy` (run by its playbook; docs/deploy.md)."""
    ctx.obj = (root, state)


def _dev(ctx: click.Context) -> Device:
    return Device(*ctx.obj)


@agent.command("facts")
@click.pass_context
@_step
def facts_cmd(ctx):
    return facts(_dev(ctx))


@agent.command("stage")
@click.option("--release", required=True)
@click.option("--sha256", required=True)
@click.option("--trust", default=None, help="Trusted keys directory (default: the device's, if it has keys).")
@click.pass_context
@_step
def stage_cmd(ctx, release, sha256, trust):
    return stage(_dev(ctx), release, sha256, trust)


@agent.command("prepare")
@click.option("--release", required=True)
@click.option("--build-args", default="")
@click.option("--profile-args", default="")
@click.option("--settings", default="{}", help="Server settings as a JSON object.")
@click.pass_context
@_step
def prepare_cmd(ctx, release, build_args, profile_args, settings):
    try:
        parsed = json.loads(settings or "{}")
    except ValueError:
        raise FleetError(f"server settings are not a JSON object: {settings[:80]!r}") from None
    if not isinstance(parsed, dict):
        raise FleetError("server settings (floatedge_serve_settings) must be a mapping")
    return prepare(_dev(ctx), release, build_args, profile_args, parsed)


@agent.command("activate")
@click.option("--release", required=True)
@click.pass_context
@_step
def activate_cmd(ctx, release):
    return activate(_dev(ctx), release)


@agent.command("finish")
@click.pass_context
@_step
def finish_cmd(ctx):
    return finish(_dev(ctx))


@agent.command("restore")
@click.option("--current", default="")
@click.option("--previous", default="")
@click.option("--drop", default="")
@click.pass_context
@_step
def restore_cmd(ctx, current, previous, drop):
    return restore(_dev(ctx), current or None, previous or None, drop or None)


@agent.command("rollback")
@click.pass_context
@_step
def rollback_cmd(ctx):
    return rollback(_dev(ctx))


if __name__ == "__main__":  # pragma: no cover
    agent()
