"""Issue 15, item 3: FLOAT as specified, FLOAT under the chosen dial, FLOAT trained for that dial, and OAT — one
training budget, one plot.

    python benchmarks/dial_vs_oat.py --set runs/gpu:0 --set runs/cpu5:1

Each `--set DIR:SEED` names a directory holding `float_s<seed>`, `floatmix_s<seed>` (`floatedge train --train-dial
mix`) and `oat_s<seed>`, trained on the same data and epochs (benchmarks/gpu_fullscale.py trains them on a GPU,
runs/cpu5/queue.sh the same recipe on the CPU); a curve whose run is missing is left out. The curves, per seed:

* FLOAT as specified: the `switch` dial (Eq. 5) at λ_th = 0 and 0.5;
* FLOAT under `mix` (oppoint.DEFAULT_DIAL), the same checkpoint, no retraining;
* FLOAT-mix: trained with `--train-dial mix`, under `mix`;
* OAT at the same λ.

CA and PGD-20 RA on 1000 test images at λ_n ∈ {0, 0.2, 0.5, …, 0.9, 1}; APGD-CE+T (pyautoattack custom) at both
ends and at λ_n = 0.7. Every figure is one `floatedge.train.evaluate.evaluate` piece of benchmarks/robustness.py's
`Bench` (what `floatedge eval` runs and `floatedge export` deploys), cached under the checkpoint's sha256 in
`--cache`; `--reuse` names other caches of the same pieces (read only), e.g. those a GPU filled. Writes the section
`dial-vs-oat` of docs/RESULTS.md and docs/results/dial_vs_oat.png; `--section` and `--title` name another, e.g. for issue
14's 10-epoch comparison:

    python benchmarks/dial_vs_oat.py --set runs/fullscale:0 --set runs/fullscale:1 --section fullscale-compare \
        --title "FLOAT vs OAT on all of CIFAR-10 for 10 epochs (issue 14, item 5)" --beside dial-vs-oat

Every section also tests the FLOAT paper's claim (FLOAT's CA and RA ≥ OAT's at every λ_n) on the seed means;
`--beside SECTION` adds a table of this section's figures next to an earlier section's (here: 10 epochs next to 5).

"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from _results import FIGURES, ROOT, shown, shown_args, update_section
from gpu_fullscale import epoch_seconds
from lambda_dial import CA_BAR, RA_BAR, pareto, plot
from robustness import Bench, end_keys

from floatedge.train.trainer import CHECKPOINT, TrainConfig, epochs_done, load_checkpoint

LAMBDAS = (0.0, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
APGD_AT = (0.0, 0.7, 1.0)
# label, run role, dial, λ_th: FLOAT as specified (switch), the same checkpoint under mix, FLOAT trained for mix
# (`--train-dial mix`) under mix, OAT
CURVES = (("FLOAT switch@0", "float", "switch", 0.0), ("FLOAT switch@0.5", "float", "switch", 0.5),
          ("FLOAT mix", "float", "mix", 0.0), ("FLOAT-mix mix", "floatmix", "mix", 0.0), ("OAT", "oat", "mix", 0.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="sets", action="append", default=None,
                    help="DIR:SEED, repeatable [default: runs/gpu:0]")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--cache", default=str(ROOT / "runs" / "robustness" / "dial_vs_oat.json"))
    ap.add_argument("--reuse", default="", help="comma-separated caches of the same pieces to read from")
    ap.add_argument("--data", default=None, help="read the test data from here, not the runs' recorded path")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--apgd-in", default=None, help="comma-separated run sets that get APGD-CE+T (5–10 min a piece on "
                                                     "this CPU), each a directory name (every seed) or NAME:SEED "
                                                     "[default: every set]")
    ap.add_argument("--section", default="dial-vs-oat",
                    help="the RESULTS section to write (and docs/results/<section>.png) [default: dial-vs-oat]")
    ap.add_argument("--title", default="FLOAT's dial against OAT on one budget (issue 15)")
    ap.add_argument("--curves", default=None,
                    help="comma-separated curve labels to draw [default: all: " + ", ".join(c[0] for c in CURVES) + "]")
    ap.add_argument("--beside", default=None, metavar="SECTION",
                    help="also tabulate this section's seed means next to SECTION's (a section this script wrote "
                         "earlier, read from docs/results/<section>.json), e.g. dial-vs-oat")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    wanted = args.curves.split(",") if args.curves else [c[0] for c in CURVES]
    if unknown := set(wanted) - {c[0] for c in CURVES}:
        sys.exit(f"--curves: no curve named {', '.join(sorted(unknown))}")
    other = None
    if args.beside:
        if not (f := FIGURES / f"{figure_stem(args.beside)}.json").exists():
            sys.exit(f"--beside: no section {args.beside} written by this script ({shown(f)} missing)")
        other = json.loads(f.read_text())
    torch.set_num_threads(args.threads)
    sets = [(Path(v.rsplit(":", 1)[0]), int(v.rsplit(":", 1)[1])) for v in (args.sets or [f"{ROOT / 'runs' / 'gpu'}:0"])]
    cache = Path(args.cache)

    def apgd(runs_dir: Path, seed: int) -> bool:
        return args.apgd_in is None or bool({runs_dir.name, f"{runs_dir.name}:{seed}"} & set(args.apgd_in.split(",")))

    reused = {}
    for f in filter(None, args.reuse.split(",")):
        reused |= end_keys(json.loads(Path(f).read_text()))
    results: dict = {}
    timing: dict = {}
    for runs_dir, seed in sets:
        runs = {role: runs_dir / f"{role}_s{seed}" for role in ("float", "floatmix", "oat")}
        runs = {role: run for role, run in runs.items() if (run / CHECKPOINT).exists()}
        for role, run in list(runs.items()):  # a run still training (its schedule not finished) is left out
            if epochs_done(run) < TrainConfig.from_dict(load_checkpoint(run)["config"]).epochs:
                print(f"leaving out {run}: epoch {epochs_done(run)} of its schedule")
                del runs[role]
        if "float" not in runs:
            sys.exit(f"{runs_dir / f'float_s{seed}'}: no run there ({CHECKPOINT} missing)")
        for run in runs.values():
            timing[shown(run)] = epoch_seconds(run)
        strong = APGD_AT if apgd(runs_dir, seed) else ()  # the λ_n that get APGD-CE+T in this set
        for label, role, dial, th in CURVES:
            if role not in runs or label not in wanted:
                continue
            bench = Bench({"float" if role == "floatmix" else role: runs[role]}, args.limit, 0,
                          cache, set(), args.device, args.data, dial)
            bench.data = {**reused, **bench.data}
            name = "float" if role == "floatmix" else role
            for lam in LAMBDAS:
                bench.want(name, lam, th, "pgd20")
            for lam in strong:
                bench.want(name, lam, th, "apgd-ce-t")
            bench.compute()
            rows = []
            for lam in LAMBDAS:
                p = bench.get(name, lam, th, "pgd20")
                a = bench.get(name, lam, th, "apgd-ce-t") if lam in strong else None
                rows.append({"lambda_n": lam, "dial": dial if role != "oat" else "oat", "clean_acc": p["clean"],
                             "pgd20_acc": p["acc"], "apgd": None if a is None else 100 * a["acc"]})
            for r, u in zip(rows, pareto(rows), strict=True):
                r["pareto_useful"] = u
            results[f"{label} · {runs_dir.name} s{seed}"] = rows
    meta_run = sets[0][0] / f"float_s{sets[0][1]}"
    cfg = json.loads((meta_run / "config.json").read_text())["config"]
    epochs = timing[shown(meta_run)]["epochs"]
    seeds = ", ".join(str(seed) for _, seed in sets)
    stem = figure_stem(args.section)
    png = plot(results, FIGURES / f"{stem}.png" if not args.no_write else cache.with_suffix(".png"),
               f"ResNet-20 on all of CIFAR-10, {epochs} epochs, seed(s) {seeds}\nCA vs PGD-20 RA "
               f"({args.limit} test images; points labelled by λ_n)")
    body = section(results, timing, args, cfg, epochs, png, sets)
    if other is not None:
        body += beside(results, epochs, other, args.beside)
    if not args.no_write:
        update_section(args.section, body)
        (FIGURES / f"{stem}.json").write_text(json.dumps({"curves": results, "timing": timing}, indent=1))
    print(body)


def figure_stem(section: str) -> str:
    """docs/results/<stem>.png and .json of a RESULTS section."""
    return section.replace("-", "_")


def trained_where(sets: list) -> str:
    """Where each run set was trained, from its directory: runs/gpu by benchmarks/gpu_fullscale.py on a lent GPU, any
    other on this CPU in fp32."""
    return " ".join(f"`{shown(d)}` trained on one H200 (`benchmarks/gpu_fullscale.py`, bf16 autocast, four runs sharing "
                    "the GPU)." if d.name == "gpu" else f"`{shown(d)}` trained on this CPU in fp32 (same recipe)."
                    for d in dict.fromkeys(d for d, _ in sets))


def lams(xs) -> str:
    """A list of λ_n for a sentence: "0.6, 0.7" or "none"."""
    return ", ".join(f"{x:g}" for x in xs) or "none"


def by_curve(results: dict) -> dict[str, list[list[dict]]]:
    """Group `results` ("<curve> · <set> s<seed>" → rows) by curve: curve → one row list per seed."""
    out: dict[str, list[list[dict]]] = {}
    for label, rows in results.items():
        out.setdefault(label.split(" · ")[0], []).append(rows)
    return out


def mean_point(runs: list[list[dict]], lam: float) -> dict:
    """CA, PGD-20 RA and APGD RA (None unless every seed has it) in %, averaged over the seeds at λ_n = `lam`."""
    pts = [next(r for r in rows if r["lambda_n"] == lam) for rows in runs]
    apgd = [p["apgd"] for p in pts]
    return {"ca": sum(100 * p["clean_acc"] for p in pts) / len(pts),
            "pgd20": sum(100 * p["pgd20_acc"] for p in pts) / len(pts),
            "apgd": sum(apgd) / len(apgd) if all(a is not None for a in apgd) else None}


def across_seeds(results: dict) -> str:
    """CA / PGD-20 RA (APGD) per curve, mean over the seeds that have it, ± half the seed-to-seed range; only curves
    that two or more run sets have. Empty when none has."""
    grouped = {c: runs for c, runs in by_curve(results).items() if len(runs) > 1}
    if not grouped:
        return ""

    def cell(runs: list[list[dict]], lam: float) -> str:
        pts = [next(r for r in rows if r["lambda_n"] == lam) for rows in runs]
        def ms(vals: list[float]) -> str:
            return f"{sum(vals) / len(vals):.1f} ± {(max(vals) - min(vals)) / 2:.1f}"
        apgd = [p["apgd"] for p in pts]
        tail = f" ({ms(apgd)})" if all(a is not None for a in apgd) else ""
        return f"{ms([100 * p['clean_acc'] for p in pts])} / {ms([100 * p['pgd20_acc'] for p in pts])}{tail}"

    head = "| λ_n | " + " | ".join(f"{c} ({len(runs)} seeds)" for c, runs in grouped.items()) + " |"
    body = "\n".join(f"| {lam:g} | " + " | ".join(cell(runs, lam) for runs in grouped.values()) + " |" for lam in LAMBDAS)
    return ("\nSeeds together: CA / PGD-20 RA % (APGD-CE+T), mean ± half the seed-to-seed range:\n\n"
            f"{head}\n|---{'|---' * len(grouped)}|\n{body}\n")


def verdict(results: dict) -> str:
    """The FLOAT paper's claim, tested: FLOAT's CA and RA equal to or above OAT's at every λ_n (paper, Table 2 and
    Fig. 4). Seed means; for each FLOAT curve, the λ_n where it holds under PGD-20 and, where measured, APGD-CE+T,
    and the gap at the robust end. Empty without an OAT curve."""
    grouped = by_curve(results)
    if "OAT" not in grouped:
        return ""
    oat = {lam: mean_point(grouped["OAT"], lam) for lam in LAMBDAS}

    def at_least(p: dict, o: dict, ra: str) -> bool:  # CA and RA (by attack `ra`) both ≥ OAT's
        return p["ca"] >= o["ca"] and p[ra] >= o[ra]

    lines = []
    for curve in (c for c in grouped if c.startswith("FLOAT")):
        pts = {lam: mean_point(grouped[curve], lam) for lam in LAMBDAS}
        held = [lam for lam in LAMBDAS if at_least(pts[lam], oat[lam], "pgd20")]
        strong = [lam for lam in LAMBDAS if pts[lam]["apgd"] is not None and oat[lam]["apgd"] is not None]
        held_a = [lam for lam in strong if at_least(pts[lam], oat[lam], "apgd")]
        end = pts[1.0]
        d_apgd = f", APGD RA {end['apgd'] - oat[1.0]['apgd']:+.1f}" if 1.0 in strong else ""
        with_apgd = (f"with APGD-CE+T at {len(held_a)} of {len(strong)} ({lams(held_a)})"
                     if strong else "APGD-CE+T not measured on every seed")
        lines.append(f"- {curve} vs OAT: CA and PGD-20 RA both ≥ OAT's at {len(held)} of {len(LAMBDAS)} λ_n"
                     f" ({lams(held)}); {with_apgd}. At λ_n = 1: CA "
                     f"{end['ca'] - oat[1.0]['ca']:+.1f}, PGD-20 RA {end['pgd20'] - oat[1.0]['pgd20']:+.1f}{d_apgd}. "
                     f"**The claim {'holds' if len(held) == len(LAMBDAS) and len(held_a) == len(strong) else 'does not hold'}.**")
    return ("\nThe FLOAT paper's claim — FLOAT's CA and RA equal to or above OAT's at every λ_n — tested on the seed "
            "means (differences in points, FLOAT − OAT):\n\n" + "\n".join(lines) + "\n")


def beside(results: dict, epochs: int, other: dict, other_name: str) -> str:
    """This section's seed means next to another section's (`other`: the docs/results JSON a run of this script wrote,
    e.g. the 5-epoch `dial-vs-oat`), at the λ_n that carry APGD-CE+T, for the curves both have."""
    mine, theirs = by_curve(results), by_curve(other["curves"])
    other_epochs = next(iter(other["timing"].values()))["epochs"]
    def fmt(p: dict) -> str:
        return f"{p['ca']:.1f} / {p['pgd20']:.1f}" + (f" ({p['apgd']:.1f})" if p["apgd"] is not None else "")
    rows = []
    for curve in (c for c in mine if c in theirs):
        for lam in APGD_AT:
            a, b = mean_point(theirs[curve], lam), mean_point(mine[curve], lam)
            d = f"{b['ca'] - a['ca']:+.1f} / {b['pgd20'] - a['pgd20']:+.1f}" + (
                f" ({b['apgd'] - a['apgd']:+.1f})" if a["apgd"] is not None and b["apgd"] is not None else "")
            rows.append(f"| {curve} | {lam:g} | {fmt(a)} ({len(theirs[curve])} seeds) | {fmt(b)} ({len(mine[curve])} "
                        f"seeds) | {d} |")
    return (f"\nNext to section `{other_name}` ({other_epochs} epochs): CA / PGD-20 RA % (APGD-CE+T), seed means:\n\n"
            f"| curve | λ_n | `{other_name}`, {other_epochs} epochs | here, {epochs} epochs | change |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def section(results: dict, timing: dict, args, cfg: dict, epochs: int, png: Path, sets: list) -> str:
    labels = list(results)
    head = "| λ_n | " + " | ".join(labels) + " |\n|---" + "|---" * len(labels) + "|"
    lines = [head]
    for lam in LAMBDAS:
        cells = []
        for label in labels:
            r = next(r for r in results[label] if r["lambda_n"] == lam)
            cell = f"{100 * r['clean_acc']:.1f} / {100 * r['pgd20_acc']:.1f}" + (
                f" ({r['apgd']:.1f})" if r["apgd"] is not None else "")
            cells.append(f"**{cell}**" if r["pareto_useful"] else cell)
        lines.append(f"| {lam:g} | " + " | ".join(cells) + " |")
    seeds_table = across_seeds(results)
    counts = "\n".join(f"- {label}: {len(useful)} Pareto-useful interior points (λ_n = {lams(useful)})"
                       for label, rows in results.items()
                       for useful in [[r["lambda_n"] for r in rows if r["pareto_useful"]]])
    trows = "\n".join(f"| {name} | {t['epochs']} | {t['s_per_epoch']:.0f} | {t['images_per_s']:.0f} |"
                      for name, t in timing.items())
    return f"""## {args.title}

