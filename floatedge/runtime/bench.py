"""`floatedge bench`: latency, throughput and switch cost of a bundle on a backend. Torch-free.

Every ratio is measured side by side: the two things compared run alternately, one call each per round,
in an order that flips every round, so a neighbour process slowing the machine slows both alike; a ratio
is the median over rounds of the per-round ratio (`paired_ratio`). Figures (p50/p99 in ms, throughput in images/s):

* latency per operating point × batch, with the plain export of the same width (`plain_model`: λ_n=0, no
  noise, one BN — a plain network) as the reference, run by a bare session with the runtime's options;
* in-graph vs materialised at each width (the runtime's choice is reported with them);
* the runtime's overhead over a bare `InferenceSession.run` on the very model it runs;
* width 0.5 vs width 1.0;
* switching under load: `clients` threads infer continuously while λ_n, then the width, change to points
  never prepared before (cold), then back (cached). For each switch: time until in effect (the call
  returns, and the first request reporting the new point), the slowest request in flight meanwhile against
  the p50 of the same load without a switch, and failed requests.
"""
from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from floatedge.oppoint import PAPER_LAMBDAS, OperatingPoint

from . import open as open_runtime
from .base import Backend


def _stats(times: Sequence[float], batch: int) -> dict[str, float]:
    t = np.asarray(times, dtype=np.float64)
    return {"p50_ms": float(np.median(t) * 1e3), "p99_ms": float(np.percentile(t, 99) * 1e3),
            "mean_ms": float(t.mean() * 1e3), "throughput": float(batch / t.mean()), "n": int(t.size)}


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, budget_s: float, warmup: int = 3) -> dict[str, list]:
    """Run each fn once per round, order reversed every other round; stop after `rounds` or `budget_s`
    (at least 10 rounds). Returns the per-call wall times. Compare two functions at a time: with two the
    sequence is A B B A A B…, each runs once after the other and once after itself; with three, the
    middle one never follows itself (colder caches) and the comparison is biased."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    deadline = time.perf_counter() + budget_s
    r = 0
    while r < rounds and (r < 10 or time.perf_counter() < deadline):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
        r += 1
    return times


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of a_i / b_i. The two calls of a round ran back to back, so a slow spell of the
    machine (another job, a frequency change) divides out; a ratio of two medians does not survive a
    bimodal machine (measured: 0.7–1.35 for two identical batch-32 sessions)."""
    return float(np.median(np.asarray(a, dtype=np.float64) / np.asarray(b, dtype=np.float64)))


def _images(spec: Any, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, spec.channels, spec.height, spec.width), dtype=np.float32)


def _bench_points(rt: Backend, widths: Sequence[float], lambdas: Sequence[float] | None) -> list[OperatingPoint]:
    """The bundle's calibration table, else the paper's λ grid, at each width."""
    th = rt.lambda_th
    if lambdas is None:
        table = rt.operating_points()
        lambdas = sorted({float(r["lambda_n"]) for r in table}) if table else list(PAPER_LAMBDAS)
    return [OperatingPoint(lam, w, th) for w in widths for lam in lambdas]


def _bare_ort(model_bytes: bytes, threads: int | None) -> Any:
    import onnxruntime as ort

    from .onnxrt import session_options

    return ort.InferenceSession(model_bytes, session_options(threads), providers=["CPUExecutionProvider"])


