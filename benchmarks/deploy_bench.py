"""Fleet deploy time: `floatedge deploy` to 2 simulated Jetsons over SSH (network namespaces, real sshd, real
`ansible-playbook`), and the time a rollback takes. Writes the `deploy` section of docs/RESULTS.md.

    python benchmarks/deploy_bench.py                       # trains the ResNet-20 bundle if missing (1 epoch, 512 images)
    python benchmarks/deploy_bench.py --bundle X.febundle --rounds 3

Per round, end to end as the command runs them (checks on the workstation, packing, `ansible-playbook`, summary):

1. deploy a new release on both hosts (copy, check, stage, build, profile, unit, switch, prune);
2. rollback to the release before;
3. redeploy the new release, which the devices still hold (no copy; build and profile reused);
4. the first deploy onto fresh devices is timed once, and a new release with `--serial 1` (one host at a time) once.

Each host is a network namespace with its own sshd (tests/_fleet.py); where namespaces cannot be made it falls back
to ansible_connection=local and the section says so. Needs root, iproute2, openssh-server, ansible-core.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _fleet import Fleet  # noqa: E402
from _results import CIFAR10, machine, update_section  # noqa: E402

from floatedge.bundle import open_bundle, write_bundle  # noqa: E402
from floatedge.fleet.deploy import deploy, failure_line  # noqa: E402
from floatedge.signing import generate_key, sign_bundle  # noqa: E402

HOSTS = (("jetson-a", "orin-nano-8gb"), ("jetson-b", "nano"))


def ensure_bundle(out: Path, limit: int = 512) -> Path:
    bundle = out.with_suffix(".febundle")
    if bundle.exists():
        return bundle
    run = [sys.executable, "-m", "floatedge"]
    subprocess.run([*run, "train", "--method", "floats", "--arch", "resnet20", "--dataset", "cifar10", "--data",
                    str(CIFAR10), "--limit-train", str(limit), "--epochs", "1", "--widths", "1.0,0.75,0.5", "--out",
                    str(out), "--quiet", "--threads", "1"], check=True)
    subprocess.run([*run, "export", str(out), "--out", str(bundle)], check=True)
    return bundle


def step_seconds(line: str) -> float:
    """Seconds of a step from the summary's line: 'ran (12.3 s)' → 12.3; skipped or reused → 0."""
    m = re.fullmatch(r"ran \(([\d.]+) s\)", line or "")
    return float(m.group(1)) if m else 0.0


def timed(label: str, times: dict, **kw) -> None:
    """One `deploy` end to end; records its wall time and, per host, the build and profile seconds it reported."""
    t0 = time.perf_counter()
    r = deploy(quiet=True, **kw)
    row = times.setdefault(label, {"total": [], "build": [], "profile": []})
    row["total"].append(time.perf_counter() - t0)
    bad = failure_line(r)
    if bad:
        raise SystemExit(f"{label}: {bad}\n{r.log[-3000:]}")
    for h in r.hosts:
        for step in ("build", "profile"):
            row[step].append(step_seconds(h.details.get(step, "")))
    print(f"  {label:28s} {row['total'][-1]:6.1f} s; per host: build {row['build'][-1]:.1f} s, profile "
          f"{row['profile'][-1]:.1f} s ({'; '.join(f'{k}: {v}' for k, v in r.hosts[0].details.items())})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    bundle = args.bundle or ensure_bundle(ROOT / "runs" / "deploy_bench_r20")
    with tempfile.TemporaryDirectory(prefix="deploy_bench.") as tmp:
        tmp = Path(tmp)
        kp = generate_key(tmp / "keys")
        src = open_bundle(bundle)
        files = {name: src.read(name) for name in src.manifest["files"]}

        def release(tag: str) -> Path:
            """A new release of the same model (its manifest differs), signed."""
            b = write_bundle(tmp / f"{tag}.febundle", {**src.manifest, "created": f"bench-{tag}"}, files, tar=True)
            sign_bundle(b, kp.private)
            return b

        first = release("r0")
        size = first.stat().st_size
        fleet = Fleet(tmp / "fleet")
        try:
            for name, module in HOSTS:
                fleet.add(name, module)
            inv = fleet.inventory()
            for note in fleet.notes:
                print("NOTE:", note)
            times: dict[str, dict[str, list[float]]] = {}
            common = {"inventory": inv, "trust": kp.public.parent}
            timed("first deploy (fresh devices)", times, bundle=first, **common)
            for i in range(args.rounds):
                new = release(f"r{i + 1}")
                timed("deploy a new release", times, bundle=new, **common)
                timed("rollback", times, bundle=None, inventory=inv, rollback=True)
                timed("redeploy (already on the devices)", times, bundle=new, **common)
            timed("deploy a new release, --serial 1", times, bundle=release("serial"), serial=1, **common)
        finally:
            fleet.close()
    transport = ("SSH into network namespaces (one sshd each, veth)" if not fleet.problem
                 else f"ansible_connection=local ({fleet.problem})")
    med = statistics.median
    rows = [f"| {k} | {len(v['total'])} | {med(v['total']):.1f} | {min(v['total']):.1f} – {max(v['total']):.1f} | "
            f"{med(v['build']):.1f} | {med(v['profile']):.1f} |" for k, v in times.items()]
    body = f"""## Fleet deploy (`benchmarks/deploy_bench.py`)

`floatedge deploy` of a signed ResNet-20 FLOATS bundle (CIFAR-10 shape, widths 1/0.75/0.5, with its 512-image
acceptance set: {size / 1e6:.1f} MB as one tar) to {len(HOSTS)} simulated Jetsons ({', '.join(m for _, m in HOSTS)};
`floatedge device simulate` trees) over {transport}, real `ansible-playbook`, the signature checked on the workstation
and on each device. End to end as the command runs (workstation checks, packing, the playbook, the summary);
{args.rounds} rounds. Each device runs `floatedge build` (here ONNX Runtime, as there is no TensorRT: prepare and
prove every width on the acceptance set) and `floatedge profile` (defaults) with both hosts on the same 2 vCPU, so
they run side by side and share the cores; no service is restarted (no systemd in the simulated roots). Machine:
{machine()}; 2 vCPU shared with other jobs, so absolute times are loose.

| operation, 2 hosts at once unless noted | runs | median s | range s | build s / host | profile s / host |
|---|---|---|---|---|---|
{chr(10).join(rows)}

A rollback swaps two symlinks and reinstalls the unit on each device — no copy, no build: its cost is Ansible's
round trips (three tasks per host). Almost all of a deploy is the device's own work: `build` proving the engines and
`profile` measuring every point; the copy, the checks (sha256, every file's checksum, the signature) and the switch
are the rest. A redeploy of a release the devices already hold (after a rollback) skips the copy and reuses what build
and profile made for it then. On a Jetson, a TensorRT build adds minutes on a first deploy (edge.md §3) and a
restart waits until the server is ready.
"""
    update_section("deploy", body)
    print(body)


if __name__ == "__main__":
    main()
