"""Issue 13 bar for the governor: the same budget trace played against six policies, measured end to end.

    python benchmarks/governor.py                     # trains the bundle if missing; the trace lasts --seconds per policy
    python benchmarks/governor.py --seconds 40 --rate 30 --no-write   # a short check

What runs, per policy, on this machine: `floatedge serve` with the ResNet-20 FLOATS bundle (widths 1.0/0.75/0.5,
1 epoch on a CIFAR-10 slice, evaluated with PGD-20 for its calibration table, built and profiled with `floatedge
build` / `floatedge profile`), an open-loop load generator (Poisson arrivals at a fixed rate, batches of 8 images,
`tritonclient` over HTTP, each latency taken from the request's scheduled send time, so a slow server also delays
later requests), and the budget trace: a simulated Orin NX 16GB (`floatedge device simulate`) whose scenario starts
a co-running job, throttles the GPU past its passive trip and drops the power mode from 25W to 10W, while
processes that burn CPU on the same schedule take this machine's cores from the server (so the latency really
degrades when the simulated device says it should). The scenario is played in this process (floatedge.devices.simulate
`play`, what `floatedge device simulate --scenario` runs), from the same instant as the burners' schedule.

Policies: static most-robust (width 1, λn = 1), static fastest (width 0.5 at its best RA), static width 0.75 (at
its best RA; with the other two, the runs the oracle and the best static point in hindsight are computed from),
the Dynamic-OFA ladder, the governor; offline: the oracle (per window, the most robust of the static runs that met
the SLO in that window; λn does not change latency — the profile says by how little — so the static runs stand for
every λn of their width) and the best static point in hindsight. A second trace raises the robustness floor
mid-run (objective: clean accuracy) through the control API.

Metrics: SLO violation rate (share of requests over the bound, client side), delivered RA and CA (mean over
requests of the calibration table's figures at the point each ran at, read from the response's parameters),
switches, failed requests, and time from a budget change to the first decision answering it. Figures:
docs/results/governor.json and governor.png, and the `governor` section of docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import CIFAR10, FIGURES, ROOT, shown, update_section  # noqa: E402

from floatedge.bundle import robust_of  # noqa: E402

MODEL = "r20"
WINDOW_S = 2.0
VIOLATION_BAR, ORACLE_BAR, ROBUST_BAR = 0.01, 0.95, 0.10
# the server's control period and telemetry sampling, the same for every policy: a decision costs well under a
# millisecond and a snapshot of the simulated device under 1% of a core at 0.1 s, and 0.5 s left the governor a
# quarter of a second behind each budget change on average (≈ 15 requests at 60/s)
POLICY_INTERVAL_S, TELEMETRY_INTERVAL_S = 0.1, 0.1

# the budget trace: (start as a share of the run, name, simulated device settings, CPU burners (processes, duty))
TRACE = [
    (0.00, "calm (25W)", {}, (0, 0.0)),
    (0.12, "co-running job", {"cpu_load": 85, "gpu_load": 98, "mem_used_mb": 11000}, (4, 1.0)),
    (0.35, "calm", {"cpu_load": 30, "gpu_load": 60, "mem_used_mb": 6000}, (0, 0.0)),
    (0.45, "thermal throttling", {"temp.gpu-thermal": 101, "temp.tj-thermal": 101}, (4, 1.0)),
    (0.65, "calm, cooled", {"temp.gpu-thermal": 60, "temp.tj-thermal": 61}, (0, 0.0)),
    (0.72, "10W mode", {"mode": 1}, (3, 1.0)),
    (0.88, "25W again", {"mode": 3}, (0, 0.0)),
]
WORSE = {"co-running job", "thermal throttling", "10W mode"}


# ------------------------------------------------------------------------------------------ metrics (pure)
def table_scores(table: Sequence[Mapping], lambda_th: float) -> dict[tuple[float, float], tuple[float, float]]:
    """{(λn, width): (RA, CA)} from the bundle's table rows at its λ_th (RA: `robust_of`, the lowest measured)."""
    out = {}
    for r in table:
        if not math.isclose(float(r["lambda_th"]), lambda_th):
            continue
        ra = robust_of(r)[0]
        out[(round(float(r["lambda_n"]), 6), round(float(r["width"]), 6))] = (float(ra), float(r["clean_acc"]))
    return out


def policy_metrics(log: Sequence[Sequence], scores: Mapping, bound_ms: float) -> dict:
    """A request log — rows (send time s, latency ms, λn, width, ok) — against the bound: n, failed, violation
    rate (failed requests count as violations), delivered RA/CA (mean over successful requests)."""
    ok = [r for r in log if r[4]]
    failed = len(log) - len(ok)
    over = sum(1 for r in ok if r[1] > bound_ms) + failed
    ra = [scores[(round(r[2], 6), round(r[3], 6))][0] for r in ok]
    ca = [scores[(round(r[2], 6), round(r[3], 6))][1] for r in ok]
    lat = [r[1] for r in ok]
    return {"n": len(log), "failed": failed, "violation_rate": over / len(log) if log else 0.0,
            "ra": float(np.mean(ra)) if ra else math.nan, "ca": float(np.mean(ca)) if ca else math.nan,
            "p50_ms": float(np.percentile(lat, 50)) if lat else math.nan,
            "p99_ms": float(np.percentile(lat, 99)) if lat else math.nan}


