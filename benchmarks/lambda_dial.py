"""Is λ_n a dial? CA and PGD-20 RA of one trained FLOAT model at λ_n = 0, 0.1, …, 1 under each dial
(`floatedge.oppoint.DIALS`): FLOAT's switch (Eq. 5) at λ_th = 0 and 0.5, and BN interpolation (`mix`: t = s = λ_n)
with its variants (`mix-s1`: s = 1; `mix-s0`: s = 0). No retraining: every curve is the same checkpoint, evaluated by
`floatedge.train.evaluate.evaluate` (what `floatedge eval --dial` runs, and the export deploys). Marks the
Pareto-useful points by issue 15's bar and writes the `lambda-dial` section of docs/RESULTS.md and one CA–RA plot.

    python benchmarks/lambda_dial.py --run runs/fullscale/float_s0 --limit 1000

Points that compute the same function (same noise scale s, BN weight t, width) are measured once for every curve that
has them (λ_n = 0 and 1 under both switches and `mix`). Measured rows are kept in `--cache` as they come, so an
interrupted run continues where it stopped.

A FLOATS run is a dial per width: `--widths 1,0.75,0.5` measures every curve at each width (issue 15's bar counts
Pareto-useful points per width), and `--section` writes that to its own section and plot, e.g.

    python benchmarks/lambda_dial.py --run runs/floats5/floats_s0 --widths 1,0.75,0.5 --dials mix,switch@0 \
        --lambdas 0,0.2,0.5,0.6,0.7,0.8,0.9,1 --section lambda-dial-widths
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _results import FIGURES, ROOT, machine, shown, shown_args, update_section

from floatedge.fsutil import atomic_write_json
from floatedge.oppoint import DIALS, OperatingPoint, OperatingPointError, parse_lambdas, parse_widths
from floatedge.train.evaluate import curve_style, evaluate, place_labels, pyplot, save_png, set_span

GRID = tuple(round(0.1 * i, 1) for i in range(11))
# (label, dial, λ_th): the curves, in plot order
CURVES = (("switch λ_th=0", "switch", 0.0), ("switch λ_th=0.5", "switch", 0.5), ("mix (t = s = λ)", "mix", 0.0),
          ("mix-s1 (t = λ, s = 1)", "mix-s1", 0.0), ("mix-s0 (t = λ, s = 0)", "mix-s0", 0.0))
CA_BAR, RA_BAR = 3.0, 5.0  # issue 15: a useful point is ≥ 3 points CA above the robust end, ≥ 5 RA above the clean end
ATTACK = "pgd20"


def point_key(lam: float, width: float, th: float, dial: str) -> str:
    return json.dumps(OperatingPoint(lam, width, th, dial).effective())


def pareto(rows: list[dict]) -> list[bool]:
    """Issue 15's bar per point of one curve (its λ_n = 0 row is the clean end, λ_n = 1 the robust end): an
    intermediate point at least CA_BAR points of CA above the robust end and RA_BAR points of RA above the clean
    end, and dominated by no other point of the curve."""
    by_lam = {r["lambda_n"]: r for r in rows}
    clean, robust = by_lam[0.0], by_lam[1.0]
    out = []
    for r in rows:
        ca, ra = 100 * r["clean_acc"], 100 * r[f"{ATTACK}_acc"]
        dominated = any((100 * q["clean_acc"] >= ca and 100 * q[f"{ATTACK}_acc"] >= ra)
                        and (q["clean_acc"], q[f"{ATTACK}_acc"]) != (r["clean_acc"], r[f"{ATTACK}_acc"]) for q in rows)
        out.append(0.0 < r["lambda_n"] < 1.0 and not dominated and ca >= 100 * robust["clean_acc"] + CA_BAR
                   and ra >= 100 * clean[f"{ATTACK}_acc"] + RA_BAR)
    return out


def area(rows: list[dict], ref: tuple[float, float]) -> float:
    """Area (points², CA × RA) dominated by a curve's points above the reference corner `ref` (hypervolume): one
    figure for how much of the trade-off plane a dial reaches."""
    pts = sorted(((100 * r["clean_acc"], 100 * r[f"{ATTACK}_acc"]) for r in rows), reverse=True)
    total, best_ra = 0.0, ref[1]
    for ca, ra in pts:  # CA falling: each point adds the strip its RA rises above every point of higher CA
        if ra > best_ra:
            total += (ca - ref[0]) * (ra - best_ra)
            best_ra = ra
    return total


def measure(run: Path, curves, cache_path: Path, limit: int, data: str | None, widths: tuple[float, ...],
            device: str = "cpu") -> dict:
    """Every (width, curve, λ_n) not in the cache, one point per `evaluate` call, each written to the cache at once."""
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    meta = cache.pop("_meta", {})
    for width, (label, dial, th, lambdas) in ((w, c) for w in widths for c in curves):
        for lam in lambdas:
            key = point_key(lam, width, th, dial)
            if key in cache:
                continue
            res = evaluate(run, (lam,), (th,), (width,), attacks=[ATTACK], limit=limit, data=data, progress=False,
                           dial=dial, device=device)
            (r,) = res["rows"]
            cache[key] = {k: r[k] for k in ("noise_scale", "bn", "clean_acc", f"{ATTACK}_acc", "seconds")}
            meta = {k: res[k] for k in ("method", "arch", "dataset", "epochs", "n_images", "subset_seed", "eps", "attacks")}
            print(f"{label} λ_n={lam:g}: CA {100 * r['clean_acc']:.1f}, RA {100 * r[f'{ATTACK}_acc']:.1f} "
                  f"({r['seconds']:.0f} s)", flush=True)
            atomic_write_json(cache_path, {"_meta": meta, **cache})
    return {"_meta": meta, **cache}


def curves_from(cache: dict, curves, width: float) -> dict[str, list[dict]]:
    out = {}
    for label, dial, th, lambdas in curves:
        rows = []
        for lam in lambdas:
            r = cache[point_key(lam, width, th, dial)]
            rows.append({"lambda_n": lam, "dial": dial, "lambda_th": th, **r})
        for r, useful in zip(rows, pareto(rows), strict=True):
            r["pareto_useful"] = useful
        out[label] = rows
    return out


def plot(curves: dict[str, list[dict]], path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.4, 5.4), dpi=120)
    labels, xs_all, ys_all = [], [], []
    for i, (label, rows) in enumerate(curves.items()):
        xs = [100 * r["clean_acc"] for r in rows]
        ys = [100 * r[f"{ATTACK}_acc"] for r in rows]
        (line,) = ax.plot(xs, ys, "o-" if rows[0]["dial"] != "switch" else "o--", label=label, **curve_style(i))
        good = [(x, y) for x, y, r in zip(xs, ys, rows, strict=True) if r["pareto_useful"]]
        if good:
            ax.plot(*zip(*good, strict=True), "o", color=line.get_color(), markersize=curve_style(i)["markersize"])
        labels += [(x, y, f"{r['lambda_n']:g}", line.get_color()) for r, x, y in zip(rows, xs, ys, strict=True)]
        xs_all += xs
        ys_all += ys
    set_span(ax, xs_all, ys_all)
    ax.set_xlabel("clean accuracy CA (%)")
    ax.set_ylabel(f"robust accuracy RA under {ATTACK.upper()} (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
              title="filled: Pareto-useful", title_fontsize=7)
    fig.tight_layout()
    place_labels(ax, labels)
    return save_png(fig, path)


def table(curves: dict[str, list[dict]]) -> str:
    head = "| λ_n | " + " | ".join(curves) + " |"
    lines = [head, "|---" * (len(curves) + 1) + "|"]
    for lam in sorted({r["lambda_n"] for rows in curves.values() for r in rows}):
        cells = []
        for rows in curves.values():
            r = next((r for r in rows if r["lambda_n"] == lam), None)
            cell = "—" if r is None else f"{100 * r['clean_acc']:.1f} / {100 * r[f'{ATTACK}_acc']:.1f}"
            cells.append(f"**{cell}**" if r is not None and r["pareto_useful"] else cell)
        lines.append(f"| {lam:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", default=str(ROOT / "runs" / "fullscale" / "float_s0"))
    ap.add_argument("--limit", type=int, default=1000, help="test images (seeded subset)")
    ap.add_argument("--lambdas", default=",".join(f"{v:g}" for v in GRID))
    ap.add_argument("--alt-lambdas", default="0,0.2,0.4,0.6,0.8,1", help="λ_n of the alternative schedules (mix-s1, mix-s0)")
    ap.add_argument("--dials", default="mix,switch@0.5,switch@0,mix-s1,mix-s0",
                    help="the curves, measured in this order: dial names, switch@λ_th for one switch curve")
    ap.add_argument("--widths", default="1", help="comma-separated widths measured (FLOATS runs) [default: 1]")
    ap.add_argument("--section", default="lambda-dial", help="the RESULTS section written (and its plot's name)")
    ap.add_argument("--data", default=None, help="read the test data from here, not the run's recorded path")
    ap.add_argument("--cache", default=None, help="measured rows (default runs/lambda_dial_<run name>.json)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where the attacks run")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave docs/ alone")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    try:
        widths = parse_widths(args.widths)
    except OperatingPointError as exc:
        raise SystemExit(f"--widths: {args.widths!r} is not a comma-separated list of widths ({exc})") from None
    lambdas, alt = parse_lambdas(args.lambdas), parse_lambdas(args.alt_lambdas)
    if not {0.0, 1.0} <= set(lambdas) & set(alt):
        raise SystemExit("--lambdas and --alt-lambdas must include both ends, 0 and 1 (the bar is measured against them)")
    curves_spec = []
    for want in (d.strip() for d in args.dials.split(",") if d.strip()):
        found = [c for c in CURVES if want in (c[1], f"{c[1]}@{c[2]:g}")]
        if not found:
            raise SystemExit(f"unknown curve {want!r}; known: {', '.join(f'{d}@{t:g}' if d == 'switch' else d for _, d, t in CURVES)}")
        curves_spec += [(*c, alt if c[1] in ("mix-s1", "mix-s0") else lambdas) for c in found
                        if c not in [x[:3] for x in curves_spec]]
    measure_order = list(curves_spec)  # as asked; the table and plot go in CURVES' order
    curves_spec.sort(key=lambda c: CURVES.index(c[:3]))
    cache_path = Path(args.cache) if args.cache else ROOT / "runs" / f"lambda_dial_{run.name}_{args.limit}.json"
    t0 = time.perf_counter()
    cache = measure(run, measure_order, cache_path, args.limit, args.data, widths, args.device)
    minutes = (time.perf_counter() - t0) / 60
    meta = cache["_meta"]
    curves = {}
    for w in widths:  # one dial per width: the bar, the summary and the plot count each on its own
        for label, rows in curves_from(cache, curves_spec, w).items():
            curves[label if widths == (1.0,) else f"{label} · w {w:g}"] = rows
    ref = (min(100 * r["clean_acc"] for rows in curves.values() for r in rows),
           min(100 * r[f"{ATTACK}_acc"] for rows in curves.values() for r in rows))
    summary = {label: {"pareto_useful": [r["lambda_n"] for r in rows if r["pareto_useful"]], "area": area(rows, ref)}
               for label, rows in curves.items()}
    best = max(summary, key=lambda k: (len(summary[k]["pareto_useful"]), summary[k]["area"]))
    stem = f"lambda_dial_{run.name}" if args.section == "lambda-dial" else args.section.replace("-", "_")
    title = (f"{meta['method'].upper()} {meta['arch']} ({run.name}, {meta['epochs']} epochs) on {meta['dataset']}: "
             "one checkpoint under each dial\n"
             f"({meta['n_images']} test images; points labelled by λ_n)")
    png = plot(curves, (FIGURES if not args.no_write else ROOT / "runs") / f"{stem}.png", title)
    data = {"run": shown(run), "meta": meta, "curves": curves, "summary": summary, "best": best,
            "dials": {n: d.to_dict() for n, d in DIALS.items()}, "minutes": minutes}
    if not args.no_write:
        atomic_write_json(FIGURES / f"{stem}.json", data)
    seconds = sorted(r["seconds"] for rows in curves.values() for r in rows if r.get("seconds"))
    lines = "\n".join(f"- {label}: Pareto-useful at λ_n = {', '.join(f'{v:g}' for v in s['pareto_useful']) or 'none'} "
                      f"({len(s['pareto_useful'])}); area above the common corner {s['area']:.0f} points²"
                      for label, s in summary.items())
    per_width = "" if widths == (1.0,) else f" at widths {', '.join(f'{w:g}' for w in widths)} (a dial per width)"
    body = f"""## λ_n as a dial: {meta['method'].upper()}'s switch vs BN interpolation, one checkpoint{per_width} (issue 15)

