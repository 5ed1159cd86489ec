"""`floatedge bench`: thin — parse, call `floatedge.runtime.bench.run_bench`, print, write JSON. No torch."""
from __future__ import annotations

import json
from pathlib import Path

import click

from floatedge.errors import user_errors


def _floats(text: str | None) -> list[float] | None:
    return [float(v) for v in text.split(",") if v.strip()] if text else None


@click.command("bench")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", show_default=True)
@click.option("--batches", default="1,8,32", show_default=True, help="Batch sizes to time.")
@click.option("--lambdas", default=None, help="λ_n values (default: the bundle's calibration table, else 0,0.2,0.7,1).")
@click.option("--widths", default=None, help="Widths (default: all in the bundle).")
@click.option("--threads", type=int, default=1, show_default=True, help="ONNX Runtime intra-op threads.")
@click.option("--rounds", type=int, default=200, show_default=True, help="Interleaved rounds per measurement.")
@click.option("--budget", type=float, default=3.0, show_default=True,
              help="Seconds per measurement at most (at least 10 rounds run).")
@click.option("--clients", type=int, default=4, show_default=True, help="Client threads in the switching test.")
@click.option("--concurrency", type=click.IntRange(min=0), default=None,
              help="Requests run at once in the switching test (0: unbounded; default: the runtime's, CPUs ÷ threads).")
@click.option("--no-switch", is_flag=True, help="Skip the switching-under-load test.")
@click.option("--json", "json_out", type=click.Path(), default=None, help="Write all figures as JSON here.")
@user_errors
def bench_cmd(bundle, backend, batches, lambdas, widths, threads, rounds, budget, clients, concurrency, no_switch,
              json_out) -> None:
    """Latency p50/p99 and throughput per operating point (batches 1, 8, 32) against the plain export of
    the same width, in-graph vs materialised, runtime overhead, width ratio, and switch cost under load."""
    from floatedge.fsutil import atomic_write_text
    from floatedge.runtime.bench import format_table, run_bench

    res = run_bench(bundle, backend, batches=[int(b) for b in batches.split(",") if b.strip()],
                    lambdas=_floats(lambdas), widths=_floats(widths), threads=threads, rounds=rounds, budget_s=budget,
                    clients=clients, concurrency=concurrency, switch=not no_switch, log=lambda s: click.echo(s, err=True))
    click.echo(format_table(res))
    if json_out:
        atomic_write_text(Path(json_out), json.dumps(res, indent=1, default=str) + "\n")
        click.echo(f"wrote {json_out}")
COMMANDS = [bench_cmd]