def windows(log: Sequence[Sequence], duration: float, window_s: float = WINDOW_S) -> list[list]:
    """The log's rows per window of send time [k·w, (k+1)·w)."""
    out: list[list] = [[] for _ in range(max(1, math.ceil(duration / window_s - 1e-9)))]
    for r in log:
        k = int(r[0] // window_s)
        if 0 <= k < len(out):
            out[k].append(r)
    return out


def oracle(static_logs: Mapping[tuple[float, float], Sequence], scores: Mapping, bound_ms: float, duration: float,
           window_s: float = WINDOW_S, meet: float = VIOLATION_BAR) -> dict:
    """Per window, the most robust static point whose run met the SLO there (share over the bound ≤ `meet`); in a
    window none met, the one with the fewest violations. Its requests count as the oracle's."""
    by_point = {p: windows(log, duration, window_s) for p, log in static_logs.items()}
    ranked = sorted(by_point, key=lambda p: -scores[p][0])
    n = over = 0
    ra = ca = 0.0
    choices = []
    for k in range(max(len(w) for w in by_point.values())):
        def share(p, k=k):
            rows = by_point[p][k]
            return (sum(1 for r in rows if not r[4] or r[1] > bound_ms) / len(rows)) if rows else 0.0

        met = [p for p in ranked if by_point[p][k] and share(p) <= meet]
        pick = met[0] if met else min(ranked, key=lambda p: (share(p), scores[p][0]))
        rows = by_point[pick][k]
        choices.append(pick)
        n += len(rows)
        over += sum(1 for r in rows if not r[4] or r[1] > bound_ms)
        ra += scores[pick][0] * len(rows)
        ca += scores[pick][1] * len(rows)
    return {"n": n, "violation_rate": over / n if n else 0.0, "ra": ra / n if n else math.nan,
            "ca": ca / n if n else math.nan, "choices": choices}


def relabel(log: Sequence[Sequence], point: tuple[float, float]) -> list[tuple]:
    """The log as if every successful request had run at `point` (same latency): a static run of one width stands
    for another λn of that width, whose latency the profile shows to be the same."""
    return [(r[0], r[1], point[0], point[1], *r[4:]) if r[4] else tuple(r) for r in log]


def hindsight(static: Mapping[str, Mapping]) -> str:
    """The best single static point in hindsight: the most robust one within the violation bar, else the one
    with the fewest violations."""
    within = [k for k, m in static.items() if m["violation_rate"] <= VIOLATION_BAR]
    if within:
        return max(within, key=lambda k: static[k]["ra"])
    return min(static, key=lambda k: (static[k]["violation_rate"], -static[k]["ra"]))


def reaction_times(changes: Sequence[tuple[float, str, bool]], moves: Sequence[tuple[float, float]],
                   horizon: float) -> list[float | None]:
    """For each budget change (time s, name, worse?), the time to the first point move in its direction (down:
    to a cheaper width for a worse budget, up for a better one) before the next change (or `horizon`); None
    when no decision answered it. `moves`: (time s, width after − width before)."""
    out: list[float | None] = []
    for i, (t, _, worse) in enumerate(changes):
        end = changes[i + 1][0] if i + 1 < len(changes) else horizon
        hit = next((m - t for m, dw in moves if t <= m < end and ((dw < 0) if worse else (dw > 0))), None)
        out.append(hit)
    return out


def beats(g: Mapping, lad: Mapping) -> bool:
    """The governor beats the ladder: fewer violations at equal or better RA, or more RA at equal or fewer
    violations."""
    return (g["violation_rate"] < lad["violation_rate"] and g["ra"] >= lad["ra"]) or \
           (g["ra"] > lad["ra"] and g["violation_rate"] <= lad["violation_rate"])



def parse_fractions(text: str) -> list[float]:
    """`--ladder-sweep` 0.35,0.25,0.15 → [0.35, 0.25, 0.15]; each a share of the server's bound in (0, 2]."""
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--ladder-sweep: not a comma list of numbers: {text!r}") from None
    bad = [f for f in out if not 0 < f <= 2]
    if not out or bad:
        raise ValueError(f"--ladder-sweep: each fraction must lie in (0, 2], got {text!r}")
    return out


def frontier(g: Mapping, ladders: Mapping[str, Mapping]) -> dict:
    """The governor against each ladder setting by `beats`, and the settings that dominate it (violations ≤ the
    governor's and RA ≥ its): none means the governor lies on or above the ladder's frontier."""
    return {"beats": {k: beats(g, v) for k, v in ladders.items()},
            "dominating": [k for k, v in ladders.items()
                           if v["violation_rate"] <= g["violation_rate"] and v["ra"] >= g["ra"]]}


# ------------------------------------------------------------------------------------------ the bundle
def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "floatedge", *args], check=True, **kw)