def run_bench(bundle: str, backend: str = "auto", batches: Sequence[int] = (1, 8, 32),
              lambdas: Sequence[float] | None = None, widths: Sequence[float] | None = None, threads: int | None = 1,
              rounds: int = 200, budget_s: float = 3.0, clients: int = 4, switch: bool = True,
              log: Callable[[str], None] = lambda s: None, concurrency: int | None = None) -> dict[str, Any]:
    """All figures for one bundle on one backend; see the module docstring."""
    from floatedge.bundle import INPUT, OUTPUT
    from floatedge.graph.static import freeze, plain_model

    opts: dict[str, Any] = {"threads": threads} if backend in ("auto", "onnxruntime", "ort") else {}
    rt = open_runtime(bundle, backend=backend, **opts)
    rt.wait_idle()
    is_ort = rt.name == "onnxruntime"
    out: dict[str, Any] = {
        "bundle": str(bundle), "backend": rt.name, "describe": rt.describe(),
        "conditions": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                       "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                       "intra_op_threads": threads, "rounds": rounds, "budget_s": budget_s,
                       "method": "interleaved rounds, order flipped each round; ratios of medians"},
        "latency": [], "modes": [], "overhead": [], "width_ratio": [], "switch": {}}
    widths = tuple(widths or rt.widths)
    spec = rt.input_spec
    xs = {b: _images(spec, b) for b in batches}
    points = _bench_points(rt, widths, lambdas)
    try:
        plain = {w: _bare_ort(plain_model(rt.bundle, w).SerializeToString(), threads) for w in widths} if is_ort else {}
        # 1. latency per operating point and batch, against the plain export of the same width
        for p in points:
            rt.set_operating_point(lambda_n=p.lambda_n, width=p.width, lambda_th=p.lambda_th)
            for b in batches:
                x = xs[b]
                fns: dict[str, Callable[[], Any]] = {"runtime": lambda x=x: rt.infer(x)}
                if p.width in plain:
                    fns["plain"] = lambda x=x, s=plain[p.width]: s.run([OUTPUT], {INPUT: x})
                t = interleaved(fns, rounds, budget_s)
                row = {"lambda_n": p.lambda_n, "width": p.width, "batch": b, "runtime": _stats(t["runtime"], b)}
                if "plain" in t:
                    row["plain"] = _stats(t["plain"], b)
                    row["ratio"] = paired_ratio(t["runtime"], t["plain"])
                    row["ratio_of_medians"] = row["runtime"]["p50_ms"] / row["plain"]["p50_ms"]
                out["latency"].append(row)
                log(f"λ={p.lambda_n:g} w={p.width:g} b={b}: {row['runtime']['p50_ms']:.3f} ms"
                    + (f" (plain {row['plain']['p50_ms']:.3f}, ×{row['ratio']:.3f})" if "ratio" in row else ""))
        # 2. overhead over a bare session on the very model the runtime runs (batch 1)
        if is_ort:
            for w in widths:
                p = OperatingPoint(points[-1].lambda_n, w, rt.lambda_th)
                rt.set_operating_point(lambda_n=p.lambda_n, width=w)
                w_model = rt._width(w)  # the scalable model the runtime loaded
                x = xs[min(batches)]
                if rt.mode == "materialised":
                    bare = _bare_ort(freeze(w_model.model, w_model.entry, p).SerializeToString(), threads)
                    call = lambda x=x, s=bare: s.run([OUTPUT], {INPUT: x})
                else:
                    from floatedge.bundle import LAMBDA

                    bare = _bare_ort(w_model.data, threads)
                    lam = np.array(p.lambda_n, np.float32)
                    call = lambda x=x, s=bare, lam=lam: s.run([OUTPUT], {INPUT: x, LAMBDA: lam})
                # pairs only: with three or more functions the interleaving is no longer symmetric
                t = interleaved({"runtime": lambda x=x: rt.infer(x), "bare": call}, rounds * 5, budget_s)
                nocheck = open_runtime(bundle, backend=backend, mode=rt.mode, point=p, check_finite=False, **opts)
                c = interleaved({"check": lambda x=x: rt.infer(x), "nocheck": lambda x=x, n=nocheck: n.infer(x)},
                                rounds * 5, budget_s)
                nocheck.close()
                row = {"width": w, "lambda_n": p.lambda_n, "batch": int(x.shape[0]), "runtime": _stats(t["runtime"], 1),
                       "bare": _stats(t["bare"], 1)}
                row["overhead"] = paired_ratio(t["runtime"], t["bare"]) - 1.0
                row["overhead_of_medians"] = row["runtime"]["p50_ms"] / row["bare"]["p50_ms"] - 1.0
                # what the NaN/Inf check costs, next to real inference (not in a tight loop)
                row["finite_check"] = paired_ratio(c["check"], c["nocheck"]) - 1.0
                out["overhead"].append(row)
                log(f"overhead w={w:g}: {100 * row['overhead']:+.2f}% "
                    f"(NaN/Inf check {100 * row['finite_check']:+.2f}%)")
        # 3. in-graph vs materialised, side by side
        other = {}
        for m in rt.modes:
            other[m] = rt if m == rt.mode else open_runtime(bundle, backend=backend, mode=m, **opts)
        for w in widths:
            p = OperatingPoint(points[-1].lambda_n, w, rt.lambda_th)
            for r in other.values():
                r.set_operating_point(lambda_n=p.lambda_n, width=w)
            for b in sorted({min(batches), max(batches)}):
                x = xs[b]
                t = interleaved({m: (lambda r=r, x=x: r.infer(x)) for m, r in other.items()}, rounds, budget_s)
                row = {"width": w, "lambda_n": p.lambda_n, "batch": b, **{m: _stats(v, b) for m, v in t.items()}}
                if len(t) == 2:
                    row["materialised_over_in_graph"] = paired_ratio(t["materialised"], t["in-graph"])
                out["modes"].append(row)
                log(f"modes w={w:g} b={b}: " + ", ".join(f"{m} {row[m]['p50_ms']:.3f} ms" for m in t))
        for r in other.values():
            if r is not rt:
                r.close()
        # 4. width 0.5 vs 1.0 (widest vs narrowest), side by side
        if len(widths) > 1:
            narrow = OperatingPoint(0.0, min(widths), rt.lambda_th)
            lo = open_runtime(bundle, backend=backend, mode=rt.mode, point=narrow, **opts)
            rt.set_operating_point(lambda_n=0.0, width=max(widths))
            for b in batches:
                x = xs[b]
                t = interleaved({"wide": lambda x=x: rt.infer(x), "narrow": lambda x=x: lo.infer(x)}, rounds, budget_s)
                row = {"batch": b, "wide": max(widths), "narrow": min(widths),
                       "wide_ms": _stats(t["wide"], b)["p50_ms"], "narrow_ms": _stats(t["narrow"], b)["p50_ms"]}
                row["ratio"] = paired_ratio(t["narrow"], t["wide"])
                out["width_ratio"].append(row)
                log(f"width {min(widths):g}/{max(widths):g} b={b}: ×{row['ratio']:.3f}")
            lo.close()
    finally:
        rt.close()
    if switch:
        out["switch"] = switch_under_load(bundle, backend, clients=clients, threads=threads, log=log,
                                          concurrency=concurrency)
    return out


