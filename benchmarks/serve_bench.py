"""Issue 12 bar for `floatedge serve`: ResNet-20 FLOATS bundle, ONNX Runtime CPU, `tritonclient` as the load
generator, every ratio measured side by side in one run. Writes docs/results/serve_bench.json and the `serve`
section of docs/RESULTS.md.

    python benchmarks/serve_bench.py                       # trains the bundle if missing (1 epoch, 512 images)
    python benchmarks/serve_bench.py --bundle X.febundle --seconds 3

1. Added latency at batch 1, binary tensors: p50 of a request through `floatedge serve` (HTTP, gRPC) minus p50 of
   the same `infer` in-process, in interleaved rounds.
2. Throughput at 4 clients × batch 8 against the in-process runtime driven by 4 threads.
3. Against KServe's own Python model server (`pip install kserve`, installed here if missing, not a floatedge
   dependency) serving the same point frozen to plain ONNX in ONNX Runtime with the same session settings:
   throughput and p99 at 1, 2, 4, 8 clients, batch 1 and 8, HTTP and gRPC, binary tensors with an id.
4. Dynamic batching on vs off (8 clients, batch 1).
5. 4 switches and 1 hot swap under 4 clients: failed requests and the time to effect of each.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from _results import FIGURES, ROOT, update_section
from runtime_bench import ensure_bundle  # the same 1-epoch ResNet-20 FLOATS recipe

sys.path.insert(0, str(ROOT / "tests"))
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from _serve import ServerProc, free_ports, write_token  # noqa: E402

import floatedge.runtime as rt  # noqa: E402
from floatedge.fsutil import atomic_write_text  # noqa: E402

MODEL = "r20"
CLIENTS = (1, 2, 4, 8)
BAR_ADDED_MS, BAR_THROUGHPUT, BAR_KSERVE = 0.5, 0.85, 1.3


# ------------------------------------------------------------------------------------------ clients
def client_call(kind: str, url: str, model: str, x: np.ndarray):
    """A function doing one request (binary tensors, with an id), and the client to close."""
    if kind == "http":
        c = httpclient.InferenceServerClient(url, network_timeout=120, connection_timeout=120)
        inp = httpclient.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = [httpclient.InferRequestedOutput("logits", binary_data=True)]
    else:
        c = grpcclient.InferenceServerClient(url)
        inp = grpcclient.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out = [grpcclient.InferRequestedOutput("logits")]
    counter = iter(range(1 << 60))

    def call() -> np.ndarray:
        return c.infer(model, [inp], outputs=out, request_id=str(next(counter))).as_numpy("logits")

    return call, c


def latencies(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def load(make, clients: int, seconds: float, batch: int, warmup: int = 3) -> dict:
    """`clients` threads, each with its own client from `make()`, for `seconds`: images/s, p50/p99, failures."""
    lat: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    deadline = [0.0]
    start = threading.Barrier(clients + 1, action=lambda: deadline.__setitem__(0, time.perf_counter() + seconds))

    def worker() -> None:
        fn, c = make()
        mine: list[float] = []
        try:
            for _ in range(warmup):
                fn()
            start.wait()
            stop = deadline[0]
            while (t0 := time.perf_counter()) < stop:
                try:
                    fn()
                    mine.append(time.perf_counter() - t0)
                except Exception as exc:  # noqa: BLE001 - counted
                    with lock:
                        failures.append(repr(exc)[:200])
        finally:
            with lock:
                lat.extend(mine)
            if c is not None:
                c.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1e3
    return {"clients": clients, "batch": batch, "requests": len(lat), "images_per_s": len(lat) * batch / wall,
            "p50_ms": float(np.median(ms)) if len(ms) else None, "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
            "failures": len(failures), "failure_examples": failures[:3]}


# ------------------------------------------------------------------------------------------ servers
def start_kserve(onnx: Path, workdir: Path) -> tuple[subprocess.Popen, str, str] | str:
    # never imported here: kserve's generated protobuf modules and tritonclient's both register `inference.*` in
    # protobuf's default pool, so one process cannot hold both (floatedge keeps its own in a private pool)
    if importlib.util.find_spec("kserve") is None:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "kserve"], capture_output=True, text=True)
        if proc.returncode != 0:
            return f"pip install kserve failed: {proc.stderr.strip().splitlines()[-1:]}"
    http_port, grpc_port = free_ports(2)
    log = open(workdir / "kserve.log", "w")
    p = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "_kserve_model.py"), str(onnx), MODEL,
                          str(http_port), str(grpc_port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if p.poll() is not None:
            return f"kserve exited {p.returncode}: {(workdir / 'kserve.log').read_text()[-500:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready", timeout=2) as r:
                if r.status == 200:
                    return p, f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
        except OSError:
            time.sleep(0.2)
    p.kill()
    return "kserve did not become ready in 120 s"


def stop_proc(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()


# ------------------------------------------------------------------------------------------ the run
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--no-kserve", action="store_true")
    args = ap.parse_args()
    t_start = time.time()
    load_before = os.getloadavg()
    work = ROOT / "runs" / "serve_bench"
    work.mkdir(parents=True, exist_ok=True)
    src = args.bundle or ensure_bundle("resnet20", 512, ROOT / "runs" / "serve_bench_r20")
    bdir = work / "bundles"
    if bdir.exists():
        shutil.rmtree(bdir)
    bdir.mkdir()
    bundle = bdir / f"{MODEL}.febundle"
    shutil.copytree(src, bundle) if Path(src).is_dir() else shutil.copy2(src, bundle)
    token = work / "token"
    write_token(token)
    res: dict = {"bundle": os.path.relpath(src, ROOT), "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before}}
    x1 = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    x8 = np.random.default_rng(1).random((8, 3, 32, 32), dtype=np.float32)

    model = rt.open(bundle, threads=1)
    res["runtime"] = {"mode": model.mode, "concurrency": model.concurrency}
    server = ServerProc(work, bundle, "--state-dir", str(work / "state"), token_file=token).wait_ready()
    try:
        # 1. added latency at batch 1, interleaved rounds
        http_fn, hc = client_call("http", server.url, MODEL, x1)
        grpc_fn, gc = client_call("grpc", server.grpc_url, MODEL, x1)
        lat = {"inproc": [], "http": [], "grpc": []}
        for fn in (lambda: model.infer(x1), http_fn, grpc_fn):
            latencies(fn, 30)
        for _ in range(args.rounds):
            lat["inproc"] += latencies(lambda: model.infer(x1), args.per_round)
            lat["http"] += latencies(http_fn, args.per_round)
            lat["grpc"] += latencies(grpc_fn, args.per_round)
        hc.close()
        gc.close()
        p50 = {k: float(np.median(v)) * 1e3 for k, v in lat.items()}
        p99 = {k: float(np.percentile(v, 99)) * 1e3 for k, v in lat.items()}
        res["added_latency"] = {"p50_ms": p50, "p99_ms": p99, "n": len(lat["inproc"]),
                                "added_http_ms": p50["http"] - p50["inproc"], "added_grpc_ms": p50["grpc"] - p50["inproc"]}
        print("added latency", json.dumps(res["added_latency"]), flush=True)

        # 2. throughput 4 clients batch 8 vs in-process 4 threads, in alternating rounds (a busy neighbour slows all
        #    three alike)
        makers = {"inproc": lambda: (lambda: model.infer(x8), None),
                  "http": lambda: client_call("http", server.url, MODEL, x8),
                  "grpc": lambda: client_call("grpc", server.grpc_url, MODEL, x8)}
        rounds: dict[str, list[dict]] = {k: [] for k in makers}
        for _ in range(3):
            for k, make in makers.items():
                rounds[k].append(load(make, 4, args.seconds / 2, 8))
        res["throughput_4x8"] = {k: merge(v) for k, v in rounds.items()}
        print("throughput", json.dumps({k: v["images_per_s"] for k, v in res["throughput_4x8"].items()}), flush=True)

        # 5. switches and a hot swap under 4 clients
        res["switching"] = switching(server, x1, args.seconds)
        print("switching", json.dumps(res["switching"]), flush=True)

        # 3a. floatedge at 1-8 clients (HTTP, gRPC), batch 1 and 8
        res["floatedge"] = sweep(server.url, server.grpc_url, x1, x8, args.seconds)
    finally:
        assert server.stop() == 0
    model.close()

    # 4. dynamic batching on
    cfg = work / "batching.toml"
    cfg.write_text("batching = true\nbatch_delay_ms = 2.0\nbatch_max = 16\n")
    bserver = ServerProc(work, bundle, config=cfg).wait_ready()
    try:
        res["batching"] = {"on": load(lambda: client_call("http", bserver.url, MODEL, x1), 8, args.seconds, 1),
                           "off": next(r for r in res["floatedge"]["http"] if r["clients"] == 8 and r["batch"] == 1)}
    finally:
        bserver.stop()

    # 3b. KServe
    if not args.no_kserve:
        onnx = work / "r20_static.onnx"
        subprocess.run([sys.executable, "-m", "floatedge", "static", str(bundle), "--lambda-n", "0", "--width", "1",
                        "--out", str(onnx)], check=True, capture_output=True)
        ks = start_kserve(onnx, work)
        if isinstance(ks, str):
            res["kserve"] = {"error": ks}
        else:
            proc, hurl, gurl = ks
            try:
                res["kserve"] = sweep(hurl, gurl, x1, x8, args.seconds)
                res["kserve"]["version"] = importlib.metadata.version("kserve")
            finally:
                stop_proc(proc)
    res["machine"]["loadavg_after"] = os.getloadavg()
    res["wall_s"] = time.time() - t_start
    FIGURES.mkdir(parents=True, exist_ok=True)
    atomic_write_text(FIGURES / "serve_bench.json", json.dumps(res, indent=1, default=str) + "\n")
    update_section("serve", section(res))
    print(section(res))


def merge(parts: list[dict]) -> dict:
    """Rounds of one configuration as one figure: images/s the median round, latency the worst round's p99."""
    return {**parts[0], "images_per_s": float(np.median([p["images_per_s"] for p in parts])),
            "rounds_images_per_s": [round(p["images_per_s"], 1) for p in parts],
            "p99_ms": max(p["p99_ms"] for p in parts), "requests": sum(p["requests"] for p in parts),
            "failures": sum(p["failures"] for p in parts)}


