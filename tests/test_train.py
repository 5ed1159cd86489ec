"""The training loop: smoke runs on real CIFAR-10, the FLOAT/FLOATS batch semantics, exact resume (also
after SIGKILL), DDP with two gloo processes, and the errors a user can cause."""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import floatedge.train.trainer as trainer
from floatedge.oppoint import BN_ADV, BN_CLEAN, channels
from floatedge.train.attacks import pgd
from floatedge.train.data import DataError, load_digits, load_synthetic
from floatedge.train.film import sample_lambdas
from floatedge.train.layers import DualBatchNorm2d
from floatedge.train.trainer import (
    CHECKPOINT,
    LOG,
    LOSSES,
    METHODS,
    Objective,
    TrainConfig,
    TrainError,
    build_model,
    dataset_meta,
    load_checkpoint,
    load_model,
    make_optimizer,
    read_log,
    train,
)

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**kw) -> TrainConfig:
    base = dict(arch="tiny", dataset="synthetic", epochs=1, batch_size=32, pgd_steps=2, lr=0.05)
    base.update(kw)
    return TrainConfig(**base)


def _state_equal(a: dict, b: dict) -> list[str]:
    """Names of tensors that differ (exact comparison)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def _optim_equal(a: dict, b: dict) -> bool:
    return a["param_groups"] == b["param_groups"] and all(
        torch.equal(a["state"][i]["momentum_buffer"], b["state"][i]["momentum_buffer"]) for i in a["state"])


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env


# ---------------------------------------------------------------- smoke runs on real CIFAR-10
@pytest.mark.parametrize("method,widths", [("float", (1.0,)), ("floats", (1.0, 0.5)), ("pgdat", (1.0,)),
                                           ("standard", (1.0,))])
def test_smoke_on_real_cifar10(tmp_path, cifar_slice, method, widths):
    ds = cifar_slice.limit(train=256, seed=1)
    cfg = _cfg(method=method, dataset="cifar10", widths=widths, batch_size=64, lam=0.5)
    run = train(cfg, tmp_path / "run", progress=False, dataset=ds)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "log.jsonl"]
    (rec,) = read_log(run)
    assert rec["epoch"] == 1 and 0.5 < rec["loss"] < 5 and rec["images_per_s"] > 0
    # each accuracy counts exactly the images its method classified: FLOAT(S) half of every batch at every width,
    # PGD-AT at λ=0.5 all of them twice, standard no adversarial ones (None, not a made-up 0)
    n_clean = {"float": 128, "floats": 256, "pgdat": 256, "standard": 256}[method]
    assert rec["train_clean_acc"] * n_clean == pytest.approx(round(rec["train_clean_acc"] * n_clean), abs=1e-9)
    assert (rec["train_adv_acc"] is None) == (method == "standard")
    model, cfg2, ckpt = load_model(run)
    assert cfg2.method == method and model.widths == widths and not model.training
    assert ckpt["finished"] and ckpt["dataset"]["classes"][0] == "airplane"
    x = ds.x_test[:8].float() / 255
    for w in widths:
        model.set_state(1.0, BN_ADV, w)
        with torch.no_grad():
            assert torch.isfinite(model(x)).all()
    if method in ("float", "floats"):
        alphas = model.alphas()
        assert alphas and all(a != 0.25 for a in alphas.values())  # α is learned
        assert rec["alpha_mean"] == pytest.approx(sum(alphas.values()) / len(alphas))
    else:
        assert model.alphas() == {} and rec["alpha_mean"] is None
    cfg_json = json.loads((run / "config.json").read_text())
    assert cfg_json["config"]["method"] == method and cfg_json["dataset"]["num_classes"] == 10


def test_training_learns_synthetic(tmp_path, synthetic):
    """FLOAT learns the clean task, and its training attack bites: at ε = 0.5 PGD can recolour any image, so the
    adversarial half is all but always misclassified, while a no-op attack (or an adversarial half that was not
    attacked) would give an adversarial training accuracy equal to the clean one (measured: 1.0 vs 0.0)."""
    run = train(_cfg(method="float", epochs=3, batch_size=32, eps=0.5), tmp_path / "r", progress=False,
                dataset=synthetic)
    log = read_log(run)
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[-1]["loss"] < log[0]["loss"] and log[-1]["train_clean_acc"] > 0.8
    assert log[-1]["train_adv_acc"] < log[-1]["train_clean_acc"] - 0.5, log[-1]
    assert log[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine schedule over `epochs`


def test_written_files_get_ordinary_permissions(float_run):
    mask = os.umask(0)
    os.umask(mask)
    for name in (CHECKPOINT, "config.json", LOG):
        assert (float_run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


# ---------------------------------------------------------------- optimiser and batch semantics
def test_alpha_group_has_no_weight_decay():
    model = build_model(_cfg(method="floats", widths=(1.0, 0.5)), dataset_meta(load_synthetic()))
    opt = make_optimizer(model, _cfg(weight_decay=5e-4))
    assert len(opt.param_groups) == 2
    rest, alphas = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith(".alpha") for p in alphas["params"]) and alphas["weight_decay"] == 0.0
    assert len(alphas["params"]) == len(model.alphas()) == 3
    assert rest["weight_decay"] == 5e-4 and not any(names[id(p)].endswith(".alpha") for p in rest["params"])
    assert len(rest["params"]) + 3 == len(list(model.parameters()))
    plain = build_model(_cfg(method="pgdat"), dataset_meta(load_synthetic()))
    assert len(make_optimizer(plain, _cfg()).param_groups) == 1


def test_alpha_unchanged_by_decay_when_its_gradient_is_zero():
    """With weight decay on α, an SGD step would shrink α even without gradient; its group must not."""
    model = build_model(_cfg(), dataset_meta(load_synthetic()))
    opt = make_optimizer(model, _cfg(weight_decay=0.1, lr=1.0))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    w0 = model.conv1.weight.detach().clone()
    opt.step()
    assert all(a == 0.25 for a in model.alphas().values())
    assert torch.allclose(model.conv1.weight, w0 * 0.9)


def _bn_forward_eval_free(h: torch.Tensor):
    return h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=True)


def test_float_batch_semantics_bn_c_sees_only_clean_images():
    """FLOATS, one step by hand through the trainer's Objective: at every width, BN_C's running stats are
    exactly those of the clean first half (s = 0), BN_A's those of the PGD examples of the second half
    (s = 1, attacked at that width with BN_A in eval mode)."""
    ds = load_synthetic()
    cfg = _cfg(method="floats", widths=(1.0, 0.5), pgd_steps=2)
    torch.manual_seed(0)
    model = build_model(cfg, dataset_meta(ds))
    ref = copy.deepcopy(model)
    obj = Objective(model, cfg)
    x, y = ds.x_train[:32].float() / 255, ds.y_train[:32]
    g, g_ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    model.train()
    for w in model.widths:
        loss, (out_c, yc), (out_a, ya) = obj(x, y, w, g)
        assert out_c.shape[0] == ya.shape[0] == 16 and torch.equal(yc, y[:16]) and torch.equal(ya, y[16:])
        loss.backward()
    for k, w in enumerate(ref.widths):
        ref.set_state(1.0, BN_ADV, w)
        x_adv = pgd(ref, x[16:], y[16:], cfg.eps, cfg.step_size, cfg.pgd_steps, generator=g_ref)
        c = channels(w, 8)
        conv = ref.conv1
        w_noisy = conv.weight[:c] + conv.alpha * conv.weight.std() * conv.z[:c]
        with torch.no_grad():
            pre_c = F.conv2d(ref.normalize(x[:16]), conv.weight[:c], None, 1, 1)
            pre_a = F.conv2d(ref.normalize(x_adv), w_noisy, None, 1, 1)
        for j, pre in ((0, pre_c), (1, pre_a)):
            bn = model.bn1.bns[k][j]
            mean, var = _bn_forward_eval_free(pre)
            torch.testing.assert_close(bn.running_mean, 0.1 * mean, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * var, rtol=1e-4, atol=1e-5)
            assert bn.num_batches_tracked.item() == 1
    # every width's BN_C and BN_A received a gradient, in every conditional BN of the network
    for m in model.modules():
        if isinstance(m, DualBatchNorm2d):
            for sets in m.bns:
                for bn in sets:
                    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0


def test_floats_step_updates_every_widths_bns(tmp_path):
    ds = load_synthetic(n_train=32)
    cfg = _cfg(method="floats", widths=(1.0, 0.75, 0.5), batch_size=32)
    torch.manual_seed(cfg.seed)
    fresh = build_model(cfg, dataset_meta(ds))
    run = train(cfg, tmp_path / "r", progress=False, dataset=ds)  # exactly one optimiser step
    model, _, _ = load_model(run)
    n_bn = 0
    for (name, m), m0 in zip(model.named_modules(), fresh.modules(), strict=True):
        if isinstance(m, DualBatchNorm2d):
            for k in range(3):
                for j in range(2):
                    bn, bn0 = m.bns[k][j], m0.bns[k][j]
                    n_bn += 1
                    assert bn.num_batches_tracked.item() == 1, (name, k, j)
                    assert not torch.equal(bn.running_mean, bn0.running_mean), (name, k, j)
                    assert not torch.equal(bn.running_var, bn0.running_var), (name, k, j)
                    assert not torch.equal(bn.bias, bn0.bias), (name, k, j)  # no decay-only change: bias moved
            # BN_C and BN_A of a width saw different inputs
            assert not torch.equal(m.bns[0][0].running_mean, m.bns[0][1].running_mean)
    assert n_bn == 2 * 3 * 2


# ---------------------------------------------------------------- resume
@pytest.mark.parametrize("method,extra", [("float", {}), ("floats", {"widths": (1.0, 0.5), "noise_mode": "resample"}),
                                          ("pgdat", {"lam": 0.5})])
def test_resume_equals_uninterrupted(tmp_path, cifar_slice, method, extra):
    """Stop after epoch 1 of 3 (in-process), resume: every tensor of model and optimiser equals a straight
    run, on augmented real CIFAR-10 images."""
    ds = cifar_slice.limit(train=128, seed=2)
    cfg = _cfg(method=method, dataset="cifar10", epochs=3, **extra)
    a = train(cfg, tmp_path / "a", progress=False, dataset=ds)
    train(cfg, tmp_path / "b", progress=False, dataset=ds, until_epoch=1)
    assert load_checkpoint(tmp_path / "b")["epoch"] == 1
    b = train(cfg, tmp_path / "b", resume=True, progress=False, dataset=ds)
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert cb["epoch"] == 3 and cb["finished"]
    assert _state_equal(ca["model"], cb["model"]) == []
    assert _optim_equal(ca["optimizer"], cb["optimizer"]) and ca["scheduler"] == cb["scheduler"]
    la, lb = read_log(a), read_log(b)
    assert [r["loss"] for r in la] == [r["loss"] for r in lb] and [r["epoch"] for r in lb] == [1, 2, 3]


def test_resume_takes_the_data_subset_from_the_checkpoint(tmp_path):
    """A resume whose flags forget --limit-train (or the data set) still trains on the run's own data."""
    cfg = _cfg(method="float", epochs=2, limit_train=96)
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False, until_epoch=1)
    train(_cfg(method="float", epochs=2), tmp_path / "b", resume=True, progress=False)
    assert _state_equal(load_checkpoint(tmp_path / "a")["model"], load_checkpoint(tmp_path / "b")["model"]) == []


