"""Fleet deploy (floatedge.fleet): the device-side steps on their own, bad input refused before any device is touched,
and a real deploy — the real `ansible-playbook` over SSH to two "Jetsons", each a network namespace with its own
sshd and a `floatedge device simulate` tree of a different module — with a rollback, a host whose disk fills up
mid-copy and one that is unreachable. Where network namespaces cannot be made, the deploy test says so and runs the
same playbook with ansible_connection=local and separate roots (never a mock of Ansible)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _fleet import Fleet, fe, link, state
from test_bundle import FILES, _manifest

from floatedge.bundle import open_bundle, write_bundle
from floatedge.fleet import agent
from floatedge.fleet.agent import Device, FleetError
from floatedge.fleet.deploy import DeployError, deploy, short_error
from floatedge.signing import SignatureError, generate_key, sign_bundle

pytest.importorskip("cryptography")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _incoming(dev: Device, tar: Path) -> str:
    """Put `tar` where Ansible's copy puts it; its release id."""
    rid = _sha(tar)[:12]
    dev.incoming.mkdir(parents=True, exist_ok=True)
    shutil.copy(tar, dev.incoming / f"{rid}.febundle")
    return rid


@pytest.fixture
def device(tmp_path):
    (tmp_path / "root").mkdir()
    return Device(tmp_path / "root")


@pytest.fixture
def tars(tmp_path):
    """Three different tar bundles, the first two signed by a key the device will trust."""
    kp = generate_key(tmp_path / "keys")
    out = []
    for i in range(3):
        b = write_bundle(tmp_path / f"b{i}.febundle", _manifest(created=f"2026-01-0{i + 1}"), FILES, tar=True)
        if i < 2:
            sign_bundle(b, kp.private)
        out.append(b)
    return out, kp


# ------------------------------------------------------------------------------------------ device steps
def test_stage_checks_the_copy_and_refuses_an_unsigned_one_where_keys_are_trusted(device, tars):
    (signed, _, unsigned), kp = tars
    trust = device.under(agent.TRUST_DIR)
    trust.mkdir(parents=True)
    shutil.copy(kp.public, trust)
    rid = _incoming(device, unsigned)
    with pytest.raises(SignatureError, match="unsigned"):
        agent.stage(device, rid, _sha(unsigned), None)
    assert not any(device.incoming.iterdir()) and device.present() == []  # the copy is gone, nothing staged
    rid = _incoming(device, signed)
    with pytest.raises(FleetError, match="corrupt"):
        agent.stage(device, rid, "0" * 64, None)
    rid = _incoming(device, signed)
    out = agent.stage(device, rid, _sha(signed), None)
    assert out["staged"] and out["signature"] == f"trusted: key {kp.key_id}"
    open_bundle(device.release(rid) / agent.BUNDLE)
    assert agent.stage(device, rid, _sha(signed), None)["staged"] is False  # already there: nothing to do


def test_activate_rollback_restore_and_finish_switch_whole_releases(device, tars):
    (a, b, c), _ = tars
    ids = []
    for t in (a, b, c):
        rid = _incoming(device, t)
        agent.stage(device, rid, _sha(t), None)
        ids.append(rid)
    for name in ("floatedge.service", "serve.toml"):  # what `prepare` writes, per release
        for rid in ids:
            (device.release(rid) / name).write_text(f"{name} of {rid}\n")
    agent.activate(device, ids[0])
    out = agent.activate(device, ids[1])
    assert (out["current"], out["previous"], out["switched"]) == (ids[1], ids[0], True)
    unit = device.under(agent.UNIT_DIR) / agent.UNIT
    assert unit.read_text() == f"floatedge.service of {ids[1]}\n"
    assert device.under(agent.CONFIG_LINK).read_text() == f"serve.toml of {ids[1]}\n"
    assert agent.activate(device, ids[1])["previous"] == ids[0]  # the same release again: previous stays

    # a deploy of c that fails after switching is put back: current, previous, unit as before; c removed
    agent.activate(device, ids[2])
    out = agent.restore(device, ids[1], ids[0], ids[2])
    assert (out["current"], out["previous"], device.present()) == (ids[1], ids[0], sorted(ids[:2]))
    assert unit.read_text() == f"floatedge.service of {ids[1]}\n"

    out = agent.rollback(device)
    assert (out["current"], out["previous"]) == (ids[0], ids[1])
    assert unit.read_text() == f"floatedge.service of {ids[0]}\n"
    assert device.under(agent.CONFIG_LINK).read_text() == f"serve.toml of {ids[0]}\n"
    assert agent.rollback(device)["current"] == ids[1]  # twice: back where it was

    # finish keeps two releases
    rid = _incoming(device, c)
    agent.stage(device, rid, _sha(c), None)
    agent.activate(device, rid)
    (device.incoming / "leftover.febundle").write_bytes(b"x")
    out = agent.finish(device)
    assert out["dropped"] == [ids[0]] and sorted(device.present()) == sorted([ids[1], rid])
    assert not any(device.incoming.iterdir())