def ensure_bundle(out: Path, limit: int, eval_images: int) -> Path:
    """Train (1 epoch on `limit` CIFAR-10 images), evaluate (PGD-20 on `eval_images` test images), export, build,
    profile — each step only when its output is missing."""
    bundle = out.with_suffix(".febundle")
    if not (out / "checkpoint.pt").exists():
        run("train", "--method", "floats", "--arch", "resnet20", "--dataset", "cifar10", "--data", str(CIFAR10),
            "--limit-train", str(limit), "--epochs", "1", "--widths", "1.0,0.75,0.5", "--out", str(out), "--quiet",
            "--threads", "1")
    if not (out / "eval.json").exists():
        run("eval", str(out), "--limit", str(eval_images), "--lambdas", "0,0.7,1", "--lambda-ths", "0.5",
            "--attacks", "pgd20", "--quiet", "--device", "cpu")
    if not bundle.exists():
        run("export", str(out), "--out", str(bundle), "--eval", str(out / "eval.json"), "--acceptance", "0")
    cache = out.parent / f"{out.name}_engines"
    from floatedge.bundle import open_bundle
    from floatedge.devices.profile import ProfileError, load_profile

    try:
        load_profile(open_bundle(bundle))
    except (ProfileError, ValueError):
        run("build", str(bundle), "--cache", str(cache), "--precision", "fp32")
        run("profile", str(bundle), "--batches", "1,8", "--rounds", "200", "--switch-rounds", "1")
    return bundle


# ------------------------------------------------------------------------------------------ load and trace
BURN = ("import sys, time\nd = float(sys.argv[1])\n"
        "while True:\n    t = time.perf_counter()\n    while time.perf_counter() - t < 0.01 * d: pass\n"
        "    time.sleep(0.01 * (1 - d))\n")