def test_crash_after_the_log_line_but_before_the_checkpoint(tmp_path, synthetic, monkeypatch):
    """A kill between the epoch's two writes: resume must leave exactly one log line per epoch."""
    cfg = _cfg(method="float", epochs=3)
    straight = train(cfg, tmp_path / "a", progress=False, dataset=synthetic)

    real_save = trainer.save_checkpoint

    def save_then_die(run_dir, state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt  # dies on the way to writing checkpoint 2
        real_save(run_dir, state)

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", progress=False, dataset=synthetic)
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "b")["epoch"] in (1, 2)
    with open(tmp_path / "b" / LOG, "a") as f:
        f.write('{"epoch": 3, "loss": 0.1')  # and a half-written line, as a kill mid-write leaves
    train(cfg, tmp_path / "b", resume=True, progress=False, dataset=synthetic)
    lb, la = read_log(tmp_path / "b"), read_log(straight)
    assert [r["epoch"] for r in lb] == [1, 2, 3]
    assert [r["loss"] for r in lb] == [r["loss"] for r in la]
    assert _state_equal(load_checkpoint(straight)["model"], load_checkpoint(tmp_path / "b")["model"]) == []


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path, cifar10_path):
    """Real processes: `floatedge train` killed with SIGKILL once a checkpoint exists, then `--resume`d,
    ends bit-identical to an uninterrupted run (real CIFAR-10 slice, augmentation, PGD, FLOATS)."""
    args = [sys.executable, "-m", "floatedge", "train", "--method", "floats", "--widths", "1,0.5", "--arch", "tiny",
            "--dataset", "cifar10", "--data", str(cifar10_path), "--limit-train", "256", "--epochs", "3", "--batch-size", "32",
            "--pgd-steps", "2", "--lr", "0.05", "--threads", "1", "--quiet"]
    a, b = tmp_path / "a", tmp_path / "b"
    # the uninterrupted reference runs alongside
    ref = subprocess.Popen(args + ["--out", str(a)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = subprocess.Popen(args + ["--out", str(b)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (b / CHECKPOINT).exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(b)["epoch"]
    assert killed_at < 3, "the run finished before it could be killed: make the epochs slower"
    done = subprocess.run(args + ["--out", str(b), "--resume"], env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert ref.wait(timeout=120) == 0, ref.stderr.read().decode()
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["epoch"] == cb["epoch"] == 3
    assert _state_equal(ca["model"], cb["model"]) == []
    assert _optim_equal(ca["optimizer"], cb["optimizer"])
    la, lb = read_log(a), read_log(b)
    assert [r["epoch"] for r in lb] == [1, 2, 3]
    assert [(r["loss"], r["train_clean_acc"], r["lr"]) for r in la] == [(r["loss"], r["train_clean_acc"], r["lr"])
                                                                        for r in lb]


# ---------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path):
    """`floatedge train` under torchrun, 2 CPU processes (gloo), FLOATS with two widths (several forwards
    and backwards per step, parameters unused at some widths): it finishes, rank 0 alone writes one
    checkpoint and one log, both ranks end with identical weights and buffers, and the model learned.

    Not asserted: equality with a 1-process run on the same global batch. By design each rank normalises
    with its own batch statistics (no SyncBN) and splits its own shard into clean/adversarial halves, so
    the first update differs from the single-process one by more than float tolerance."""
    side, out = tmp_path / "side", tmp_path / "run"
    side.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "_ddp_worker.py"), str(side), "--method", "floats", "--widths", "1,0.5",
           "--arch", "tiny", "--dataset", "synthetic", "--epochs", "2", "--batch-size", "32", "--pgd-steps", "2",
           "--lr", "0.05", "--threads", "1", "--quiet", "--out", str(out)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained floats tiny on synthetic: epoch 2") == 1  # rank 0 reports, once
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "log.jsonl"]
    log = read_log(out)
    assert [r["epoch"] for r in log] == [1, 2]  # one writer
    assert all(0 < r["loss"] < 5 for r in log) and log[1]["loss"] < log[0]["loss"]
    r0, r1 = torch.load(side / "rank0.pt"), torch.load(side / "rank1.pt")
    assert _state_equal(r0, r1) == []  # gradients were averaged; buffers synchronised
    ckpt = load_checkpoint(out)
    assert _state_equal(ckpt["model"], {k: v for k, v in r0.items()}) == []
    model, cfg, _ = load_model(out)
    ds = load_synthetic()
    with torch.no_grad():
        model.set_state(0.0, 0, 1.0)
        acc = (model(ds.x_test.float() / 255).argmax(1) == ds.y_test).float().mean().item()
    assert acc > 0.5  # 4 classes
    assert cfg.method == "floats" and model.widths == (1.0, 0.5)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kw,msg", [
    ({"method": "oat2"}, "unknown method 'oat2'"),
    ({"arch": "vgg"}, "unknown architecture 'vgg'"),
    ({"noise_mode": "always"}, "unknown noise mode"),
    ({"method": "floats", "widths": "1,1.2"}, r"width must be in \(0, 1\]"),
    ({"method": "floats", "widths": "1,0"}, r"width must be in \(0, 1\]"),
    ({"method": "pgdat", "lam": 1.5}, r"lambda must be in \[0, 1\]"),
    ({"method": "pgdat", "lam": -0.1}, r"lambda must be in \[0, 1\]"),
    ({"method": "float", "widths": "1,0.5"}, "trains one width"),
    ({"epochs": 0}, "epochs must be"),
    ({"batch_size": 1}, "batch size"),
    ({"limit_train": -5}, "limit_train must be ≥ 2"),
    ({"limit_train": 0}, "limit_train must be ≥ 2"),
    ({"pgd_steps": -1}, "pgd_steps ≥ 0"),
])
def test_bad_config(kw, msg):
    with pytest.raises(TrainError, match=msg):
        _cfg(**kw)


def test_config_round_trip():
    cfg = _cfg(method="floats", widths="0.5,1")
    assert cfg.widths == (1.0, 0.5) and cfg.noise_seed == 1
    assert TrainConfig.from_dict({**cfg.to_dict(), "unknown_key": 3}) == cfg


def _snapshot(run: Path) -> dict:
    return {p.name: p.read_bytes() for p in run.iterdir()}


def test_existing_run_is_not_overwritten(float_run, synthetic):
    before = _snapshot(float_run)
    with pytest.raises(TrainError, match="already holds a run; pass --resume"):
        train(_cfg(method="float"), float_run, progress=False, dataset=synthetic)
    with pytest.raises(TrainError, match=r"checkpoint is float/tiny widths \[1.0\] on synthetic, not float/resnet20"):
        train(_cfg(method="float", arch="resnet20"), float_run, resume=True, progress=False, dataset=synthetic)
    with pytest.raises(TrainError, match=r"not floats/tiny widths \[1.0, 0.5\]"):
        train(_cfg(method="floats", widths=(1, 0.5)), float_run, resume=True, progress=False, dataset=synthetic)
    with pytest.raises(TrainError, match=r"on synthetic, not float/tiny widths \[1.0\] on digits"):
        train(_cfg(method="float", dataset="digits", epochs=2), float_run, resume=True, progress=False)
    with pytest.raises(TrainError, match=r"trained on synthetic \[3, 16, 16\], not digits \[1, 8, 8\]"):
        train(_cfg(method="float", epochs=2), float_run, resume=True, progress=False, dataset=load_digits())
    assert _snapshot(float_run) == before


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(TrainError, match="no checkpoint"):
        train(_cfg(), tmp_path, resume=True, progress=False)


def test_unwritable_output_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainError, match="is not writable"):
        train(_cfg(), tmp_path / "file" / "run", progress=False)
    assert (tmp_path / "file").read_text() == "x"