def switch_plan(start: OperatingPoint, narrow: float) -> list[tuple[str, dict[str, float]]]:
    """The switches `switch_under_load` makes from `start` (λ_n 0 at the widest width): λ_n, the width,
    λ_n again (points never prepared: cold), then back to `start` (prepared when opened: cached). A switch
    that would change nothing (the width change of a one-width bundle) is left out, not timed as a no-op."""
    targets = [(0.7, start.width), (0.7, narrow), (0.2, narrow), (start.lambda_n, start.width)]
    plan, (lam, width) = [], (start.lambda_n, start.width)
    for i, (to_lam, to_width) in enumerate(targets):
        change = {k: v for k, v, now in (("lambda_n", to_lam, lam), ("width", to_width, width)) if v != now}
        if not change:
            continue
        what = "+".join({"lambda_n": "λ", "width": "width"}[k] for k in sorted(change, reverse=True))
        back = i == len(targets) - 1
        plan.append((f"{what} {'back (cached)' if back else 'change (cold)'}", change))
        lam, width = to_lam, to_width
    return plan


def switch_under_load(bundle: str, backend: str = "auto", clients: int = 4, threads: int | None = 1,
                      settle_s: float = 1.5, batch: int = 1, log: Callable[[str], None] = lambda s: None,
                      mode: str = "auto", concurrency: int | None = None) -> dict[str, Any]:
    """`clients` threads infer (batch `batch`) without pause; switches happen meanwhile. A fresh runtime,
    so the first switches are cold (nothing prepared) and the last one returns to a cached point."""
    opts: dict[str, Any] = {"threads": threads} if backend in ("auto", "onnxruntime", "ort") else {}
    if concurrency is not None:
        opts["concurrency"] = concurrency
    rt = open_runtime(bundle, backend=backend, mode=mode, **opts)
    rt.wait_idle()  # the bridges warm in the background after open: measure switches, not the warm-up
    plan = switch_plan(rt.operating_point, min(rt.widths))
    x = _images(rt.input_spec, batch)
    records: list[tuple[float, float, Any, str | None]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        local = []
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                r = rt.run(x)
                local.append((t0, time.perf_counter(), r.point, None))
            except Exception as exc:  # noqa: BLE001 - counted as a failed request
                local.append((t0, time.perf_counter(), None, f"{type(exc).__name__}: {exc}"))
        with lock:
            records.extend(local)

    threads_ = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads_:
        t.start()
    time.sleep(settle_s)
    switches = []
    for label, over in plan:
        before = rt.operating_point
        t_ask = time.perf_counter()
        point = rt.set_operating_point(**over)
        t_done = time.perf_counter()
        switches.append({"label": label, "from": before, "to": point, "t_ask": t_ask, "t_done": t_done,
                         "cached": rt.last_switch.get("cached")})
        time.sleep(settle_s)
    stop.set()
    for t in threads_:
        t.join()
    concurrency_used = rt.concurrency
    rt.close()
    failed = [r for r in records if r[3] is not None]
    ok = [r for r in records if r[3] is None]
    span = (max(r[1] for r in ok) - min(r[0] for r in ok)) if ok else 0.0
    throughput = len(ok) * batch / span if span else 0.0  # images/s over the whole test, switches included
    windows = [(s["t_ask"], s["t_done"]) for s in switches]
    overlaps = lambda r, w: r[0] < w[1] and r[1] > w[0]
    # baseline: warm requests (≥ 0.2 s after the start) that overlap no switch, by the point they ran at
    t_start = min(r[0] for r in ok) if ok else 0.0
    quiet_reqs = [r for r in ok if r[0] > t_start + 0.2 and not any(overlaps(r, w) for w in windows)]
    base = [r[1] - r[0] for r in quiet_reqs]
    p50 = float(np.median(base)) if base else float("nan")
    p50_at = {pt: float(np.median([r[1] - r[0] for r in quiet_reqs if r[2] == pt]))
              for pt in {r[2] for r in quiet_reqs}}
    rows = []
    for s in switches:
        w = (s["t_ask"], s["t_done"])
        ref = p50_at.get(s["from"], p50)
        # each request in flight against the p50 of the point it ran at (after a swap to a wider width a
        # request is slower because the model is bigger, not because of the switch)
        inflight_reqs = [r for r in ok if overlaps(r, w)]
        inflight = [r[1] - r[0] for r in inflight_reqs]
        slow = [(r[1] - r[0]) / p50_at.get(r[2], p50) for r in inflight_reqs]
        new = [r for r in ok if r[2] == s["to"] and r[0] >= s["t_ask"]]
        first_new = min((r[1] for r in new), default=float("nan"))
        late = [r for r in ok if r[0] >= s["t_done"] and r[2] != s["to"] and r[0] < s["t_done"] + settle_s * 0.9]
        # control: a window as long as this switch, just before it (same point, same load, no switch)
        dur = min(w[1] - w[0], settle_s * 0.7)
        q = [r[1] - r[0] for r in ok if overlaps(r, (w[0] - 0.1 - dur, w[0] - 0.1))]
        rows.append({"label": s["label"], "from": s["from"].to_dict(), "to": s["to"].to_dict(), "cached": s["cached"],
                     "in_effect_ms": (s["t_done"] - s["t_ask"]) * 1e3,
                     "first_new_result_ms": (first_new - s["t_ask"]) * 1e3, "p50_before_ms": ref * 1e3,
                     "inflight_requests": len(inflight), "inflight_max_ms": max(inflight) * 1e3 if inflight else None,
                     "inflight_max_over_p50": max(slow) if slow else None,
                     "quiet_max_over_p50": (max(q) / ref) if q else None,
                     "inflight_p95_over_p50": float(np.percentile(slow, 95)) if slow else None,
                     "quiet_p95_over_p50": float(np.percentile(q, 95) / ref) if q else None,
                     "old_point_after_switch": len(late)})
        log(f"switch {s['label']}: in effect {rows[-1]['in_effect_ms']:.1f} ms, {len(inflight)} in flight, "
            f"max {rows[-1]['inflight_max_ms'] or 0:.2f} ms = ×{rows[-1]['inflight_max_over_p50'] or 0:.2f} p50 "
            f"(quiet window before: ×{rows[-1]['quiet_max_over_p50'] or 0:.2f})")
    return {"clients": clients, "batch": batch, "requests": len(records), "failed": len(failed),
            "failures": sorted({f[3] for f in failed})[:5], "p50_ms": p50 * 1e3,
            "p99_ms": float(np.percentile(base, 99) * 1e3) if base else None,
            "quiet_window_max_over_p50": [r["quiet_max_over_p50"] for r in rows if r["quiet_max_over_p50"]],
            "mode": rt.mode, "concurrency": concurrency_used, "throughput": throughput, "switches": rows}


def format_table(res: dict[str, Any]) -> str:
    """The human-readable summary `floatedge bench` prints."""
    here = Path.cwd().resolve()  # the bundle as a path from here when it is below here (docs/RESULTS.md shows this)
    bundle = os.path.relpath(res["bundle"]) if Path(res["bundle"]).resolve().is_relative_to(here) else res["bundle"]
    lines = [f"{res['backend']} · mode {res['describe']['mode']} ({res['describe']['mode_choice'].get('how')}) · "
             f"{bundle}", "",
             f"{'λ_n':>5} {'width':>5} {'batch':>5} {'p50 ms':>9} {'p99 ms':>9} {'img/s':>9} "
             f"{'plain p50':>10} {'ratio':>7}"]
    for r in res["latency"]:
        rt_ = r["runtime"]
        plain = f"{r['plain']['p50_ms']:10.3f} {r['ratio']:7.3f}" if "plain" in r else f"{'-':>10} {'-':>7}"
        lines.append(f"{r['lambda_n']:5g} {r['width']:5g} {r['batch']:5d} {rt_['p50_ms']:9.3f} {rt_['p99_ms']:9.3f} "
                     f"{rt_['throughput']:9.0f} {plain}")
    if res["modes"]:
        lines += ["", "in-graph vs materialised (p50 ms):"]
        for r in res["modes"]:
            lines.append(f"  width {r['width']:g} batch {r['batch']}: " +
                         ", ".join(f"{m} {r[m]['p50_ms']:.3f}" for m in ("in-graph", "materialised") if m in r))
    for r in res["overhead"]:
        lines.append(f"overhead over bare InferenceSession.run, width {r['width']:g} batch {r['batch']}: "
                     f"{100 * r['overhead']:+.2f}% (paired), {100 * r['overhead_of_medians']:+.2f}% (medians); "
                     f"of which NaN/Inf check {100 * r['finite_check']:+.2f}%")
    for r in res["width_ratio"]:
        lines.append(f"width {r['narrow']:g} / {r['wide']:g} at batch {r['batch']}: {r['ratio']:.3f}")
    sw = res.get("switch")
    if sw:
        lines += ["", f"switching under load: {sw['clients']} clients, batch {sw['batch']}, concurrency "
                      f"{sw.get('concurrency') or 'unbounded'}, {sw['requests']} requests, {sw['failed']} failed, "
                      f"p50 {sw['p50_ms']:.2f} ms, {sw.get('throughput', 0):.0f} img/s"]
        for s in sw["switches"]:
            lines.append(f"  {s['label']:24s} in effect {s['in_effect_ms']:7.1f} ms · "
                         f"{s['inflight_requests']:3d} in flight, slowest {s['inflight_max_ms'] or 0:6.2f} ms "
                         f"(×{s['inflight_max_over_p50'] or 0:.2f} p50; "
                         f"quiet window ×{s['quiet_max_over_p50'] or 0:.2f})")
    return "\n".join(lines)