def sweep(http_url: str, grpc_url: str, x1: np.ndarray, x8: np.ndarray, seconds: float) -> dict:
    out: dict = {"http": [], "grpc": []}
    for kind, url in (("http", http_url), ("grpc", grpc_url)):
        for x in (x1, x8):
            for n in CLIENTS:
                r = load(lambda kind=kind, url=url, x=x: client_call(kind, url, MODEL, x), n, seconds, x.shape[0])
                out[kind].append(r)
                print(kind, n, x.shape[0], round(r["images_per_s"], 1), r["p99_ms"], r["failures"], flush=True)
    return out


def switching(server: ServerProc, x: np.ndarray, seconds: float) -> dict:
    """4 clients for the whole run; 4 switches and 1 hot swap (reload of the bundle) spaced through it."""
    result: dict = {}
    stats: dict = {}

    def run_load() -> None:
        stats.update(load(lambda: client_call("http", server.url, MODEL, x), 4, seconds * 3, 1))

    t = threading.Thread(target=run_load)
    t.start()
    time.sleep(seconds * 0.4)
    effects = []
    for point in ({"lambda_n": 0.7}, {"width": 0.5}, {"lambda_n": 1.0, "width": 0.75}, {"lambda_n": 0.0, "width": 1.0}):
        got, out = server.json("POST", "/v2/floatedge/point", point)
        effects.append(out["switch"]["time_to_effect_ms"] if got == 200 else f"error {out}")
        time.sleep(seconds * 0.35)
    got, out = server.json("POST", f"/v2/repository/models/{MODEL}/load", {"parameters": {"bundle": f"{MODEL}.febundle"}})
    result["swap_s"] = out.get("seconds") if got == 200 else f"error {out}"
    t.join()
    result.update({"switch_effect_ms": effects, "requests": stats["requests"], "failures": stats["failures"],
                   "p99_ms": stats["p99_ms"], "failure_examples": stats["failure_examples"]})
    return result


