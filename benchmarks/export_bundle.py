"""Issue bar for the export bundle: export the ResNet-20 benchmark run, verify it, and report parity
(max |Δlogits| per λ_n and width, η in float32 and float16), bundle size against a plain export of the
same widths, and export time in docs/RESULTS.md (section `export-bundle`).

    python benchmarks/export_bundle.py                       # runs/bench_float_resnet20_fixed + its eval
    python benchmarks/export_bundle.py --run runs/r20 --eval runs/r20/eval.json

"Plain export" = the static form at λ_n = 0 (`floatedge.graph.static.plain_model`): the network with
constant weights and one BN set, which is what exporting the architecture without FLOAT gives.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import FIGURES, ROOT, machine, shown, update_section

from floatedge.bundle import PARITY_TOL, VERIFY_LAMBDAS, open_bundle
from floatedge.export.torch_export import export_bundle, finish, torch_reference, trace_width
from floatedge.export.verify import ort_session, run_scalable, verify_bundle
from floatedge.train.trainer import load_model

DEFAULT_RUN = ROOT / "runs" / "bench_float_resnet20_fixed"
DEFAULT_EVAL = FIGURES / "float_resnet20_fixed.json"


def dtype_parity(run: Path, lambda_th: float) -> dict[str, dict]:
    """Per (width, λ_n) ONNX Runtime vs PyTorch for η stored as float32 and as float16, and the model bytes of
    each — measured directly, so float16 is reported even where the exporter would refuse it."""
    model, _, ckpt = load_model(run)
    shape = ckpt["dataset"]["input_shape"]
    traced = {w: trace_width(model, w, shape) for w in model.widths}
    images, reference = torch_reference(model, model.widths, lambda_th, shape)
    out = {}
    for dtype in ("float32", "float16"):
        deltas, size = {}, 0
        for w, t in traced.items():
            proto = finish(t, lambda_th, dtype)
            size += len(proto.SerializeToString())
            sess = ort_session(proto)
            for lam in VERIFY_LAMBDAS:
                deltas[(w, lam)] = float(np.abs(run_scalable(sess, images, lam) - reference[(w, lam)]).max())
        out[dtype] = {"deltas": deltas, "bytes": size}
    out["logit_scale"] = float(max(np.abs(v).max() for v in reference.values()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(DEFAULT_RUN))
    ap.add_argument("--eval", default=None,
                    help=f"eval result of the run (default: {DEFAULT_EVAL} for the default run)")
    ap.add_argument("--out", default=None, help="where to write the bundle (default: a temporary directory)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--section", default="export-bundle", help="docs/RESULTS.md section to write")
    ap.add_argument("--title", default="Export bundle (issue 4): parity, size, export time")
    ap.add_argument("--note", default="", help="a sentence about the run, put under the title")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    eval_file = args.eval or (str(DEFAULT_EVAL) if run.resolve() == DEFAULT_RUN.resolve() and DEFAULT_EVAL.exists()
                              else None)
    tmp = Path(tempfile.mkdtemp(prefix="export_bench."))
    out = Path(args.out) if args.out else tmp / "model.febundle"
    try:
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        res = export_bundle(run, out, eval_file=eval_file, force=True)
        export_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        report = verify_bundle(out, run)
        verify_s = time.perf_counter() - t1
        bundle = open_bundle(out)
        tar = export_bundle(run, tmp / "model_tar.febundle", eval_file=eval_file, tar=True, eta_dtype=res.eta_dtype)
        both = dtype_parity(run, bundle.lambda_th)
        load1 = os.getloadavg()[0]
    finally:
        if not args.out:
            shutil.rmtree(tmp, ignore_errors=True)

    m = bundle.manifest
    widths = bundle.widths
    failures = report.failures()
    verdict = "PASS" if not failures else f"FAIL ({failures[0]})"
    lines = ["| width | λ_n | s | BN | ORT vs PyTorch (shipped bundle) | static vs scalable | η float32 | η float16 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report.parity:
        op = bundle.operating_point(r.lambda_n, r.width)
        f32, f16 = both["float32"]["deltas"][(r.width, r.lambda_n)], both["float16"]["deltas"][(r.width, r.lambda_n)]
        lines.append(f"| {r.width:g} | {r.lambda_n:g} | {op.noise_scale:.2f} | {op.bn_name} | {r.torch_delta:.2e} | "
                     f"{r.static_delta:.2e} | {f32:.2e} | {f16:.2e} |")
    max16 = max(both["float16"]["deltas"].values())
    max32 = max(both["float32"]["deltas"].values())
    scale = both["logit_scale"]
    ratio32, ratio16 = (both[d]["bytes"] / res.plain_bytes for d in ("float32", "float16"))
    table = m.get("operating_points")
    lams = ", ".join(f"{x:g}" for x in VERIFY_LAMBDAS)
    pending = f" ({DEFAULT_EVAL.name} not written yet)" if run == DEFAULT_RUN else ""
    table_note = (f"{len(table['rows'])} rows from `{table['source']}` ({table['n_images']} test images; "
                  f"{', '.join(table['attacks'])})" if table else f"none: no eval result given{pending}")
    sizes = " · ".join(f"w={w:g}: {res.model_bytes[w] / 1e6:.2f} MB vs {res.plain_model_bytes[w] / 1e6:.2f} MB"
                       for w in widths)
    note = f"{args.note}\n" if args.note else ""
    section = f" --section {args.section}" if args.section != "export-bundle" else ""
    body = f"""## {args.title}

