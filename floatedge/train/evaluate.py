"""Clean and robust accuracy over a grid of operating points, with a table and a trade-off plot.

Operating points that compute the same function (same noise scale, BN set and width — e.g. λ_n = 1 under
both thresholds) are evaluated once and reported under each name. Models without noise or dual BN
(PGD-AT, standard) have one operating point per width. OAT models take any λ_n in [0, 1] (it reaches the
FiLM and the BN routing); λ_th does not exist for them and is reported as 0.

Every row keeps each attack's `<attack>_acc` and gets `robust_acc` / `robust_attack`: the lowest of them and the
attack that measured it (`floatedge.bundle.robust_of`, the rule every reader of a bundle's table uses).
The model evaluated is the one `floatedge export` writes: both load the run's checkpoint (weights, α, and the
recorded noise draw z, a buffer of the state dict) through `load_model`, and the result records the
checkpoint's sha256, which the export checks against the checkpoint it exports.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from floatedge.bundle import robust_of, sha256_file, with_robust
from floatedge.fsutil import atomic_write, atomic_write_json, atomic_write_text
from floatedge.oppoint import DEFAULT_DIAL, PAPER_LAMBDA_THS, PAPER_LAMBDAS, OperatingPoint, get_dial

from .attacks import ATTACKS, check_attacks, run_attack
from .data import to_float
from .trainer import CHECKPOINT, TrainError, load_model, load_run_data, progress_bar, resolve_device


class EvalError(ValueError):
    pass


def accuracy_under(model, attack: str, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
                   eps: float, source=None, made: dict | None = None) -> float:
    """Accuracy of `model` under `attack`, batch by batch (batch i seeded seed + i). Transfer attacks (made on
    `source`, independent of the model's point) are kept in `made` and made once for all points."""
    correct = 0
    keep = made is not None and ATTACKS[attack].needs_source
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        xa = made.get((attack, i)) if keep else None
        if xa is None:
            xa = run_attack(attack, model, xb, yb, seed=seed + i, eps=eps, source=source)
            if keep:
                made[(attack, i)] = xa
        with torch.no_grad():
            correct += int((model(xa).argmax(1) == yb).sum())
    return correct / len(x)


def load_source(run_dir: str | Path, cfg, device: torch.device):
    """The model a transfer attack makes its examples on: a run's checkpoint at its most robust point (λ_n = 1,
    widest width; a PGD-AT or standard run has just one point), on the same data set as the evaluated run."""
    try:
        model, src_cfg, ckpt = load_model(run_dir)
    except TrainError as exc:
        raise EvalError(f"--transfer-from: {exc}") from None
    if src_cfg.dataset != cfg.dataset:
        raise EvalError(f"--transfer-from {run_dir}: trained on {src_cfg.dataset}, the evaluated run on {cfg.dataset}")
    model.set_operating_point(OperatingPoint(1.0, model.widths[0], 0.0))
    return model.to(device), f"{src_cfg.method} {src_cfg.arch}, epoch {int(ckpt['epoch'])}"


def evaluate(
    run_dir: str | Path,
    lambdas: Sequence[float] = PAPER_LAMBDAS,
    lambda_ths: Sequence[float] = PAPER_LAMBDA_THS,
    widths: Sequence[float] | None = None,
    attacks: Sequence[str] = ("pgd20",),
    limit: int | None = None,
    data: str | None = None,
    batch_size: int = 250,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    eps: float | None = None,
    transfer_from: str | Path | None = None,
    dial: str | None = None,
) -> dict:
    """Evaluate a run at every operating point. ε defaults to the run's training ε (8/255 unless changed).
    Transfer attacks (`transfer-pgd20`, `transfer-pgd100`) make their examples on the run `transfer_from`."""
    try:
        check_attacks(attacks)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    needs = [a for a in attacks if ATTACKS[a].needs_source]
    if needs and transfer_from is None:
        raise EvalError(f"{needs[0]} makes its examples on another model: give it with --transfer-from RUN")
    model, cfg, ckpt = load_model(run_dir)
    eps = float(cfg.eps if eps is None else eps)
    dev = resolve_device(device)
    model.to(dev)
    source, source_text = load_source(transfer_from, cfg, dev) if needs else (None, "")
    widths = tuple(widths) if widths else model.widths
    for w in widths:
        if w not in model.widths:
            raise EvalError(f"width {w:g} not trained; {run_dir} has widths {list(model.widths)}")
    try:
        ds = load_run_data(cfg.dataset, str(Path(data).resolve()) if data else cfg.data, recorded=not data)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    if limit is not None and limit < 1:
        raise EvalError(f"limit must be ≥ 1, got {limit}")
    if limit:
        ds = ds.limit(test=limit, seed=seed)
    x, y = to_float(ds.x_test).to(dev), ds.y_test.to(dev)

    conditional = cfg.noisy
    # the dial λ_n is measured under (oppoint.Dial; None: DEFAULT_DIAL), the one `export --dial` must deploy;
    # a mixing dial has no λ_th, so its points repeat across lambda_ths and are kept once
    rule = get_dial(DEFAULT_DIAL if dial is None else dial) if conditional else get_dial(None)
    if cfg.oat:
        points = [OperatingPoint(lam, w, 0.0) for w in widths for lam in lambdas]
    elif conditional:
        points = list(dict.fromkeys(OperatingPoint(lam, w, th, rule) for w in widths for th in lambda_ths for lam in lambdas))
    else:
        points = [OperatingPoint(0.0, w, 0.0) for w in widths]
    cache: dict[tuple, dict] = {}
    made: dict[tuple, torch.Tensor] = {}  # transfer examples: the same at every point
    rows = []
    todo = {p.effective() for p in points}
    bar = progress_bar(len(todo) * (1 + len(attacks)), "eval", progress)
    for p in points:
        key = p.effective()
        if key not in cache:
            model.set_operating_point(p)
            res = {}
            t0 = time.perf_counter()
            with torch.no_grad():
                res["clean"] = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                                   for i in range(0, len(x), batch_size)) / len(x)
            bar.update(1)
            for a in attacks:
                bar.set_description(f"{a} @ {p}")
                res[a] = accuracy_under(model, a, x, y, batch_size, seed, eps, source, made)
                bar.update(1)
            res["seconds"] = time.perf_counter() - t0
            cache[key] = res
        r = cache[key]
        s = p.noise_scale if conditional else 0.0
        rows.append({**with_robust({**p.to_dict(), "noise_scale": s, "bn": p.bn_name, "clean_acc": r["clean"],
                                    **{f"{a}_acc": r[a] for a in attacks}}), "seconds": r["seconds"]})
    bar.close()
    described = {a: f"{ATTACKS[a].description}, L∞ ε={eps * 255:.3g}/255" for a in attacks}
    for a in needs:
        described[a] += f"; source {transfer_from} ({source_text})"
    return {
        "run": str(run_dir),
        "method": cfg.method,
        "arch": cfg.arch,
        "dataset": cfg.dataset,
        "data": str(Path(data).resolve()) if data else cfg.data,
        "data_recorded": cfg.data,
        "noise_mode": cfg.noise_mode,
        "noise_seed": cfg.noise_seed,
        "epochs": int(ckpt["epoch"]),
        "checkpoint_sha256": sha256_file(Path(run_dir) / CHECKPOINT),
        "dial": rule.to_dict(),
        "n_images": int(len(x)),
        "subset_seed": seed if limit else None,
        "eps": eps,
        "attacks": described,
        "rows": rows,
    }


