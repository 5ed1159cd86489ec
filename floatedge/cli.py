"""The `floatedge` command: one group; each stage's commands live beside its code (`train/cli.py`,
`export/cli.py`, `runtime/cli.py`, ...) and are registered here. This module is the only one that imports every
stage: to collect their commands, and for `quickstart`, the one command that runs every stage in turn
(train → evaluate → export → runtime). No stage imports it."""
from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from floatedge import __version__
from floatedge.errors import user_errors
from floatedge.train.quickstart import EPOCHS as QUICKSTART_EPOCHS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="floatedge")
def main() -> None:
    """floatedge: train once-for-all robust classifiers (FLOAT/FLOATS), export them, run them on Jetsons."""


def _register() -> None:
    from floatedge.daemon.cli import COMMANDS as daemon_commands
    from floatedge.devices.cli import COMMANDS as device_commands
    from floatedge.devices.engine_cli import COMMANDS as engine_commands
    from floatedge.export.cli import COMMANDS as export_commands
    from floatedge.fleet.cli import COMMANDS as fleet_commands
    from floatedge.runtime.cli import COMMANDS as runtime_commands
    from floatedge.train.cli import COMMANDS as train_commands

    for cmd in (*train_commands, *export_commands, *runtime_commands, *device_commands, *engine_commands, *daemon_commands,
                *fleet_commands):
        main.add_command(cmd)


_register()


