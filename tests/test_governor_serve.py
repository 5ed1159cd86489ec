"""`floatedge serve --policy governor` end to end: a real server process, a real build of the bundle and its device
profile keyed for this machine (its figures written by hand, so the answer is known), a simulated Jetson whose
scenario throttles the GPU and cools down again. The point follows the trace and comes back; the budget and the
floor change live through the control API; what cannot work is refused in one line or reported in the state."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve import ServerProc, free_ports, write_token  # noqa: E402

from floatedge.bundle import open_bundle  # noqa: E402
from floatedge.cli import main  # noqa: E402
from floatedge.devices.engines import load_report  # noqa: E402
from floatedge.devices.profile import PROFILE_FORMAT, PROFILE_SCHEMA, profile_key, profile_path  # noqa: E402
from floatedge.export.torch_export import export_bundle  # noqa: E402
from floatedge.fsutil import atomic_write_json  # noqa: E402
from floatedge.oppoint import OperatingPoint  # noqa: E402

WIDTH_MS = {1.0: 20.0, 0.75: 10.0, 0.5: 5.0}  # the profile's p50 at batch 1 (×4 at batch 4)
RA = {1.0: 0.40, 0.75: 0.36, 0.5: 0.30}
CA = {1.0: 0.80, 0.75: 0.76, 0.5: 0.70}


def eval_result(widths=(1.0, 0.75, 0.5)) -> dict:
    """A `floatedge eval` result with known CA/RA (wider and more robust: higher RA; λn = 0: higher CA)."""
    rows = []
    for w in widths:
        for lam in (0.0, 1.0):
            p = OperatingPoint(lam, w, 0.5)
            rows.append({**p.to_dict(), "noise_scale": p.noise_scale, "bn": p.bn_name,
                         "clean_acc": CA[w] - 0.1 * lam, "pgd20_acc": RA[w] * (0.25 + 0.75 * lam)})
    return {"rows": rows, "attacks": {"pgd20": "PGD-20"}, "n_images": 64}


@pytest.fixture(scope="module")
def served(floats_run, tmp_path_factory):
    """The bundle (with its table), built for this machine, and a device profile with known figures."""
    d = tmp_path_factory.mktemp("gov")
    ev = d / "eval.json"
    ev.write_text(json.dumps(eval_result()))
    bundle = export_bundle(floats_run, d / "m.febundle", eval_file=ev, dial="switch").path  # the table's λ_th 0.5
    r = CliRunner().invoke(main, ["build", str(bundle), "--cache", str(d / "cache"), "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    report = load_report(open_bundle(bundle))
    key = profile_key(report)
    rows = [json.loads(json.dumps(r)) for r in eval_result()["rows"]]
    points = [{"width": r["width"], "lambda_n": r["lambda_n"], "lambda_th": 0.5, "precision": "fp32",
               "clean_acc": r["clean_acc"], "robust_acc": r["pgd20_acc"], "attack": "pgd20", "peak_rss_mb": 90.0,
               "batches": [{"batch": b, "p50_ms": WIDTH_MS[r["width"]] * b, "p99_ms": WIDTH_MS[r["width"]] * b * 1.2,
                            "power_w": None} for b in (1, 4)]} for r in rows]
    atomic_write_json(profile_path(report["cache"], key), {"format": PROFILE_FORMAT, "schema_version": PROFILE_SCHEMA,
                                                           "key": key, "points": points, "switches": []})
    token = d / "token"
    write_token(token)
    return bundle, token, d


def simulated(root: Path, scenario: Path | None = None, background: bool = False):
    args = [sys.executable, "-m", "floatedge", "device", "simulate", "nano", "--root", str(root)]
    if scenario:
        args += ["--scenario", str(scenario)]
    if background:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def config(path: Path, sim: Path | None, **governor) -> Path:
    tele = f'telemetry_source = "sysfs"\ntelemetry_root = "{sim}"\n' if sim else 'telemetry_source = "off"\n'
    gov = "\n".join(f"{k} = {json.dumps(v)}" for k, v in governor.items())
    path.write_text(f'policy = "governor"\npolicy_interval_s = 0.2\ntelemetry_interval_s = 0.2\n{tele}'
                    f"[governor]\n{gov}\n")
    return path


def wait_for(server: ServerProc, cond, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = server.json("GET", "/v2/floatedge/state")[1]
        if cond(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"{what} not seen in {timeout} s; last state {json.dumps(state)[:1500]}\n{server.log()[-3000:]}")


def width(state: dict) -> float:
    return state["operating_point"]["width"]


def test_the_point_follows_a_throttling_trace_and_comes_back(served, tmp_path):
    bundle, token, _ = served
    sim = tmp_path / "sim"
    simulated(sim)
    scenario = tmp_path / "throttle.json"
    scenario.write_text(json.dumps({
        "module": "nano", "jetpack": "4.6", "start": {"mode": 0, "gpu_load": 95, "temp.GPU-therm": 50},
        "events": [{"t": 1.0, "set": {"temp.GPU-therm": 99}, "note": "past the passive trip: throttled"},
                   {"t": 4.0, "set": {"temp.GPU-therm": 60}, "note": "cooled"}], "end": 5.0}))
    cfg = config(tmp_path / "serve.toml", sim, latency_ms=30, dwell_s=2.0, window_s=1.0)
    server = ServerProc(tmp_path, bundle, config=cfg, token_file=token).wait_ready()
    try:
        # at rest: the most robust point whose profiled 20 ms fits 30 ms with the 15 % margin
        wait_for(server, lambda s: s["operating_point"] == {"lambda_n": 1.0, "width": 1.0, "lambda_th": 0.5}
                 and s["telemetry"], 20, "the start at λn=1 w=1 with telemetry")
        play = simulated(sim, scenario, background=True)
        t0 = time.monotonic()
        down = wait_for(server, lambda s: width(s) < 1.0, 15, "the step down on throttling")
        t_down = time.monotonic() - t0
        # no request measures the throttled device: its slowdown is taken at the upper bound (the clock ratio 1/0.6,
        # re-opened), where only the fastest point fits, and nothing steps up until throttling ends
        assert width(down) == 0.5 and down["operating_point"]["lambda_n"] == 1.0
        assert down["policy"]["last_decision"]["switch"]["reason"] == "policy"
        # the move off width 1 (from the decision log: on a loaded machine a later move at width 0.5 may be the last
        # one by the time the state is read)
        moves = [e for e in server.events() if e.get("event") == "decision" and e.get("moved")]
        decision = next(e for e in moves if e["to"]["width"] == 0.5)
        assert decision["limit"] == "latency", moves
        assert any("throttling started" in e for e in decision["detail"]["events"]), decision
        back = wait_for(server, lambda s: width(s) == 1.0, 20, "the way back once cooled")
        t_back = time.monotonic() - t0
        assert back["policy"]["last_decision"]["limit"] == "headroom" and "dwell" in back["policy"]["last_decision"]["reason"]
        # throttled for 3 s of the scenario, then the 2 s dwell: back no sooner than ~5 s after the step down
        assert t_back - t_down >= 4.0, (t_down, t_back)
        assert play.wait(30) == 0, play.stderr.read()
        # every decision is logged with its reason, counted, and exported
        decisions = [e for e in server.events() if e.get("event") == "decision" and e.get("moved")]
        assert [d["limit"] for d in decisions][-2:] == ["latency", "headroom"]
        text = server.metrics()
        assert 'floatedge_policy_decisions_total{limit="latency",policy="governor"} 1.0' in text
        assert "floatedge_governor_slowdown" in text and 'floatedge_governor_predicted_latency_seconds{lambda_n="1"' in text
        assert back["policy"]["status"]["control"] == "latency and telemetry"

        # the operator changes the objective and raises the floor live: answered at once, in the response
        got, out = server.json("POST", "/v2/floatedge/policy", {"params": {"objective": "clean"}})
        assert got == 200 and out["decision"]["switch"]["to"]["lambda_n"] == 0.0, out
        got, out = server.json("POST", "/v2/floatedge/policy", {"params": {"floor": 0.7}})
        assert got == 200 and out["decision"]["switch"]["to"]["lambda_n"] == 1.0 and out["decision"]["limit"] == "floor"
        # a budget no point meets: the fastest point, the violation reported, no oscillation
        to_fastest = sum(1 for e in server.events() if e.get("event") == "decision" and e.get("moved")
                         and e["to"]["width"] == 0.5)
        got, out = server.json("POST", "/v2/floatedge/policy", {"params": {"latency_ms": 2}})
        assert got == 200 and out["decision"]["switch"]["to"]["width"] == 0.5
        state = wait_for(server, lambda s: s["policy"]["status"]["violation"] is True, 30, "the violation reported")
        assert width(state) == 0.5
        assert "no point meets the budget" in state["policy"]["status"]["reason"]
        got, out = server.json("POST", "/v2/floatedge/policy", {"params": {"objective": "speed"}})
        assert got == 400 and "objective" in out["error"]
    finally:
        assert server.stop() == 0
    moved = [e for e in server.events() if e.get("event") == "decision" and e.get("moved")]
    assert sum(1 for e in moved if e["to"]["width"] == 0.5) == to_fastest + 1  # the impossible budget: one switch, then held


def test_no_profile_is_refused_at_start_and_no_telemetry_is_stated(served, tmp_path, floats_run):
    bundle, token, d = served
    bare = export_bundle(floats_run, tmp_path / "bare.febundle", eval_file=d / "eval.json", dial="switch").path  # never built
    port, = free_ports(1)
    r = subprocess.run([sys.executable, "-m", "floatedge", "serve", str(bare), "--policy", "governor",
                        "--http-port", str(port), "--grpc-port", "0", "--metrics-port", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--policy governor" in r.stderr and "run floatedge build" in r.stderr, r.stderr
    cfg = config(tmp_path / "serve.toml", None, latency_ms=30, profile=str(tmp_path / "nowhere.json"))
    r = subprocess.run([sys.executable, "-m", "floatedge", "serve", str(bundle), "--config", str(cfg), "--http-port",
                        str(port), "--grpc-port", "0", "--metrics-port", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "nowhere.json" in r.stderr and "Traceback" not in r.stderr
    server = ServerProc(tmp_path, bundle, config=config(tmp_path / "s2.toml", None, latency_ms=30),
                        token_file=token).wait_ready()
    try:
        state = wait_for(server, lambda s: s["policy"]["status"], 10, "a governor status")
        assert state["policy"]["status"]["control"] == "latency only (no telemetry)"
        assert state["telemetry_source"].startswith("none")
    finally:
        assert server.stop() == 0