def test_checkpoint_of_another_architecture(tmp_path, float_run):
    """A checkpoint whose weights are not those of the architecture its config names."""
    ckpt = torch.load(float_run / CHECKPOINT, weights_only=True)
    other = build_model(_cfg(arch="resnet20"), ckpt["dataset"])
    ckpt["model"] = other.state_dict()
    (tmp_path / "bad").mkdir()
    torch.save(ckpt, tmp_path / "bad" / CHECKPOINT)
    with pytest.raises(TrainError, match="does not match architecture tiny"):
        load_model(tmp_path / "bad")
    with pytest.raises(TrainError, match="does not match architecture tiny"):
        train(_cfg(epochs=2), tmp_path / "bad", resume=True, progress=False)


@pytest.mark.parametrize("content,msg", [
    (b"not a checkpoint", "not a readable floatedge checkpoint"),
    (None, "not a readable floatedge checkpoint"),  # hostile pickle
    ("list", "not a floatedge checkpoint of format"),
    ("nokeys", "damaged floatedge checkpoint \\(missing or bad: config, dataset, model, epoch\\)"),
])
def test_unreadable_checkpoints(tmp_path, content, msg, hostile_pickle):
    path = tmp_path / CHECKPOINT
    if content is None:
        path.write_bytes(hostile_pickle(tmp_path / "pwned", lambda evil: {"format": 1, "x": evil}))
    elif content == "list":
        torch.save([1, 2], path)
    elif content == "nokeys":
        torch.save({"format": 1}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(TrainError, match=msg):
        load_model(tmp_path)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- the loss of each method, by hand
class Probe(nn.Module):
    """A two-class network whose loss can be worked out on paper. logit₀ = k·(mean(x) − ½)·g, logit₁ = 0, with
    k = 2·ln 3 and g = 1, or g = λ_i per sample once OAT's `set_lambda` has conditioned it. On images of constant
    ½: a clean image gives logits (0, 0), CE = ln 2. PGD at ε = ½ (10 steps of ε/4: 2.5ε, from any start) drives an image
    of class 0 to all-0 and one of class 1 to all-1, so either way CE = ln(1 + 3^g): ln 4 at g = 1. Every forward
    records (state, batch size) so the test sees which images ran where."""

    widths = (1.0,)

    def __init__(self) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(2 * math.log(3)))
        self.state, self.gain, self.seen = None, None, []

    def set_state(self, noise_scale: float, bn: int, width: float) -> None:
        self.state, self.gain = (noise_scale, bn), None

    def set_lambda(self, lam, width: float = 1.0, n_clean: int | None = None) -> None:
        self.state, self.gain = ("λ", n_clean), torch.as_tensor(lam, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.state, len(x), self.training))
        g = torch.ones(len(x)) if self.gain is None else self.gain
        z0 = self.k * (x.mean((1, 2, 3)) - 0.5) * g
        return torch.stack([z0, torch.zeros_like(z0)], 1)


