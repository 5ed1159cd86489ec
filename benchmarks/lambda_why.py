"""Why FLOAT's λ_n is not a dial (issue 15, item 1): small, short experiments on a CIFAR-10 slice.

    python benchmarks/lambda_why.py alpha --limit-train 5000 --epochs 3      # how α learns, fixed vs resample
    python benchmarks/lambda_why.py dial runs/lambda_why/alpha_fixed         # what s does; fresh noise at evaluation

`alpha` trains FLOAT ResNet-20 twice (noise `fixed` and `resample`) and records, per layer and epoch, α, its
gradient (mean, mean |·|, and the sign consistency |mean|/mean|·|, 1 = a steady drift, ~0 = a random walk) and how
far α and the layer's weight moved. `dial` evaluates a trained FLOAT model at (BN, s) with s beyond the trained 0
and 1, on the recorded draw (what is deployed) and with a fresh draw at every forward (PNI's evaluation: every
attack step and the final forward see new noise), and at one point with EOT-PGD (gradients averaged over draws).
Each writes its figures into a section of docs/lambda-dial.md and the raw numbers to runs/lambda_why/.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from _results import CIFAR10, ROOT, machine, shown_args

from floatedge.fsutil import atomic_write_json, update_markdown_section
from floatedge.oppoint import BN_ADV, BN_CLEAN, OperatingPoint
from floatedge.train.attacks import eval_mode, pgd
from floatedge.train.data import load_dataset, to_float
from floatedge.train.layers import ALPHA_INIT, NoisyConv2d, NoisyLinear
from floatedge.train.trainer import (
    Dist,
    Objective,
    TrainConfig,
    build,
    build_model,
    checkpoint_and_record,
    load_model,
    train,
    train_one_epoch,
)

DOC = ROOT / "docs" / "lambda-dial.md"
OUT = ROOT / "runs" / "lambda_why"
HEADER = "# λ_n as a dial: what FLOAT's noise does, and a training variant\n"


def write_section(name: str, body: str) -> None:
    update_markdown_section(DOC, name, body, header=HEADER)
    print(body)


# ---------------------------------------------------------------- alpha: how α learns
def train_recording_alpha(cfg: TrainConfig, out: Path) -> list[dict]:
    """Train `cfg` epoch by epoch (checkpointed into `out`), recording α's gradient at every backward."""
    ds = load_dataset(cfg.dataset, cfg.data)
    out.mkdir(parents=True, exist_ok=True)
    run = build(cfg, out, None, ds, torch.device("cpu"), Dist())
    named = {n.removesuffix(".alpha"): p for n, p in run.model.named_parameters() if n.endswith(".alpha")}
    weights = {n: dict(run.model.named_parameters())[f"{n}.weight"] for n in named}
    grads: dict[str, list[float]] = defaultdict(list)
    for n, p in named.items():
        p.register_hook(lambda g, n=n: grads[n].append(float(g)))
    epochs = []
    for epoch in range(cfg.epochs):
        grads.clear()
        a0 = {n: float(p) for n, p in named.items()}
        w0 = {n: w.detach().clone() for n, w in weights.items()}
        lr = run.opt.param_groups[-1]["lr"]
        record = train_one_epoch(run, epoch, progress=False)
        checkpoint_and_record(run, epoch, record)
        layers = {}
        for n, p in named.items():
            g = torch.tensor(grads[n])
            w = weights[n].detach()
            layers[n] = {"alpha": float(p), "d_alpha": float(p) - a0[n], "grad_mean": float(g.mean()),
                         "grad_abs": float(g.abs().mean()), "consistency": float(g.mean().abs() / g.abs().mean()),
                         "w_std": float(w.std()), "w_rel_move": float((w - w0[n]).norm() / w0[n].norm())}
        epochs.append({**record, "lr_alpha": lr, "layers": layers})
        print(f"{cfg.noise_mode} epoch {epoch + 1}: α mean {record['alpha_mean']:.4f}, "
              f"{record['images_per_s']:.0f} img/s", flush=True)
    return epochs