def test_rollback_without_a_previous_release_says_so(device, tars):
    (a, _, _), _ = tars
    rid = _incoming(device, a)
    agent.stage(device, rid, _sha(a), None)
    agent.activate(device, rid)
    with pytest.raises(FleetError, match="no previous release"):
        agent.rollback(device)


def test_a_release_prepared_before_keeps_its_engines_and_profile(device, tars):
    """A redeploy after a rollback: same floatedge, arguments and settings → nothing is rebuilt or re-profiled;
    another setting → prepared again (here it runs the real `floatedge build`, which refuses the stand-in model)."""
    (a, _, _), _ = tars
    rid = _incoming(device, a)
    agent.stage(device, rid, _sha(a), None)
    ran = {"ran": True, "seconds": 12.5}
    recipe = {"floatedge": agent.__version__, "build_args": "", "profile_args": "", "config": {}}
    device.update_record(rid, build=ran, profile=ran, unit={"ran": True}, recipe=recipe)
    (device.release(rid) / "serve.toml").write_text("")
    out = agent.prepare(device, rid, "", "", {})
    assert out["reused"] and out["summary"]["build"] == "reused (ran (12.5 s) when first deployed)"
    try:
        out = agent.prepare(device, rid, "", "", {"slo_ms": 20})
        assert not out["reused"]
    except FleetError as exc:  # prepared again: `floatedge build` ran on the synthetic model and said no
        assert "floatedge build failed" in str(exc)


def test_server_settings_become_toml():
    text = agent.toml_config({"trusted_keys": "/etc/k", "http_port": 8000, "batching": True, "policy_params": {"a": 1.5}})
    import tomllib

    assert tomllib.loads(text) == {"trusted_keys": "/etc/k", "http_port": 8000, "batching": True,
                                   "policy_params": {"a": 1.5}}
    with pytest.raises(FleetError, match="bad server setting name"):
        agent.toml_config({"x = 1\ny": 2})


def test_ansible_errors_are_shortened():
    msg = ("Task failed: Module failed: Failed to replace '/r/incoming/x.febundle' with b'/root/.ansible/tmp/.source': "
           "[Errno 28] No space left on device: b'/root/.ansible/tmp/.source' -> b'/r/incoming/.ansible_tmpx'")
    assert short_error(msg) == "Failed to replace: [Errno 28] No space left on device"


# ------------------------------------------------------------------------------------------ bad input
needs_ansible = pytest.mark.skipif(shutil.which("ansible-playbook") is None and
                                   not (Path(sys.executable).parent / "ansible-playbook").exists(),
                                   reason="ansible-core is not installed (pip install -e '.[fleet]')")


@needs_ansible
def test_deploy_refuses_bad_input_before_touching_a_device(tmp_path, tars):
    (signed, _, unsigned), kp = tars
    inv = tmp_path / "inv.ini"
    inv.write_text(f"[jetsons]\njetson-a ansible_connection=local floatedge_root={tmp_path / 'ra'}\n")
    empty = tmp_path / "empty.ini"
    empty.write_text("[jetsons]\n")
    cases = [
        (["deploy", unsigned, "-i", inv, "--trust", kp.public.parent], "unsigned"),
        (["deploy", signed, "-i", empty], "names no host"),
        (["deploy", signed, "-i", inv, "--limit", "nosuch"], "names no host matching --limit nosuch"),
        (["deploy", signed, "-i", tmp_path / "missing.ini"], "no inventory at"),
        (["deploy", signed, "-i", inv, "--serial", "0"], "--serial must be at least 1"),
        (["deploy", signed, "-i", inv, "--rollback"], "--rollback takes no BUNDLE"),
        (["deploy", tmp_path / "nope.febundle", "-i", inv], "no such bundle"),
    ]
    for args, expected in cases:
        r = fe(*args)
        assert r.returncode == 1 and expected in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "ra").exists()  # nothing was touched


