"""`floatedge models | train | eval | compare | quickstart`: the workstation's training commands. Thin: parse,
call `floatedge.train`, print. torch is imported only when a command runs."""
from __future__ import annotations

import os
from pathlib import Path

import click

from floatedge.errors import user_errors

COMMANDS: list[click.Command] = []


def _command(name: str):
    """Register a command of this module (the top-level `floatedge` group adds them all)."""
    def deco(fn):
        cmd = click.command(name)(fn)
        COMMANDS.append(cmd)
        return cmd
    return deco


@_command("models")
def models_cmd() -> None:
    """List the registered architectures with parameter counts (CIFAR-10 shapes)."""
    from floatedge.train.models import create_model, list_models

    click.echo(f"{'name':10s} {'plain (M)':>10s} {'FLOAT (M)':>10s}  notes")
    for name in list_models():
        plain = create_model(name, noisy=False, dual=False)
        flt = create_model(name)
        click.echo(f"{name:10s} {sum(p.numel() for p in plain.parameters()) / 1e6:10.3f} "
                   f"{sum(p.numel() for p in flt.parameters()) / 1e6:10.3f}  "
                   f"conv+fc {plain.plain_parameter_count() / 1e6:.3f} M")


@_command("train")
@click.option("--method", type=click.Choice(["float", "floats", "pgdat", "standard", "oat", "oats"]), default="float",
              show_default=True)
@click.option("--arch", default="resnet20", show_default=True, help="Architecture name (see `floatedge models`).")
@click.option("--dataset", default="cifar10", show_default=True,
              help="cifar10, cifar100, svhn, stl10, imagefolder, digits (embedded) or synthetic.")
