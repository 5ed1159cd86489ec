"""Issue 14: is FLOAT's AutoAttack gap gradient masking, and is every operating point's RA real?

    python benchmarks/robustness.py                         # runs/fullscale/{float,pgdat,oat}_s0, 500 test images
    python benchmarks/robustness.py --skip autoattack       # everything but the 25–45 min pieces first
    python benchmarks/robustness.py --float runs/tiny_float --pgdat runs/tiny_pgdat --quick   # `--arch tiny` runs

Three tables, written to the section `robustness` of docs/RESULTS.md:

1. the control at equal budget: PGD-20 and AutoAttack (standard) for FLOAT at λ_n = 1 and 0 and for PGD-AT; the
   gap PGD-20 − AA per model and FLOAT's excess over PGD-AT's at λ_n = 1 (> 2 points: masking until shown
   otherwise);
2. stronger and different attacks on FLOAT at λ_n = 1 and 0 (PGD-AT beside it as the control): PGD-20, PGD-100×5 on
   CE and on DLR, transfer from PGD-AT (PGD-20 and PGD-100 made on it), noise-free gradients, APGD-CE+T, AutoAttack;
   the lowest is the RA;
3. APGD-CE+T (and PGD-20) at every calibrated point of every run (FLOAT: λ_n ∈ {0, 0.2, 0.7, 1} × λ_th ∈ {0, 0.5};
   OAT: λ_n ∈ {0, 0.2, 0.7, 1}; PGD-AT: its one point), with the RA each point's table row reports (`robust_of`).

Every figure is one `floatedge.train.evaluate.evaluate` call — what `floatedge eval` runs and `floatedge export`
puts in a bundle — on one (run, point, attack) piece, cached in runs/robustness/cache.json under the run's checkpoint
sha256, so an interrupted benchmark continues where it stopped, a piece is computed once, and a run that trains
on (a new checkpoint) is measured again rather than mixed with its older self.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch
from _results import FIGURES, ROOT, machine, shown, shown_args, update_section
from tqdm import tqdm

from floatedge.bundle import robust_of, sha256_file
from floatedge.fsutil import atomic_write_json
from floatedge.oppoint import DEFAULT_DIAL, DIALS, PAPER_LAMBDA_THS, PAPER_LAMBDAS, OperatingPoint, get_dial
from floatedge.train.evaluate import evaluate
from floatedge.train.trainer import CHECKPOINT, TrainConfig, epochs_done, load_checkpoint

FULL = ROOT / "runs" / "fullscale"
CACHE = ROOT / "runs" / "robustness" / "cache.json"
MIX_INTERIOR = (0.5, 0.6, 0.8, 0.9)  # where the mix dial's Pareto-useful points lie (RESULTS "λ_n as a dial")
MASKING_BAR = 0.02  # FLOAT's AA-vs-PGD-20 gap may exceed PGD-AT's by at most this much (issue 14)
STRONG = ("pgd20", "pgd100x5-ce", "pgd100x5-dlr", "transfer-pgd20", "transfer-pgd100", "noisefree-pgd100x5",
          "apgd-ce-t", "autoattack")
BLACK_BOX = ("transfer-pgd20", "transfer-pgd100", "noisefree-pgd100x5")  # beating the white-box ones = masking's mark


def end_keys(data: dict) -> dict:
    """Pieces cached by an earlier version under a mixing dial's name at λ_n = 0 or 1, under the dial-free key that
    point now has (both ends are one function under every dial)."""
    return {re.sub(r"\|λn (0|1)\|λth 0\|dial [\w-]+\|", r"|λn \1|λth 0|", k): v for k, v in data.items()}


class Bench:
    """The runs, the images, and the cache of pieces: `acc(run, λ_n, λ_th, attack)` computes a piece once."""

    def __init__(self, runs: dict[str, Path], limit: int, seed: int, cache: Path, skip: set[str],
                 device: str = "cpu", data: str | None = None, dial: str = DEFAULT_DIAL,
                 aa_limit: int | None = None) -> None:
        self.runs, self.limit, self.seed, self.path, self.skip = runs, limit, seed, cache, skip
        self.aa_limit = aa_limit or limit  # AutoAttack standard (and table 1's PGD-20 beside it) on this many images
        self.device, self.dataset, self.dial = device, data, get_dial(dial)
        # the calibrated λ_n: FLOAT's paper grid, and under a mixing dial also the upper half where its interior lies
        self.lambdas = PAPER_LAMBDAS if not self.dial.mixes else tuple(sorted({*PAPER_LAMBDAS, *MIX_INTERIOR}))
        self.sha = {name: sha256_file(run / CHECKPOINT) for name, run in runs.items()}
        self.cfg = {name: TrainConfig.from_dict(load_checkpoint(run)["config"]) for name, run in runs.items()}
        self.data = end_keys(json.loads(cache.read_text())) if cache.exists() else {}
        self.todo: list[tuple] = []
        self.bar: tqdm | None = None

    def n_for(self, attack: str) -> int:
        return self.aa_limit if attack == "autoattack" else self.limit

    def key(self, name: str, lam: float, th: float, attack: str, n: int | None = None) -> str:
        src = f"|src {self.sha['pgdat'][:16]}" if attack.startswith("transfer") else ""
        # FLOAT's interior points under a mixing dial carry its name; switch points keep the keys they always had, and
        # so do the ends λ_n = 0 and 1, which are the same function under every dial (measured once for all)
        interior = 0.0 < lam < 1.0
        dial = (f"|dial {self.dial.name}" if self.dial.mixes and interior and self.cfg[name].method in ("float", "floats")
                else "")
        return (f"{name} {self.sha[name][:16]}|λn {lam:g}|λth {th:g}{dial}|{attack}{src}|n {n or self.n_for(attack)}"
                f"|seed {self.seed}")

    def point(self, name: str, lam: float, th: float) -> tuple[float, float]:
        """The point's name in this model's terms: PGD-AT has one point (reported as λ_n 0), OAT and a mixing dial no
        λ_th."""
        method = self.cfg[name].method
        no_th = method in ("oat", "oats") or self.dial.mixes or lam in (0.0, 1.0)  # the ends: one function for all λ_th
        return (0.0, 0.0) if method in ("pgdat", "standard") else (lam, 0.0 if no_th else th)

    def get(self, name: str, lam: float, th: float, attack: str, n: int | None = None) -> dict | None:
        """A computed piece (on `n` images, default `n_for(attack)`), or None when it is not computed (yet, or
        skipped)."""
        if name not in self.runs or (attack.startswith("transfer") and "pgdat" not in self.runs):
            return None
        return self.data.get(self.key(name, *self.point(name, lam, th), attack, n))

    def want(self, name: str, lam: float, th: float, attack: str, n: int | None = None) -> None:
        if name in self.runs and attack not in self.skip and not (attack.startswith("transfer") and "pgdat" not in self.runs):
            item = (name, *self.point(name, lam, th), attack, n or self.n_for(attack))
            if self.key(*item) not in self.data and item not in self.todo:
                self.todo.append(item)

    def compute(self) -> None:
        """Every wanted piece not yet in the cache, cheapest attacks first; the cache is written after each."""
        order = {a: i for i, a in enumerate(("pgd20", "transfer-pgd20", "transfer-pgd100", "pgd100x5-dlr", "pgd100x5-ce",
                                             "noisefree-pgd100x5", "apgd-ce-t", "autoattack"))}
        self.todo.sort(key=lambda it: (order.get(it[3], 99), it[0], -it[1]))
        with tqdm(total=len(self.todo), desc="pieces", unit="piece", dynamic_ncols=True) as bar:
            for name, lam, th, attack, n in self.todo:
                bar.set_description(f"{attack} on {name} at λn={lam:g} λth={th:g}")
                t0 = time.perf_counter()
                res = evaluate(self.runs[name], lambdas=(lam,), lambda_ths=(th,), widths=(1.0,), attacks=[attack],
                               limit=n, seed=self.seed, progress=False, device=self.device,
                               data=self.dataset, dial=self.dial.name,
                               transfer_from=self.runs.get("pgdat") if attack.startswith("transfer") else None)
                if res["checkpoint_sha256"] != self.sha[name]:
                    sys.exit(f"{self.runs[name]}: the checkpoint changed during the benchmark (still training?)")
                (row,) = res["rows"]
                self.data[self.key(name, lam, th, attack, n)] = {
                    "acc": row[f"{attack}_acc"], "clean": row["clean_acc"], "seconds": time.perf_counter() - t0,
                    "n_images": res["n_images"], "attack": res["attacks"][attack], "epochs": res["epochs"],
                    "device": self.device}
                atomic_write_json(self.path, self.data)
                bar.update(1)
                tqdm.write(f"{attack:20s} {name:6s} λn={lam:g} λth={th:g}: {100 * row[f'{attack}_acc']:.2f}% "
                           f"(clean {100 * row['clean_acc']:.2f}%), {time.perf_counter() - t0:.0f} s")
        self.todo.clear()


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def pts(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:+.2f}"


def md_table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows])


def calibrated(bench: Bench, name: str) -> list[tuple[float, float]]:
    """A run's calibrated points as `floatedge eval` makes them, each distinct function once (`effective`)."""
    if name not in bench.runs:
        return []
    seen, out = set(), []
    for th in PAPER_LAMBDA_THS:
        for lam in bench.lambdas:
            p = bench.point(name, lam, th)
            key = OperatingPoint(p[0], 1.0, p[1], bench.dial.name).effective()
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def plan(bench: Bench) -> None:
    for name in ("float", "pgdat"):  # OAT gets PGD-20 and APGD-CE+T at its points (AutoAttack: 25–45 min a point)
        for lam in (1.0, 0.0):
            for a in ("pgd20", "autoattack", "apgd-ce-t"):
                bench.want(name, lam, 0.0, a)
            bench.want(name, lam, 0.0, "pgd20", bench.aa_limit)  # table 1: PGD-20 on AutoAttack's images
    for lam in (1.0, 0.0):
        for a in STRONG:
            bench.want("float", lam, 0.0, a)
    for a in ("pgd100x5-ce", "pgd100x5-dlr"):
        bench.want("pgdat", 0.0, 0.0, a)
    for name in ("float", "oat", "pgdat"):
        for lam, th in calibrated(bench, name):
            for a in ("pgd20", "apgd-ce-t"):
                bench.want(name, lam, th, a)