# ------------------------------------------------------------------------------------------ the real thing
@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    f.close()


@needs_ansible
@pytest.mark.slow
def test_two_jetsons_over_ssh_deploy_fail_and_roll_back(fleet, float_run, tmp_path):
    from floatedge.export.torch_export import export_bundle

    for note in fleet.notes:
        print("NOTE:", note)
    kp = generate_key(tmp_path / "keys")
    v1 = export_bundle(float_run, tmp_path / "v1.febundle").path
    b1 = open_bundle(v1)
    v2 = write_bundle(tmp_path / "v2.febundle", {**b1.manifest, "created": "2027-01-01T00:00:00Z"},
                      {name: b1.read(name) for name in b1.manifest["files"]})
    for b in (v1, v2):
        sign_bundle(b, kp.private)
    root_a = fleet.add("jetson-a", "orin-nano-8gb")
    root_b = fleet.add("jetson-b", "nano", disk="16m")
    inv = fleet.inventory(unreachable="jetson-c")
    report = tmp_path / "report.json"

    # 1. v1 to both, signature checked here and on each device (their trusted keys come with the deploy)
    r = fe("deploy", v1, "-i", inv, "--limit", "jetson-a:jetson-b", "--trust", kp.public.parent, "--report", report)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    rep = json.loads(report.read_text())
    hosts = {h["host"]: h for h in rep["hosts"]}
    r1 = rep["release"]
    assert {h["outcome"] for h in hosts.values()} == {"deployed"} and {h["release"] for h in hosts.values()} == {r1}
    if fleet.simulated:
        assert hosts["jetson-a"]["module"] == "Jetson Orin Nano 8GB" and hosts["jetson-b"]["module"] == "Jetson Nano 4GB"
    for root in (root_a, root_b):
        assert link(root, "current") == r1 and link(root, "previous") is None
        staged = state(root) / "current" / agent.BUNDLE
        assert hashlib.sha256(staged.read_bytes()).hexdigest()[:12] == r1
        assert (root / agent.TRUST_DIR / kp.public.name).exists()
        unit = root / agent.UNIT_DIR / agent.UNIT
        details = hosts["jetson-a"]["details"]
        assert details["signature"] == f"trusted: key {kp.key_id}"
        assert details["build"].startswith(("ran", "skipped")) and details["profile"].startswith(("ran", "skipped"))
        if details["unit"] == "ran":  # the server's own unit, for this release's bundle and config
            assert f"serve {state(root) / 'releases' / r1 / agent.BUNDLE}" in unit.read_text()
            assert "trusted_keys" in (root / agent.CONFIG_LINK).read_text()
    assert "no service manager" in hosts["jetson-a"]["details"]["service"]

    # 2. v2 to all three: jetson-b's disk is full mid-copy, jetson-c is unreachable; jetson-a goes ahead
    store_b = state(root_b)
    full = fleet.fill("jetson-b", room=v2_size(v2) // 2)
    r = fe("deploy", v2, "-i", inv, "--trust", kp.public.parent, "--report", report)
    fleet.unfill("jetson-b")
    assert r.returncode == 1, r.stdout[-3000:]
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "deploy failed on 2 of 3 host(s)" in err and "jetson-b" in err and "jetson-c" in err
    rep = json.loads(report.read_text())
    hosts = {h["host"]: h for h in rep["hosts"]}
    r2 = rep["release"]
    assert hosts["jetson-a"]["outcome"] == "deployed" and hosts["jetson-a"]["previous"] == r1
    assert hosts["jetson-b"]["outcome"] == "failed" and full in hosts["jetson-b"]["error"]
    assert hosts["jetson-c"]["outcome"] == "unreachable"
    assert (link(root_a, "current"), link(root_a, "previous")) == (r2, r1)
    assert (link(root_b, "current"), link(root_b, "previous")) == (r1, None)  # the previous bundle keeps serving
    assert sorted(os.listdir(store_b / "releases")) == [r1] and not os.listdir(store_b / "incoming")  # no half copy
    open_bundle(state(root_b) / "current" / agent.BUNDLE)

    # 3. roll jetson-a back: v1 serves again, v2 is kept as previous
    r = fe("deploy", "-i", inv, "--rollback", "--limit", "jetson-a", "--report", report)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert json.loads(report.read_text())["hosts"][0]["outcome"] == "rolled back"
    assert (link(root_a, "current"), link(root_a, "previous")) == (r1, r2)
    assert "floatedge rollback" in r.stdout and "rolled back" in r.stdout


def v2_size(bundle: Path) -> int:
    return sum(p.stat().st_size for p in bundle.iterdir())


def test_deploy_api_refuses_a_rollback_with_trust(tmp_path):
    with pytest.raises(DeployError, match="a rollback returns to a release already checked"):
        deploy(None, tmp_path / "inv.ini", rollback=True, trust=tmp_path)


@needs_ansible
@pytest.mark.slow
def test_install_mode_pip_makes_a_venv_and_installs_a_wheel(float_run, tmp_path):
    """floatedge_install=pip (the default on a real device): a venv that sees the system's packages, the wheel
    copied and installed with pip, and the server's unit naming that venv's floatedge. Offline: --no-index, and the
    dependencies come from the system's site-packages, as JetPack's TensorRT does on a Jetson."""
    from floatedge.export.torch_export import export_bundle

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "dist"), str(root)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    wheel = next((tmp_path / "dist").glob("floatedge-*.whl"))
    bundle = export_bundle(float_run, tmp_path / "m.febundle").path
    venv = tmp_path / "venv"
    inv = tmp_path / "inv.ini"
    inv.write_text(f"[jetsons]\nbox floatedge_root={tmp_path / 'root'}\n\n[jetsons:vars]\nansible_connection=local\n"
                   f"ansible_python_interpreter={sys.executable}\nfloatedge_install=pip\n"
                   f"floatedge_system_python={sys.executable}\nfloatedge_venv={venv}\nfloatedge_wheel={wheel}\n"
                   "floatedge_pip_args=--no-index --no-deps --ignore-installed\n")
    (tmp_path / "root").mkdir()
    r = fe("deploy", bundle, "-i", inv, "--quiet", "--report", tmp_path / "report.json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert list(venv.glob("lib/python*/site-packages/floatedge-*.dist-info")), "the wheel was not installed in the venv"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    host = json.loads((tmp_path / "report.json").read_text())["hosts"][0]
    assert host["outcome"] == "deployed"
    if host["details"]["unit"] == "ran":
        unit = (tmp_path / "root" / agent.UNIT_DIR / agent.UNIT).read_text()
        assert f"ExecStart={venv}/bin/floatedge serve" in unit


@needs_ansible
def test_the_failure_budget_stops_the_next_batches(tmp_path, tars):
    """--serial 1 --max-fail-percentage 0: the first device fails (its root is not a directory), so the second batch
    never starts; the summary says so and the second device is untouched."""
    (signed, _, _), _ = tars
    (tmp_path / "broken").write_text("not a directory")
    inv = tmp_path / "inv.ini"
    inv.write_text(f"[jetsons]\nbroken floatedge_root={tmp_path / 'broken'}\nfine floatedge_root={tmp_path / 'fine'}\n\n"
                   f"[jetsons:vars]\nansible_connection=local\nansible_python_interpreter={sys.executable}\n"
                   f"floatedge_install=none\nfloatedge_python={sys.executable}\n")
    (tmp_path / "fine").mkdir()
    r = fe("deploy", signed, "-i", inv, "--serial", "1", "--max-fail-percentage", "0", "--quiet", "--report",
           tmp_path / "report.json")
    assert r.returncode == 1 and "deploy failed on 2 of 2 host(s)" in r.stderr, r.stdout[-3000:] + r.stderr
    hosts = {h["host"]: h for h in json.loads((tmp_path / "report.json").read_text())["hosts"]}
    assert hosts["broken"]["outcome"] == "failed" and "is not a directory" in hosts["broken"]["error"]
    assert hosts["fine"]["outcome"] == "not reached"
    assert not any((tmp_path / "fine").iterdir())