class Burners:
    """CPU-burning processes (each busy `duty` of every 10 ms), started and stopped on the trace's schedule."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def set(self, count: int, duty: float) -> None:
        self.stop()
        for _ in range(count):
            self.procs.append(subprocess.Popen([sys.executable, "-c", BURN, str(duty)], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(10)
        self.procs = []


def scenario(seconds: float) -> dict:
    events = [{"t": round(frac * seconds, 3), "set": dict(settings), "note": name}
              for frac, name, settings, _ in TRACE if settings]
    return {"name": "governor-bench", "module": "orin-nx-16gb", "jetpack": "6.0",
            "description": "floatedge governor benchmark trace: co-running job, thermal throttling, 10W mode",
            "start": {"mode": 3, "gpu_load": 60, "cpu_load": 30, "mem_used_mb": 6000, "temp.gpu-thermal": 55,
                      "temp.cpu-thermal": 54, "temp.tj-thermal": 56},
            "events": events, "end": seconds}


def open_loop(url: str, rate: float, seconds: float, batch: int, seed: int, workers: int = 32) -> tuple[list, float]:
    """Poisson arrivals at `rate`/s for `seconds`, each request handed to a free client thread; a row per request:
    (scheduled send time s, latency ms from the scheduled time, λn, width, ok). Returns (rows, t0 perf_counter)."""
    import tritonclient.http as httpclient

    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=int(rate * seconds * 1.5) + 10)
    sched = np.cumsum(gaps)
    sched = sched[sched < seconds]
    x = np.random.default_rng(seed + 1).random((batch, 3, 32, 32), dtype=np.float32)
    q: queue.Queue = queue.Queue()
    rows: list = []
    lock = threading.Lock()

    def worker() -> None:
        c = httpclient.InferenceServerClient(url, network_timeout=120, connection_timeout=120)
        inp = httpclient.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = [httpclient.InferRequestedOutput("logits", binary_data=True)]
        while (item := q.get()) is not None:
            t_rel, t_abs = item
            try:
                res = c.infer(MODEL, [inp], outputs=out)
                lat = (time.perf_counter() - t_abs) * 1e3
                p = res.get_response()["parameters"]
                row = (t_rel, lat, float(p["lambda_n"]), float(p["width"]), True)
            except Exception as exc:  # noqa: BLE001 - a failed request is counted, never hidden
                row = (t_rel, (time.perf_counter() - t_abs) * 1e3, math.nan, math.nan, False, repr(exc)[:200])
            with lock:
                rows.append(row)
        c.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    for t_rel in sched:
        delay = t0 + t_rel - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        q.put((float(t_rel), t0 + float(t_rel)))
    for _ in threads:
        q.put(None)
    for t in threads:
        t.join(180)
    return sorted(rows), t0


def server_config(path: Path, policy: str, sim: Path, bound_ms: float, start: tuple[float, float],
                  params: Mapping | None = None, governor: Mapping | None = None) -> Path:
    lines = [f'policy = "{policy}"', f"lambda_n = {start[0]}", f"width = {start[1]}",
             f"policy_interval_s = {POLICY_INTERVAL_S}", 'telemetry_source = "sysfs"', f'telemetry_root = "{sim}"',
             f"telemetry_interval_s = {TELEMETRY_INTERVAL_S}",
             f"slo_ms = {bound_ms}", f'model_name = "{MODEL}"', 'log_level = "info"']
    if params:
        lines.append("[policy_params]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in params.items()]
    if governor:
        lines.append("[governor]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in governor.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def play(bundle: Path, work: Path, name: str, policy: str, start: tuple[float, float], args, bound_ms: float,
         params: Mapping | None = None, governor: Mapping | None = None, trace: bool = True,
         during=None) -> dict:
    """One policy on the trace: a fresh simulated device and server, the scenario, the burners, the load."""
    sys.path.insert(0, str(ROOT / "tests"))
    from _serve import ServerProc, write_token

    from floatedge.devices.simulate import SimJetson, check_scenario, set_start
    from floatedge.devices.simulate import play as play_scenario

    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    sim_dir = d / "sim"
    raw = scenario(args.seconds) if trace else {**scenario(args.seconds), "events": []}
    (d / "trace.json").write_text(json.dumps(raw))  # the same scenario `floatedge device simulate --scenario` plays
    sc = check_scenario(raw)
    sim = SimJetson(sim_dir, sc.module, sc.jetpack).build()
    set_start(sim, sc)
    token = d / "token"
    write_token(token)
    cfg = server_config(d / "serve.toml", policy, sim_dir, bound_ms, start, params, governor)
    server = ServerProc(d, bundle, config=cfg, token_file=token).wait_ready()
    burners = Burners()
    player = None
    extra: dict = {}
    stop = threading.Event()
    try:
        time.sleep(2.0)  # the first telemetry snapshot and the first decision
        t_wall0 = time.time()
        # played in this process, from the same instant as the burners' schedule
        player = threading.Thread(target=play_scenario, args=(sim, sc), kwargs={"stop": stop}, daemon=True)
        player.start()

        def schedule() -> None:
            for frac, _, _, (count, duty) in TRACE if trace else TRACE[:1]:
                if stop.wait(max(0.0, t_wall0 + frac * args.seconds - time.time())):
                    return
                burners.set(count, duty)

        sched = threading.Thread(target=schedule, daemon=True)
        sched.start()
        side = threading.Thread(target=during, args=(server, t_wall0, extra), daemon=True) if during else None
        if side:
            side.start()
        load0 = os.getloadavg()[0]
        rows, _ = open_loop(server.url, args.rate, args.seconds, args.batch, args.seed)
        extra["load_average"] = (round(load0, 2), round(os.getloadavg()[0], 2))
        stop.set()
        sched.join(10)
        if side:
            side.join(30)
    finally:
        stop.set()
        burners.stop()
        if player is not None:
            player.join(10)
        server.stop()
    moves = []
    for e in server.events():
        if e.get("event") == "switch" and e.get("reason") == "policy":
            t = datetime.strptime(e["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=None)
            at = (t - datetime(1970, 1, 1)).total_seconds() - t_wall0
            moves.append((at, e["to"]["width"] - e["from"]["width"], e["to"], e["from"]))
    decisions = [e for e in server.events() if e.get("event") == "decision"]
    (d / "rows.json").write_text(json.dumps({"rows": rows, "moves": moves}))  # for a second look (not in docs/)
    return {"rows": rows, "moves": moves, "decisions": len(decisions), "extra": extra}


# ------------------------------------------------------------------------------------------ the floor trace
def raise_floor_midway(seconds: float):
    def during(server, t_wall0: float, out: dict) -> None:
        for at, floor in ((seconds / 3, 0.7), (2 * seconds / 3, 0.0)):
            time.sleep(max(0.0, t_wall0 + at - time.time()))
            t = time.time()
            got, body = server.json("POST", "/v2/floatedge/policy", {"params": {"floor": floor}})
            answered = time.time() - t
            d = (body or {}).get("decision") or {}
            out.setdefault("floor", []).append({"at_s": round(t - t_wall0, 3), "floor": floor, "status": got,
                                                "answered_s": round(answered, 4), "limit": d.get("limit"),
                                                "to": (d.get("switch") or {}).get("to"),
                                                "reason": d.get("reason")})
    return during


# ------------------------------------------------------------------------------------------ plot
def plot(results: Mapping[str, dict], scores: Mapping, bound_ms: float, seconds: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 2.3 * len(names)), sharex=True)
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        rows = results[name]["rows"]
        win = windows(rows, seconds)
        mids = [(k + 0.5) * WINDOW_S for k in range(len(win))]
        p99 = [np.percentile([r[1] for r in w if r[4]], 99) if any(r[4] for r in w) else np.nan for w in win]
        ra = [np.mean([scores[(round(r[2], 6), round(r[3], 6))][0] for r in w if r[4]]) * 100 if any(r[4] for r in w)
              else np.nan for w in win]
        widths = [np.mean([r[3] for r in w if r[4]]) if any(r[4] for r in w) else np.nan for w in win]
        for i, (frac, label, _, _) in enumerate(TRACE):
            end = TRACE[i + 1][0] if i + 1 < len(TRACE) else 1.0
            if label in WORSE:
                ax.axvspan(frac * seconds, end * seconds, color="tab:red", alpha=0.08)
        ax.plot(mids, p99, color="tab:blue", lw=1.2, label="p99 latency (ms)")
        ax.axhline(bound_ms, color="tab:blue", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("p99 ms", color="tab:blue")
        ax.set_title(f"{name}: violations {results[name]['metrics']['violation_rate']:.1%}, "
                     f"RA {results[name]['metrics']['ra'] * 100:.1f}", fontsize=9, loc="left")
        ax2 = ax.twinx()
        ax2.plot(mids, ra, color="tab:green", lw=1.2, label="delivered RA (%)")
        ax2.step(mids, np.array(widths) * 100, where="mid", color="tab:orange", lw=1.0, label="width × 100")
        ax2.set_ylabel("RA % / width×100", fontsize=8)
        ax2.set_ylim(0, 105)
    np.atleast_1d(axes)[0].legend(loc="upper left", fontsize=7)
    ax2.legend(loc="upper right", fontsize=7)
    np.atleast_1d(axes)[-1].set_xlabel("trace time (s); shaded: budget worse (co-running job, throttling, 10W)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=150.0, help="length of the trace, per policy")
    ap.add_argument("--rate", type=float, default=60.0, help="requests per second (Poisson)")
    ap.add_argument("--batch", type=int, default=16, help="images per request")
    ap.add_argument("--slo-ms", type=float, default=40.0, help="p99 bound, end to end as the client sees it")
    ap.add_argument("--server-ms", type=float, default=0.0,
                    help="the bound given to the server's policies (default: the SLO)")
    ap.add_argument("--run", default="runs/governor_bench_r20", help="the training run (trained here if missing)")
    ap.add_argument("--limit-train", type=int, default=10000)
    ap.add_argument("--eval-images", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma list of policies to run (a check)")
    ap.add_argument("--ladder-sweep", default="", metavar="FRACTIONS",
                    help="run only the ladder, its mean held to each fraction of the server's bound (e.g. 0.35,0.25,0.15), "
                         "and compare it with the governor of the committed full run (docs/results/governor.json)")
    ap.add_argument("--no-write", action="store_true",
                    help="do not write docs/ (RESULTS.md, results/governor.json and .png go under runs/governor_bench)")
    args = ap.parse_args()
    sweep = committed = None
    if args.ladder_sweep:
        try:
            sweep = parse_fractions(args.ladder_sweep)
            committed = json.loads((FIGURES / "governor.json").read_text())
        except (ValueError, OSError) as exc:
            ap.error(str(exc))
        same = {k: committed["settings"][k] for k in ("seconds", "rate", "batch", "slo_ms", "server_ms", "seed")}
        if not args.no_write and same != {k: vars(args)[k] for k in same}:
            ap.error(f"--ladder-sweep compares with the full run in docs/results/governor.json: run it with its settings {same}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t_all = time.time()
    runs = ROOT / "runs"
    bundle = ensure_bundle(ROOT / args.run, args.limit_train, args.eval_images)
    from floatedge.bundle import open_bundle
    from floatedge.devices.profile import load_profile

    b = open_bundle(bundle)
    scores = table_scores(b.table(), b.lambda_th)
    prof = load_profile(b)
    best = {w: max((k for k in scores if k[1] == w), key=lambda k: scores[k][0]) for w in b.widths}
    robust, fast, mid = (1.0, max(b.widths)), best[min(b.widths)], best[sorted(b.widths)[1]]
    server_ms = args.server_ms or args.slo_ms
    work = runs / "governor_bench"
    if sweep:
        ladder_sweep(args, bundle, scores, robust, server_ms, work, sweep, committed)
        return
    gov = {"latency_ms": server_ms, "dwell_s": 5.0, "window_s": 2.0}
    plan = {
        "static most-robust": ("static", robust, {"lambda_n": robust[0], "width": robust[1]}, None),
        "static fastest": ("static", fast, {"lambda_n": fast[0], "width": fast[1]}, None),
        "static width 0.75": ("static", mid, {"lambda_n": mid[0], "width": mid[1]}, None),
        "ladder": ("ladder", robust, {"latency_ms": server_ms, "window": 20, "margin": 0.3}, None),
        # the ladder compares a mean with the bound: a lower bound buys fewer tail violations with robustness
        "ladder, mean ≤ half the SLO": ("ladder", robust, {"latency_ms": server_ms / 2, "window": 20, "margin": 0.3},
                                        None),
        "governor": ("governor", robust, None, gov),
    }
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    results: dict[str, dict] = {}
    load_avg = os.getloadavg()
    for name, (policy, start, params, governor) in plan.items():
        if only and not any(o in name for o in only):
            continue
        print(f"[governor bench] {name} …", flush=True)
        r = play(bundle, work, name.replace(" ", "_"), policy, start, args, args.slo_ms, params, governor)
        r["metrics"] = policy_metrics(r["rows"], scores, args.slo_ms)
        r["metrics"]["switches"] = len(r["moves"])
        r["metrics"]["load_average"] = r["extra"]["load_average"]
        print(f"  {json.dumps(r['metrics'])}", flush=True)
        results[name] = r
    floor_run = None
    if not only or any("floor" in o for o in only):
        print("[governor bench] governor, floor raised mid-run …", flush=True)
        floor_run = play(bundle, work, "floor", "governor", (0.0, 1.0), args, args.slo_ms, None,
                         {**gov, "objective": "clean"}, during=raise_floor_midway(args.seconds))
        floor_run["metrics"] = policy_metrics(floor_run["rows"], scores, args.slo_ms)
        floor_run["metrics"]["load_average"] = floor_run["extra"]["load_average"]
        print(f"  {json.dumps(floor_run['metrics'])} {floor_run['extra']}", flush=True)

    changes = [(frac * args.seconds, name, name in WORSE) for frac, name, _, _ in TRACE[1:]]
    for r in results.values():
        r["reaction_s"] = reaction_times(changes, [(m[0], m[1]) for m in r["moves"]], args.seconds)
    statics = {k: v for k, v in results.items() if k.startswith("static")}
    summary: dict = {k: {**v["metrics"], "reaction_s": v["reaction_s"]} for k, v in results.items()}
    if len(statics) == 3:
        # λn does not change latency: each width's static run stands for the width's most robust λn
        logs = {best[plan[k][1][1]]: relabel(v["rows"], best[plan[k][1][1]]) for k, v in statics.items()}
        orc = oracle(logs, scores, args.slo_ms, args.seconds)
        summary["oracle (offline)"] = {k: v for k, v in orc.items() if k != "choices"}
        at_best = {f"width {p[1]:g}, λn {p[0]:g}": policy_metrics(rows, scores, args.slo_ms) for p, rows in logs.items()}
        hs = hindsight(at_best)
        summary["best static in hindsight"] = {**at_best[hs], "which": hs}
    lam_ms = {(p["lambda_n"], p["width"]): p["batches"][0]["p50_ms"] for p in prof["points"]}
    lam_spread = max((max(v for (lam, w), v in lam_ms.items() if w == width) /
                      min(v for (lam, w), v in lam_ms.items() if w == width) - 1) for width in b.widths)
    out = {"settings": vars(args), "server_ms": server_ms, "trace": TRACE, "load_average_start": load_avg,
           "seconds_total": round(time.time() - t_all, 1), "summary": summary, "lambda_latency_spread": lam_spread,
           "floor": floor_run and {"metrics": floor_run["metrics"], "changes": floor_run["extra"].get("floor"),
                                   "moves": floor_run["moves"]},
           "scores": {f"{k[0]:g}/{k[1]:g}": v for k, v in scores.items()},
           "profile_p50_ms_b1": {f"{k[0]:g}/{k[1]:g}": v for k, v in lam_ms.items()}}
    figures = work if args.no_write else FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    (figures / "governor.json").write_text(json.dumps(out, indent=1, default=str))
    png = figures / "governor.png"
    if results:
        plot(results, scores, args.slo_ms, args.seconds, png)
    print(json.dumps(summary, indent=1, default=str))
    if not args.no_write and len(statics) == 3 and "governor" in results and "ladder" in results:
        update_section("governor", report(out, results, png, args, bundle))


def _pct(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def report(out: dict, results: dict, png: Path, args, bundle: Path) -> str:
    s = out["summary"]
    g, lad, orc, rob = s["governor"], s["ladder"], s["oracle (offline)"], s["static most-robust"]
    fl = out["floor"] or {}
    raised = next((c for c in fl.get("changes") or () if c["floor"] > 0), None)
    failed = sum(v.get("failed", 0) for v in s.values()) + (fl.get("metrics") or {}).get("failed", 0)
    bar = [
        ("governor: SLO violations", _pct(g["violation_rate"]), "≤ 1%", g["violation_rate"] <= VIOLATION_BAR),
        ("governor: delivered RA / oracle's", f"{g['ra'] / orc['ra']:.3f} ({100 * g['ra']:.2f} / {100 * orc['ra']:.2f})",
         "≥ 0.95", g["ra"] >= ORACLE_BAR * orc["ra"]),
        ("static most-robust: SLO violations", _pct(rob["violation_rate"]), "≥ 10% (else the trace is too easy)",
         rob["violation_rate"] >= ROBUST_BAR),
        ("governor vs ladder", f"violations {_pct(g['violation_rate'])} vs {_pct(lad['violation_rate'])}, RA "
         f"{100 * g['ra']:.2f} vs {100 * lad['ra']:.2f}", "fewer violations at ≥ RA, or more RA at ≤ violations",
         beats(g, lad)),
        ("failed requests, all runs", str(failed), "0", failed == 0),
        ("floor raised to 0.7 mid-run: answered", f"{raised['answered_s'] * 1e3:.0f} ms → λn={raised['to']['lambda_n']:g}"
         if raised and raised.get("to") else "not answered", f"within one control period ({POLICY_INTERVAL_S:g} s)",
         bool(raised and raised.get("to") and raised["answered_s"] <= POLICY_INTERVAL_S
              and raised["to"]["lambda_n"] >= 0.7)),
    ]
    lines = ["## The governor (issue 13): one budget trace, six policies",
             "",
             f"Written by `python benchmarks/governor.py --seconds {args.seconds:g} --rate {args.rate:g}` "
             f"(raw: `docs/results/governor.json`, plot: `docs/results/governor.png`). Whole run "
             f"{out['seconds_total'] / 60:.1f} min.",
             "",
             f"**Scale and load.** This machine: 2 vCPU x86, shared with other jobs (load average "
             f"{out['load_average_start'][0]:.1f} at the start), ONNX Runtime CPU, one intra-op thread per request, the "
             f"runtime running 2 requests at once. Bundle: `{shown(bundle)}`, ResNet-20 FLOATS, widths 1/0.75/0.5, "
             f"1 epoch on {args.limit_train} CIFAR-10 images, table from PGD-20 on {args.eval_images} test images "
             f"(so RA figures are low and close together: the trade-off's shape, not its size, is what this model "
             f"has). Load: open-loop Poisson at {args.rate:g} requests/s, {args.batch} images each, `tritonclient` "
             f"HTTP, latency from each request's scheduled send time. SLO: p99 ≤ {args.slo_ms:g} ms end to end "
             f"(client side); the server's policies get {out['server_ms']:g} ms. Trace: {args.seconds:g} s per policy, "
             f"each policy on its own run of the same trace (so other jobs on the machine differ between runs).",
             "",
             "Trace (simulated Orin NX 16GB, JetPack 6.0; CPU burners on this machine on the same schedule):",
             "",
             "| from | budget | simulated device | burners (processes × duty) |",
             "|---|---|---|---|"]
    for frac, name, settings, (count, duty) in TRACE:
        lines.append(f"| {frac * args.seconds:.0f} s | {name} | {json.dumps(settings) if settings else '—'} | "
                     f"{count} × {duty:.0%} |")
    lines += ["", "### The bar", "", "| item | measured | bar | verdict |", "|---|---|---|---|"]
    lines += [f"| {a} | {m} | {b} | **{'PASS' if ok else 'FAIL'}** |" for a, m, b, ok in bar]
    half = s.get("ladder, mean ≤ half the SLO")
    if half:
        lines += ["", f"Against the ladder held to half the SLO (its mean against {out['server_ms'] / 2:g} ms, so that its "
                  f"tail violates less): violations {_pct(g['violation_rate'])} vs {_pct(half['violation_rate'])}, RA "
                  f"{100 * g['ra']:.2f} vs {100 * half['ra']:.2f} — the governor "
                  f"{'beats it' if beats(g, half) else 'does not beat it'} by the same rule."]
    lines += ["", "### Per policy", "",
              "| policy | requests | failed | SLO violations | delivered RA | delivered CA | p50 ms | p99 ms | switches | "
              "reaction to each change (s) | load average (start → end) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, v in s.items():
        react = ", ".join("—" if x is None else f"{x:.1f}" for x in v.get("reaction_s") or ()) or "—"
        lines.append(f"| {k}{' (' + v['which'] + ')' if 'which' in v else ''} | {v.get('n', '—')} | "
                     f"{v.get('failed', '—')} | {_pct(v['violation_rate'])} | {100 * v['ra']:.2f} | {100 * v['ca']:.2f} | "
                     f"{v.get('p50_ms', math.nan):.1f} | {v.get('p99_ms', math.nan):.1f} | {v.get('switches', '—')} | "
                     f"{react} | {' → '.join(f'{x:.1f}' for x in v['load_average']) if v.get('load_average') else '—'} |")
    lines += ["", "Reaction: for each budget change of the trace, the time to the first switch in its direction (down "
              "for a worse budget, up for a better one), \"—\" when none came before the next change. The oracle and "
              "the best static point are computed offline from the three static runs (per window of "
              f"{WINDOW_S:g} s for the oracle); λn changes latency by at most {100 * out['lambda_latency_spread']:.1f}% "
              "at any width in the device profile, so a width's static run stands for all its λn.", ""]
    if fl:
        lines += [f"**Floor trace** (governor, objective clean accuracy, the same trace): the floor raised to 0.7 "
                  f"and lowered again through `POST /v2/floatedge/policy`; violations {_pct(fl['metrics']['violation_rate'])}, "
                  f"delivered CA {100 * fl['metrics']['ca']:.2f}, RA {100 * fl['metrics']['ra']:.2f}.", ""]
        for c in fl.get("changes") or ():
            lines.append(f"- at {c['at_s']:.1f} s floor {c['floor']:g}: answered in {c['answered_s'] * 1e3:.0f} ms "
                         f"({c['limit']}): {c['reason']}")
        lines.append("")
    lines += [f"![governor benchmark](results/{png.name})", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the ladder's frontier
LADDER_PARAMS = {"window": 20, "margin": 0.3}  # the main run's ladder, only its bound swept


def ladder_sweep(args, bundle: Path, scores: Mapping, start: tuple[float, float], server_ms: float, work: Path,
                 fractions: Sequence[float], committed: Mapping) -> None:
    """The ladder alone on the trace at each fraction of the bound, against the committed run's governor."""
    t_all, load_avg = time.time(), os.getloadavg()
    swept: dict[str, dict] = {}
    for f in fractions:
        name = f"ladder, mean ≤ {f:g} × bound"
        print(f"[governor bench] {name} …", flush=True)
        r = play(bundle, work, f"ladder_sweep_{f:g}", "ladder", start, args, args.slo_ms,
                 {"latency_ms": f * server_ms, **LADDER_PARAMS})
        m = policy_metrics(r["rows"], scores, args.slo_ms)
        swept[name] = {**m, "fraction": f, "latency_ms": f * server_ms, "switches": len(r["moves"]),
                       "load_average": r["extra"]["load_average"], "run": "this sweep"}
        print(f"  {json.dumps(swept[name])}", flush=True)
    s = committed["summary"]
    main_run = {"ladder, mean ≤ 1 × bound": {**s["ladder"], "fraction": 1.0},
                "ladder, mean ≤ 0.5 × bound": {**s["ladder, mean ≤ half the SLO"], "fraction": 0.5}}
    ladders = {k: {**v, "latency_ms": v["fraction"] * committed["server_ms"], "run": "full run"} for k, v in main_run.items()}
    ladders = dict(sorted({**ladders, **swept}.items(), key=lambda kv: -kv[1]["fraction"]))
    g = s["governor"]
    out = {"settings": vars(args), "server_ms": server_ms, "ladder_params": LADDER_PARAMS, "load_average_start": load_avg,
           "seconds_total": round(time.time() - t_all, 1), "governor (full run)": g, "ladders": ladders,
           "frontier": frontier(g, ladders)}
    figures = work if args.no_write else FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    (figures / "governor_ladder_sweep.json").write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(out["frontier"], indent=1))
    if not args.no_write:
        update_section("governor-ladder-sweep", sweep_report(out, args))


