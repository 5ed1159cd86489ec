"""`floatedge compare`: FLOAT vs OAT vs PGD-AT (and FLOATS vs OATS) on the same data, architecture, epoch
budget and attacks, measured in one run — the head-to-head behind the FLOAT paper's Fig. 7–9.

Layout of the output directory::

    compare_config.json          the settings; a resume must match them
    runs/<name>/                 one training run each (checkpoint.pt, log.jsonl, eval.json)
    compare.json, report.md      the summary (tables, timing, parameters, the bars)
    fig7.png fig8.png [fig9.png] CA–RA curves; training time and parameters; FLOATS vs OATS per width

Training is interleaved epoch by epoch across the runs (epoch 1 of every run, then epoch 2, ...), so the
per-epoch times of the methods are taken under the same load on a shared machine; each run resumes from
its own checkpoint, so an interrupted compare continues where it stopped and never retrains an epoch that
finished. Evaluations are cached per run in `eval.json`.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from floatedge.fsutil import atomic_write, atomic_write_json, atomic_write_text, check_writable_dir, update_markdown_section
from floatedge.oppoint import PAPER_LAMBDAS, OperatingPointError, parse_lambdas

from .attacks import ATTACKS, check_attacks
from .data import load_dataset
from .evaluate import curve_style, evaluate, load_result, place_labels, pyplot, save_png, set_span
from .film import FiLM
from .models import list_models
from .trainer import CHECKPOINT, TrainConfig, load_checkpoint, load_model, read_log, train

SLIM_WIDTHS = (1.0, 0.5)
FLOAT_LAMBDA_THS = (0.0, 0.5)
CONFIG_FILE = "compare_config.json"
# settings that may change between an interrupted compare and its resume (evaluation is redone when its
# settings change; training settings must match)
_FREE = {"threads", "device", "eval_limit", "attacks"}


class CompareError(ValueError):
    """A compare request that makes no sense, or that does not match the one already in --out."""


@dataclass
class CompareConfig:
    arch: str = "resnet20"
    dataset: str = "cifar10"
    data: str | None = None
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.1
    limit_train: int | None = None  # a seeded subset (data seed 0), the same for every run
    lambdas: tuple[float, ...] = PAPER_LAMBDAS
    seeds: tuple[int, ...] = (0, 1)  # FLOAT and OAT are trained with each; PGD-AT only at spread_lambda
    spread_lambda: float = 1.0
    slim: bool = False
    eval_limit: int | None = 500
    attacks: tuple[str, ...] = ("pgd20",)
    pgd_steps: int = 7
    film_dim: int = 128
    threads: int | None = 1
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.data is not None:
            self.data = str(Path(self.data).expanduser().resolve())  # as TrainConfig records it
        if self.arch not in list_models():
            raise CompareError(f"unknown architecture {self.arch!r}; choose from {', '.join(list_models())}")
        if not isinstance(self.epochs, int) or not 2 <= self.epochs <= 10_000:
            raise CompareError(f"epoch budget {self.epochs!r} makes no sense: compare needs ≥ 2 epochs "
                               "(training time is the median epoch after the first)")
        items = self.lambdas.split(",") if isinstance(self.lambdas, str) else self.lambdas
        raw = [v for v in items if str(v).strip()]
        try:
            lams = parse_lambdas(raw)
        except OperatingPointError as exc:
            raise CompareError(f"λ set makes no sense: {exc}") from None
        if len(lams) != len(raw):
            raise CompareError(f"λ set {raw} makes no sense: it repeats a value")
        if len(lams) < 2:
            raise CompareError(f"λ set {list(lams)} makes no sense: a trade-off curve needs ≥ 2 distinct λ in [0, 1]")
        self.lambdas = tuple(sorted(lams))
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise CompareError(f"seeds {list(self.seeds)}: give one or more distinct non-negative seeds")
        self.spread_lambda = float(self.spread_lambda)
        if self.spread_lambda not in self.lambdas:
            raise CompareError(f"spread λ {self.spread_lambda:g} is not in the λ set {list(self.lambdas)}")
        try:
            self.attacks = check_attacks(self.attacks)
        except ValueError as exc:
            raise CompareError(str(exc)) from None
        if not self.attacks:
            raise CompareError("at least one attack is needed")
        if self.batch_size < 6:
            raise CompareError(f"batch size {self.batch_size} is too small: OAT puts ⌈B/6⌉ samples at λ=0")
        if self.limit_train is not None and self.limit_train < self.batch_size:
            raise CompareError(f"--limit-train {self.limit_train} is smaller than one batch ({self.batch_size})")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise CompareError(f"--eval-limit must be ≥ 1, got {self.eval_limit}")
        if self.pgd_steps < 1:
            raise CompareError(f"--pgd-steps must be ≥ 1, got {self.pgd_steps}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("lambdas", "seeds", "attacks"):
            d[k] = list(d[k])
        return d


@dataclass(frozen=True)
class RunSpec:
    name: str
    method: str  # float, oat, pgdat, floats, oats
    seed: int
    lam: float | None = None  # PGD-AT's λ
    widths: tuple[float, ...] = (1.0,)

    @property
    def label(self) -> str:
        return {"float": "FLOAT", "oat": "OAT", "pgdat": "PGD-AT", "floats": "FLOATS", "oats": "OATS"}[self.method]


def plan(cfg: CompareConfig) -> list[RunSpec]:
    """Every training run of the compare, in the order they are interleaved."""
    s0 = cfg.seeds[0]
    runs = [RunSpec(f"{m}_s{s}", m, s) for s in cfg.seeds for m in ("float", "oat")]
    runs += [RunSpec(f"pgdat_l{lam:g}_s{s0}", "pgdat", s0, lam) for lam in cfg.lambdas]
    runs += [RunSpec(f"pgdat_l{cfg.spread_lambda:g}_s{s}", "pgdat", s, cfg.spread_lambda) for s in cfg.seeds[1:]]
    if cfg.slim:
        runs += [RunSpec(f"{m}_s{s0}", m, s0, widths=SLIM_WIDTHS) for m in ("floats", "oats")]
    return runs


def train_config(cfg: CompareConfig, run: RunSpec) -> TrainConfig:
    return TrainConfig(method=run.method, arch=cfg.arch, dataset=cfg.dataset, data=cfg.data, epochs=cfg.epochs,
                       batch_size=cfg.batch_size, lr=cfg.lr, widths=run.widths,
                       lam=run.lam if run.lam is not None else 1.0, seed=run.seed, pgd_steps=cfg.pgd_steps,
                       device=cfg.device, threads=cfg.threads, film_dim=cfg.film_dim,
                       extra={"compare_train_subset": cfg.limit_train, "compare_subset_seed": 0})


def _epochs_done(run_dir: Path) -> int:
    if not (run_dir / CHECKPOINT).exists():
        return 0
    return int(load_checkpoint(run_dir)["epoch"])


def _check_resume(out: Path, cfg: CompareConfig) -> None:
    path = out / CONFIG_FILE
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise CompareError(f"{path} is not readable JSON; remove it or use another --out") from None
        mine = cfg.to_dict()
        diff = [k for k in mine if k not in _FREE and saved.get(k) != mine[k]]
        if diff:
            k = diff[0]
            raise CompareError(f"{out} holds a compare with {k}={saved.get(k)!r}, not {mine[k]!r}; "
                               "use another --out or the same settings to resume")
    elif (out / "runs").exists() and any((out / "runs").iterdir()):
        raise CompareError(f"{out} holds runs but no {CONFIG_FILE}; use another --out")


def compare(cfg: CompareConfig, out: str | Path, callback: Callable[[dict], None] | None = None,
            results_md: str | Path | None = None, section: str = "compare") -> dict:
    """Train, evaluate and report; resumable. `callback` gets one dict per event (epoch trained, run
    evaluated, skipped). With `results_md`, the report also replaces section `section` of that markdown file
    and the figures are copied to `results/` beside it."""
    out = Path(out)
    emit = callback or (lambda _e: None)
    try:
        check_writable_dir(out)
    except OSError as exc:
        raise CompareError(str(exc)) from None
    _check_resume(out, cfg)
    atomic_write_json(out / CONFIG_FILE, cfg.to_dict())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    ds = load_dataset(cfg.dataset, cfg.data)
    if cfg.limit_train:
        ds = ds.limit(train=cfg.limit_train, seed=0)
    runs = plan(cfg)
    dirs = {r.name: out / "runs" / r.name for r in runs}
    t_start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):  # interleaved: every run's epoch e before any run's epoch e+1
        for r in runs:
            done = _epochs_done(dirs[r.name])
            if done >= epoch:
                if done == cfg.epochs and epoch == 1:
                    emit({"event": "skip", "run": r.name, "reason": "finished"})
                continue
            train(train_config(cfg, r), dirs[r.name], resume=done > 0, progress=False, dataset=ds,
                  until_epoch=epoch)
            log = read_log(dirs[r.name])
            emit({"event": "epoch", "run": r.name, "epoch": epoch, "seconds": log[-1]["seconds"]})
    train_wall = time.perf_counter() - t_start

    results = {}
    for r in runs:
        results[r.name] = _evaluate_cached(cfg, r, dirs[r.name], emit)
    summary = summarise(cfg, runs, dirs, results)
    summary["wall_seconds_this_invocation"] = {"train": train_wall, "total": time.perf_counter() - t_start}
    atomic_write_json(out / "compare.json", summary)
    figs = {"fig7": plot_fig7(summary, out / "fig7.png"), "fig8": plot_fig8(summary, out / "fig8.png")}
    if cfg.slim:
        figs["fig9"] = plot_fig9(summary, out / "fig9.png")
    fig_refs = {k: p.name for k, p in figs.items()}
    if results_md is not None:
        md = Path(results_md)
        fig_dir = md.parent / "results"
        fig_dir.mkdir(parents=True, exist_ok=True)
        for k, p in figs.items():
            dest = fig_dir / f"{section}_{p.name}"
            atomic_write(dest, lambda f, p=p: f.write(p.read_bytes()))
            fig_refs[k] = f"results/{dest.name}"
    report = format_report(summary, fig_refs)
    atomic_write_text(out / "report.md", report)
    if results_md is not None:
        update_markdown_section(results_md, section, report)
    summary["report"] = str(out / "report.md")
    return summary


def _evaluate_cached(cfg: CompareConfig, r: RunSpec, run_dir: Path, emit) -> dict:
    path = run_dir / "eval.json"
    want = {"attacks": list(cfg.attacks), "eval_limit": cfg.eval_limit, "lambdas": list(cfg.lambdas),
            "epochs": cfg.epochs}
    if path.exists():
        res = load_result(path)
        if res.get("compare_key") == want:
            emit({"event": "skip", "run": r.name, "reason": "evaluated"})
            return res
    lambdas = cfg.lambdas if r.method != "pgdat" else (0.0,)
    ths = FLOAT_LAMBDA_THS if r.method in ("float", "floats") else (0.0,)
    t0 = time.perf_counter()
    res = evaluate(run_dir, lambdas, ths, None, cfg.attacks, cfg.eval_limit, cfg.data, seed=0, device=cfg.device,
                   progress=False, dial="switch")  # FLOAT as the paper specifies it: its two λ_th curves
    res["compare_key"] = want
    res["eval_seconds"] = time.perf_counter() - t0
    atomic_write_json(path, res)
    emit({"event": "eval", "run": r.name, "seconds": res["eval_seconds"]})
    return res


# ---------------------------------------------------------------- summary
def _film_parameters(model) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, FiLM) for p in m.parameters())


def _median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarise(cfg: CompareConfig, runs: list[RunSpec], dirs: dict[str, Path], results: dict[str, dict]) -> dict:
    attack = cfg.attacks[0]
    points = []  # one row per (run, width, λ, λ_th): method, seed, CA, RA
    for r in runs:
        for row in results[r.name]["rows"]:
            lam = r.lam if r.method == "pgdat" else row["lambda_n"]
            points.append({"run": r.name, "method": r.method, "label": r.label, "seed": r.seed, "lambda": lam,
                           "lambda_th": row["lambda_th"], "width": row["width"], "clean_acc": row["clean_acc"],
                           **{f"{a}_acc": row[f"{a}_acc"] for a in cfg.attacks}})
    timing, params = {}, {}
    for r in runs:
        log = read_log(dirs[r.name])
        secs = [e["seconds"] for e in log]
        model, _, _ = load_model(dirs[r.name])
        params[r.name] = {"total": sum(p.numel() for p in model.parameters()),
                          "conv_fc": model.plain_parameter_count(), "film": _film_parameters(model)}
        timing[r.name] = {"method": r.method, "lambda": r.lam, "seed": r.seed, "epoch_seconds": secs,
                          "median_after_first": _median(secs[1:])}

    def pooled(pred) -> float | None:
        return _median([s for name, t in timing.items() if pred(t) for s in t["epoch_seconds"][1:]])

    t_float = pooled(lambda t: t["method"] == "float")
    t_oat = pooled(lambda t: t["method"] == "oat")
    pgd_by_lam = {lam: pooled(lambda t, lam=lam: t["method"] == "pgdat" and t["lambda"] == lam) for lam in cfg.lambdas}
    attacked = {lam: v for lam, v in pgd_by_lam.items() if lam > 0 and v}
    fastest_pgd = min(attacked.items(), key=lambda kv: kv[1]) if attacked else None
    t_pgd_pooled = pooled(lambda t: t["method"] == "pgdat" and (t["lambda"] or 0) > 0)
    time_summary = {
        "float": t_float, "oat": t_oat, "pgdat_by_lambda": {f"{k:g}": v for k, v in pgd_by_lam.items()},
        "pgdat_attacked_pooled": t_pgd_pooled,
        "pgdat_all_lambdas_total": sum(v for v in pgd_by_lam.values() if v),
        "float_over_oat": t_float / t_oat if t_float and t_oat else None,
        "float_over_fastest_pgdat": t_float / fastest_pgd[1] if t_float and fastest_pgd else None,
        "fastest_pgdat_lambda": fastest_pgd[0] if fastest_pgd else None,
        "float_over_pgdat_pooled": t_float / t_pgd_pooled if t_float and t_pgd_pooled else None,
    }
    if cfg.slim:
        t_floats = pooled(lambda t: t["method"] == "floats")
        t_oats = pooled(lambda t: t["method"] == "oats")
        time_summary.update({"floats": t_floats, "oats": t_oats,
                             "floats_over_oats": t_floats / t_oats if t_floats and t_oats else None})

    first = {m: next(r.name for r in runs if r.method == m) for m in {r.method for r in runs}}
    n_pgd = len(cfg.lambdas)
    param_summary = {
        "float": params[first["float"]], "oat": params[first["oat"]], "pgdat_one": params[first["pgdat"]],
        "pgdat_models_for_all_lambdas": n_pgd,
        "oat_over_float_total": params[first["oat"]]["total"] / params[first["float"]]["total"],
        "film_dim": cfg.film_dim,
    }
    return {"config": cfg.to_dict(), "attack": attack, "points": points, "spread": spread(points, cfg),
            "timing": timing, "time_summary": time_summary, "params": param_summary,
            "n_train": cfg.limit_train, "n_test": results[runs[0].name]["n_images"],
            "attack_descriptions": {a: ATTACKS[a].description for a in cfg.attacks}}


def spread(points: list[dict], cfg: CompareConfig) -> list[dict]:
    """Mean and seed-to-seed range (max − min) of CA and RA per (method, λ, λ_th, width) over the seeds."""
    attack = cfg.attacks[0]
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["method"], p["lambda"], p["lambda_th"], p["width"]), []).append(p)
    out = []
    for (method, lam, th, w), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][3], kv[0][2], kv[0][1])):
        ca = [p["clean_acc"] for p in ps]
        ra = [p[f"{attack}_acc"] for p in ps]
        out.append({"method": method, "lambda": lam, "lambda_th": th, "width": w, "n_seeds": len(ps),
                    "ca_mean": sum(ca) / len(ca), "ra_mean": sum(ra) / len(ra),
                    "ca_range": max(ca) - min(ca), "ra_range": max(ra) - min(ra)})
    return out


# ---------------------------------------------------------------- report
def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _bar(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def format_report(s: dict, figs: dict[str, str]) -> str:
    cfg, ts, attack = s["config"], s["time_summary"], s["attack"]
    lines = [f"## FLOAT vs OAT vs PGD-AT (`floatedge compare`), {cfg['arch']} on {cfg['dataset']}", ""]
    lines.append(
        f"Scale: {s['n_train'] or 'all'} training images (seeded subset), {cfg['epochs']} epochs, "
        f"batch {cfg['batch_size']}, "
        f"SGD lr {cfg['lr']} cosine, training attack PGD-{cfg['pgd_steps']} (ε=8/255, step 2/255); evaluation on "
        f"{s['n_test']} test images (seeded subset) under {', '.join(s['attack_descriptions'].values())}. "
        f"λ set {cfg['lambdas']}; FLOAT and OAT trained with seeds {cfg['seeds']}, PGD-AT one model per λ "
        f"(seed {cfg['seeds'][0]}) plus seeds {cfg['seeds'][1:]} at λ={cfg['spread_lambda']:g}. OAT: FiLM input "
        f"{cfg['film_dim']} ({'orthogonal encoding' if cfg['film_dim'] > 1 else 'scalar λ'}), λ sampled from "
        f"{{0, .1, .2, .3, .4, 1}}. Training interleaved epoch by epoch on one core "
        f"({cfg['threads']} torch thread), so all methods ran under the same load.")
    lines += ["", "### Bars", ""]
    fo, fp = ts["float_over_oat"], ts["float_over_fastest_pgdat"]
    lines.append(f"- Training time: FLOAT median epoch (after the first) {ts['float']:.1f} s, OAT {ts['oat']:.1f} s → "
                 f"FLOAT/OAT = **{fo:.2f}** (bar ≤ 0.70, paper 1/1.43 = 0.70): {_bar(fo <= 0.70 if fo else None)}.")
    per = ", ".join(f"λ={k}: {v:.1f} s" for k, v in ts["pgdat_by_lambda"].items() if v)
    lines.append(f"- FLOAT vs one PGD-AT model ({per}): against the fastest attacked one "
                 f"(λ={ts['fastest_pgdat_lambda']:g}) "
                 f"FLOAT/PGD-AT = **{fp:.2f}** (bar ≤ 0.80, paper 1/1.37 = 0.73): {_bar(fp <= 0.80 if fp else None)}; "
                 f"against the median of all attacked PGD-AT epochs {ts['float_over_pgdat_pooled']:.2f}. Covering all "
                 f"{len(cfg['lambdas'])} λs takes {len(cfg['lambdas'])} PGD-AT models: "
                 f"{ts['pgdat_all_lambdas_total']:.1f} s "
                 f"per epoch in total, {ts['pgdat_all_lambdas_total'] / ts['float']:.2f}× FLOAT.")
    p = s["params"]
    lines.append(f"- Parameters of the trained {cfg['arch']}s (all tensors incl. BN, α): "
                 f"FLOAT {p['float']['total'] / 1e6:.3f} M, "
                 f"OAT {p['oat']['total'] / 1e6:.3f} M (of which FiLM {p['oat']['film'] / 1e6:.3f} M, FiLM input "
                 f"{p['film_dim']}), one PGD-AT {p['pgdat_one']['total'] / 1e6:.3f} M → OAT/FLOAT = "
                 f"{p['oat_over_float_total']:.2f}. The ResNet-34 ratio of the bar is in the parameter table.")
    if "floats_over_oats" in ts and ts["floats_over_oats"]:
        lines.append(f"- FLOATS vs OATS (widths 1.0, 0.5): median epoch {ts['floats']:.1f} s vs {ts['oats']:.1f} s → "
                     f"FLOATS/OATS = {ts['floats_over_oats']:.2f} (paper: OATS 1.90× slower, i.e. 0.53).")
    lines += ["", f"### CA / RA ({attack}) per λ, mean over seeds (± half the seed-to-seed range)", ""]
    lines += _curve_table(s)
    best = max(pt["clean_acc"] for pt in s["points"])
    lines += ["", f"One test image is {100 / s['n_test']:.2f} points. The highest clean accuracy of any model here is "
              f"{100 * best:.1f}%: read the curves with that in mind."]
    lines += ["", "### FLOAT − OAT at each λ", ""]
    lines += _claims(s)
    lines += ["", f"![Fig. 7 analogue: CA–RA]({figs['fig7']})", "",
              f"![Fig. 8 analogue: time and parameters]({figs['fig8']})"]
    if "fig9" in figs:
        lines += ["", f"![Fig. 9 analogue: FLOATS vs OATS]({figs['fig9']})"]
    lines += ["", "Per-epoch seconds of every run: "
              + "; ".join(f"{k} {[round(x, 1) for x in t['epoch_seconds']]}" for k, t in s["timing"].items())]
    return "\n".join(lines) + "\n"


def _fmt_ms(mean: float, rng: float, n: int) -> str:
    return f"{100 * mean:.1f}" + (f" ± {50 * rng:.1f}" if n > 1 else "")


def _curve_table(s: dict) -> list[str]:
    names = {"float": "FLOAT", "oat": "OAT", "pgdat": "PGD-AT", "floats": "FLOATS", "oats": "OATS"}
    out = ["| method | width | λ_th | λ | seeds | CA % | RA % |", "|---|---|---|---|---|---|---|"]
    for g in s["spread"]:
        th = f"{g['lambda_th']:g}" if g["method"] in ("float", "floats") else "–"
        out.append(f"| {names[g['method']]} | {g['width']:g} | {th} | {g['lambda']:g} | {g['n_seeds']} | "
                   f"{_fmt_ms(g['ca_mean'], g['ca_range'], g['n_seeds'])} | "
                   f"{_fmt_ms(g['ra_mean'], g['ra_range'], g['n_seeds'])} |")
    return out


def _claims(s: dict) -> list[str]:
    """FLOAT minus OAT (and minus PGD-AT) at each λ, called a difference only when it exceeds the seed spread."""
    idx = {(g["method"], g["lambda"], g["lambda_th"], g["width"]): g for g in s["spread"]}
    lines = ["| λ | FLOAT λ_th | ΔCA vs OAT | ΔRA vs OAT | noise (max seed range) | verdict "
             "| ΔCA vs PGD-AT | ΔRA vs PGD-AT |",
             "|---|---|---|---|---|---|---|---|"]
    wins = {"ra": 0, "ca": 0, "n": 0, "oat_ra": 0, "oat_ca": 0}
    for lam in s["config"]["lambdas"]:
        o = idx.get(("oat", lam, 0.0, 1.0))
        pg = idx.get(("pgdat", lam, 0.0, 1.0))
        for th in FLOAT_LAMBDA_THS:
            f = idx.get(("float", lam, th, 1.0))
            if not f or not o:
                continue
            dca, dra = f["ca_mean"] - o["ca_mean"], f["ra_mean"] - o["ra_mean"]
            noise = max(f["ca_range"], f["ra_range"], o["ca_range"], o["ra_range"])
            verdict = []
            for name, d in (("CA", dca), ("RA", dra)):
                if abs(d) <= noise or min(f["n_seeds"], o["n_seeds"]) < 2:
                    verdict.append(f"{name} ≈")
                else:
                    verdict.append(f"{name} {'FLOAT' if d > 0 else 'OAT'}")
            if th == 0.0:
                wins["n"] += 1
                wins["ca"] += dca > noise
                wins["ra"] += dra > noise
                wins["oat_ca"] += -dca > noise
                wins["oat_ra"] += -dra > noise
            pgd = ("–", "–")
            if pg:
                pgd = (f"{100 * (f['ca_mean'] - pg['ca_mean']):+.1f}", f"{100 * (f['ra_mean'] - pg['ra_mean']):+.1f}")
            lines.append(f"| {lam:g} | {th:g} | {100 * dca:+.1f} | {100 * dra:+.1f} | {100 * noise:.1f} | "
                         f"{', '.join(verdict)} | {pgd[0]} | {pgd[1]} |")
    n = wins["n"]
    lines += ["", f"At λ_th = 0 (OAT's own BN routing), beyond the seed-to-seed range: FLOAT better in CA at "
              f"{wins['ca']} of {n} λs and in RA at {wins['ra']}; OAT better in CA at {wins['oat_ca']} and in RA at "
              f"{wins['oat_ra']}. The paper claims FLOAT's CA and RA equal or better than OAT's at every λ (up to "
              "+6.5 CA / +14.5 RA points)."]
    if wins["oat_ca"] or wins["oat_ra"]:
        lines.append("Where OAT is better beyond the noise, that claim does not hold at this scale.")
    elif not (wins["ca"] or wins["ra"]):
        lines.append("No difference exceeds the seed-to-seed range: at this scale the claim is neither confirmed "
                     "nor refuted (the curves are equal within noise).")
    else:
        lines.append("FLOAT is never worse beyond the noise: consistent with the claim at this scale.")
    return lines


# ---------------------------------------------------------------- plots
def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    return save_png(fig, path)


def _curve(ax, s: dict, method: str, th: float, width: float, style: str, label: str, i: int) -> list[tuple]:
    """Plot one method's CA–RA curve (bars: seed range); returns its points for `place_labels`."""
    gs = sorted((g for g in s["spread"] if g["method"] == method and g["lambda_th"] == th and g["width"] == width),
                key=lambda g: g["lambda"])
    if not gs:
        return []
    xs = [100 * g["ca_mean"] for g in gs]
    ys = [100 * g["ra_mean"] for g in gs]
    bars = ax.errorbar(xs, ys, xerr=[50 * g["ca_range"] for g in gs], yerr=[50 * g["ra_range"] for g in gs], fmt=style,
                       label=label, capsize=2, **curve_style(i))
    colour = bars.lines[0].get_color()
    return [(x, y, f"{g['lambda']:g}", colour) for g, x, y in zip(gs, xs, ys, strict=True)]