def control_table(bench: Bench) -> tuple[str, list[str]]:
    rows, gaps = [], {}
    for name, label, lams in (("pgdat", "PGD-AT", (1.0,)), ("float", "FLOAT", (1.0, 0.0))):  # OAT: table 3
        for lam in lams if name in bench.runs else ():
            p20, aa = bench.get(name, lam, 0.0, "pgd20", bench.aa_limit), bench.get(name, lam, 0.0, "autoattack")
            gap = p20["acc"] - aa["acc"] if p20 and aa else None
            gaps[(name, lam)] = gap
            where = "its one point" if name == "pgdat" else f"λ_n = {lam:g}"
            rows.append([label, where, pct((p20 or aa or {}).get("clean")), pct(p20 and p20["acc"]),
                         pct(aa and aa["acc"]), pts(gap)])
    table = md_table(["model", "point", "CA %", "PGD-20 RA %", "AutoAttack RA %", "gap PGD-20 − AA (points)"], rows)
    notes = []
    f1, c = gaps.get(("float", 1.0)), gaps.get(("pgdat", 1.0))
    if f1 is not None and c is not None:
        excess = f1 - c
        verdict = ("exceeds the 2-point bar: masking until shown otherwise" if excess > MASKING_BAR
                   else "within the 2-point bar: no sign of masking from this control")
        notes.append(f"- FLOAT's gap at λ_n = 1 exceeds PGD-AT's by **{100 * excess:+.2f} points** — {verdict}.")
    f0 = gaps.get(("float", 0.0))
    if f1 is not None and f0 is not None:
        notes.append(f"- FLOAT's gap is {100 * f0:.2f} points at λ_n = 0 and {100 * f1:.2f} at λ_n = 1; where RA is near 0 "
                     "a stronger attack has nothing left to remove, so the comparison that speaks to the noise is the "
                     "one with PGD-AT above.")
    return table, notes