def _probe_loss(method: str, batch: int = 4, **kw):
    cfg = _cfg(method=method, eps=0.5, pgd_steps=10, **kw)
    probe = Probe().train()
    x, y = torch.full((batch, 1, 2, 2), 0.5), torch.arange(batch) % 2
    out = Objective(probe, cfg)(x, y, 1.0, torch.Generator().manual_seed(0))
    return out, probe, y


LN2, LN4 = math.log(2), math.log(4)


def test_float_loss_is_half_clean_half_adversarial():
    """FLOAT: 0.5·CE(clean half at s=0, BN_C) + 0.5·CE(attacked half at s=1, BN_A) = 0.5·ln 2 + 0.5·ln 4."""
    out, probe, y = _probe_loss("float")
    assert out.loss.item() == pytest.approx(0.5 * LN2 + 0.5 * LN4, rel=1e-6)
    assert torch.equal(out.clean[1], y[:2]) and torch.equal(out.adv[1], y[2:])
    assert probe.seen[0] == ((0.0, BN_CLEAN), 2, True)  # clean half, clean state
    assert set(probe.seen[1:-1]) == {((1.0, BN_ADV), 2, False)}  # the attack: adversarial state, BN in eval mode
    assert probe.seen[-1] == ((1.0, BN_ADV), 2, True)


