"""Issue 9 item 3: FLOAT and OAT bundles of the same architecture side by side on the device runtime (ONNX
Runtime, CPU). Writes docs/results/float_vs_oat_runtime.json and the `float-vs-oat-runtime` section of
docs/RESULTS.md.

    python benchmarks/float_vs_oat_runtime.py            # trains the two small runs under runs/ if missing
    python benchmarks/float_vs_oat_runtime.py --render-only

Subjects: ResNet-20, one width, trained 1 epoch (PGD-1) on a seeded 256-image slice of CIFAR-10 — FLOAT
(`--method float`) and OAT (`--method oat`, the reference's 128-d orthogonal λ encoding). Latency does not
depend on how well a model is trained. For each bundle:

* size: the bundle, its model file, and the plain export of the same network (`plain_model`: λ_n = 0, FiLM
  folded / no noise — a plain ResNet-20);
* latency per operating point (λ_n ∈ {0, 0.2, 0.7, 1}) at batch 1 and 32, in each runtime mode, as the median
  per-round ratio to that plain export run by a bare ONNX Runtime session with the runtime's options, the two
  interleaved call by call (`floatedge.runtime.bench.interleaved`, `paired_ratio`);
* switch time per mode: `set_operating_point(λ_n)` to a point never prepared (cold) and back to one already
  prepared (cached), and the time until the first request at the new point has been served (medians of 8); and the work of
  building a materialised point (its tensors in numpy, then the session), timed apart from any bridging.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from _results import CIFAR10, FIGURES, ROOT, update_section

from floatedge.bundle import INPUT, OUTPUT, open_bundle
from floatedge.fsutil import atomic_write_text
from floatedge.graph.static import plain_model, point_arrays
from floatedge.oppoint import OperatingPoint
from floatedge.runtime import open as open_runtime
from floatedge.runtime.bench import interleaved, paired_ratio

KINDS = {"float": "FLOAT", "oat": "OAT"}
LAMBDAS = (0.0, 0.2, 0.7, 1.0)
BATCHES = (1, 32)
MODES = ("in-graph", "materialised")
COLD = (0.05, 0.15, 0.35, 0.45, 0.55, 0.65, 0.85, 0.95)  # never prepared before, all BN_A for OAT
JSON = FIGURES / "float_vs_oat_runtime.json"


def ensure_bundle(method: str, limit: int, work: Path) -> Path:
    """A ResNet-20 bundle of `method` from a 1-epoch run on `limit` CIFAR-10 images (made once, then reused)."""
    bundle = work / f"{method}.febundle"
    if bundle.exists():
        return bundle
    from floatedge.export.torch_export import export_bundle
    from floatedge.train.data import load_cifar10
    from floatedge.train.trainer import TrainConfig, train

    ds = load_cifar10(CIFAR10).limit(train=limit, test=64, seed=0)
    cfg = TrainConfig(method=method, arch="resnet20", dataset="cifar10", epochs=1, batch_size=64, pgd_steps=1)
    run = train(cfg, work / f"run_{method}", progress=False, dataset=ds)
    return export_bundle(run, bundle).path


def _bare(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    from floatedge.runtime.onnxrt import session_options

    return ort.InferenceSession(model_bytes, session_options(threads), providers=["CPUExecutionProvider"])


def sizes(bundle: Path) -> dict:
    b = open_bundle(bundle)
    return {"bundle_bytes": sum(f.stat().st_size for f in bundle.iterdir()),
            "model_bytes": len(b.model_bytes(b.widths[0])),
            "plain_bytes": len(plain_model(b, b.widths[0]).SerializeToString())}


def latency(bundle: Path, mode: str, threads: int, rounds: int, budget: float) -> list[dict]:
    """Runtime vs the plain export, per point and batch, interleaved call by call."""
    b = open_bundle(bundle)
    plain = _bare(plain_model(b, b.widths[0]).SerializeToString(), threads)
    xs = {n: np.random.default_rng(0).random((n, *b.input_shape), dtype=np.float32) for n in BATCHES}
    rows = []
    with open_runtime(str(bundle), mode=mode, threads=threads) as rt:
        for lam in LAMBDAS:
            rt.set_operating_point(lambda_n=lam)
            for n, x in xs.items():
                t = interleaved({"runtime": lambda x=x: rt.infer(x), "plain": lambda x=x: plain.run([OUTPUT], {INPUT: x})},
                                rounds, budget)
                rows.append({"lambda_n": lam, "batch": n, "runtime_ms": 1e3 * float(np.median(t["runtime"])),
                             "plain_ms": 1e3 * float(np.median(t["plain"])),
                             "ratio": paired_ratio(t["runtime"], t["plain"])})
                print(f"  {mode:12s} λ={lam:g} b={n:2d}: {rows[-1]['runtime_ms']:.3f} ms, plain "
                      f"{rows[-1]['plain_ms']:.3f} ms, ×{rows[-1]['ratio']:.3f}", flush=True)
    return rows


def switches(bundle: Path, mode: str, threads: int) -> dict:
    """Cold: a λ_n never prepared; cached: back to λ_n = 1, prepared at start. Per switch, the call's time
    and the time until the first request at the new point has returned (call + one batch-1 inference)."""
    b = open_bundle(bundle)
    x = np.random.default_rng(0).random((1, *b.input_shape), dtype=np.float32)
    out: dict[str, list[float]] = {"cold_call_ms": [], "cold_served_ms": [], "cached_call_ms": [], "cached_served_ms": []}
    with open_runtime(str(bundle), mode=mode, threads=threads, cache_size=len(COLD) + 2) as rt:
        rt.set_operating_point(lambda_n=1.0)
        for _ in range(20):
            rt.infer(x)
        for lam in COLD:
            for kind, target in (("cold", lam), ("cached", 1.0)):
                t0 = time.perf_counter()
                rt.set_operating_point(lambda_n=target)
                t1 = time.perf_counter()
                rt.infer(x)
                t2 = time.perf_counter()
                out[f"{kind}_call_ms"].append(1e3 * (t1 - t0))
                out[f"{kind}_served_ms"].append(1e3 * (t2 - t0))
                for _ in range(5):
                    rt.infer(x)
        steady = []
        for _ in range(30):
            t0 = time.perf_counter()
            rt.infer(x)
            steady.append(1e3 * (time.perf_counter() - t0))
        # the work a cold materialised switch does, whatever the runtime serves meanwhile: the point's
        # tensors in numpy (FLOAT: W + s·α·η; OAT: encoder, MLPs, fold) and a session for them
        w = rt._width(b.widths[0])
        for lam in COLD[:4]:
            p = OperatingPoint(lam + 0.01, b.widths[0], b.lambda_th)
            t0 = time.perf_counter()
            point_arrays(w.model, w.entry, p, w.inits)
            t1 = time.perf_counter()
            rt._prepare(p, "materialised")
            out.setdefault("point_arrays_ms", []).append(1e3 * (t1 - t0))
            out.setdefault("prepare_ms", []).append(1e3 * (time.perf_counter() - t1))
    res = {k: float(np.median(v)) for k, v in out.items()}
    res["steady_ms"] = float(np.median(steady))
    print(f"  {mode:12s} switch: cold {res['cold_call_ms']:.2f} ms (served {res['cold_served_ms']:.2f}), cached "
          f"{res['cached_call_ms']:.3f} ms (served {res['cached_served_ms']:.2f}); one request {res['steady_ms']:.2f} ms; "
          f"materialised point: tensors {res['point_arrays_ms']:.2f} ms + session {res['prepare_ms']:.2f} ms", flush=True)
    return res


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def section(res: dict) -> str:
    c = res["conditions"]
    s = {k: res[k]["sizes"] for k in KINDS}
    out = [
        "## FLOAT vs OAT bundles on the device runtime (issue 9)\n\n"
        "FLOAT vs OAT bundles of the same network on the device runtime (ONNX Runtime CPU, "
        f"{c['intra_op_threads']} intra-op thread): ResNet-20, width 1, each trained 1 epoch (PGD-1) on "
        f"{c['train_images']} CIFAR-10 images — latency does not depend on the weights' values. OAT: 128-d "
        "orthogonal λ encoding, 19 FiLMs, λ applied in-graph (encoder + FiLM MLPs) or materialised (FiLM folded "
        "into BN at the point). Measured by `python benchmarks/float_vs_oat_runtime.py`, "
        f"{res['wall_s']:.0f} s, on {c['machine']} ({c['cpus']} vCPUs, shared with other jobs: load average "
        f"{c['load_avg_start'][0]:.2f} at start, {c['load_avg_end'][0]:.2f} at the end), at commit {c.get('commit')}"
        + (" with uncommitted changes to floatedge/runtime" if c.get("runtime_modified") else "") + ".",
        "",
        "| | FLOAT | OAT |",
        "|---|---|---|",
        f"| bundle | {_mb(s['float']['bundle_bytes'])} | {_mb(s['oat']['bundle_bytes'])} |",
        f"| plain export of the same network | {_mb(s['float']['plain_bytes'])} | {_mb(s['oat']['plain_bytes'])} |",
        f"| bundle / plain | {s['float']['bundle_bytes'] / s['float']['plain_bytes']:.2f}× | "
        f"{s['oat']['bundle_bytes'] / s['oat']['plain_bytes']:.2f}× |",
    ]
    for mode in MODES:
        sw = {k: res[k]["switch"][mode] for k in KINDS}
        out += [f"| {mode}: cold λ switch, call / first request served | {sw['float']['cold_call_ms']:.2f} / "
                f"{sw['float']['cold_served_ms']:.2f} ms | {sw['oat']['cold_call_ms']:.2f} / {sw['oat']['cold_served_ms']:.2f} ms |",
                f"| {mode}: cached λ switch, call / first request served | {sw['float']['cached_call_ms']:.3f} / "
                f"{sw['float']['cached_served_ms']:.2f} ms | {sw['oat']['cached_call_ms']:.3f} / "
                f"{sw['oat']['cached_served_ms']:.2f} ms |"]
    pa = {k: res[k]["switch"]["materialised"] for k in KINDS}
    out.append(f"| building a materialised point: tensors (numpy) + session | {pa['float']['point_arrays_ms']:.2f} + "
               f"{pa['float']['prepare_ms']:.2f} ms | {pa['oat']['point_arrays_ms']:.2f} + {pa['oat']['prepare_ms']:.2f} ms |")
    out += ["", "Latency per operating point: runtime p50 (ms) and its median per-round ratio to the plain export "
            "(a bare session on `plain_model`, interleaved call by call).", "",
            "| mode | batch | λ_n | FLOAT ms | FLOAT / plain | OAT ms | OAT / plain |", "|---|---|---|---|---|---|---|"]
    for mode in MODES:
        lat = {k: {(r["lambda_n"], r["batch"]): r for r in res[k]["latency"][mode]} for k in KINDS}
        for n in BATCHES:
            for lam in LAMBDAS:
                f, o = lat["float"][(lam, n)], lat["oat"][(lam, n)]
                out.append(f"| {mode} | {n} | {lam:g} | {f['runtime_ms']:.3f} | {f['ratio']:.3f}× | "
                           f"{o['runtime_ms']:.3f} | {o['ratio']:.3f}× |")
    out += ["", *reading(res)]
    return "\n".join(out) + "\n"


def reading(res: dict) -> list[str]:
    """What the figures say, computed from them (no number here is typed in)."""
    def worst(kind: str, mode: str, n: int) -> float:
        return max(r["ratio"] for r in res[kind]["latency"][mode] if r["batch"] == n)

    lines = []
    for n in BATCHES:
        lines.append(f"- Batch {n}: worst ratio to plain over the four λ_n — in-graph FLOAT {worst('float', 'in-graph', n):.2f}×, "
                     f"OAT {worst('oat', 'in-graph', n):.2f}×; materialised FLOAT {worst('float', 'materialised', n):.2f}×, "
                     f"OAT {worst('oat', 'materialised', n):.2f}×.")
    mat = [r["ratio"] for k in KINDS for r in res[k]["latency"]["materialised"]]
    lines.append(f"- Materialised ratios span {min(mat):.2f}–{max(mat):.2f}×: a materialised point and the plain export are "
                 "the same network, so the spread (widest at batch 32) is what this shared machine's load does to a "
                 "paired ratio, not a difference between FLOAT and OAT.")
    lines.append("- Materialised, both kinds are a plain ResNet-20 at every point (OAT's FiLM folded into BN, BN into "
                 "the conv by ONNX Runtime), so both sit at the plain export's latency; in-graph, each call recomputes "
                 "the λ machinery — FLOAT's W + s·α·η for every conv, OAT's encoder and 19 two-layer MLPs — and BN "
                 "cannot be fused into a conv whose parameters are computed.")
    lines.append("- Switch times are those of the runtime in the tree when this ran (see its own section for how a "
                 "cold switch is served while the materialised point is built). Building a materialised point is the "
                 "last row of the first table: the point's tensors in numpy (FLOAT: W + s·α·η per conv; OAT: the "
                 "encoding, 19 MLPs and the fold into BN) plus an ONNX Runtime session; in-graph a switch only changes "
                 "the λ fed with the next request. A cached switch is a reference assignment in both.")
    return lines


def runtime_source() -> dict:
    """The commit measured, and whether floatedge/runtime had uncommitted changes (switch times depend on it)."""
    import subprocess

    git = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "runtime_modified": bool(git("status", "--porcelain", "--", "floatedge/runtime"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=256, help="CIFAR-10 training images per run (default 256)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--budget", type=float, default=1.5, help="seconds per latency comparison (default 1.5)")
    ap.add_argument("--render-only", action="store_true", help="Rewrite the RESULTS.md section from the saved JSON.")
    args = ap.parse_args()
    if args.render_only:
        print(update_section("float-vs-oat-runtime", section(json.loads(JSON.read_text()))))
        return
    import platform

    t0 = time.perf_counter()
    load0 = list(os.getloadavg())
    work = ROOT / "runs" / "float_vs_oat_runtime"
    res: dict = {"conditions": {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                "intra_op_threads": args.threads, "train_images": args.limit, "load_avg_start": load0,
                                **runtime_source()}}
    for kind in KINDS:
        bundle = ensure_bundle(kind, args.limit, work)
        print(f"{KINDS[kind]}: {bundle}", flush=True)
        res[kind] = {"bundle": str(bundle.relative_to(ROOT)), "sizes": sizes(bundle),
                     "latency": {m: latency(bundle, m, args.threads, args.rounds, args.budget) for m in MODES},
                     "switch": {m: switches(bundle, m, args.threads) for m in MODES}}
    res["conditions"]["load_avg_end"] = list(os.getloadavg())
    res["wall_s"] = time.perf_counter() - t0
    FIGURES.mkdir(parents=True, exist_ok=True)
    atomic_write_text(JSON, json.dumps(res, indent=1) + "\n")
    print(update_section("float-vs-oat-runtime", section(res)))


if __name__ == "__main__":
    main()
