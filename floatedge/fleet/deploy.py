"""`floatedge deploy`: the workstation side of a fleet deploy — checks, then the real `ansible-playbook`.

What happens, in order (docs/deploy.md has the walk-through):

1. Everything that can be checked here is checked before any device is touched: the bundle's checksums, its
   signature against `--trust DIR` (unsigned, tampered or signed by another key: one line, exit 1), the inventory
   and `--limit` (a pattern that names no host: one line, exit 1), `--serial` and `--max-fail-percentage`.
2. A bundle directory is packed into one tar (deterministic: sorted members, mtime 0), so each device receives one
   file that Ansible's `copy` checks (sha1) and renames into place, and the device checks again (sha256, every
   file's checksum, the signature where it has trusted keys). The release id is the tar's sha256, 12 hex digits.
3. `ansible-playbook` runs the shipped playbook (`ansible/deploy.yml`, role `floatedge_deploy`) with the run's
   settings as extra vars; its callback plugin (`ansible/callback_plugins/floatedge_summary.py`) writes what
   happened on each host, and this module turns that into the per-host summary.

Rolling: `--serial N` deploys N hosts at a time; `--max-fail-percentage P` stops starting new batches once more than
P % of a batch failed (Ansible's play keywords `serial` and `max_fail_percentage`). A host that fails keeps serving
the release it had; hosts after the stop are reported "not reached".
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from floatedge import __version__
from floatedge.bundle import MANIFEST, SIGNATURE, open_bundle
from floatedge.signing import read_signature, verify_signature

ANSIBLE_DIR = Path(__file__).resolve().parent / "ansible"
PLAYBOOK = ANSIBLE_DIR / "deploy.yml"
CALLBACK = "floatedge_summary"
OK_OUTCOMES = ("deployed", "rolled back")


class DeployError(ValueError):
    """A deploy that cannot start, or one that failed on some host; one line."""


@dataclass
class HostResult:
    host: str
    outcome: str  # deployed | rolled back | failed | unreachable | not reached
    module: str = "?"
    release: str | None = None  # what serves there now (as far as the run knows)
    previous: str | None = None
    error: str = ""
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome in OK_OUTCOMES


@dataclass
class DeployResult:
    action: str  # deploy | rollback
    release: str | None
    signature: str
    hosts: list[HostResult]
    seconds: float
    returncode: int
    log: str = ""

    @property
    def failed(self) -> list[HostResult]:
        return [h for h in self.hosts if not h.ok]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("log")
        return d


# ------------------------------------------------------------------------------------------ tools
def tool(name: str) -> str:
    """`ansible-playbook` / `ansible` of this Python's environment (where `pip install floatedge[fleet]` put them),
    else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise DeployError(f"{name} not found: install Ansible with pip install 'floatedge[fleet]' (ansible-core)")
    return found