def section(r: dict) -> str:
    a, t = r["added_latency"], r["throughput_4x8"]
    m = r["machine"]
    ratio = {k: t[k]["images_per_s"] / t["inproc"]["images_per_s"] for k in ("http", "grpc")}
    ok = lambda b: "**met**" if b else "**not met**"  # noqa: E731
    lines = [
        "## `floatedge serve` (issue 12)", "",
        f"ResNet-20 FLOATS bundle (widths 1/0.75/0.5, 1 epoch on 512 CIFAR-10 images: latency does not depend on how "
        f"well it is trained), ONNX Runtime CPU, 1 intra-op thread, runtime mode {r['runtime']['mode']}, "
        f"{r['runtime']['concurrency']} requests at once; `tritonclient` load generator in the same machine. "
        f"Machine: {m['cpus']} vCPUs, shared with other jobs (load average {m['loadavg_before'][0]:.1f} before, "
        f"{m['loadavg_after'][0]:.1f} after). `python benchmarks/serve_bench.py`, {r['wall_s']:.0f} s.", "",
        "| bar | measured | verdict |", "|---|---|---|",
        f"| added latency, batch 1, binary, HTTP: ≤ {BAR_ADDED_MS} ms p50 | {a['added_http_ms']:.3f} ms "
        f"(server {a['p50_ms']['http']:.3f} vs in-process {a['p50_ms']['inproc']:.3f}) | "
        f"{ok(a['added_http_ms'] <= BAR_ADDED_MS)} |",
        f"| added latency, batch 1, gRPC: ≤ {BAR_ADDED_MS} ms p50 | {a['added_grpc_ms']:.3f} ms "
        f"(server {a['p50_ms']['grpc']:.3f}) | {ok(a['added_grpc_ms'] <= BAR_ADDED_MS)} |",
        f"| throughput 4 clients × batch 8 ≥ {BAR_THROUGHPUT:.0%} of in-process 4 threads | HTTP {ratio['http']:.0%}, "
        f"gRPC {ratio['grpc']:.0%} ({t['http']['images_per_s']:.0f} / {t['grpc']['images_per_s']:.0f} vs "
        f"{t['inproc']['images_per_s']:.0f} img/s) | {ok(min(ratio.values()) >= BAR_THROUGHPUT)} |",
    ]
    s = r["switching"]
    lines.append(f"| zero failed requests across 4 switches and 1 hot swap, 4 clients | {s['failures']} failed of "
                 f"{s['requests']}; time to effect {', '.join(f'{e} ms' for e in s['switch_effect_ms'])}; swap "
                 f"{s['swap_s']} s | {ok(s['failures'] == 0)} |")
    ks = r.get("kserve")
    if ks and "error" not in ks:
        worst_ratio, p99_ok = 9e9, True
        rows = ["", "| transport | batch | clients | floatedge img/s | KServe img/s | × | floatedge p99 ms | KServe p99 ms |",
                "|---|---|---|---|---|---|---|---|"]
        for kind in ("http", "grpc"):
            for fe, kv in zip(r["floatedge"][kind], ks[kind], strict=True):
                x = fe["images_per_s"] / kv["images_per_s"] if kv["images_per_s"] else float("inf")
                worst_ratio = min(worst_ratio, x)
                p99_ok &= (fe["p99_ms"] or 0) <= (kv["p99_ms"] or 9e9)
                rows.append(f"| {kind} | {fe['batch']} | {fe['clients']} | {fe['images_per_s']:.0f} | "
                            f"{kv['images_per_s']:.0f} | {x:.2f} | {fe['p99_ms']:.2f} | {kv['p99_ms']:.2f} |"
                            + (f" (KServe failures: {kv['failures']})" if kv["failures"] else ""))
        lines.append(f"| vs KServe {ks.get('version', '')}: ≥ {BAR_KSERVE}× throughput and ≤ its p99 at every client "
                     f"count | worst ratio {worst_ratio:.2f}×; p99 ≤ KServe's everywhere: {p99_ok} | "
                     f"{ok(worst_ratio >= BAR_KSERVE and p99_ok)} |")
        lines += rows
    else:
        lines.append(f"| vs KServe | not measured: {ks['error'] if ks else 'skipped'} | — |")
    b = r["batching"]
    pays = b["on"]["images_per_s"] > 1.1 * b["off"]["images_per_s"] and b["on"]["p99_ms"] <= b["off"]["p99_ms"]
    lines += ["", f"Dynamic batching (8 clients, batch 1, HTTP, delay 2 ms, up to 16): on {b['on']['images_per_s']:.0f} "
              f"img/s, p99 {b['on']['p99_ms']:.2f} ms; off {b['off']['images_per_s']:.0f} img/s, p99 "
              f"{b['off']['p99_ms']:.2f} ms: " + ("it pays here." if pays else
                                                "it does not pay on this CPU, so it is off by default (docs/serve.md)."),
              "", "The load generator (tritonclient, Python threads) shares the 2 vCPUs with the server and with the "
              "other jobs on the machine, so client-side Python is inside every server figure and the p99s carry the "
              "neighbours' noise; ratios are from one run, side by side. KServe is driven with binary tensors and an "
              "`id` on every request (it answers tritonclient's JSON-tensor requests with 400 and requests without an "
              "`id` with 500; floatedge accepts both, tests/test_serve.py)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