@pytest.mark.parametrize("lam,want,has_clean,has_adv", [
    (0.3, 0.7 * LN2 + 0.3 * LN4, True, True), (1.0, LN4, False, True), (0.0, LN2, True, False)])
def test_pgdat_loss_mixes_clean_and_adversarial_by_lambda(lam, want, has_clean, has_adv):
    """PGD-AT (Eq. 3): (1−λ)·CE(clean) + λ·CE(adv) over the whole batch, plain state; a zero-weight term is skipped."""
    out, probe, _ = _probe_loss("pgdat", lam=lam)
    assert out.loss.item() == pytest.approx(want, rel=1e-6)
    assert (out.clean is not None, out.adv is not None) == (has_clean, has_adv)
    assert {s for s, _, _ in probe.seen} == {(0.0, BN_CLEAN)} and {n for _, n, _ in probe.seen} == {4}


def test_standard_loss_is_clean_cross_entropy():
    out, probe, _ = _probe_loss("standard")
    assert out.loss.item() == pytest.approx(LN2, rel=1e-6) and out.adv is None and len(probe.seen) == 1


def test_oat_loss_weights_each_sample_by_its_own_lambda():
    """OAT: mean over the batch of (1−λ_i)·CE(clean_i) + λ_i·CE(adv_i), the λ_i drawn per sample with the zeros
    first, only the λ_i > 0 samples attacked. With the probe, CE(clean_i) = ln 2 and CE(adv_i) = ln(1 + 3^λ_i), so a
    batch-mean λ (or the wrong denominator) gives another number."""
    batch = 12
    out, probe, _ = _probe_loss("oat", batch=batch)
    lam = sample_lambdas(batch, torch.Generator().manual_seed(0))
    k = int((lam == 0).sum())
    assert k == 2 and len(set(lam[k:].tolist())) > 1  # a case where per-sample and mean weights differ
    want = (sum((1 - v) * LN2 for v in lam.tolist()) + sum(v * math.log(1 + 3**v) for v in lam[k:].tolist())) / batch
    mean_lam = lam.mean().item()
    wrong = ((1 - mean_lam) * LN2 * batch + mean_lam * math.log(1 + 3**mean_lam) * (batch - k)) / batch
    assert out.loss.item() == pytest.approx(want, rel=1e-6) and abs(want - wrong) > 1e-3
    assert probe.seen[0] == (("λ", k), batch, True)  # clean pass: all samples, the k zeros through BN_C
    assert probe.seen[-1] == (("λ", 0), batch - k, True)  # adversarial pass: only the λ > 0 samples
    assert out.adv[1].shape == (batch - k,)