def summarise_epoch(e: dict) -> dict:
    ls = list(e["layers"].values())
    mean = lambda k: sum(v[k] for v in ls) / len(ls)  # noqa: E731
    return {"alpha_mean": mean("alpha"), "alpha_min": min(v["alpha"] for v in ls), "alpha_max": max(v["alpha"] for v in ls),
            "d_alpha_abs_rel": sum(abs(v["d_alpha"]) for v in ls) / len(ls) / ALPHA_INIT,
            "grad_abs": mean("grad_abs"), "consistency": mean("consistency"), "w_rel_move": mean("w_rel_move"),
            "lr": e["lr_alpha"], "images_per_s": e["images_per_s"], "clean": e["train_clean_acc"], "adv": e["train_adv_acc"]}


ALPHA_HEAD = ("| noise | epoch | α's lr | α mean (min–max) | mean \\|Δα\\| this epoch / 0.25 | weight moved ‖ΔW‖/‖W‖ "
              "| mean \\|∂L/∂α\\| | sign consistency | train clean / adv % | img/s |")


def cmd_alpha(args: argparse.Namespace) -> None:
    if args.render:  # the section again from the recorded numbers, no training
        results = json.loads((OUT / "alpha.json").read_text())
    else:
        results = {}
        for mode in args.modes:
            cfg = TrainConfig(method="float", arch="resnet20", dataset="cifar10", data=args.data, epochs=args.epochs,
                              limit_train=args.limit_train, noise_mode=mode, threads=args.threads, seed=args.seed)
            results[mode] = train_recording_alpha(cfg, OUT / f"alpha_{mode}")
        atomic_write_json(OUT / "alpha.json", results)
    rows = []
    for mode, epochs in results.items():
        for i, e in enumerate(epochs):
            s = summarise_epoch(e)
            rows.append(f"| `{mode}` | {i + 1} | {s['lr']:.3f} | {s['alpha_mean']:.4f} ({s['alpha_min']:.3f}–{s['alpha_max']:.3f}) "
                        f"| {100 * s['d_alpha_abs_rel']:.2f} % | {100 * s['w_rel_move']:.1f} % | {s['grad_abs']:.4f} "
                        f"| {s['consistency']:.2f} | {100 * s['clean']:.1f} / {100 * s['adv']:.1f} | {s['images_per_s']:.0f} |")
    last = results[next(iter(results))][-1]["layers"]
    per_layer = " · ".join(f"{n.replace('.', '')}: {v['alpha']:.3f}" for n, v in last.items())
    write_section("alpha", f"""### How α learns (measured)

`python benchmarks/lambda_why.py alpha --limit-train {args.limit_train} --epochs {args.epochs}`: FLOAT ResNet-20,
{args.limit_train} CIFAR-10 training images, {args.epochs} epochs, seed {args.seed}, lr 0.1 cosine, batch 128; α gradient recorded
at every backward (one per step). Machine: {machine()}, 2 vCPU shared with a training queue, `nice -n 10`.

{ALPHA_HEAD}
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Sign consistency = |mean of ∂L/∂α| / mean |∂L/∂α| over the epoch's steps, averaged over layers: 1 is a steady drift,
about 1/√steps ≈ {1 / (args.limit_train // 128) ** 0.5:.2f} a random walk.
α per layer after the last `{next(iter(results))}` epoch: {per_layer}.
""")


# ---------------------------------------------------------------- dial: what s does; fresh noise at evaluation
@contextlib.contextmanager
def fresh_noise(model: torch.nn.Module, seed: int) -> Iterator[None]:
    """PNI's evaluation: a new z for every noisy layer at every forward (attack steps included); the recorded draw
    is restored afterwards."""
    g = torch.Generator().manual_seed(seed)
    layers = [m for m in model.modules() if isinstance(m, (NoisyConv2d, NoisyLinear)) and m.noisy]
    saved = [m.z.clone() for m in layers]
    def redraw(m: torch.nn.Module, _inputs: tuple) -> None:
        m.z.normal_(generator=g)

    hooks = [m.register_forward_pre_hook(redraw) for m in layers]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for m, z in zip(layers, saved, strict=True):
            m.z.copy_(z)