def strong_table(bench: Bench) -> tuple[str, list[str]]:
    cols = [("float", 1.0, "FLOAT λ_n = 1"), ("float", 0.0, "FLOAT λ_n = 0"), ("pgdat", 0.0, "PGD-AT (control)")]
    cols = [c for c in cols if c[0] in bench.runs]
    rows, lowest = [], {}
    for a in STRONG:
        cells = []
        apart = a == "autoattack" and bench.aa_limit != bench.limit  # on other images: shown, not in the minimum
        for name, lam, _ in cols:
            got = bench.get(name, lam, 0.0, a)
            cells.append(pct(got and got["acc"]) + (f" ({bench.aa_limit} images)" if got and apart else ""))
            if got and not apart:
                row = lowest.setdefault((name, lam), {})
                row[f"{a}_acc"] = got["acc"]
        rows.append([a, *cells])
    ra = [robust_of(lowest.get((name, lam), {})) for name, lam, _ in cols]
    rows.append(["**RA (the lowest)**", *(f"**{pct(acc)}** {att or ''}" for acc, att in ra)])
    notes = []
    for (name, lam, label), _ in zip(cols, ra, strict=True):
        measured = lowest.get((name, lam), {})
        white = [measured[f"{a}_acc"] for a in STRONG if a not in BLACK_BOX and f"{a}_acc" in measured]
        black = {a: measured[f"{a}_acc"] for a in BLACK_BOX if f"{a}_acc" in measured}
        if white and black:
            a, v = min(black.items(), key=lambda kv: kv[1])
            if v < min(white):
                notes.append(f"- {label}: {a} ({pct(v)}%) beats every white-box attack ({pct(min(white))}%): "
                             "the model's own gradients mislead — a sign of gradient masking.")
            else:
                notes.append(f"- {label}: no transfer or noise-free-gradient attack beats the white-box ones "
                             f"(best of them {a} {pct(v)}% vs {pct(min(white))}%).")
        p20 = measured.get("pgd20_acc")
        if p20 is not None and len(measured) > 1:
            acc, att = robust_of(measured)
            notes.append(f"- {label}: the lowest ({att}, {pct(acc)}%) is {100 * (p20 - acc):.2f} points under PGD-20.")
    return md_table(["attack", *(c[2] for c in cols)], rows), notes