def sweep_report(out: Mapping, args) -> str:
    g, ladders, fr = out["governor (full run)"], out["ladders"], out["frontier"]
    beaten = [k for k, ok in fr["beats"].items() if ok]
    lines = ["## The governor against the ladder's frontier (issue 13)", "",
             f"Written by `python benchmarks/governor.py --seconds {args.seconds:g} --rate {args.rate:g} --ladder-sweep "
             f"{args.ladder_sweep}` (raw: `docs/results/governor_ladder_sweep.json`). Whole sweep "
             f"{out['seconds_total'] / 60:.1f} min.", "",
             "The Dynamic-OFA ladder compares the mean of its last 20 latencies with a bound; a lower bound trades its "
             "RA for fewer tail violations. Here only the ladder runs, on the same trace, load and bundle as the "
             "`governor` section (this machine: 2 vCPU x86, shared; load average "
             f"{out['load_average_start'][0]:.1f} at the start), its bound set to each fraction of the server's "
             f"{out['server_ms']:g} ms (window 20, margin 0.3 as in the main run); SLO p99 ≤ {args.slo_ms:g} ms end to "
             "end. The governor's figures and the ladder at 1 and 0.5 × bound are read from "
             "`docs/results/governor.json`, the committed full run, not re-run here (each run meets other jobs on "
             "the machine). Verdict per setting: the issue's rule (`beats`: fewer violations at equal or better RA, "
             "or more RA at equal or fewer violations).", "",
             "| policy | bound (ms) | from | SLO violations | delivered RA | delivered CA | p99 ms | switches | "
             "load average | governor beats it |", "|---|---|---|---|---|---|---|---|---|---|"]

    def row(name: str, bound: float, src: str, v: Mapping, verdict: str) -> str:
        return (f"| {name} | {bound:g} | {src} | {_pct(v['violation_rate'])} | {100 * v['ra']:.2f} | {100 * v['ca']:.2f} | "
                f"{v['p99_ms']:.1f} | {v['switches']} | {' → '.join(f'{x:.1f}' for x in v['load_average'])} | {verdict} |")

    lines.append(row("governor", out["server_ms"], "full run", g, "—"))
    lines += [row(k, v["latency_ms"], v["run"], v, f"**{'yes' if fr['beats'][k] else 'no'}**") for k, v in ladders.items()]
    dom = fr["dominating"]
    lines += ["", f"**Frontier.** The governor beats {len(beaten)} of {len(ladders)} ladder settings by the rule"
              f"{' (' + ', '.join(beaten) + ')' if beaten else ''}; "
              + (f"{', '.join(dom)} {'has' if len(dom) == 1 else 'have'} both violations ≤ the governor's and RA ≥ its, "
                 "so the governor lies below the ladder's frontier there." if dom else
                 "no ladder setting has both violations ≤ the governor's and RA ≥ its: none dominates the governor, "
                 "which lies on or above the ladder's frontier on this trace.")]
    rest = [ladders[k] for k, ok in fr["beats"].items() if not ok and k not in dom]
    if rest:
        lines[-1] += (f" The {len(rest)} it does not beat deliver more RA ({min(100 * v['ra'] for v in rest):.2f}–"
                      f"{max(100 * v['ra'] for v in rest):.2f}) by breaking the SLO on "
                      f"{_pct(min(v['violation_rate'] for v in rest))}–{_pct(max(v['violation_rate'] for v in rest))} "
                      f"of requests; no setting swept keeps violations within {_pct(VIOLATION_BAR)} (the fewest: "
                      f"{_pct(min(v['violation_rate'] for v in ladders.values()))})."
                      if all(v["violation_rate"] > max(VIOLATION_BAR, g["violation_rate"]) for v in ladders.values()) else
                      f" The {len(rest)} it does not beat trade RA and violations against it differently (see the table).")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