def check_out_file(path: str | Path) -> Path:
    """Prove a result file can be written at `path` before the work that produces it, or raise OSError naming
    `path` and what is in the way. Directories made for the probe are removed again."""
    path = Path(path)
    if path.is_dir():
        raise OSError(f"cannot write {path}: it is a directory")
    parent = path.parent
    made = [p for p in (parent, *parent.parents) if not p.exists()]  # deepest first
    existing = parent.parents[len(made) - 1] if made else parent
    if not existing.is_dir():
        raise OSError(f"cannot write {path}: {existing} is a file, not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = existing if made else parent
        raise OSError(f"cannot write {path}: {where} does not take new files ({exc.strerror or exc})") from None
    finally:
        for p in made:
            with contextlib.suppress(OSError):
                p.rmdir()
    return path


def format_table(result: dict) -> str:
    attacks = list(result["attacks"])
    head = ["width", "λ_th", "λ_n", "s", "BN", "CA %"] + [f"{a} RA %" for a in attacks] + ["RA % (lowest)"]
    lines = [head]
    for r in result["rows"]:
        lines.append([f"{r['width']:g}", f"{r['lambda_th']:g}", f"{r['lambda_n']:g}", f"{r['noise_scale']:.2f}",
                      r["bn"], f"{100 * r['clean_acc']:.2f}"] + [_pct(r.get(a + "_acc")) for a in attacks]
                     + [robust_cell(r)])
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    out = ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=False)) for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def robust_cell(row: dict) -> str:
    """The RA a row reports (`robust_of`: its lowest measured attack) with that attack named: "19.80 autoattack"."""
    acc, attack = robust_of(row)
    return "—" if acc is None else f"{100 * acc:.2f} {attack}"


