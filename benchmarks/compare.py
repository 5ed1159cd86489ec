"""Issue bar for the baselines: FLOAT vs OAT vs PGD-AT (and FLOATS vs OATS) on real CIFAR-10, measured side
by side in one run, written to docs/RESULTS.md (section `compare`) with figures in docs/results/.

    python benchmarks/compare.py            # ~30 min on one shared CPU core; resumable

Scale (CPU): ResNet-20, a seeded subset of the training set, a few epochs, PGD-20 on a seeded test subset.
The parameter table and the inference latency are in benchmarks/params_latency.py.
"""
from __future__ import annotations

import argparse
import sys
import time

from _results import CIFAR10, RESULTS, ROOT, machine, shown, shown_args, update_section

from floatedge.train.compare import CompareConfig, compare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(CIFAR10))
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--section", default="compare")
    ap.add_argument("--limit-train", type=int, default=1024)
    ap.add_argument("--eval-limit", type=int, default=200)
    ap.add_argument("--attacks", default="pgd20")
    ap.add_argument("--no-slim", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_compare"))
    args = ap.parse_args()
    cfg = CompareConfig(arch=args.arch, dataset="cifar10", data=args.data, epochs=args.epochs,
                        batch_size=args.batch_size,
                        limit_train=args.limit_train, eval_limit=args.eval_limit,
                        attacks=tuple(args.attacks.split(",")), slim=not args.no_slim, threads=1)
    t0 = time.perf_counter()

    def show(e: dict) -> None:
        print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {e}", flush=True)

    summary = compare(cfg, args.out, callback=show, results_md=RESULTS, section=args.section)
    report = open(summary["report"]).read()
    timing = summary["timing"]
    train_min = sum(sum(t["epoch_seconds"]) for t in timing.values()) / 60
    extra = (f"\nWritten by `python benchmarks/compare.py{' ' + shown_args(sys.argv[1:]) if sys.argv[1:] else ''}`"
             f" (output in `{shown(args.out)}`). Machine: {machine()}, 2 cores shared with other jobs. Training took "
             f"{train_min:.0f} min of epochs in all; this invocation {(time.perf_counter() - t0) / 60:.1f} min wall.\n")
    update_section(args.section, report + extra)
    print(report + extra)


if __name__ == "__main__":
    main()
