"""`floatedge models | train | eval | compare`: the workstation's training commands. Thin: parse, call
`floatedge.train`, print. torch is imported only when a command runs (option defaults come from the torch-free
`floatedge.train.config`)."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from floatedge.errors import user_errors
from floatedge.oppoint import DEFAULT_DIAL, DIALS
from floatedge.train import config

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
    """List the architectures with parameter counts.

    Counts are for CIFAR-10 shapes (3×32×32, 10 classes): plain (conv, linear, BN) and FLOAT (adds α and BN_A)."""
    from floatedge.train.models import create_model, list_models

    click.echo(f"{'name':10s} {'plain (M)':>10s} {'FLOAT (M)':>10s}  notes")
    for name in list_models():
        plain = create_model(name, noisy=False, dual=False)
        flt = create_model(name)
        click.echo(f"{name:10s} {sum(p.numel() for p in plain.parameters()) / 1e6:10.3f} "
                   f"{sum(p.numel() for p in flt.parameters()) / 1e6:10.3f}  "
                   f"conv+fc {plain.plain_parameter_count() / 1e6:.3f} M")


class Fraction(click.ParamType):
    """A number given as a decimal or a fraction: 0.1, 8/255."""

    name = "NUMBER"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        try:
            num, _, den = str(value).partition("/")
            return float(num) / float(den) if den else float(num)
        except (ValueError, ZeroDivisionError):
            self.fail(f"{value!r} is not a number or a fraction such as 8/255", param, ctx)


def _opt(*decls: str, field: str, help: str, **kw):
    """An option whose default is TrainConfig's (floatedge.train.config: the one place training defaults live)."""
    default = config.default(field)
    if isinstance(default, tuple):  # widths
        default = ",".join(f"{w:g}" for w in default)
    kw.setdefault("show_default", default is not None)
    return click.option(*decls, default=default, help=help, **kw)


DEVICE = click.option("--device", type=click.Choice(config.DEVICES), default=config.default("device"), show_default=True,
                      help="auto = CUDA when torch sees a GPU, else CPU.")


@_command("train")
@_opt("--method", field="method", type=click.Choice(config.METHODS),
      help="float/floats: FLOAT(S); oat/oats, pgdat, standard: the baselines.")
@_opt("--arch", field="arch", help="Architecture name (see `floatedge models`).")
@_opt("--dataset", field="dataset", help="cifar10, cifar100, svhn, stl10, imagefolder, digits (embedded) or synthetic.")
@click.option("--data", "data_path", type=click.Path(), default=None,
              help="Data directory (recorded resolved; on --resume, overrides the recorded one).")
@_opt("--epochs", field="epochs", type=int, help="Epochs of the cosine schedule (on --resume: the new total).")
@_opt("--batch-size", field="batch_size", type=int, help="Images per optimiser step (global under torchrun).")
@_opt("--lr", field="lr", type=float, help="Initial SGD learning rate (momentum 0.9, cosine to 0).")
@_opt("--weight-decay", field="weight_decay", type=float, help="SGD weight decay (none on the noise scales α).")
@_opt("--widths", field="widths", help="Comma-separated widths for FLOATS/OATS, e.g. 1.0,0.75,0.5.")
@_opt("--lambda", "lam", field="lam", type=float, help="PGD-AT's fixed λ: (1−λ)·clean + λ·adversarial loss.")
@_opt("--noise-mode", field="noise_mode", type=click.Choice(["fixed", "resample"]),
      help="fixed: one recorded noise draw; resample: a fresh draw every step.")
@_opt("--train-dial", field="train_dial", type=click.Choice(list(DIALS)),
      help="FLOAT/FLOATS: switch = the paper (adversarial half at λ=1 only); mix = the adversarial half at a λ drawn per "
      "batch (1 for half the batches, else uniform), BN sets blended t = s = λ (docs/lambda-dial.md).")
@_opt("--film-dim", field="film_dim", type=int, help="OAT/OATS FiLM input: 128 = the reference's orthogonal λ encoding, "
      "1 = scalar λ.")
