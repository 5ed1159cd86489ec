"""Jetsons on this machine for the fleet test and benchmark: per host a `floatedge device simulate` tree and, where
network namespaces can be made, a namespace joined by a veth pair with its own sshd (own config, port, host key);
the controller's SSH key and known_hosts are made here too. Where namespaces cannot be made (not root, no `ip`, no
sshd), the hosts are `ansible_connection=local` with separate roots, and `Fleet.notes` says so."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from floatedge.fleet import agent


def fe(*args, timeout=900) -> subprocess.CompletedProcess:
    """`floatedge ARGS` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "floatedge", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def netns_problem() -> str | None:
    """Why network-namespace hosts with sshd cannot be made here, or None. FLOATEDGE_TEST_LOCAL_HOSTS=1 takes the
    fallback on purpose (to check it)."""
    if os.environ.get("FLOATEDGE_TEST_LOCAL_HOSTS"):
        return "FLOATEDGE_TEST_LOCAL_HOSTS is set"
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install iproute2 openssh-client)"
    if not Path("/usr/sbin/sshd").exists():
        return "/usr/sbin/sshd not found (apt-get install openssh-server)"
    probe = f"feprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Fleet:
    """Jetsons on this machine: per host a simulated device tree and, where namespaces work, a network namespace
    joined by a veth pair, with an sshd on its own config, port and host key; the controller's key is made here."""

    PORT = 2222

    def __init__(self, base: Path) -> None:
        self.base, self.hosts, self.procs, self.netns, self.mounts = base, {}, [], [], []
        base.mkdir(parents=True, exist_ok=True)
        self.problem = netns_problem()
        self.simulated = fe("device", "simulate", "--help").returncode == 0
        self.notes = [] if self.simulated else ["`floatedge device simulate` is not available: plain root directories"]
        if self.problem:
            self.notes.append(f"network namespaces unavailable ({self.problem}): ansible_connection=local, separate roots")
        else:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "id_ed25519")], check=True)
        pid = os.getpid()
        self.net = f"10.{200 + pid % 50}.{(pid // 50) % 250}"
        self.tag = f"fe{pid % 100000}"

    def add(self, name: str, module: str, disk: str | None = None) -> Path:
        """A host `name` simulating `module`; `disk` (e.g. '8m'): its release store is a tmpfs of that size."""
        i = len(self.hosts)
        root = self.base / name / "root"
        if self.simulated:
            r = fe("device", "simulate", module, "--root", root)
            assert r.returncode == 0, r.stderr
        else:
            root.mkdir(parents=True)
        host = {"root": root, "module": module, "tmpfs": False}
        if disk:
            store = state(root)
            store.mkdir(parents=True)
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={disk}", "tmpfs", str(store)], capture_output=True,
                               text=True)
            if r.returncode == 0:
                self.mounts.append(store)
                host["tmpfs"] = True
            else:
                self.notes.append(f"no tmpfs for {name} ({r.stderr.strip()}): a read-only store stands in for a full disk")
        if not self.problem:
            host.update(self._namespace(name, i))
        self.hosts[name] = host
        return root

    def fill(self, name: str, room: int) -> str:
        """Leave `room` bytes free in `name`'s release store (a read-only store where no tmpfs could be mounted);
        the error the copy will then meet."""
        store = state(self.hosts[name]["root"])
        if self.hosts[name]["tmpfs"]:
            (store / "filler").write_bytes(b"\0" * (shutil.disk_usage(store).free - room))
            return "No space left on device"
        for d in (store, store / "incoming"):
            d.chmod(0o555)
        return "Permission denied"

    def unfill(self, name: str) -> None:
        store = state(self.hosts[name]["root"])
        for d in (store, store / "incoming"):
            d.chmod(0o755)
        (store / "filler").unlink(missing_ok=True)

    def _namespace(self, name: str, i: int) -> dict:
        ns, outer, inner = f"{self.tag}n{i}", f"{self.tag}h{i}", f"{self.tag}d{i}"
        here, there = f"{self.net}.{4 * i + 1}", f"{self.net}.{4 * i + 2}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        self.netns.append(ns)
        for cmd in (["ip", "link", "add", outer, "type", "veth", "peer", "name", inner],
                    ["ip", "link", "set", inner, "netns", ns],
                    ["ip", "addr", "add", f"{here}/30", "dev", outer], ["ip", "link", "set", outer, "up"],
                    ["ip", "-n", ns, "addr", "add", f"{there}/30", "dev", inner], ["ip", "-n", ns, "link", "set", inner, "up"],
                    ["ip", "-n", ns, "link", "set", "lo", "up"]):
            subprocess.run(cmd, check=True, capture_output=True)
        d = self.base / name / "sshd"
        d.mkdir(parents=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
        shutil.copy(self.base / "id_ed25519.pub", d / "authorized_keys")
        (d / "sshd_config").write_text(
            f"Port {self.PORT}\nListenAddress {there}\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "/usr/sbin/sshd", "-D", "-e", "-f",
                                            str(d / "sshd_config")], stderr=open(d / "sshd.log", "w")))
        with open(self.base / "known_hosts", "a") as f:
            f.write(f"[{there}]:{self.PORT} {(d / 'host_key.pub').read_text()}")
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((there, self.PORT), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (d / "sshd.log").read_text()
                time.sleep(0.2)
        return {"ns": ns, "address": there}

    def inventory(self, unreachable: str | None = None) -> Path:
        """An inventory of every host (plus `unreachable`: a host where no sshd listens)."""
        py = sys.executable
        lines = ["[jetsons]"]
        for name, h in self.hosts.items():
            if self.problem:
                lines.append(f"{name} ansible_connection=local floatedge_root={h['root']}")
            else:
                lines.append(f"{name} ansible_host={h['address']} ansible_port={self.PORT} floatedge_root={h['root']}")
        if unreachable:
            address = next(iter(self.hosts.values())).get("address", "127.0.0.1")
            lines.append(f"{unreachable} ansible_connection=ssh ansible_host={address} ansible_port=1 "
                         f"floatedge_root={self.base / unreachable}")
        # one variable a line in a [group:vars] section; the interpreter and floatedge: this checkout's, as installed
        lines += ["", "[jetsons:vars]", f"ansible_python_interpreter={py}", "floatedge_install=none", f"floatedge_python={py}",
                  "ansible_user=root", f"ansible_ssh_private_key_file={self.base / 'id_ed25519'}",
                  f"ansible_ssh_common_args='-o UserKnownHostsFile={self.base / 'known_hosts'} -o StrictHostKeyChecking=yes "
                  "-o ConnectTimeout=10'"]
        inv = self.base / "inventory.ini"
        inv.write_text("\n".join(lines) + "\n")
        return inv

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(timeout=10)
        for ns in self.netns:  # sessions the sshds forked (Ansible's persistent connections): ours, ended by pid
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 15)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for m in self.mounts:
            subprocess.run(["umount", "-l", str(m)], capture_output=True)


def state(root: Path) -> Path:
    return root / agent.STATE_DIR.lstrip("/")


def link(root: Path, name: str) -> str | None:
    p = state(root) / name
    return Path(os.readlink(p)).name if p.is_symlink() else None