def point_table(bench: Bench) -> str:
    rows = []
    for name, label in (("float", "FLOAT"), ("oat", "OAT"), ("pgdat", "PGD-AT")):
        for lam, th in calibrated(bench, name):
            same = [a for a in STRONG if bench.n_for(a) == bench.limit]  # RA from pieces on the same images only
            measured = {f"{a}_acc": g["acc"] for a in same if (g := bench.get(name, lam, th, a))}
            clean = next((g["clean"] for a in STRONG if (g := bench.get(name, lam, th, a))), None)
            acc, att = robust_of(measured)
            p = OperatingPoint(lam, 1.0, th, bench.dial.name if name == "float" else None)
            rows.append([label, f"{lam:g}", f"{th:g}" if name == "float" else "—", f"{p.noise_scale:.2f}" if name == "float"
                         else "—", pct(clean), pct(measured.get("pgd20_acc")), pct(measured.get("apgd-ce-t_acc")),
                         f"{pct(acc)} {att or ''}", pts(None if acc is None or "pgd20_acc" not in measured
                                                        else acc - measured["pgd20_acc"])])
    return md_table(["model", "λ_n", "λ_th", "s", "CA %", "PGD-20 %", "APGD-CE+T %", "RA % reported (attack)",
                     "RA − PGD-20"], rows)