def merge_results(base: dict, extra: dict) -> dict:
    """Add `extra`'s attack columns to `base`'s rows with the same effective operating point
    (`OperatingPoint.effective`, the rule `evaluate` deduplicates by; an OAT row's λ_n is its own point);
    rows `extra` did not measure get None (shown as —). Lets a costly attack run on a few points only."""
    key = lambda r: OperatingPoint(r["lambda_n"], r["width"], r["lambda_th"]).effective()  # noqa: E731
    found = {key(r): r for r in extra["rows"]}
    merged = dict(base, attacks={**base["attacks"], **extra["attacks"]}, rows=[])
    for r in base["rows"]:
        row = dict(r)
        for a in extra["attacks"]:
            if key(r) in found:
                row[f"{a}_acc"] = found[key(r)][f"{a}_acc"]
            else:
                row.setdefault(f"{a}_acc", None)  # keep what an earlier merge put there
        row.pop("robust_acc", None)  # the lowest again, over the merged attacks
        merged["rows"].append(with_robust(row))
    return merged


def write_csv(result: dict, path: str | Path) -> None:
    rows = result["rows"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------- plots
MIN_SPAN = 5.0  # percentage points: an accuracy axis never spans less (a narrower one magnifies single images)


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_style(i: int) -> dict:
    """Markers of curve i: hollow, each curve's smaller than the one before, so coinciding points of several
    curves show as concentric rings instead of hiding each other."""
    return {"markersize": max(3.5, 10 - 2.5 * i), "markerfacecolor": "none", "markeredgewidth": 1.4}


def set_span(ax, xs: Sequence[float], ys: Sequence[float], min_span: float = MIN_SPAN) -> None:
    """Axis limits around the data, each at least `min_span` wide and inside [0, 100] where the data allow."""
    for values, setter in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
        lo, hi = min(values), max(values)
        pad = 0.08 * max(hi - lo, min_span)
        lo, hi = lo - pad, hi + pad
        if hi - lo < min_span:
            mid = (lo + hi) / 2
            lo, hi = mid - min_span / 2, mid + min_span / 2
        shift = max(0.0, -lo - pad) - max(0.0, hi - 100 - pad)  # keep the axis near [0, 100]
        setter(lo + shift, hi + shift)


_OFFSETS = [(6, 5, "left", "bottom"), (6, -5, "left", "top"), (-6, 5, "right", "bottom"), (-6, -5, "right", "top"),
            (0, 9, "center", "bottom"), (0, -9, "center", "top"), (10, 0, "left", "center"), (-10, 0, "right", "center")]


def place_labels(ax, points: Sequence[tuple[float, float, str, str]], fontsize: float = 7) -> list:
    """Label points (x, y, text, colour) without overlaps: labels of points that coincide on screen are merged
    ("0, 0.2"), and each label takes the first spot around its point that overlaps no other label or marker
    (the least crowded one when none is free). Call after the limits and the layout are fixed."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    groups: list[dict] = []
    for x, y, text, colour in points:
        px = ax.transData.transform((x, y))
        for grp in groups:
            if abs(grp["px"][0] - px[0]) < 4 and abs(grp["px"][1] - px[1]) < 4:
                if text not in grp["texts"]:
                    grp["texts"].append(text)
                if colour != grp["colour"]:
                    grp["colour"] = "black"
                break
        else:
            groups.append({"xy": (x, y), "px": px, "texts": [text], "colour": colour})
    marker_boxes = [_box(g["px"], 5) for g in groups]
    placed: list = []
    frame = ax.get_window_extent(renderer)
    out = []
    for grp in groups:
        best = None
        for scale in (1, 2, 3):
            for dx, dy, ha, va in _OFFSETS:
                t = ax.annotate(", ".join(sorted(grp["texts"], key=_as_number)), grp["xy"], xytext=(dx * scale, dy * scale),
                                textcoords="offset points", ha=ha, va=va, fontsize=fontsize, color=grp["colour"])
                bb = t.get_window_extent(renderer)
                crowd = sum(_overlap(bb, o) for o in placed + marker_boxes) + (0 if _inside(bb, frame) else 1e6)
                if best is None or crowd < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (crowd, t, bb)
                else:
                    t.remove()
                if crowd == 0:
                    break
            if best[0] == 0:
                break
        placed.append(best[2])
        out.append(best[1])
    return out


def _as_number(text: str) -> tuple:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def _box(px, r: float):
    from matplotlib.transforms import Bbox

    return Bbox.from_extents(px[0] - r, px[1] - r, px[0] + r, px[1] + r)


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _inside(a, frame) -> bool:
    return a.x0 >= frame.x0 and a.x1 <= frame.x1 and a.y0 >= frame.y0 and a.y1 <= frame.y1


def tradeoff_figure(result: dict, attack: str | None = None, title: str | None = None):
    """CA against RA, one curve per width and λ_th, points labelled by λ_n (FLOAT Fig. 6); returns the figure."""
    plt = pyplot()
    attack = attack or next(iter(result["attacks"]))
    fig, ax = plt.subplots(figsize=(7.6, 4.8), dpi=120)
    groups: dict[tuple, list] = {}
    for r in result["rows"]:
        groups.setdefault((r["width"], r["lambda_th"]), []).append(r)
    lines = {0.0: "--", 0.5: "-"}
    labels, xs_all, ys_all = [], [], []
    for i, ((w, th), rs) in enumerate(sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1]))):
        rs = sorted(rs, key=lambda r: r["lambda_n"])
        xs = [100 * r["clean_acc"] for r in rs]
        ys = [100 * r[f"{attack}_acc"] for r in rs]
        (line,) = ax.plot(xs, ys, "o" + lines.get(th, ":"), label=f"width {w:g}, λ_th={th:g}", **curve_style(i))
        labels += [(x, y, f"{r['lambda_n']:g}", line.get_color()) for r, x, y in zip(rs, xs, ys, strict=True)]
        xs_all += xs
        ys_all += ys
    set_span(ax, xs_all, ys_all)
    ax.set_xlabel("clean accuracy CA (%)")
    ax.set_ylabel(f"robust accuracy RA under {attack} (%)")
    ax.set_title(title or f"{result['method'].upper()} {result['arch']} on {result['dataset']} "
                 f"({result['n_images']} test images; points labelled by λ_n)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.tight_layout()
    place_labels(ax, labels)
    return fig


def save_png(fig, path: str | Path) -> Path:
    """Write a figure (laid out already) atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_tradeoff(result: dict, path: str | Path, attack: str | None = None, title: str | None = None) -> Path:
    """The trade-off plot of `tradeoff_figure`, written to `path`."""
    return save_png(tradeoff_figure(result, attack, title), path)


def save_result(result: dict, out: str | Path) -> dict[str, Path]:
    """Writes OUT (.json), OUT with .csv, and OUT with .png; returns the paths."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix in (".json", ".csv", ".png") else out
    paths = {"json": base.with_suffix(".json"), "csv": base.with_suffix(".csv"), "png": base.with_suffix(".png")}
    atomic_write_json(paths["json"], result)
    write_csv(result, paths["csv"])
    plot_tradeoff(result, paths["png"])
    return paths


def load_result(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EvalError(f"{path}: not a floatedge eval result ({exc})") from None


__all__ = ["evaluate", "format_table", "save_result", "plot_tradeoff", "tradeoff_figure", "check_out_file", "load_result",
           "EvalError", "TrainError"]
