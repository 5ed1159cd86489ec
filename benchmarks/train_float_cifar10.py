"""Issue bar for training: FLOAT ResNet-20 on real CIFAR-10 at a CPU scale, then CA/RA per operating
point under PGD-20 and AutoAttack, written to docs/RESULTS.md (section `float-resnet20-<mode>`).

    python benchmarks/train_float_cifar10.py --noise-mode fixed
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from _results import CIFAR10, FIGURES, ROOT, machine, update_section

from floatedge.train.evaluate import evaluate, format_table, load_result, merge_results, save_result
from floatedge.train.trainer import TrainConfig, read_log, train


def _eval_job(run: str, limit: int, data: str, job: dict) -> dict:
    torch.set_num_threads(1)
    return evaluate(run, limit=limit, data=data, progress=False, **job)


def _evaluate(out: Path, args) -> dict:
    """PGD-20 over the grid and AutoAttack at a few λ_n, one process per job (one thread each) so the costly
    AutoAttack points run side by side on the two cores; merged into one result."""
    aa_lambdas = tuple(float(v) for v in args.aa_lambdas.split(",") if v.strip())
    # the most robust point (slowest AutoAttack) first, so it starts at once
    jobs = [dict(attacks=["autoattack"], lambdas=(lam,), lambda_ths=(0.0,)) for lam in sorted(aa_lambdas)[::-1]]
    grid_at = min(1, len(jobs))
    jobs.insert(grid_at, dict(attacks=args.attacks.split(",")))
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = [f.result() for f in [pool.submit(_eval_job, str(out), args.eval_limit, args.data, job) for job in jobs]]
    result = parts.pop(grid_at)
    for extra in parts:
        result = merge_results(result, extra)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(CIFAR10))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--eval-limit", type=int, default=500)
    ap.add_argument("--attacks", default="pgd20")
    ap.add_argument("--aa-lambdas", default="0,1",
                    help="λ_n at which AutoAttack also runs (it costs ~10-25 min per robust point on this CPU)")
    ap.add_argument("--noise-mode", default="fixed", choices=["fixed", "resample"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", nargs="*", default=None, metavar="EVAL_JSON",
                    help="skip evaluation: merge these `floatedge eval` results (e.g. AutoAttack at one λ_n) into this "
                         "benchmark's saved result and rewrite its section")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or ROOT / "runs" / f"bench_float_resnet20_{args.noise_mode}")
    cfg = TrainConfig(method="float", arch="resnet20", dataset="cifar10", data=args.data, epochs=args.epochs,
                      limit_train=args.limit_train, noise_mode=args.noise_mode, threads=args.threads)
    t0 = time.perf_counter()
    train(cfg, out, resume=(out / "checkpoint.pt").exists())
    train_s = time.perf_counter() - t0
    log = read_log(out)
    tag = f"float_resnet20_{args.noise_mode}"
    t1 = time.perf_counter()
    if args.merge is not None:  # add separately run evaluations (e.g. AutoAttack at one λ_n) to the saved result
        result = load_result(FIGURES / f"{tag}.json")
        for extra in args.merge:
            result = merge_results(result, load_result(extra))
    else:
        result = _evaluate(out, args)
    eval_s = time.perf_counter() - t1
    aa_lambdas = sorted({r["lambda_n"] for r in result["rows"] if r.get("autoattack_acc") is not None})
    paths = save_result(result, FIGURES / f"{tag}.json")
    table = format_table(result)
    print(table)
    rows = {(r["lambda_th"], r["lambda_n"]): r for r in result["rows"]}
    ca0, ca1 = rows[(0.0, 0.0)]["clean_acc"], rows[(0.0, 1.0)]["clean_acc"]
    ra0, ra1 = rows[(0.0, 0.0)]["pgd20_acc"], rows[(0.0, 1.0)]["pgd20_acc"]
    checks = [f"- CA(λ_n=0) − CA(λ_n=1) = {100 * (ca0 - ca1):.2f} points (bar ≥ 3): {'PASS' if ca0 - ca1 >= 0.03 else 'FAIL'}",
              f"- RA(λ_n=1) − RA(λ_n=0), PGD-20 = {100 * (ra1 - ra0):.2f} points (bar ≥ 5): {'PASS' if ra1 - ra0 >= 0.05 else 'FAIL'}"]
    if rows[(0.0, 1.0)].get("autoattack_acc") is not None:
        aa1 = rows[(0.0, 1.0)]["autoattack_acc"]
        checks.append(f"- AutoAttack RA at λ_n=1 = {100 * aa1:.2f}% vs PGD-20 {100 * ra1:.2f}%: gap {100 * (ra1 - aa1):.2f} "
                      f"points (bar ≤ 5): {'PASS' if ra1 - aa1 <= 0.05 else 'FAIL'}")
    aa_text = ", ".join(f"{v:g}" for v in aa_lambdas)
    alphas = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    alpha_vals = [float(v) for k, v in alphas.items() if k.endswith(".alpha")]
    body = f"""## FLOAT ResNet-20 on CIFAR-10, noise mode `{args.noise_mode}`

Written by `benchmarks/train_float_cifar10.py --noise-mode {args.noise_mode}`.

Scale: {cfg.limit_train or 50000} training images (of the 50,000), {cfg.epochs} epochs, batch {cfg.batch_size},
SGD lr {cfg.lr} cosine, PGD-7 (ε=8/255, step 2/255) on half of each batch; evaluation on {result['n_images']} test images
(seeded subset): PGD-20 at every point, AutoAttack (standard) at λ_n ∈ {{{aa_text}}} (— where not run: it costs
10–25 min per robust point on this CPU), ε=8/255. Machine: {machine()}.
Training took {train_s / 60:.1f} min this invocation ({sum(r['seconds'] for r in log) / 60:.1f} min over all epochs,
{log[-1]['images_per_s']:.0f} images/s in the last epoch); evaluation {eval_s / 60:.1f} min this invocation
(AutoAttack took 25–45 min per robust point).
The evaluated model is the deployed one: noise seed {result['noise_seed']}, fixed draw.

```
{table}
```

{chr(10).join(checks)}

Trained α per layer: min {min(alpha_vals):.3f}, mean {sum(alpha_vals) / len(alpha_vals):.3f}, max {max(alpha_vals):.3f}
(initialised to 0.25).

![trade-off](results/{tag}.png)

Training log (per epoch): {json.dumps([{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in log])}
"""
    update_section(f"float-resnet20-{args.noise_mode}", body)
    print("\n".join(checks))
    print(f"wrote {paths['png']} and docs/RESULTS.md")


if __name__ == "__main__":
    main()