@main.command("quickstart")
@click.option("--out", type=click.Path(), default="runs/quickstart", show_default=True, help="Run directory.")
@click.option("--epochs", type=int, default=QUICKSTART_EPOCHS, show_default=True, help="Training epochs.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def quickstart_cmd(out: str, epochs: int, quiet: bool) -> None:
    """The whole pipeline on the embedded digits (~2 min).

    Trains a small FLOATS model (ResNet-20, widths 1.0 and 0.25, ε = 0.3: see floatedge/train/quickstart.py for
    why), evaluates clean and PGD-20 accuracy at every operating point, prints the trade-off and plots it, exports
    the bundle, then opens it on the runtime and switches it through its operating points, printing the latency
    of each. Run again, it reuses what is there (delete --out to start over).

    \b
    Example:
      floatedge quickstart && floatedge inspect runs/quickstart/model.febundle
    """
    from floatedge.train.cli import report_interrupt

    try:
        run_quickstart(Path(out), epochs, progress=not quiet)
    except KeyboardInterrupt:
        again = "floatedge quickstart" + ("" if out == "runs/quickstart" else f" --out {shlex.quote(out)}")
        report_interrupt(out, epochs, again)


def run_quickstart(out: Path, epochs: int, echo: Callable[[str], None] = click.echo, progress: bool = True) -> dict:
    """train → evaluate → export → runtime, each reused when already done; returns what each step produced and
    took (benchmarks/quickstart.py records it)."""
    from floatedge.export.torch_export import export_bundle
    from floatedge.train.evaluate import evaluate, format_table, load_result, save_result
    from floatedge.train.quickstart import ATTACK, quickstart_config
    from floatedge.train.trainer import epochs_done, load_checkpoint, train

    cfg = quickstart_config(epochs)
    seconds: dict[str, float] = {}
    before = epochs_done(out)
    if before:
        saved = load_checkpoint(out)["config"]
        if (saved["method"], saved["arch"], tuple(saved["widths"]), saved["eps"]) != \
                (cfg.method, cfg.arch, cfg.widths, cfg.eps):
            raise click.ClickException(f"{out} holds another run ({saved['method']} {saved['arch']} widths "
                                       f"{saved['widths']} ε {saved['eps']:g}); remove it or choose another --out")
    t0 = time.perf_counter()
    if before >= epochs:
        echo(f"reusing the model trained in {out} ({before} epochs; delete {out} to train again)")
    else:
        echo(f"training FLOATS ResNet-20 (widths {', '.join(f'{w:g}' for w in cfg.widths)}) on the 8×8 digits, "
             f"ε = {cfg.eps:g}, epochs {before + 1}–{epochs} ...")
        train(cfg, out, resume=before > 0, progress=progress)
    seconds["train"] = time.perf_counter() - t0
    trained = epochs_done(out) > before

    t0 = time.perf_counter()
    eval_json = out / "eval.json"
    if not trained and eval_json.exists() and load_result(eval_json).get("epochs") == epochs_done(out):
        result = load_result(eval_json)
        echo(f"reusing the evaluation in {eval_json}")
    else:
        result = evaluate(out, attacks=[ATTACK], progress=progress)
        save_result(result, eval_json)
    seconds["eval"] = time.perf_counter() - t0
    echo(format_table(result))
    echo(f"trade-off plot: {eval_json.with_suffix('.png')}")

    t0 = time.perf_counter()
    bundle = out / "model.febundle"
    if trained or not bundle.exists():
        exported = export_bundle(out, bundle, eval_file=eval_json, force=True)
        echo(f"exported {bundle} ({exported.bundle_bytes / 1e6:.2f} MB, η as {exported.eta_dtype})")
    else:
        echo(f"reusing the bundle {bundle}")
    seconds["export"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    points = switch_tour(bundle, result)
    seconds["runtime"] = time.perf_counter() - t0
    echo(format_tour(points))
    return {"result": result, "points": points, "seconds": seconds, "bundle": str(bundle)}


def switch_tour(bundle: Path, result: dict, runs: int = 200) -> list[dict]:
    """Open the bundle on the runtime and switch it through every operating point of the evaluation at the
    bundle's λ_th, widest first: per point the time the switch took to take effect, the median latency of one
    image, and the clean accuracy the runtime itself gets on the test images."""
    import numpy as np

    import floatedge.runtime as rt
    from floatedge.bundle import robust_of
    from floatedge.train.data import load_digits

    ds = load_digits()
    x = ds.x_test.numpy().astype(np.float32) / 255
    y = ds.y_test.numpy()
    out = []
    with rt.open(bundle) as model:
        th = model.operating_point.lambda_th
        rows = sorted((r for r in result["rows"] if r["lambda_th"] == th), key=lambda r: (-r["width"], r["lambda_n"]))
        for r in rows:
            t0 = time.perf_counter()
            model.set_operating_point(lambda_n=r["lambda_n"], width=r["width"])
            switch_ms = 1e3 * (time.perf_counter() - t0)
            ca = float((model.infer(x).argmax(1) == y).mean())
            times = []
            for i in range(runs):
                t0 = time.perf_counter()
                model.infer(x[i % len(x)][None])
                times.append(time.perf_counter() - t0)
            out.append({"width": r["width"], "lambda_n": r["lambda_n"], "lambda_th": th, "switch_ms": switch_ms,
                        "p50_ms": 1e3 * float(np.median(times)), "runtime_clean_acc": ca, "clean_acc": r["clean_acc"],
                        "robust_acc": robust_of(r)[0], "backend": model.name})
    return out


def format_tour(points: list[dict]) -> str:
    head = ["width", "λ_n", "switch ms", "p50 ms (1 image)", "CA % (runtime)", "CA % (eval)", "RA % (eval)"]
    rows = [head] + [[f"{p['width']:g}", f"{p['lambda_n']:g}", f"{p['switch_ms']:.1f}", f"{p['p50_ms']:.2f}",
                      f"{100 * p['runtime_clean_acc']:.2f}", f"{100 * p['clean_acc']:.2f}",
                      "—" if p["robust_acc"] is None else f"{100 * p['robust_acc']:.2f}"] for p in points]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    title = (f"on the runtime ({points[0]['backend']}, λ_th = {points[0]['lambda_th']:g}), switched point by point:"
             if points else "no operating points")
    return "\n".join([title, *lines])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
