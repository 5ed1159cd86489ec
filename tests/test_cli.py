"""The `floatedge` command: every bad-input path gives one clear error line, a non-zero exit, no traceback,
and leaves what was already written untouched. Most cases run through click's CliRunner; a few run as
real processes to check the exit code and stderr as a shell sees them."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from floatedge.cli import main
from floatedge.train.trainer import CHECKPOINT, TrainConfig, build_model

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *needles: str, code: int = 1) -> str:
    """Exit `code` by a clean SystemExit (not an escaped exception), one `Error:` line naming the problem."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1, result.output
    if code == 1:
        assert lines == errors, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def snapshot(path: Path) -> dict:
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(float_run, tmp_path) -> Path:
    """A private copy of the tiny trained FLOAT run (the session fixture must stay pristine)."""
    dst = tmp_path / "run"
    shutil.copytree(float_run, dst)
    return dst


TINY = ["--arch", "tiny", "--epochs", "1", "--batch-size", "32", "--pgd-steps", "1", "--quiet"]


# ---------------------------------------------------------------- train: bad input
@pytest.mark.parametrize("args,needles", [
    (["--arch", "vgg11", "--dataset", "synthetic"], ["unknown architecture 'vgg11'", "resnet20"]),
    (["--arch", "tiny", "--dataset", "mnist"], ["unknown dataset 'mnist'", "cifar10"]),
    (["--arch", "tiny", "--method", "floats", "--widths", "1,1.5"], ["bad widths '1,1.5'", "(0, 1]"]),
    (["--arch", "tiny", "--method", "floats", "--widths", "1,0"], ["bad widths", "(0, 1]"]),
    (["--arch", "tiny", "--method", "floats", "--widths", "1,-0.5"], ["bad widths", "(0, 1]"]),
    (["--arch", "tiny", "--method", "pgdat", "--lambda", "1.5"], ["lambda must be in [0, 1], got 1.5"]),
    (["--arch", "tiny", "--method", "pgdat", "--lambda", "-0.2"], ["lambda must be in [0, 1]"]),
    (["--arch", "tiny", "--method", "float", "--widths", "1,0.5"], ["trains one width"]),
    (["--arch", "tiny", "--epochs", "0"], ["epochs must be"]),
    (["--arch", "tiny", "--dataset", "svhn"], ["dataset svhn needs --data PATH"]),
    (["--arch", "tiny", "--dataset", "synthetic", "--limit-train", "-5"], ["limit_train must be ≥ 2"]),
])
def test_train_bad_flags(tmp_path, args, needles):
    result = run_cli("train", *args, "--out", tmp_path / "out")
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "out").exists()  # no empty run directory left behind


def test_train_unknown_method_is_a_usage_error(tmp_path):
    result = run_cli("train", "--method", "adamw", "--out", tmp_path / "o")
    assert_one_line_error(result, "Invalid value for '--method'", "'adamw'", code=2)
    assert not (tmp_path / "o").exists()