def bundle_table(path: Path) -> tuple[str, str]:
    """Table 4: an exported bundle's operating-point table as the server and governor read it (`Bundle.table`, which
    fills `robust_acc`/`robust_attack` through `robust_of`), and a one-line verdict on the issue's bar."""
    from floatedge.bundle import open_bundle

    b = open_bundle(path)
    rows, ok = [], True
    for r in b.table():
        apgd = r.get("apgd-ce-t_acc")
        ok &= apgd is not None and r.get("robust_attack") is not None
        rows.append([f"{r['lambda_n']:g}", f"{r['width']:g}", pct(r.get("clean_acc")), pct(r.get("pgd20_acc")),
                     pct(apgd), f"{pct(r['robust_acc'])} {r['robust_attack']}"])
    table = md_table(["λ_n", "width", "CA %", "PGD-20 %", "APGD-CE+T %", "RA the bundle reports (attack)"], rows)
    verdict = (f"Every one of the {len(rows)} rows carries an APGD-based figure and names the attack its RA comes from."
               if ok else "Some rows lack an APGD figure or a named attack.")
    return table, verdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--float", dest="float_run", default=str(FULL / "float_s0"))
    ap.add_argument("--pgdat", dest="pgdat_run", default=str(FULL / "pgdat_s0"))
    ap.add_argument("--oat", dest="oat_run", default=str(FULL / "oat_s0"), help="used when it is there and finished")
    ap.add_argument("--limit", type=int, default=None, help="test images (seeded subset) [default: 500; --quick: 16]")
    ap.add_argument("--aa-limit", type=int, default=None,
                    help="images for AutoAttack standard and table 1's PGD-20 beside it [default: --limit]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="16 images and no AutoAttack standard: a check in seconds")
    ap.add_argument("--skip", default="", help="comma-separated attacks not to run now (e.g. autoattack)")
    ap.add_argument("--dial", default=DEFAULT_DIAL, choices=list(DIALS),
                    help="the dial FLOAT's points are measured under (what `floatedge export` deploys by default)")
    ap.add_argument("--lambdas", default=None, help="comma-separated: the calibrated λ_n to measure now [default: "
                                                     "the paper's grid, plus 0.5–0.9 under a mixing dial]")
    ap.add_argument("--only", default="", help="comma-separated: run only these attacks now (the rest as --skip)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where the attacks run (the figures are the same "
                                                     "model's; a GPU only makes AutoAttack minutes instead of hours)")
    ap.add_argument("--data", default=None, help="read the test data from here, not the runs' recorded path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--write", action="store_true", help="write docs/RESULTS.md even below 500 images or with --quick")
    ap.add_argument("--bundle", default=None, help="an exported bundle whose table to show (table 4)")
    ap.add_argument("--unfinished", action="store_true", help="measure runs still short of their epochs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    limit = args.limit or (16 if args.quick else 500)
    skip = {a for a in args.skip.split(",") if a} | ({"autoattack"} if args.quick else set())
    if args.only:
        skip |= set(STRONG) - set(args.only.split(","))
    runs = {}
    for name, path in (("float", args.float_run), ("pgdat", args.pgdat_run), ("oat", args.oat_run)):
        p = Path(path)
        if not (p / CHECKPOINT).exists():
            if name != "oat":
                sys.exit(f"{p}: no finished run there ({CHECKPOINT} missing)")
            continue
        done, total = epochs_done(p), TrainConfig.from_dict(load_checkpoint(p)["config"]).epochs
        if done < total and not args.unfinished:
            if name == "oat":
                print(f"leaving out {p}: epoch {done} of {total}")
                continue
            sys.exit(f"{p}: epoch {done} of {total}, still training? (--unfinished measures it as it is)")
        runs[name] = p
    bench = Bench(runs, limit, args.seed, Path(args.cache), skip, args.device, args.data, args.dial,
                  args.aa_limit)
    if args.lambdas:
        bench.lambdas = tuple(float(v) for v in args.lambdas.split(","))
    plan(bench)
    t0 = time.perf_counter()
    print(f"{len(bench.todo)} pieces to compute ({len(bench.data)} in {args.cache}), {limit} images, "
          f"{torch.get_num_threads()} threads")
    bench.compute()
    wall = time.perf_counter() - t0
    control, notes1 = control_table(bench)
    strong, notes2 = strong_table(bench)
    points = point_table(bench)
    btable, bverdict = bundle_table(Path(args.bundle)) if args.bundle else ("", "")
    print(control, *notes1, "", strong, *notes2, "", points, "", btable, bverdict, sep="\n")
    if (limit < 500 or args.quick) and not args.write:
        print(f"\nnot written to docs/RESULTS.md ({limit} images{', --quick' if args.quick else ''}; --write to write)")
        return
    cfgs = bench.cfg
    scale = "; ".join(f"{name} {Path(runs[name]).name}: {cfgs[name].method} {cfgs[name].arch}, "
                      f"{cfgs[name].limit_train or 50000} training images, {epochs_done(runs[name])} epochs, seed "
                      f"{cfgs[name].seed}" for name in runs)
    ours = {k: v for k, v in bench.data.items()
            if any(k.startswith(f"{name} {sha[:16]}|") for name, sha in bench.sha.items())
            and (f"|n {limit}|" in k or f"|n {bench.aa_limit}|" in k)}
    spent = sum(v["seconds"] for v in ours.values())
    devices = {}
    for v in ours.values():
        devices[v.get("device", "cpu")] = devices.get(v.get("device", "cpu"), 0) + 1
    where = ", ".join(f"{n} on {'the CPU here' if d == 'cpu' else d + ' (a lent H200, --device ' + d + ')'}"
                      for d, n in sorted(devices.items()))
    images = f"{limit} test images" + (f" (AutoAttack standard and table 1: {bench.aa_limit})"
                                       if bench.aa_limit != limit else "")
    load = os.getloadavg()[0]
    body = f"""## Robustness under a stronger attacker (issue 14)

Written by `python benchmarks/robustness.py {shown_args(sys.argv[1:])}`.
Scale: {scale}. FLOAT's points under the `{bench.dial.name}` dial. Evaluation on {images} (seeded subset
{args.seed}), L∞ ε = 8/255. Pieces: {where}; this machine: {machine()} (2 vCPU, load average {load:.1f} at the end).
Compute: {spent / 60:.0f} min over all pieces ({wall / 60:.0f} min this invocation). Every figure is one
`floatedge eval` piece, cached under the run's checkpoint sha256; it evaluates the weights, α and recorded noise
draw `floatedge export` writes (the eval result records the checkpoint's sha256 and the export refuses an evaluation
of another checkpoint).
{'Not run (skipped): ' + ', '.join(sorted(skip)) + ' — — in their cells.' if skip else ''}

### 1. The control at equal budget: PGD-20 vs AutoAttack

{control}

{chr(10).join(notes1)}

### 2. Stronger and different attacks (ε = 8/255; noise-free: gradients at s = 0 with BN_A)

{strong}

{chr(10).join(notes2)}

### 3. Every calibrated point: the RA its table row reports

{points}
""" + (f"""
### 4. An exported bundle's table (`{shown(args.bundle)}`)

What `floatedge export --eval` wrote from `floatedge eval --attacks pgd20,apgd-ce-t` and what the server, the policies
and the governor read (`Bundle.table`; RA = the lowest measured attack, `bundle.robust_of`).

{btable}

{bverdict}
""" if args.bundle else "")
    update_section("robustness", body)
    atomic_write_json(FIGURES / "robustness.json", {"limit": limit, "runs": {k: str(v) for k, v in runs.items()},
                                                     "aa_limit": bench.aa_limit, "pieces": ours})
    print("wrote docs/RESULTS.md (section robustness) and docs/results/robustness.json")


if __name__ == "__main__":
    main()