@_opt("--eps", field="eps", type=Fraction(), show_default="8/255", help="L∞ budget of the training attack on [0, 1] pixels, e.g. 8/255.")
@_opt("--step-size", field="step_size", type=Fraction(), help="PGD step of the training attack [default: eps/4].")
@_opt("--pgd-steps", field="pgd_steps", type=int, help="PGD iterations of the training attack.")
@_opt("--limit-train", field="limit_train", type=int, help="Train on a seeded random subset of N images.")
@_opt("--seed", field="seed", type=int, help="Seeds data order, augmentation, attacks (the noise draw: seed + 1).")
@DEVICE
@click.option("--no-amp", is_flag=True,
              help="Disable mixed precision on CUDA (bf16 autocast where the GPU has it, else fp16 with a loss scaler).")
@_opt("--threads", field="threads", type=int, help="torch CPU threads [default: torch's].")
@click.option("--out", "out", type=click.Path(), required=True, help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def train_cmd(method, arch, dataset, data_path, epochs, batch_size, lr, weight_decay, widths, lam, noise_mode,
              train_dial, film_dim, eps, step_size, pgd_steps, limit_train, seed, device, no_amp, threads, out, resume,
              quiet) -> None:
    """Train a FLOAT/FLOATS model or a baseline into a run.

    With --resume, flags left at their defaults take the run's recorded values, so
    `floatedge train --out RUN --resume` is enough to continue a run (Ctrl-C stops it at any time; the
    last finished epoch is kept).

    \b
    Examples:
      floatedge train --dataset digits --arch resnet20 --epochs 10 --out runs/digits
      floatedge train --method floats --widths 1,0.5 --dataset cifar10 --data DATA --out runs/floats
      floatedge train --out runs/floats --resume --epochs 300
    """
    from floatedge.train.trainer import CHECKPOINT, TrainConfig, epochs_done, load_checkpoint, read_log, train

    kwargs = dict(method=method, arch=arch, dataset=dataset, data=data_path, epochs=epochs, batch_size=batch_size,
                  lr=lr, weight_decay=weight_decay, widths=widths, lam=lam, noise_mode=noise_mode, eps=eps,
                  step_size=step_size, pgd_steps=pgd_steps, limit_train=limit_train, seed=seed, device=device,
                  amp=not no_amp, threads=threads, film_dim=film_dim, train_dial=train_dial)
    before = 0
    if resume and (Path(out) / CHECKPOINT).exists():
        ckpt = load_checkpoint(out)
        saved, before = ckpt["config"], int(ckpt["epoch"])
        ctx = click.get_current_context()
        for param in ctx.params:
            field = "data" if param == "data_path" else param
            if field in saved and field in kwargs and ctx.get_parameter_source(param) == click.core.ParameterSource.DEFAULT:
                kwargs[field] = saved[field]
        given = str(Path(data_path).resolve()) if data_path else None
        if given and saved.get("data") and given != saved["data"]:
            click.echo(f"reading the data from {given} (--data), not from {saved['data']} recorded by the run")
    cfg = TrainConfig(**kwargs)
    try:
        train(cfg, out, resume=resume, progress=not quiet)
    except KeyboardInterrupt:
        report_interrupt(out, cfg.epochs, f"floatedge train --out {shlex.quote(str(out))} --resume")
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    after = epochs_done(out)
    if after == before:
        click.echo(f"{out} is already trained to epoch {after} of {cfg.epochs}: nothing to train "
                   "(give a larger --epochs to continue it)")
        return
    last = read_log(out)[-1]
    accs = ", ".join(f"{name} train acc {100 * last[key]:.1f}%" for name, key in (("clean", "train_clean_acc"),
                     ("adv", "train_adv_acc")) if last.get(key) is not None)
    click.echo(f"trained {cfg.method} {cfg.arch} on {cfg.dataset}: epoch {after} of {cfg.epochs} ({after - before} "
               f"trained now), loss {last['loss']:.3f}, {accs} → {out}")


def report_interrupt(out: str | Path, total: int, resume_command: str) -> None:
    """Ctrl-C during training: say what is saved and how to continue, exit 130 (the shell's code for SIGINT)."""
    from floatedge.train.trainer import epochs_done

    saved = epochs_done(out) if Path(out).is_dir() else 0
    if saved >= total:
        click.echo(f"Interrupted after the last epoch; all {total} are saved in {out}.", err=True)
    elif saved:
        click.echo(f"Interrupted during epoch {saved + 1} of {total}. Epochs 1–{saved} are saved in {out}; continue "
                   f"with: {resume_command}", err=True)
    else:
        click.echo(f"Interrupted during epoch 1 of {total}: no epoch finished, so nothing was saved.", err=True)
    raise click.exceptions.Exit(130)


@_command("eval")
@click.argument("run_dir", type=click.Path())
@click.option("--lambdas", default="0,0.2,0.7,1", show_default=True, help="Comma-separated λ_n to evaluate, in [0, 1].")
@click.option("--lambda-ths", default="0,0.5", show_default=True, help="Comma-separated thresholds λ_th (FLOAT runs).")
@click.option("--dial", type=click.Choice(list(DIALS)), default=None,
              help="What λ_n does (FLOAT runs): switch = Eq. 5 by λ_th; mix... = BN sets blended (no λ_th). The one "
                   f"`floatedge export --dial` deploys. [default: {DEFAULT_DIAL}]")
@click.option("--widths", default=None, help="Widths to evaluate [default: all trained].")
@click.option("--attacks", default="pgd20", show_default=True,
              help="Comma-separated, any of fgsm, pgd7, pgd20, pgd100x5-ce, pgd100x5-dlr, noisefree-pgd100x5, "
                   "transfer-pgd20, transfer-pgd100 (need --transfer-from), apgd-ce-t, autoattack (see docs/training.md; "
                   "AutoAttack: 25–45 min per point on 500 CIFAR images, CPU). The table's RA is the lowest.")
@click.option("--transfer-from", type=click.Path(), default=None,
              help="Run the transfer attacks make their examples on (e.g. a PGD-AT run; at its λ_n = 1, widest width).")
@click.option("--eps", type=Fraction(), default=None, help="L∞ budget, e.g. 8/255 [default: the run's training ε].")
@click.option("--limit", type=int, default=None, help="Evaluate on a seeded random subset of N test images.")
@click.option("--data", "data_path", type=click.Path(), default=None, help="Read the data from here, not the run's "
              "recorded directory.")
@click.option("--batch-size", type=int, default=250, show_default=True, help="Images per attack batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the subset and the attacks' random starts.")
@DEVICE
@click.option("--out", "out", type=click.Path(), default=None,
              help="Result file (.json; .csv and .png beside it) [default: RUN_DIR/eval.json, if not there yet].")
@click.option("--force", is_flag=True, help="Replace RUN_DIR/eval.json when --out is not given.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def eval_cmd(run_dir, lambdas, lambda_ths, dial, widths, attacks, transfer_from, eps, limit, data_path, batch_size, seed,
             device, out, force, quiet):
    """Clean and robust accuracy at every operating point.

    Measures CA and RA over λ_n × λ_th × widths; prints a table, writes JSON, CSV and the CA–RA plot. Each row
    keeps every attack's accuracy and reports as its RA the lowest of them, naming the attack. Without --out the
    result goes to RUN_DIR/eval.json, the table `floatedge export --eval` puts in a bundle; an existing one is kept
    unless --force is given.

    \b
    Examples:
      floatedge eval runs/float --limit 1000
      floatedge eval runs/float --attacks autoattack --lambdas 1 --lambda-ths 0 --out runs/float/aa.json
      floatedge eval runs/float --attacks pgd20,transfer-pgd20 --transfer-from runs/pgdat --out runs/float/tr.json
    """
    from floatedge.oppoint import check_lambda_th, parse_lambdas, parse_widths
    from floatedge.train.evaluate import check_out_file, evaluate, format_table, save_result

    try:
        ths = tuple(check_lambda_th(float(t)) for t in lambda_ths.split(",") if t.strip())
    except ValueError as exc:
        raise click.ClickException(f"bad --lambda-ths {lambda_ths!r}: {exc}") from None
    if out is None:
        out = Path(run_dir) / "eval.json"
        if out.exists() and not force:
            raise click.ClickException(f"{out} exists (the table `floatedge export --eval` reads); write this "
                                       "evaluation elsewhere with --out FILE, or replace it with --force")
    out = Path(out)
    if Path(run_dir).is_dir():  # a missing run is reported by evaluate; fail on the output before the work
        check_out_file(out)
    result = evaluate(run_dir, parse_lambdas(lambdas), ths, parse_widths(widths) if widths else None,
                      [a.strip() for a in attacks.split(",") if a.strip()], limit, data_path, batch_size, seed,
                      device, progress=not quiet, eps=eps, transfer_from=transfer_from, dial=dial)
    if data_path and result["data_recorded"] and result["data"] != result["data_recorded"]:
        click.echo(f"read the data from {result['data']} (--data), not from {result['data_recorded']} recorded by the run")
    click.echo(format_table(result))
    paths = save_result(result, out)
    click.echo(f"wrote {paths['json']}, {paths['csv']}, {paths['png']}")


@_command("compare")
@_opt("--arch", field="arch", help="Architecture of every run (see `floatedge models`).")
@_opt("--dataset", field="dataset", help="Data set of every run (as for train).")
@click.option("--data", "data_path", type=click.Path(), default=None, help="Data directory.")
@click.option("--epochs", type=int, default=3, show_default=True, help="Epoch budget of every run (≥ 2).")
@_opt("--batch-size", field="batch_size", type=int, help="Images per optimiser step, every run.")
@_opt("--lr", field="lr", type=float, help="Initial SGD learning rate, every run.")
@click.option("--limit-train", type=int, default=None, help="Seeded training subset, the same for every run.")
@click.option("--lambdas", default="0,0.2,0.7,1", show_default=True, help="λ set: PGD-AT models and evaluation points.")
@click.option("--seeds", default="0,1", show_default=True, help="FLOAT and OAT are trained with each seed.")
@click.option("--spread-lambda", type=float, default=1.0, show_default=True,
              help="The λ at which PGD-AT is also trained with every seed.")
@click.option("--slim", is_flag=True, help="Also FLOATS vs OATS at widths 1.0 and 0.5.")
@click.option("--eval-limit", type=int, default=500, show_default=True, help="Seeded test subset.")
@click.option("--attacks", default="pgd20", show_default=True, help="Any of pgd7, pgd20, fgsm, autoattack.")
@_opt("--pgd-steps", field="pgd_steps", type=int, help="PGD iterations of the training attack.")
@_opt("--film-dim", field="film_dim", type=int, help="OAT/OATS FiLM input (128 orthogonal encoding, 1 scalar λ).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch CPU threads (1: the methods' epoch times are taken under the same load).")
@DEVICE
@click.option("--out", "out", type=click.Path(), required=True, help="Compare directory (resumable).")
@click.option("--results", "results_md", type=click.Path(), default=None,
              help="Also write the report as a section of this markdown file (e.g. docs/RESULTS.md).")
@click.option("--section", default="compare", show_default=True, help="Section name in --results.")
@user_errors
def compare_cmd(arch, dataset, data_path, epochs, batch_size, lr, limit_train, lambdas, seeds, spread_lambda, slim,
                eval_limit, attacks, pgd_steps, film_dim, threads, device, out, results_md, section) -> None:
    """FLOAT vs OAT vs PGD-AT, head to head.

    Trains FLOAT, OAT and PGD-AT (and FLOATS vs OATS with --slim) on the same data and budget, interleaved epoch
    by epoch, evaluates them with the same attacks, times them and writes a report. Resumable: run it again with
    the same --out to continue.

    \b
    Example:
      floatedge compare --dataset digits --arch resnet20 --epochs 3 --seeds 0,1 --out runs/compare
    """
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