Written by `python benchmarks/dial_vs_oat.py {shown_args(sys.argv[1:])}`.
Runs: {', '.join(f'`{shown(d)}` (seed {seed})' for d, seed in sets)} — ResNet-20, all 50,000 CIFAR-10 training
images, {epochs} epochs (cosine schedule over {cfg['epochs']}), batch {cfg['batch_size']}, PGD-{cfg['pgd_steps']}
training attack. {trained_where(sets)} Evaluation here:
CA / PGD-20 RA % on {args.limit} test images (seeded subset 0), ε = 8/255; in brackets APGD-CE+T (pyautoattack
custom: APGD-CE and APGD-T) at λ_n = 0, 0.7 and 1{f" (run sets {args.apgd_in} only)" if args.apgd_in else ""}.
Curves: FLOAT switch@λ_th = FLOAT as specified (Eq. 5);
FLOAT mix = the same checkpoint under the `mix` dial (no retraining); FLOAT-mix mix = FLOAT trained with
`--train-dial mix`, under `mix`; OAT. **Bold** = Pareto-useful by issue 15's bar (interior, ≥ {CA_BAR:g}
points CA above its λ_n = 1, ≥ {RA_BAR:g} points RA above its λ_n = 0, dominated by no point of its own curve).

{chr(10).join(lines)}

{counts}
{seeds_table}{verdict(results)}
Plot: `{shown(png)}`.

Training time per epoch (median over epochs 2–{epochs}; on the GPU four runs shared it, on the CPU other
benchmarks did — throughputs under sharing, not alone):

| run | epochs | s / epoch | images / s |
|---|---|---|---|
{trows}
"""


if __name__ == "__main__":
    main()
