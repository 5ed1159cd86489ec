"""What `floatedge quickstart` shows a newcomer, and how long it takes: runs the quickstart pipeline from scratch
(train → evaluate → export → runtime) in a fresh directory, timing each step, and writes the `quickstart` section of
docs/RESULTS.md with its trade-off table, the runtime's latency per point and the plot.

    python benchmarks/quickstart.py
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

from _results import FIGURES, ROOT, machine, update_section

from floatedge.cli import format_tour, run_quickstart
from floatedge.fsutil import atomic_write, atomic_write_json
from floatedge.train.evaluate import format_table
from floatedge.train.quickstart import EPOCHS, EPS, WIDTHS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    args = ap.parse_args()
    out = ROOT / "runs" / "quickstart-bench"
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    summary = run_quickstart(out, args.epochs, echo=lambda _line: None, progress=False)
    wall = time.perf_counter() - t0
    result, points, secs = summary["result"], summary["points"], summary["seconds"]
    result = dict(result, run=str(out.relative_to(ROOT)))  # no paths of this machine in the record
    atomic_write_json(FIGURES / "quickstart.json", {"eval": result, "runtime": points, "seconds": secs, "wall": wall})
    png = out / "eval.png"
    atomic_write(FIGURES / "quickstart.png", lambda f: f.write(png.read_bytes()))

    th = points[0]["lambda_th"]
    rows = {w: sorted((r for r in result["rows"] if r["width"] == w and r["lambda_th"] == th),
                      key=lambda r: r["lambda_n"]) for w in WIDTHS}
    spans = "; ".join(f"width {w:g}: CA {100 * rs[0]['clean_acc']:.1f} → {100 * rs[-1]['clean_acc']:.1f}%, "
                      f"RA {100 * rs[0]['pgd20_acc']:.1f} → {100 * rs[-1]['pgd20_acc']:.1f}%" for w, rs in rows.items())
    body = f"""## Quickstart: the trade-off on the embedded digits

Written by `benchmarks/quickstart.py` (the pipeline of `floatedge quickstart`, from an empty directory). FLOATS
ResNet-20, widths {', '.join(f'{w:g}' for w in WIDTHS)}, {args.epochs} epochs on scikit-learn's 8×8 digits (1,500
training, {result['n_images']} test images; one test image is {100 / result['n_images']:.2f} points), trained and
attacked at ε = {EPS:g} (why: `floatedge/train/quickstart.py`), PGD-20 with step ε/4. Machine: {machine()}; 2 vCPU
shared with other jobs (load average {load:.1f} when it started, {os.getloadavg()[0]:.1f} when it ended), so the
seconds are an upper bound.

Wall time {wall:.0f} s: training {secs['train']:.0f} s, evaluation {secs['eval']:.0f} s, export {secs['export']:.0f} s,
runtime {secs['runtime']:.0f} s.

From λ_n = 0 to 1 at λ_th = {th:g} — {spans}.

```text
{format_table(result)}
```

```text
{format_tour(points)}
```

![quickstart trade-off](results/quickstart.png)
"""
    update_section("quickstart", body)
    print(body)


if __name__ == "__main__":
    main()