def eot_pgd(model, x, y, eps, step, steps, draws, generator):
    """PGD whose every step follows the gradient averaged over `draws` forwards (Expectation over Transformation:
    under fresh noise each forward is a new draw)."""
    with eval_mode(model), torch.enable_grad():
        adv = (x + eps * (torch.rand(x.shape, generator=generator) * 2 - 1)).clamp(0, 1)
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = sum(F.cross_entropy(model(adv), y) for _ in range(draws))
            (grad,) = torch.autograd.grad(loss, adv)
            adv = torch.min(torch.max(adv.detach() + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def accuracies(model, x, y, eps, batch, seed, eot_draws: int = 0) -> tuple[float, float]:
    """(clean, PGD-20 or EOT-PGD-20 accuracy) at the model's current state."""
    clean = adv = 0
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        g = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            clean += int((model(xb).argmax(1) == yb).sum())
        xa = (eot_pgd(model, xb, yb, eps, eps / 4, 20, eot_draws, g) if eot_draws
              else pgd(model, xb, yb, eps, eps / 4, 20, generator=g))
        with torch.no_grad():
            adv += int((model(xa).argmax(1) == yb).sum())
    return clean / len(x), adv / len(x)


def cmd_dial(args: argparse.Namespace) -> None:
    model, cfg, ckpt = load_model(args.run)
    ds = load_dataset(cfg.dataset, args.data or cfg.data)
    n_train = min(cfg.limit_train or len(ds.x_train), len(ds.x_train))
    ds = ds.limit(test=args.limit, seed=0)
    x, y = to_float(ds.x_test), ds.y_test
    name = Path(args.run).name
    saved = OUT / f"dial_{name}.json"
    rows = json.loads(saved.read_text())["rows"] if args.render else []
    for bn in (BN_CLEAN, BN_ADV) if not args.render else ():
        for s in args.scales:
            model.set_state(s, bn, model.widths[0])
            row = {"bn": "C" if bn == BN_CLEAN else "A", "s": s}
            t0 = time.perf_counter()
            row["fixed"] = accuracies(model, x, y, cfg.eps, args.batch, 0)
            if s > 0:
                with fresh_noise(model, 1234):
                    row["fresh"] = accuracies(model, x, y, cfg.eps, args.batch, 0)
                if bn == BN_ADV and s in args.eot_at:
                    with fresh_noise(model, 1234):
                        row["fresh_eot"] = accuracies(model, x[:args.eot_limit], y[:args.eot_limit], cfg.eps,
                                                      args.batch, 0, eot_draws=args.eot_draws)
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(row, flush=True)
    if not args.render:
        atomic_write_json(saved, {"run": str(args.run), "config": cfg.to_dict(), "epoch": ckpt["epoch"],
                                  "n_images": len(x), "argv": sys.argv[3:], "eot": [args.eot_draws, min(args.eot_limit, len(x))],
                                  "rows": rows})
    alpha = sum(model.alphas().values()) / len(model.alphas())
    pct = lambda p: f"{100 * p[0]:.1f} / {100 * p[1]:.1f}" if p else "—"  # noqa: E731
    table = [f"| BN_{r['bn']} | {r['s']:g} | {r['s'] * alpha:.3f} | {pct(r['fixed'])} | {pct(r.get('fresh'))} "
             f"| {pct(r.get('fresh_eot'))} |" for r in rows]
    record = json.loads(saved.read_text())
    argv, (eot_draws, eot_limit) = record["argv"], record["eot"]
    log = [json.loads(ln) for ln in (Path(args.run) / "log.jsonl").read_text().splitlines() if ln.strip()]
    run = Path(args.run).resolve()
    shown_run = run.relative_to(ROOT) if run.is_relative_to(ROOT) else args.run
    write_section(f"dial-{name}", f"""### What s does, and what fresh noise at evaluation would add: `{name}`

`python benchmarks/lambda_why.py dial {shown_run} {shown_args(argv)}`:
{cfg.method.upper()} {cfg.arch} at width {model.widths[0]:g} ({cfg.noise_mode} noise, {ckpt['epoch']} epochs on
{n_train} {cfg.dataset} images, α mean after training {log[-1]['alpha_mean']:.3f}), {record["n_images"]} test images (seeded
subset), CA / PGD-20 RA % (ε = {cfg.eps:.4g} = {cfg.eps * 255:.3g}/255, step ε/4, random start). `recorded draw`: the deployed
model (z fixed). `fresh draw`: PNI's evaluation, a new z at every forward, so each of PGD's 20 steps and the
final forward see different weights. `fresh + EOT`: the same with every PGD step following the gradient averaged
over {eot_draws} draws (first {eot_limit} images).
Noise std per weight = s·α·σ(W); the column gives s·mean α (σ units). Machine: {machine()}, shared.

| BN | s | s·ᾱ | recorded draw | fresh draw | fresh + EOT |
|---|---|---|---|---|---|
{chr(10).join(table)}
""")


# ---------------------------------------------------------------- variant: training under a mixing dial
def dial_curve(model, x, y, eps, batch, lambdas, dial: str) -> list[dict]:
    """CA / PGD-20 RA at each λ_n under `dial` (switch with λ_th = 0, or a mixing dial) on the recorded draw."""
    rows = []
    for lam in lambdas:
        model.set_operating_point(OperatingPoint(lam, model.widths[0], 0.0, dial))
        ca, ra = accuracies(model, x, y, eps, batch, 0)
        rows.append({"lambda_n": lam, "dial": dial, "clean": ca, "pgd20": ra})
        print(f"  {dial} λ={lam:g}: {100 * ca:.1f} / {100 * ra:.1f}", flush=True)
    return rows


def cmd_variant(args: argparse.Namespace) -> None:
    ds = load_dataset("cifar10", args.data)
    test = ds.limit(test=args.limit, seed=0)
    x, y = to_float(test.x_test), test.y_test
    result = {}
    for train_dial in ("switch", "mix"):
        out = OUT / f"variant_{train_dial}_{args.limit_train}x{args.epochs}"
        cfg = TrainConfig(method="float", arch="resnet20", dataset="cifar10", data=args.data, epochs=args.epochs,
                          limit_train=args.limit_train, threads=args.threads, seed=args.seed, train_dial=train_dial)
        train(cfg, out, resume=(out / "checkpoint.pt").exists(), progress=False, dataset=ds)
        model, cfg, _ = load_model(out)
        log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines() if ln.strip()]
        print(f"trained with dial {train_dial}", flush=True)
        result[train_dial] = {"log": log, "curves": {d: dial_curve(model, x, y, cfg.eps, args.batch, args.lambdas, d)
                                                      for d in ("switch", "mix")}}
    atomic_write_json(OUT / f"variant_{args.limit_train}x{args.epochs}.json", result)
    lines = []
    for train_dial, r in result.items():
        for d, rows in r["curves"].items():
            cells = " | ".join(f"{100 * row['clean']:.1f} / {100 * row['pgd20']:.1f}" for row in rows)
            lines.append(f"| `{train_dial}` | {d} | {cells} |")
    head = " | ".join(f"λ_n = {v:g}" for v in args.lambdas)
    size = f"{args.limit_train}x{args.epochs}"
    write_section(f"variant-{size}", f"""### The variant on a slice: {args.limit_train} images × {args.epochs} epochs

`python benchmarks/lambda_why.py variant --limit-train {args.limit_train} --epochs {args.epochs}`: FLOAT ResNet-20 trained
with `--train-dial switch` (the paper) and `--train-dial mix` (the variant), same seed and data; each evaluated under
the switch dial (λ_th = 0: BN_A for λ_n > 0, s = λ_n) and the mix dial (t = s = λ_n), on the recorded draw. CA / PGD-20
RA %, {args.limit} test images. Machine: {machine()}, 2 vCPU heavily shared (the training numbers here are not a
cost measurement; `cost` is).

| trained | evaluated | {head} |
|---|---|{'---|' * len(args.lambdas)}
{chr(10).join(lines)}
""")


def cmd_cost(args: argparse.Namespace) -> None:
    """Seconds per optimiser step, FLOAT vs the variant (at λ = 1 and at an interior λ) vs OAT, interleaved step by
    step on the same batches so that a load change on the shared machine hits all alike."""
    ds = load_dataset("cifar10", args.data).limit(train=args.batch_size * args.rounds, seed=0)
    meta = {"name": ds.name, "num_classes": ds.num_classes, "classes": ds.classes, "input_shape": list(ds.input_shape),
            "mean": list(ds.mean), "std": list(ds.std)}
    setups = {}
    for name, method, dial_ in (("float", "float", "switch"), ("mix, λ=1", "float", "mix"),
                                ("mix, interior λ", "float", "mix"), ("oat", "oat", "switch")):
        cfg = TrainConfig(method=method, arch="resnet20", dataset="cifar10", train_dial=dial_, batch_size=args.batch_size)
        torch.manual_seed(0)
        model = build_model(cfg, meta).train()
        obj = Objective(model, cfg)
        if name == "mix, λ=1":
            obj.train_lambda = lambda x, g: 1.0
        elif name == "mix, interior λ":
            obj.train_lambda = lambda x, g: 0.5
        setups[name] = (obj, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    times: dict[str, list[float]] = defaultdict(list)
    for r in range(args.rounds):
        xb = to_float(ds.x_train[r * args.batch_size:(r + 1) * args.batch_size])
        yb = ds.y_train[r * args.batch_size:(r + 1) * args.batch_size]
        for name, (obj, opt) in setups.items():
            g = torch.Generator().manual_seed(r)
            t0 = time.perf_counter()
            opt.zero_grad()
            obj(xb, yb, 1.0, g).loss.backward()
            opt.step()
            times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()), flush=True)
    med = {n: sorted(t[1:])[len(t[1:]) // 2] for n, t in times.items()}  # the first round warms up
    best = {n: min(t[1:]) for n, t in times.items()}
    mix, mix_best = (0.5 * d["mix, λ=1"] + 0.5 * d["mix, interior λ"] for d in (med, best))
    ips = lambda sec: args.batch_size / sec  # noqa: E731
    atomic_write_json(OUT / "cost.json", {"times": times, "median": med, "best": best})
    variant_row = (f"| **variant (half the batches at λ = 1)** | {mix:.3f} | **{mix / med['float']:.2f}×** | {mix_best:.3f} "
                   f"| **{mix_best / best['float']:.2f}×** | {ips(mix_best):.0f} |")
    write_section("cost", f"""### What the variant costs per step

`python benchmarks/lambda_why.py cost --rounds {args.rounds}`: ResNet-20, CIFAR-10 batches of {args.batch_size}, one
optimiser step (forward, PGD-7, backward) of each setup in turn on the same batch, {args.rounds} rounds, median of
rounds 2–{args.rounds} and best of them. `mix, λ=1` computes exactly what `float` computes: the gap between the two
is the measurement's noise. Machine: {machine()}, shared (interleaving makes the ratios fair, not the absolute rates).

| setup | median s / step | vs FLOAT | best s / step | vs FLOAT | images/s (best) |
|---|---|---|---|---|---|
""" + "\n".join(f"| {n} | {t:.3f} | {t / med['float']:.2f}× | {best[n]:.3f} | {best[n] / best['float']:.2f}× "
                f"| {ips(best[n]):.0f} |" for n, t in med.items()) + f"""
{variant_row}
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("alpha")
    a.add_argument("--modes", nargs="+", default=["fixed", "resample"])
    a.add_argument("--limit-train", type=int, default=5000)
    a.add_argument("--epochs", type=int, default=3)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--render", action="store_true", help="rewrite the section from runs/lambda_why/alpha.json")
    d = sub.add_parser("dial")
    d.add_argument("run")
    d.add_argument("--limit", type=int, default=300)
    d.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    d.add_argument("--eot-at", type=float, nargs="*", default=[1.0])
    d.add_argument("--eot-draws", type=int, default=5)
    d.add_argument("--eot-limit", type=int, default=100)
    d.add_argument("--batch", type=int, default=100)
    d.add_argument("--render", action="store_true", help="rewrite the section from runs/lambda_why/dial_RUN.json")
    v = sub.add_parser("variant")
    v.add_argument("--limit-train", type=int, default=3000)
    v.add_argument("--epochs", type=int, default=2)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--limit", type=int, default=200)
    v.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.2, 0.5, 0.7, 1.0])
    v.add_argument("--batch", type=int, default=100)
    c = sub.add_parser("cost")
    c.add_argument("--rounds", type=int, default=6)
    c.add_argument("--batch-size", type=int, default=128)
    for p in (a, v, c):
        p.add_argument("--data", default=str(CIFAR10))
    d.add_argument("--data", default=None, help="[default: the run's recorded data]")
    for p in (a, d, v, c):
        p.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"alpha": cmd_alpha, "dial": cmd_dial, "variant": cmd_variant, "cost": cmd_cost}[args.cmd](args)


if __name__ == "__main__":
    main()