def list_hosts(inventory: str | Path, limit: str | None = None) -> list[str]:
    """The hosts a run would touch (`ansible all --list-hosts`, which applies --limit the way the play will)."""
    inv = Path(inventory)
    if not inv.exists():
        raise DeployError(f"no inventory at {inv}")
    cmd = [tool("ansible"), "all", "-i", str(inv), "--list-hosts"] + (["--limit", limit] if limit else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    if proc.returncode != 0 and "no hosts to target" not in proc.stderr:  # a --limit matching nothing: exit 1
        raise DeployError(f"ansible cannot read inventory {inv}: {_first_error(proc.stderr or proc.stdout)}")
    m = re.search(r"hosts \((\d+)\):\n((?:\s+\S+\n?)*)", proc.stdout)
    hosts = m.group(2).split() if m else []
    if not hosts:
        why = next((ln for ln in map(_first_error, proc.stderr.splitlines()) if "parse" in ln), "")  # not an inventory
        what = f"names no host matching --limit {limit}" if limit else "names no host"
        raise DeployError(f"inventory {inv} {what}" + (f" ({why})" if why else ""))
    return hosts


def _first_error(text: str) -> str:
    for line in text.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if line.startswith(("[WARNING]", "[ERROR]", "ERROR!")) or "error" in line.lower():
            return re.sub(r"^(\[WARNING\]|\[ERROR\]|ERROR!):?\s*", "", line)
    return ""


# ------------------------------------------------------------------------------------------ the bundle
def pack(bundle: Path, out_dir: Path) -> Path:
    """The bundle as one tar file: a tar bundle as it is; a directory packed deterministically (manifest first,
    then its signature, then the rest sorted; mtime 0, mode 0644), so the same bundle gives the same release id."""
    if bundle.is_file():
        return bundle
    names = sorted(p.name for p in bundle.iterdir() if p.is_file() and not p.name.startswith("."))
    order = [n for n in (MANIFEST, SIGNATURE) if n in names] + [n for n in names if n not in (MANIFEST, SIGNATURE)]
    out = out_dir / bundle.name
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in order:
            info = tf.gettarinfo(str(bundle / name), arcname=name)
            info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
            with open(bundle / name, "rb") as f:
                tf.addfile(info, f)
    return out


def digests(path: Path) -> tuple[str, str]:
    """(sha1, sha256) of a file in one pass: sha1 is what Ansible's copy checks, sha256 what the device does."""
    h1, h256 = hashlib.sha1(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h1.update(chunk)
            h256.update(chunk)
    return h1.hexdigest(), h256.hexdigest()


def check_bundle(bundle: Path, trust: str | Path | None) -> str:
    """Checksums, and the signature against `trust` when given; returns the signature line for the summary."""
    open_bundle(bundle)
    if trust is not None:
        return f"trusted: key {verify_signature(bundle, trust, files=False)}"
    sig = read_signature(bundle)
    return f"signed by key {sig['key_id']} (not checked here: no --trust)" if sig else "unsigned"


# ------------------------------------------------------------------------------------------ the run
def deploy(bundle: str | Path | None, inventory: str | Path, *, limit: str | None = None, serial: int | None = None,
           max_fail_percentage: float | None = None, trust: str | Path | None = None, rollback: bool = False,
           quiet: bool = False) -> DeployResult:
    """Deploy `bundle` to the inventory's hosts (or roll them back with `rollback`); returns the per-host result.
    Raises DeployError before touching any host when the input is wrong."""
    if rollback and bundle is not None:
        raise DeployError("--rollback takes no BUNDLE: it swaps each device back to its previous release")
    if not rollback and bundle is None:
        raise DeployError("give the BUNDLE to deploy (or --rollback)")
    if serial is not None and serial < 1:
        raise DeployError(f"--serial must be at least 1 (hosts per batch), got {serial}")
    if max_fail_percentage is not None and not 0 <= max_fail_percentage <= 100:
        raise DeployError(f"--max-fail-percentage must be in [0, 100], got {max_fail_percentage:g}")
    if rollback and trust is not None:
        raise DeployError("--trust checks the bundle being deployed; a rollback returns to a release already checked")
    playbook = tool("ansible-playbook")
    signature, release = "", None
    if bundle is not None:
        bundle = Path(bundle)
        signature = check_bundle(bundle, trust)
    hosts = list_hosts(inventory, limit)

    with tempfile.TemporaryDirectory(prefix="floatedge-deploy.") as tmp:
        tmpdir = Path(tmp)
        extra: dict = {"floatedge_action": "rollback" if rollback else "deploy", "floatedge_version": __version__}
        if bundle is not None:
            tar = pack(bundle, tmpdir)
            sha1, sha256 = digests(tar)
            release = sha256[:12]
            extra.update(floatedge_bundle=str(tar.resolve()), floatedge_release=release, floatedge_bundle_sha1=sha1,
                         floatedge_bundle_sha256=sha256)
        if trust is not None:
            extra["floatedge_trusted_keys"] = str(Path(trust).resolve())
        if serial is not None:
            extra["floatedge_serial"] = serial
        if max_fail_percentage is not None:
            extra["floatedge_max_fail_percentage"] = max_fail_percentage
        (tmpdir / "vars.json").write_text(json.dumps(extra))
        report = tmpdir / "report.json"
        enabled = ",".join(filter(None, [os.environ.get("ANSIBLE_CALLBACKS_ENABLED", ""), CALLBACK]))
        env = {**os.environ, "ANSIBLE_CALLBACKS_ENABLED": enabled, "FLOATEDGE_DEPLOY_REPORT": str(report),
               "ANSIBLE_RETRY_FILES_ENABLED": "False"}
        env.setdefault("ANSIBLE_PIPELINING", "True")  # one SSH round trip per task instead of three
        cmd = [playbook, "-i", str(inventory), str(PLAYBOOK), "-e", f"@{tmpdir / 'vars.json'}"]
        if limit:
            cmd += ["--limit", limit]
        t0 = time.perf_counter()
        if quiet:
            proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            log = proc.stdout + proc.stderr
        else:
            proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL)
            log = ""
        seconds = time.perf_counter() - t0
        if not report.exists():
            raise DeployError(f"ansible-playbook failed (exit {proc.returncode}) before any host ran"
                              + (f": {_first_error(log)}" if _first_error(log) else ""))
        ran = json.loads(report.read_text())["hosts"]
    return DeployResult(extra["floatedge_action"], release, signature, [_host(h, ran.get(h)) for h in hosts], seconds,
                        proc.returncode, log)


def _host(host: str, ran: dict | None) -> HostResult:
    if ran is None:
        return HostResult(host, "not reached", error="not started: an earlier batch used up the failure budget")
    rec, failure, counts = ran.get("record") or {}, ran.get("failure") or {}, ran.get("counts") or {}
    details = {k: v for k, v in rec.items() if k not in ("outcome", "module", "release", "previous", "error", "step")}
    base = {"module": rec.get("module") or "?", "release": rec.get("release"), "previous": rec.get("previous"),
            "details": details}
    if counts.get("unreachable") or failure.get("unreachable"):
        return HostResult(host, "unreachable", error=failure.get("error", "unreachable"), **base)
    if rec.get("outcome") in OK_OUTCOMES and not counts.get("failures"):
        return HostResult(host, rec["outcome"], **base)
    step = rec.get("step") or failure.get("task") or "?"
    return HostResult(host, "failed", error=f"{step}: {short_error(rec.get('error') or failure.get('error') or '')}", **base)


def short_error(msg: str) -> str:
    """Ansible's message in one short line: its 'Task failed: Module failed:' prefixes off and, where an OS error is
    the cause, what failed and the error ('Failed to replace …: [Errno 28] No space left on device')."""
    msg = re.sub(r"^(Task failed: )?(Module failed: )?", "", msg.strip()) or "failed"
    errno = re.search(r"\[Errno \d+\] [^:'\"]+", msg)
    if errno:
        what = re.split(r"['\"]", msg, maxsplit=1)[0].strip(" :")
        return f"{what}: {errno.group(0).strip()}" if what and what != msg else errno.group(0).strip()
    return msg if len(msg) <= 300 else msg[:297] + "..."


# ------------------------------------------------------------------------------------------ the summary
def format_summary(result: DeployResult) -> str:
    """The per-host table (host, module, outcome, what serves now, previous) and one line of detail per host."""
    head = ["host", "module", "outcome", "serving", "previous"]
    rows = [[h.host, h.module, h.outcome, h.release or "—", h.previous or "—"] for h in result.hosts]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"floatedge {result.action}" + (f" of release {result.release}" if result.release else "")
             + (f" ({result.signature})" if result.signature else "") + f": {len(result.hosts)} host(s), "
             f"{result.seconds:.1f} s", "  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for h, r in zip(result.hosts, rows, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if h.error:
            lines.append(f"    {h.error}")
        elif h.details:
            lines.append("    " + "; ".join(f"{k}: {v}" for k, v in h.details.items()))
    return "\n".join(lines)


def failure_line(result: DeployResult) -> str | None:
    """None when every host succeeded, else one line naming the hosts that did not (the CLI's error)."""
    bad = result.failed
    if not bad:
        return None
    named = "; ".join(f"{h.host} ({h.outcome}{': ' + h.error if h.error and h.outcome == 'failed' else ''})"
                      for h in bad[:3])
    more = f"; +{len(bad) - 3} more" if len(bad) > 3 else ""
    return f"{result.action} failed on {len(bad)} of {len(result.hosts)} host(s): {named}{more}"