{note}Written by `python benchmarks/export_bundle.py --run {shown(run)}{f" --eval {shown(eval_file)}" if eval_file else ""}{section}`.
Run: `{m['method']}` `{m['architecture']}` on {m['provenance']['dataset']['name']}, epoch {m['provenance']['epoch']},
widths {", ".join(f"{w:g}" for w in widths)}, λ_th = {bundle.lambda_th:g}, opset {m['models'][0]['opset']}.
Machine: {machine()}; ONNX Runtime CPU, 1 thread; load average {load0:.1f} → {load1:.1f} (shared with training jobs,
so times are wall-clock under contention).

**`floatedge verify --run`: {verdict}** — checksums of {len(report.files)} model file(s) + manifest,
`onnx.checker` (full check) on every width, and parity at λ_n ∈ {{{lams}}} × every width on {report.n_images}
seeded uniform images, tolerance {PARITY_TOL:g}. Shipped η: **{res.eta_dtype}** (`--eta-dtype auto`).

| | |
|---|---|
| max \\|Δlogits\\| ONNX Runtime vs PyTorch, shipped bundle | {report.max_delta("torch"):.2e} |
| max \\|Δlogits\\| static form vs runtime-scalable (ORT) | {report.max_delta("static"):.2e} |
| max \\|Δlogits\\| with η float32 / float16 | {max32:.2e} / {max16:.2e} (largest \\|logit\\| {scale:.1f}) |
| float16 η within {PARITY_TOL:g} | {"yes" if max16 <= PARITY_TOL else "no"} |
| bundle size (directory, all files) | {res.bundle_bytes / 1e6:.2f} MB |
| plain export of the same widths (static form at λ_n = 0) | {res.plain_bytes / 1e6:.2f} MB |
| **size ratio, shipped bundle / plain** | **{res.size_ratio:.2f}×** |
| size ratio with η float32 / float16 (models only) | {ratio32:.2f}× / {ratio16:.2f}× |
| single-file bundle (`--tar`) | {tar.bundle_bytes / 1e6:.2f} MB |
| **export time** (`export_bundle`: load, trace, parity check, write, read back) | **{export_s:.1f} s** |
| verify time (`verify_bundle` with `--run`) | {verify_s:.1f} s |
| operating-point table | {table_note} |

Per model: {sizes} (bundle vs plain).

Parity per operating point (max |Δlogits| over the images; "η float32/float16" are ONNX Runtime vs PyTorch
with η stored that way, measured directly so float16 is shown even where `auto` rejects it):

{chr(10).join(lines)}

Where the size goes: the runtime-scalable model stores W and η (same shape as W) plus both BN sets, so it is
≈ 2× a plain model with float32 η and ≈ 1.5× with float16 η; the static form for any other operating point is
generated on demand (`floatedge static`) and not stored.
"""
    update_section(args.section, body)
    print(body)


if __name__ == "__main__":
    main()