def test_train_data_path_without_the_files(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data_batch_1").write_bytes(b"")
    result = run_cli("train", *TINY, "--data", tmp_path / "data", "--out", tmp_path / "runs" / "o")
    assert_one_line_error(result, "cifar10:", str(tmp_path / "data"), "lacks data_batch_2")
    result = run_cli("train", *TINY, "--data", tmp_path / "nowhere", "--out", tmp_path / "runs" / "o")
    assert_one_line_error(result, "is not a directory")
    assert not (tmp_path / "runs").exists()  # nor the parent it made


def test_train_corrupted_pickle(tmp_path, write_cifar10):
    write_cifar10(tmp_path / "data")
    blob = (tmp_path / "data" / "data_batch_2").read_bytes()
    (tmp_path / "data" / "data_batch_2").write_bytes(blob[:100])
    result = run_cli("train", *TINY, "--data", tmp_path / "data", "--out", tmp_path / "o")
    assert_one_line_error(result, "data_batch_2: not a readable pickle")
    assert not (tmp_path / "o").exists()


def test_train_hostile_pickle_runs_nothing(tmp_path, write_cifar10, hostile_pickle):
    write_cifar10(tmp_path / "data")
    sentinel = tmp_path / "pwned"
    (tmp_path / "data" / "data_batch_1").write_bytes(hostile_pickle(sentinel))
    result = run_cli("train", *TINY, "--data", tmp_path / "data", "--out", tmp_path / "o")
    assert_one_line_error(result, "data_batch_1: refusing to unpickle", "system")
    assert not sentinel.exists()


def test_train_unwritable_output(tmp_path):
    (tmp_path / "file").write_text("keep me")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        result = run_cli("train", *TINY, "--dataset", "synthetic", "--out", out)
        assert_one_line_error(result, "output directory", "is not writable")
    assert (tmp_path / "file").read_text() == "keep me"


def test_train_into_an_existing_run_damages_nothing(run_copy):
    before = snapshot(run_copy)
    result = run_cli("train", *TINY, "--dataset", "synthetic", "--out", run_copy)
    assert_one_line_error(result, "already holds a run", "--resume")
    # a checkpoint of another architecture / method / widths / data set
    for extra, needle in ((["--arch", "resnet20"], "not float/resnet20"),  # the last --arch wins
                          (["--method", "floats", "--widths", "1,0.5"], "not floats/tiny widths [1.0, 0.5]"),
                          (["--dataset", "digits"], "on digits")):
        result = run_cli("train", *TINY, "--dataset", "synthetic", *extra, "--out", run_copy, "--resume",
                         "--epochs", "2")
        assert_one_line_error(result, "checkpoint is float/tiny widths [1.0] on synthetic", needle)
    assert snapshot(run_copy) == before


def test_train_resume_without_checkpoint(tmp_path):
    result = run_cli("train", *TINY, "--dataset", "synthetic", "--out", tmp_path / "empty", "--resume")
    assert_one_line_error(result, "no checkpoint (checkpoint.pt) found")
    assert not (tmp_path / "empty").exists()


# ---------------------------------------------------------------- eval: bad input
def test_eval_bad_input(run_copy, tmp_path):
    before = snapshot(run_copy)
    cases = [
        (["--attacks", "cw"], ["unknown attack 'cw'"]),
        (["--widths", "0.5"], ["width 0.5 not trained"]),
        (["--widths", "2"], ["bad widths '2'"]),
        (["--lambdas", "0,1.5"], ["bad lambdas", "[0, 1]"]),
        (["--lambda-ths", "abc"], ["bad --lambda-ths 'abc'"]),
        (["--lambda-ths", "1"], ["bad --lambda-ths '1'", "[0, 1)"]),
        (["--limit", "-3"], ["limit must be ≥ 1, got -3"]),
    ]
    for args, needles in cases:
        assert_one_line_error(run_cli("eval", run_copy, "--limit", "4", "--quiet", *args), *needles)
    (tmp_path / "file").write_text("x")
    result = run_cli("eval", run_copy, "--limit", "4", "--attacks", "fgsm", "--quiet",
                     "--out", tmp_path / "file" / "e.json")
    assert_one_line_error(result, f"cannot write {tmp_path / 'file' / 'e.json'}: {tmp_path / 'file'} is a file")
    # a directory that takes no new files: named, with the destination (not "/proc is not writable")
    result = run_cli("eval", run_copy, "--limit", "4", "--quiet", "--out", "/proc/x.json")
    assert_one_line_error(result, "cannot write /proc/x.json: /proc does not take new files")
    result = run_cli("eval", run_copy, "--limit", "4", "--quiet", "--out", "/proc/new/x.json")
    assert_one_line_error(result, "cannot write /proc/new/x.json: /proc does not take new files")
    assert snapshot(run_copy) == before
    assert_one_line_error(run_cli("eval", tmp_path / "nothing"), "no checkpoint")


def test_eval_checkpoint_of_another_architecture(run_copy):
    ckpt = torch.load(run_copy / CHECKPOINT, weights_only=True)
    cfg = TrainConfig(method="float", arch="resnet20", dataset="synthetic")
    ckpt["model"] = build_model(cfg, ckpt["dataset"]).state_dict()
    torch.save(ckpt, run_copy / CHECKPOINT)
    before = snapshot(run_copy)
    assert_one_line_error(run_cli("eval", run_copy, "--quiet"), "checkpoint does not match architecture tiny")
    assert_one_line_error(run_cli("train", *TINY, "--dataset", "synthetic", "--epochs", "2", "--resume", "--out",
                                  run_copy), "does not match architecture tiny")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("kind,why", [("garbage", "not a torch.save archive (64 bytes"),
                                      ("hostile", "Python objects other than tensors"),
                                      ("truncated", "the file is cut short (1000 bytes")])
def test_eval_unreadable_checkpoint(run_copy, tmp_path, kind, why, hostile_pickle):
    sentinel = tmp_path / "pwned"
    path = run_copy / CHECKPOINT
    if kind == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif kind == "hostile":
        path.write_bytes(hostile_pickle(sentinel, lambda evil: {"format": 1, "model": evil}))
    else:
        path.write_bytes(path.read_bytes()[:1000])
    assert_one_line_error(run_cli("eval", run_copy, "--quiet"), "not a readable floatedge checkpoint: ", why)
    assert not sentinel.exists()


# ---------------------------------------------------------------- working paths
def test_models_lists_registry_with_counts():
    result = run_cli("models")
    assert result.exit_code == 0, result.output
    rows = {ln.split()[0]: ln.split() for ln in result.output.splitlines()[1:]}
    assert {"tiny", "resnet20", "resnet34", "wrn16_8", "wrn40_2"} <= set(rows)
    assert float(rows["resnet34"][1]) == pytest.approx(21.28, abs=0.005)  # plain, millions
    assert float(rows["resnet34"][2]) > float(rows["resnet34"][1])  # FLOAT adds α and BN_A
    assert float(rows["resnet20"][1]) == pytest.approx(0.272, abs=0.001)


def test_train_then_eval_on_a_tiny_run(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", *TINY, "--dataset", "synthetic", "--method", "floats", "--widths", "1,0.5", "--out", out)
    assert result.exit_code == 0, result.output
    assert "trained floats tiny on synthetic: epoch 1" in result.output
    result = run_cli("eval", out, "--limit", "16", "--attacks", "fgsm", "--lambdas", "0,1", "--lambda-ths", "0.5",
                     "--quiet", "--out", tmp_path / "res" / "e.json")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["width", "λ_th", "λ_n"] and len(lines) == 2 + 4 + 1
    assert lines[-1].startswith("wrote ")
    assert all((tmp_path / "res" / f"e.{s}").exists() for s in ("json", "csv", "png"))
    # default output next to the run, where `export --eval` reads it; a second one does not replace it silently
    result = run_cli("eval", out, "--limit", "8", "--attacks", "fgsm", "--lambdas", "0,1", "--quiet")
    assert result.exit_code == 0 and (out / "eval.json").exists()
    first = (out / "eval.json").read_bytes()
    result = run_cli("eval", out, "--limit", "8", "--attacks", "fgsm", "--lambdas", "1", "--quiet")
    assert_one_line_error(result, f"{out / 'eval.json'} exists", "--out FILE", "--force")
    assert (out / "eval.json").read_bytes() == first
    result = run_cli("eval", out, "--limit", "8", "--attacks", "fgsm", "--lambdas", "1", "--quiet", "--force", "--dial", "switch")
    assert result.exit_code == 0 and len(json.loads((out / "eval.json").read_text())["rows"]) == 2 * 2 * 1  # widths × λ_th × λ_n
    # and resume to a longer schedule continues from epoch 1
    result = run_cli("train", *TINY, "--dataset", "synthetic", "--method", "floats", "--widths", "1,0.5", "--out", out,
                     "--resume", "--epochs", "2")
    assert result.exit_code == 0 and "epoch 2" in result.output, result.output
    # a shorter schedule than what is already trained is refused, and the run stays as it is
    before = snapshot(out)
    result = run_cli("train", *TINY, "--dataset", "synthetic", "--method", "floats", "--widths", "1,0.5", "--out", out,
                     "--resume", "--epochs", "1")
    assert_one_line_error(result, "the checkpoint has 2 epochs, more than --epochs 1")
    assert snapshot(out) == before


def test_version():
    result = run_cli("--version")
    assert result.exit_code == 0 and "floatedge" in result.output


# ---------------------------------------------------------------- real processes
def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "floatedge", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_python_m_floatedge_help():
    done = _run("--help")
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and all(c in done.stdout for c in ("train", "eval", "models"))
    done = _run("train", "--help")
    assert done.returncode == 0 and "--resume" in done.stdout


@pytest.mark.parametrize("case", ["hostile", "widths", "unwritable"])
def test_errors_in_a_real_process(tmp_path, case, write_cifar10, hostile_pickle):
    """What a shell sees: exit status 1, exactly one line on stderr, no traceback, nothing on stdout."""
    sentinel = tmp_path / "pwned"
    if case == "hostile":
        write_cifar10(tmp_path / "data")
        (tmp_path / "data" / "test_batch").write_bytes(hostile_pickle(sentinel))
        args, needle = ["--data", tmp_path / "data"], "refusing to unpickle"
    elif case == "widths":
        args, needle = ["--method", "floats", "--widths", "1.0,1.25"], "width must be in (0, 1]"
    else:
        (tmp_path / "file").write_text("x")
        args, needle = ["--dataset", "synthetic", "--out", tmp_path / "file" / "run"], "is not writable"
    if "--out" not in args:
        args += ["--out", tmp_path / "out"]
    done = _run("train", *TINY, *args)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], done.stderr
    assert not sentinel.exists()


def test_resume_needs_only_out_and_keeps_the_recorded_config(tmp_path):
    """`train --out RUN --resume --epochs N` continues a non-default run (tiny/synthetic/floats) without retyping."""
    out = tmp_path / "run"
    first = CliRunner().invoke(main, ["train", "--method", "floats", "--widths", "1,0.5", "--arch", "tiny", "--dataset",
                                      "synthetic", "--epochs", "1", "--pgd-steps", "1", "--out", str(out), "--quiet"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"])
    assert again.exit_code == 0, again.output
    assert "trained floats tiny on synthetic: epoch 2" in again.output
    ckpt = torch.load(out / CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["widths"] == [1.0, 0.5] and ckpt["config"]["pgd_steps"] == 1


# ---------------------------------------------------------------- what a new user runs into
def test_resume_of_a_finished_run_says_nothing_was_trained(run_copy):
    before = snapshot(run_copy)
    result = run_cli("train", "--out", run_copy, "--resume", "--quiet")
    assert result.exit_code == 0, result.output
    assert "trained" not in result.output.replace("already trained", "")
    assert "is already trained to epoch 1 of 1: nothing to train" in result.output
    assert snapshot(run_copy) == before


def test_a_run_records_its_data_resolved_and_runs_from_anywhere(tmp_path, write_cifar10, monkeypatch):
    """`--data` as typed (relative) is recorded resolved, so eval and resume work from another directory; a --data
    given later overrides the recorded one and says so; a recorded path that moved says how to point elsewhere."""
    work = tmp_path / "work"
    write_cifar10(work / "data", per_batch=8)
    monkeypatch.chdir(work)
    result = run_cli("train", *TINY, "--epochs", "1", "--batch-size", "8", "--data", "data", "--out", "run")
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path)
    result = run_cli("eval", "work/run", "--attacks", "fgsm", "--lambdas", "0", "--quiet", "--out", "e.json")
    assert result.exit_code == 0, result.output
    result = run_cli("train", "--out", "work/run", "--resume", "--epochs", "2", "--quiet")
    assert result.exit_code == 0 and "epoch 2 of 2" in result.output, result.output
    shutil.move(work / "data", tmp_path / "moved")
    result = run_cli("eval", "work/run", "--attacks", "fgsm", "--quiet", "--out", "e2.json")
    assert_one_line_error(result, str(work / "data"), "the data path this run recorded; give --data")
    result = run_cli("eval", "work/run", "--attacks", "fgsm", "--lambdas", "0", "--quiet", "--out", "e3.json",
                     "--data", "moved")
    assert result.exit_code == 0, result.output
    assert f"read the data from {tmp_path / 'moved'} (--data), not from {work / 'data'} recorded by the run" \
        in result.output
    result = run_cli("train", "--out", "work/run", "--resume", "--epochs", "3", "--quiet", "--data", "moved")
    assert result.exit_code == 0 and "epoch 3 of 3" in result.output, result.output
    assert f"reading the data from {tmp_path / 'moved'} (--data)" in result.output
    assert torch.load(work / "run" / CHECKPOINT, weights_only=True)["config"]["data"] == str(tmp_path / "moved")


def test_eps_and_step_size_options(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", *TINY, "--dataset", "synthetic", "--eps", "16/255", "--out", out)
    assert result.exit_code == 0, result.output
    cfg = torch.load(out / CHECKPOINT, weights_only=True)["config"]
    assert cfg["eps"] == pytest.approx(16 / 255) and cfg["step_size"] == pytest.approx(4 / 255)  # ε/4 by default
    result = run_cli("train", *TINY, "--dataset", "synthetic", "--eps", "0.1", "--step-size", "0.02", "--out",
                     tmp_path / "b")
    cfg = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["config"]
    assert result.exit_code == 0 and (cfg["eps"], cfg["step_size"]) == (0.1, 0.02)
    for bad, needle in ((["--eps", "8/0"], "not a number or a fraction"), (["--eps", "2"], "eps must be in (0, 1]"),
                        (["--eps", "0.1", "--step-size", "0.5"], "step size must be in (0, eps")):
        code = 2 if "fraction" in needle else 1
        assert_one_line_error(run_cli("train", *TINY, "--dataset", "synthetic", *bad, "--out", tmp_path / "c"),
                              needle, code=code)
    result = run_cli("eval", out, "--limit", "8", "--attacks", "fgsm", "--lambdas", "0", "--quiet", "--eps", "4/255",
                     "--out", tmp_path / "e.json")
    assert result.exit_code == 0 and json.loads((tmp_path / "e.json").read_text())["eps"] == pytest.approx(4 / 255)


MINE = ("models", "train", "eval", "compare", "quickstart")


def test_help_is_complete():
    """No description cut off in the command list, every option described, one --device default, examples."""
    listing = run_cli("--help").output
    rows = {ln.split()[0]: ln for ln in listing.split("Commands:")[1].splitlines() if ln.strip()}
    for name in MINE:
        assert not rows[name].rstrip().endswith("..."), rows[name]
    devices = set()
    for name in MINE:
        cmd = main.commands[name]
        for param in cmd.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"{name} {param.opts[0]} has no description"
            if param.name == "device":
                devices.add(param.default)
        text = run_cli(name, "--help").output
        assert name == "models" or "Example" in text, f"{name} --help shows no example"
    assert devices == {"auto"}


@pytest.mark.slow
def test_ctrl_c_says_which_epoch_is_saved_and_how_to_resume(tmp_path):
    """A real `floatedge train` process and a real SIGINT once epoch 1 is saved: the last line says which epoch
    is saved and the command that continues it, exit 130, no traceback; then that command works."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "floatedge", "train", "--arch", "tiny", "--dataset", "synthetic",
                             "--epochs", "1000", "--batch-size", "32", "--pgd-steps", "1", "--threads", "1", "--quiet",
                             "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / CHECKPOINT).exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Aborted" not in err
    saved = torch.load(out / CHECKPOINT, weights_only=True)["epoch"]
    assert saved < 1000
    assert err.strip().splitlines()[-1] == (f"Interrupted during epoch {saved + 1} of 1000. Epochs 1–{saved} are saved "
                                            f"in {out}; continue with: floatedge train --out {out} --resume")
    done = _run("train", "--out", out, "--resume", "--epochs", str(saved + 1), "--quiet")
    assert done.returncode == 0 and f"epoch {saved + 1} of {saved + 1} (1 trained now)" in done.stdout, done.stderr


def test_ctrl_c_before_the_first_epoch_leaves_nothing(tmp_path, monkeypatch):
    import floatedge.train.trainer as trainer

    def interrupt(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_one_epoch", interrupt)
    result = run_cli("train", *TINY, "--dataset", "synthetic", "--out", tmp_path / "run")
    assert result.exit_code == 130
    assert "no epoch finished, so nothing was saved" in result.output and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- quickstart
@pytest.mark.slow
def test_quickstart_runs_the_pipeline_and_a_second_run_trains_nothing(tmp_path):
    """train → eval → export → runtime in one command (one epoch here); the runtime, switched point by point,
    classifies the test images as the evaluation did. Run again, it reuses all of it and says so."""
    out = tmp_path / "qs"
    first = run_cli("quickstart", "--out", out, "--epochs", "1", "--quiet")
    assert first.exit_code == 0, first.output
    assert "training FLOATS ResNet-20 (widths 1, 0.25) on the 8×8 digits, ε = 0.3" in first.output
    assert all((out / name).exists() for name in ("checkpoint.pt", "eval.json", "eval.png", "model.febundle"))
    tour = first.output.split("switched point by point:\n")[1].splitlines()[2:]
    assert [tuple(r.split()[:2]) for r in tour] == [(w, lam) for w in ("1", "0.25") for lam in ("0", "0.2", "0.7", "1")]
    for r in tour:
        ca_runtime, ca_eval = float(r.split()[4]), float(r.split()[5])
        assert abs(ca_runtime - ca_eval) <= 100 / 297 + 1e-9, r  # at most one test image apart
    stamps = {name: (out / name).stat().st_mtime_ns for name in ("checkpoint.pt", "eval.json")}
    again = run_cli("quickstart", "--out", out, "--epochs", "1", "--quiet")
    assert again.exit_code == 0, again.output
    assert "training FLOATS" not in again.output
    assert not [ln for ln in again.output.splitlines() if ln.startswith(("trained", "exported"))]
    for needle in ("reusing the model trained in", "reusing the evaluation", "reusing the bundle", "switched point"):
        assert needle in again.output
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps


def test_quickstart_refuses_a_directory_holding_another_run(run_copy):
    before = snapshot(run_copy)
    assert_one_line_error(run_cli("quickstart", "--out", run_copy), f"{run_copy} holds another run (float tiny",
                          "remove it or choose another --out")
    assert snapshot(run_copy) == before


def test_export_of_a_run_whose_data_moved_takes_data(tmp_path, write_cifar10):
    """A run trained on another machine (a lent GPU) records a data path that is not here: export says so in one
    line and `--data` points the acceptance set at the data here."""
    write_cifar10(tmp_path / "there")
    run = tmp_path / "run"
    assert run_cli("train", *TINY, "--dataset", "cifar10", "--data", tmp_path / "there", "--out", run).exit_code == 0
    (tmp_path / "there").rename(tmp_path / "here")
    result = run_cli("export", run, "--out", tmp_path / "m.febundle", "--acceptance", "4")
    assert_one_line_error(result, "acceptance set needs the run's test data", "--data")
    assert not (tmp_path / "m.febundle").exists()
    result = run_cli("export", run, "--out", tmp_path / "m.febundle", "--acceptance", "4", "--data", tmp_path / "here")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.febundle" / "manifest.json").read_text())["acceptance"]["n_images"] == 4