def _curves(ax, s: dict, curves: Sequence[tuple], attack_label: str) -> list[tuple]:
    """Several `_curve`s on one axis, then the limits, the layout and the λ labels (in that order)."""
    points = [p for i, c in enumerate(curves) for p in _curve(ax, s, *c, i)]
    set_span(ax, [p[0] for p in points], [p[1] for p in points])
    ax.set_xlabel("clean accuracy CA (%)")
    ax.set_ylabel(attack_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return points


def plot_fig7(s: dict, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.4, 4.8), dpi=120)
    points = _curves(ax, s, [("float", 0.5, 1.0, "s-", "FLOAT (λ_th=0.5)"), ("float", 0.0, 1.0, "s:", "FLOAT (λ_th=0)"),
                             ("oat", 0.0, 1.0, "o-", f"OAT (FiLM in={s['config']['film_dim']})"),
                             ("pgdat", 0.0, 1.0, "^--", "PGD-AT (one model per λ)")],
                     f"robust accuracy RA, {s['attack']} (%)")
    ax.set_title(f"{s['config']['arch']} {s['config']['dataset']}: points labelled by λ, bars = seed range", fontsize=9)
    fig.tight_layout()
    place_labels(ax, points)
    return save_png(fig, path)


def plot_fig8(s: dict, path: Path) -> Path:
    plt = pyplot()
    ts, p = s["time_summary"], s["params"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.6, 4.0), dpi=120)
    names, vals = ["FLOAT", "OAT"], [1.0, ts["oat"] / ts["float"]]
    for k, v in ts["pgdat_by_lambda"].items():
        if v:
            names.append(f"PGD-AT\nλ={k}")
            vals.append(v / ts["float"])
    names.append(f"PGD-AT\n×{len(ts['pgdat_by_lambda'])}")
    vals.append(ts["pgdat_all_lambdas_total"] / ts["float"])
    a.bar(names, vals, color=["C0", "C1"] + ["C2"] * (len(vals) - 2))
    for i, v in enumerate(vals):
        a.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    a.set_ylabel("median epoch time / FLOAT's")
    a.set_title("(a) training time per epoch")
    a.tick_params(axis="x", labelsize=7)
    n = p["pgdat_models_for_all_lambdas"]
    names = ["FLOAT", "OAT", "PGD-AT\n1 model", f"PGD-AT\n{n} models"]
    vals = [p["float"]["total"], p["oat"]["total"], p["pgdat_one"]["total"], n * p["pgdat_one"]["total"]]
    b.bar(names, [v / 1e6 for v in vals], color=["C0", "C1", "C2", "C2"])
    for i, v in enumerate(vals):
        b.text(i, v / 1e6, f"{v / 1e6:.3f}", ha="center", va="bottom", fontsize=7)
    b.set_ylabel("parameters (M)")
    b.set_title(f"(b) parameter storage, {s['config']['arch']}")
    return _save(fig, path)


def plot_fig9(s: dict, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(SLIM_WIDTHS), figsize=(11.6, 4.2), dpi=120)
    labelled = []
    for ax, w in zip(axes, SLIM_WIDTHS, strict=True):
        labelled.append((ax, _curves(ax, s, [("floats", 0.5, w, "s-", "FLOATS (λ_th=0.5)"),
                                             ("floats", 0.0, w, "s:", "FLOATS (λ_th=0)"), ("oats", 0.0, w, "o-", "OATS")],
                                     f"RA, {s['attack']} (%)")))
        ax.set_title(f"width {w:g}")
    fig.tight_layout()
    for ax, points in labelled:
        place_labels(ax, points)
    return save_png(fig, path)


__all__ = ["CompareConfig", "CompareError", "RunSpec", "compare", "plan", "summarise", "format_report",
           "update_markdown_section", "SLIM_WIDTHS"]