Written by `benchmarks/lambda_dial.py` (`python benchmarks/lambda_dial.py {shown_args(sys.argv[1:])}`).
Model: `{shown(run)}`, {meta['method'].upper()} {meta['arch']} on {meta['dataset']}, {meta['epochs']} epochs; no retraining — every
curve is this checkpoint under another dial (`floatedge.oppoint.DIALS`), measured by `floatedge eval --dial`'s
code, which is what `floatedge export --dial` deploys. CA and {ATTACK.upper()} RA (ε = {meta['eps'] * 255:.3g}/255) on
{meta['n_images']} test images (seeded subset {meta['subset_seed']}). Machine: {machine()}, 2 vCPU shared with a
training queue; {minutes:.0f} min for the points not measured before (median {seconds[len(seconds) // 2]:.0f} s per point).

CA / RA % per λ_n; **bold** = Pareto-useful by the issue's bar (an intermediate point ≥ {CA_BAR:g} points of CA above the
robust end λ_n = 1, ≥ {RA_BAR:g} points of RA above the clean end λ_n = 0, dominated by no other point of its curve):

{table(curves)}

{lines}

Plot: `{shown(png)}`. Most Pareto-useful points (then the largest area): **{best}**.
"""
    if not args.no_write:
        update_section(args.section, body)
    print(body)


if __name__ == "__main__":
    main()
