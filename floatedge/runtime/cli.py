"""`floatedge bench`: thin — parse, call `floatedge.runtime.bench.run_bench`, print, write JSON. No torch."""
from __future__ import annotations

import json
from pathlib import Path

import click

from floatedge.errors import user_errors
from floatedge.oppoint import parse_lambdas, parse_widths


def _parsed(parse):
    """A click callback: `parse(text)` (None passes through); a bad value names its flag (click.BadParameter)."""

    def callback(ctx, param, text):
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected whole numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"batch sizes must be 1 or more, got {text!r}")
    return sorted(set(values))


def _check_backend(backend: str) -> None:
    """The TensorRT backend's libraries import only on a machine that has them: say so in one line."""
    if backend != "tensorrt":
        return
    try:
        from floatedge.runtime.trt import TensorRTBackend  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(f"--backend tensorrt is not available here: {exc}") from None


@click.command("bench")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", show_default=True,
              help="auto = onnxruntime; tensorrt needs TensorRT 8.5+ and cuda-python (a Jetson).")
@click.option("--batches", default="1,8,32", show_default=True, callback=_parsed(_batches), help="Batch sizes to time.")
@click.option("--lambdas", default=None, callback=_parsed(parse_lambdas),
              help="λ_n values (default: the bundle's calibration table, else 0,0.2,0.7,1).")
@click.option("--widths", default=None, callback=_parsed(parse_widths), help="Widths (default: all in the bundle).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="ONNX Runtime intra-op threads.")
@click.option("--rounds", type=click.IntRange(min=10), default=200, show_default=True,
              help="Interleaved rounds per measurement (10 or more).")
@click.option("--budget", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="Seconds per measurement at most (at least 10 rounds run).")
@click.option("--clients", type=click.IntRange(min=1), default=4, show_default=True,
              help="Client threads in the switching test.")
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

    _check_backend(backend)
    res = run_bench(bundle, backend, batches=batches, lambdas=lambdas, widths=widths, threads=threads, rounds=rounds,
                    budget_s=budget, clients=clients, concurrency=concurrency, switch=not no_switch,
                    log=lambda s: click.echo(s, err=True))
    click.echo(format_table(res))
    if json_out:
        atomic_write_text(Path(json_out), json.dumps(res, indent=1, default=str) + "\n")
        click.echo(f"wrote {json_out}")


COMMANDS = [bench_cmd]