def test_every_method_has_a_loss():
    assert set(LOSSES) == set(METHODS)


# ---------------------------------------------------------------- what a run directory holds
def test_checkpoint_holds_no_unused_rng_state(float_run):
    """Every random stream of epoch e is seeded from (seed, e), so resume needs no RNG state (and none is stored)."""
    assert "rng" not in load_checkpoint(float_run)


def test_data_path_is_recorded_resolved(tmp_path, monkeypatch, write_cifar10):
    write_cifar10(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(dataset="cifar10", data="data", batch_size=8)
    assert cfg.data == str(tmp_path / "data")
    run = train(cfg, tmp_path / "run", progress=False)
    assert load_checkpoint(run)["config"]["data"] == str(tmp_path / "data")
    assert json.loads((run / "config.json").read_text())["config"]["data"] == str(tmp_path / "data")


def test_resuming_a_finished_run_writes_nothing(float_run):
    before = _snapshot(float_run)
    train(_cfg(method="float"), float_run, resume=True, progress=False)
    assert _snapshot(float_run) == before


@pytest.mark.parametrize("case", ["bad data", "interrupted"])
def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_no_directory(tmp_path, synthetic, monkeypatch, case):
    out = tmp_path / "runs" / "new"
    if case == "bad data":
        with pytest.raises(DataError, match="is not a directory"):
            train(_cfg(dataset="cifar10", data=str(tmp_path / "nowhere")), out, progress=False)
    else:
        def interrupt(*_a, **_k):
            raise KeyboardInterrupt
        monkeypatch.setattr(trainer, "checkpoint_and_record", interrupt)
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(), out, progress=False, dataset=synthetic)
    assert not (tmp_path / "runs").exists()


def test_a_resumed_run_that_fails_keeps_its_directory(float_run, tmp_path):
    """Only what this invocation created is removed: a resume that cannot read its data leaves the run alone."""
    run = tmp_path / "run"
    run.mkdir()
    ckpt = torch.load(float_run / CHECKPOINT, weights_only=True)
    ckpt["config"] = {**ckpt["config"], "dataset": "cifar10", "data": str(tmp_path / "moved")}
    ckpt["finished"] = False
    torch.save(ckpt, run / CHECKPOINT)
    before = _snapshot(run)
    with pytest.raises(DataError, match="the data path this run recorded; give --data"):
        train(_cfg(dataset="cifar10", epochs=2), run, resume=True, progress=False)
    assert _snapshot(run) == before
