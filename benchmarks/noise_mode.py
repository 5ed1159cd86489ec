"""Which noise mode gives the better *deployed* model? Trains FLOAT ResNet-20 twice on the same CIFAR-10 subset —
`fixed` (one recorded η draw for the whole run) and `resample` (a fresh draw every step) — and evaluates both on the
recorded draw, the model that export ships. Writes the `noise-mode` section of docs/RESULTS.md.

    python benchmarks/noise_mode.py --limit-train 5000 --epochs 3
"""
from __future__ import annotations

import argparse
import time

import torch
from _results import CIFAR10, FIGURES, ROOT, machine, update_section

from floatedge.fsutil import atomic_write_json
from floatedge.train.evaluate import evaluate, format_table
from floatedge.train.trainer import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(CIFAR10))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit-train", type=int, default=5000)
    ap.add_argument("--eval-limit", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results, tables, minutes = {}, [], {}
    for mode in ("fixed", "resample"):
        out = ROOT / "runs" / f"noise_mode_{mode}"
        cfg = TrainConfig(method="float", arch="resnet20", dataset="cifar10", data=args.data, epochs=args.epochs,
                          limit_train=args.limit_train, noise_mode=mode, threads=args.threads)
        t0 = time.perf_counter()
        train(cfg, out, resume=(out / "checkpoint.pt").exists(), progress=False)
        minutes[mode] = (time.perf_counter() - t0) / 60
        results[mode] = evaluate(out, lambdas=(0.0, 0.2, 0.7, 1.0), lambda_ths=(0.0,), attacks=["pgd20"],
                                 limit=args.eval_limit, data=args.data, progress=False)
        tables.append(f"`{mode}`:\n\n```\n{format_table(results[mode])}\n```")
    atomic_write_json(FIGURES / "noise_mode.json", results)
    best = {m: max(r["pgd20_acc"] for r in results[m]["rows"]) for m in results}
    ca0 = {m: results[m]["rows"][0]["clean_acc"] for m in results}
    winner = max(best, key=lambda m: (best[m], ca0[m]))
    body = f"""## Noise mode: `fixed` vs `resample` on the deployed model

Written by `benchmarks/noise_mode.py`. FLOAT ResNet-20, CIFAR-10, {args.limit_train} training images (seeded subset),
{args.epochs} epochs, same seed; both evaluated on the recorded η draw (what export ships), PGD-20 ε=8/255 on
{args.eval_limit} test images, λ_th = 0. Machine: {machine()}.

{chr(10).join(tables)}

Best PGD-20 RA: fixed {100 * best['fixed']:.2f}%, resample {100 * best['resample']:.2f}%; CA at λ_n=0: fixed
{100 * ca0['fixed']:.2f}%, resample {100 * ca0['resample']:.2f}%. Training minutes: fixed {minutes['fixed']:.1f},
resample {minutes['resample']:.1f}. On this run `{winner}` measures better on the deployed model.
"""
    update_section("noise-mode", body)
    print(body)


if __name__ == "__main__":
    main()