@click.option("--data", "data_path", type=click.Path(), default=None, help="Data directory.")
@click.option("--epochs", type=int, default=200, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--widths", default="1.0", show_default=True, help="Comma-separated widths for FLOATS, e.g. 1.0,0.75,0.5.")
@click.option("--lambda", "lam", type=float, default=1.0, show_default=True, help="PGD-AT's fixed λ.")
@click.option("--noise-mode", type=click.Choice(["fixed", "resample"]), default="fixed", show_default=True)
@click.option("--film-dim", type=int, default=128, show_default=True,
              help="OAT/OATS FiLM input: 128 = the reference's orthogonal λ encoding, 1 = scalar λ.")
@click.option("--pgd-steps", type=int, default=7, show_default=True)
@click.option("--limit-train", type=int, default=None, help="Train on a seeded random subset of N images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--no-amp", is_flag=True, help="Disable mixed precision on CUDA.")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option("--out", "out", type=click.Path(), required=True, help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def train_cmd(method, arch, dataset, data_path, epochs, batch_size, lr, weight_decay, widths, lam, noise_mode,
              film_dim, pgd_steps, limit_train, seed, device, no_amp, threads, out, resume, quiet) -> None:
    """Train a FLOAT/FLOATS model (or an OAT/OATS, PGD-AT or standard baseline) into a run directory.

    With --resume, flags left at their defaults take the run's recorded values, so
    `floatedge train --out RUN --resume` is enough to continue a run."""
    from floatedge.train.trainer import CHECKPOINT, TrainConfig, load_checkpoint, read_log, train

    kwargs = dict(method=method, arch=arch, dataset=dataset, data=data_path, epochs=epochs, batch_size=batch_size,
                  lr=lr, weight_decay=weight_decay, widths=widths, lam=lam, noise_mode=noise_mode, pgd_steps=pgd_steps,
                  limit_train=limit_train, seed=seed, device=device, amp=not no_amp, threads=threads, film_dim=film_dim)
    if resume and (Path(out) / CHECKPOINT).exists():
        saved = load_checkpoint(out)["config"]
        ctx = click.get_current_context()
        for param in ctx.params:
            field = "data" if param == "data_path" else param
            if field in saved and field in kwargs and ctx.get_parameter_source(param) == click.core.ParameterSource.DEFAULT:
                kwargs[field] = saved[field]
    cfg = TrainConfig(**kwargs)
    run = train(cfg, out, resume=resume, progress=not quiet)
    log = read_log(run)
    if log and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        last = log[-1]
        click.echo(f"trained {cfg.method} {cfg.arch} on {cfg.dataset}: epoch {last['epoch']}, loss {last['loss']:.3f}, "
                   f"clean train acc {100 * last['train_clean_acc']:.1f}%, adv train acc "
                   f"{100 * last['train_adv_acc']:.1f}% → {run}")


@_command("eval")
@click.argument("run_dir", type=click.Path())
@click.option("--lambdas", default="0,0.2,0.7,1", show_default=True)
@click.option("--lambda-ths", default="0,0.5", show_default=True)
@click.option("--widths", default=None, help="Widths to evaluate (default: all trained).")
@click.option("--attacks", default="pgd20", show_default=True, help="Any of pgd7, pgd20, fgsm, autoattack.")
@click.option("--limit", type=int, default=None, help="Evaluate on a seeded random subset of N test images.")
@click.option("--data", "data_path", type=click.Path(), default=None, help="Override the run's data directory.")
@click.option("--batch-size", type=int, default=250, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--out", "out", type=click.Path(), default=None, help="Result file (.json; .csv and .png beside it).")
@click.option("--quiet", is_flag=True)
@user_errors
def eval_cmd(run_dir, lambdas, lambda_ths, widths, attacks, limit, data_path, batch_size, seed, device, out, quiet):
    """Clean and robust accuracy over λ_n × λ_th × widths; prints a table, writes JSON/CSV/PNG."""
    from floatedge.fsutil import check_writable_dir
    from floatedge.oppoint import check_lambda_th, parse_lambdas, parse_widths
    from floatedge.train.evaluate import evaluate, format_table, save_result

    try:
        ths = tuple(check_lambda_th(float(t)) for t in lambda_ths.split(",") if t.strip())
    except ValueError as exc:
        raise click.ClickException(f"bad --lambda-ths {lambda_ths!r}: {exc}") from None
    out = Path(out) if out else Path(run_dir) / "eval.json"
    if Path(run_dir).is_dir():  # a missing run is reported by evaluate; fail on the output before the work
        check_writable_dir(out.parent)
    result = evaluate(run_dir, parse_lambdas(lambdas), ths, parse_widths(widths) if widths else None,
                      [a.strip() for a in attacks.split(",") if a.strip()], limit, data_path, batch_size, seed,
                      device, progress=not quiet)
    click.echo(format_table(result))
    paths = save_result(result, out)
    click.echo(f"wrote {paths['json']}, {paths['csv']}, {paths['png']}")


@_command("compare")
@click.option("--arch", default="resnet20", show_default=True)
@click.option("--dataset", default="cifar10", show_default=True)
@click.option("--data", "data_path", type=click.Path(), default=None, help="Data directory.")
@click.option("--epochs", type=int, default=3, show_default=True, help="Epoch budget of every run (≥ 2).")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--limit-train", type=int, default=None, help="Seeded training subset, the same for every run.")
@click.option("--lambdas", default="0,0.2,0.7,1", show_default=True, help="λ set: PGD-AT models and evaluation points.")
@click.option("--seeds", default="0,1", show_default=True, help="FLOAT and OAT are trained with each seed.")
@click.option("--spread-lambda", type=float, default=1.0, show_default=True,
              help="The λ at which PGD-AT is also trained with every seed.")
@click.option("--slim", is_flag=True, help="Also FLOATS vs OATS at widths 1.0 and 0.5.")
@click.option("--eval-limit", type=int, default=500, show_default=True, help="Seeded test subset.")
@click.option("--attacks", default="pgd20", show_default=True, help="Any of pgd7, pgd20, fgsm, autoattack.")
@click.option("--pgd-steps", type=int, default=7, show_default=True, help="Training attack steps.")
@click.option("--film-dim", type=int, default=128, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--out", "out", type=click.Path(), required=True, help="Compare directory (resumable).")
@click.option("--results", "results_md", type=click.Path(), default=None,
              help="Also write the report as a section of this markdown file (e.g. docs/RESULTS.md).")
@click.option("--section", default="compare", show_default=True, help="Section name in --results.")
@user_errors
def compare_cmd(arch, dataset, data_path, epochs, batch_size, lr, limit_train, lambdas, seeds, spread_lambda, slim,
                eval_limit, attacks, pgd_steps, film_dim, threads, device, out, results_md, section) -> None:
    """FLOAT vs OAT vs PGD-AT (and FLOATS vs OATS with --slim): train, evaluate, time, report. Resumable."""
    from floatedge.train.compare import CompareConfig, CompareError, compare

    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        raise CompareError(f"--seeds {seeds!r}: give comma-separated integers") from None
    attack_list = tuple(a.strip() for a in attacks.split(",") if a.strip())
    cfg = CompareConfig(arch=arch, dataset=dataset, data=data_path, epochs=epochs, batch_size=batch_size, lr=lr,
                        limit_train=limit_train, lambdas=lambdas, seeds=seed_list, spread_lambda=spread_lambda,
                        slim=slim, eval_limit=eval_limit, attacks=attack_list,
                        pgd_steps=pgd_steps, film_dim=film_dim, threads=threads, device=device)

    def show(e: dict) -> None:
        if e["event"] == "epoch":
            click.echo(f"trained {e['run']} epoch {e['epoch']} ({e['seconds']:.1f} s)")
        elif e["event"] == "eval":
            click.echo(f"evaluated {e['run']} ({e['seconds']:.1f} s)")
        else:
            click.echo(f"skipped {e['run']}: already {e['reason']}")

    summary = compare(cfg, out, callback=show, results_md=results_md, section=section)
    click.echo(Path(summary["report"]).read_text())


@_command("quickstart")
@click.option("--out", type=click.Path(), default="runs/quickstart", show_default=True)
@click.option("--epochs", type=int, default=10, show_default=True)
@user_errors
def quickstart_cmd(out, epochs) -> None:
    """Train a small FLOATS model on the embedded digits data, evaluate it, print the trade-off, plot it.

    Digits are 8×8 with 17 grey levels, so the papers' ε = 8/255 barely moves them; the quickstart trains and
    attacks at ε = 0.1 to show a real trade-off."""
    from floatedge.train.evaluate import evaluate, format_table, save_result
    from floatedge.train.trainer import CHECKPOINT, TrainConfig, train

    out = Path(out)
    cfg = TrainConfig(method="floats", arch="resnet20", dataset="digits", epochs=epochs, batch_size=128,
                      widths=(1.0, 0.5), eps=0.1, step_size=0.025, lr=0.05)
    train(cfg, out, resume=(out / CHECKPOINT).exists())
    result = evaluate(out, attacks=["pgd20"])
    click.echo(format_table(result))
    paths = save_result(result, out / "eval.json")
    click.echo(f"trade-off plot: {paths['png']}")
