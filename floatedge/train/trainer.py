"""Training, top to bottom (after torchvision's references/classification/train.py):

    train(cfg, out)
      ├─ resume_checks          what --out holds, and whether this request fits it
      ├─ build                  data → model → optimiser → scheduler → objective (restored on resume)
      └─ for each epoch
           ├─ train_one_epoch        batches → the method's loss → one optimiser step each
           └─ checkpoint_and_record  config.json, one log line, then the checkpoint (each atomically)

Methods differ in one place, the loss of a batch at one width: `LOSSES`, a table of small functions.

* ``float``  — FLOAT, Algorithm 1: first half of the batch clean at λ=0 (BN_C, s=0), second half
  PGD-7 at λ=1 (BN_A, s=1), loss 0.5·L_C + 0.5·L_A. With a mixing ``train_dial`` (issue 15, the
  training variant; docs/lambda-dial.md) the second half runs at a λ drawn per batch — 1 for half the
  batches, else U(0,1) — under that dial's (s, t): attacked there, loss (1−λ)·CE(clean) + λ·CE(adv).
* ``floats`` — FLOATS, Algorithm 2: the same at every width, widest first, gradients accumulated,
  one optimiser step.
* ``pgdat``  — PGD-AT at a fixed λ (FLOAT Eq. 3): whole batch attacked, (1−λ)·CE(clean) + λ·CE(adv);
  plain layers (no noise, one BN).
* ``standard`` — clean cross-entropy, plain layers.
* ``oat``    — OAT (Wang et al. 2020, reference code): per-sample λ from {0, .1, .2, .3, .4, 1} with
  ⌈B/6⌉ zeros first, FiLM(λ) after the BNs, dual BN routed by λ, PGD on the λ>0 samples,
  loss mean of (1−λ)·CE(clean) + λ·CE(adv). See `film.py`.
* ``oats``   — OATS, the OAT paper's Algorithm 2: one λ sample per batch, then per width (widest first)
  attack with that width's subnetwork and accumulate the OAT loss; one optimiser step.

Reproducibility: everything random in epoch e (order, augmentation, PGD starts, resampled noise,
dropout) is seeded from (seed, e), so a run resumed from the checkpoint of epoch e−1 continues exactly;
the checkpoint therefore holds no RNG state. Distributed: under ``torchrun`` each rank takes a disjoint
shard of the epoch order and the objective is wrapped in DistributedDataParallel; rank 0 writes
checkpoints and logs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from floatedge import __version__
from floatedge.fsutil import atomic_write, atomic_write_json, atomic_write_text, check_writable_dir
from floatedge.oppoint import BN_CLEAN, SWITCH, OperatingPoint

from .attacks import pgd
from .config import DEVICES, METHODS, SLIM_METHODS, TrainConfig, TrainError
from .data import DataError, Dataset, augment_batch, epoch_order, load_dataset, to_float
from .film import sample_lambdas
from .models import FloatModel, create_model

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
CONFIG_JSON = "config.json"
CHECKPOINT_FORMAT = 1


def build_model(cfg: TrainConfig, ds_meta: dict) -> FloatModel:
    model = create_model(
        cfg.arch,
        num_classes=ds_meta["num_classes"],
        in_channels=ds_meta["input_shape"][0],
        mean=ds_meta["mean"],
        std=ds_meta["std"],
        widths=cfg.widths,
        noisy=cfg.noisy,
        dual=cfg.noisy or cfg.oat,
        noise_mode=cfg.noise_mode,
        film_dim=cfg.film_dim if cfg.oat else 0,
        film_seed=cfg.seed,
        film_init=cfg.film_init,
    )
    model.draw_noise(cfg.noise_seed)
    return model


def dataset_meta(ds: Dataset) -> dict:
    return {"name": ds.name, "num_classes": ds.num_classes, "classes": ds.classes,
            "input_shape": list(ds.input_shape), "mean": list(ds.mean), "std": list(ds.std)}


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast type of a training step: None (full fp32) off CUDA or with --no-amp; bf16 on GPUs that have it
    (Ampere and later), fp16 with a loss scaler before them. bf16 is chosen because it keeps fp32's exponent range:
    the training attack's input gradient is that of a batch-mean loss, ~1e-7 to 1e-9 per pixel, which fp16 flushes
    to zero (a zero gradient has sign 0, so PGD silently stops moving those pixels and trains on weaker examples).
    Measured on an H200 (benchmarks/gpu_fullscale.py, a trained FLOAT ResNet-20 at its robust point, 512 CIFAR-10
    images): fp16 autocast left 4.6 % of the input-gradient entries exactly zero, bf16 and fp32 none. bf16 needs no
    GradScaler."""
    if device.type != "cuda" or not enabled:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda asked for, but torch sees no CUDA device")
    if name not in DEVICES:
        raise TrainError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    return torch.device(name)



# ---------------------------------------------------------------- the loss of a batch, per method
Pair = tuple[torch.Tensor, torch.Tensor]  # (logits, labels) of one forward, for the training accuracies


class BatchLoss(NamedTuple):
    loss: torch.Tensor
    clean: Pair | None
    adv: Pair | None


def standard_loss(o: Objective, x: torch.Tensor, y: torch.Tensor, width: float, g: torch.Generator) -> BatchLoss:
    o.model.set_state(0.0, BN_CLEAN, width)
    out = o.model(x)
    return BatchLoss(F.cross_entropy(out, y), (out, y), None)


def pgdat_loss(o: Objective, x: torch.Tensor, y: torch.Tensor, width: float, g: torch.Generator) -> BatchLoss:
    """(1−λ)·CE(clean) + λ·CE(adv) on the whole batch (FLOAT Eq. 3); a term with weight 0 is not computed."""
    lam = o.cfg.lam
    if lam == 0.0:
        return standard_loss(o, x, y, width, g)
    o.model.set_state(0.0, BN_CLEAN, width)
    out_a = o.model(o.attack(x, y, g))
    if lam == 1.0:
        return BatchLoss(F.cross_entropy(out_a, y), None, (out_a, y))
    out_c = o.model(x)
    return BatchLoss((1 - lam) * F.cross_entropy(out_c, y) + lam * F.cross_entropy(out_a, y), (out_c, y), (out_a, y))


def float_loss(o: Objective, x: torch.Tensor, y: torch.Tensor, width: float, g: torch.Generator) -> BatchLoss:
    """0.5·CE of the clean first half at λ=0 + 0.5·L_λ of the second half at the batch's training λ (`train_lambda`),
    L_λ = (1−λ)·CE(its clean images) + λ·CE(its PGD examples), both at λ's (s, t) under the run's training dial.
    FLOAT as specified (the switch dial) trains only λ=1: L_1 = CE(PGD examples) at (s=1, BN_A)."""
    m, h, lam = o.model, x.shape[0] // 2, o.train_lambda(x, g)
    o.set_point(0.0, width)
    out_c = m(x[:h])
    o.set_point(lam, width)  # a blend of BN_C and BN_A leaves both sets' running statistics alone (DualBatchNorm2d)
    out_a = m(o.attack(x[h:], y[h:], g))
    loss_a = F.cross_entropy(out_a, y[h:])
    if lam < 1.0:
        loss_a = lam * loss_a + (1 - lam) * F.cross_entropy(m(x[h:]), y[h:])
    loss = 0.5 * F.cross_entropy(out_c, y[:h]) + 0.5 * loss_a
    return BatchLoss(loss, (out_c, y[:h]), (out_a, y[h:]))


ROBUST_END_SHARE = 0.5  # under a mixing training dial, the share of batches whose second half trains at λ = 1


def sample_train_lambda(g: torch.Generator) -> float:
    """A mixing dial's training λ for one batch: 1 with probability ROBUST_END_SHARE (FLOAT's robust end keeps
    half its training), else uniform on (0, 1) — the dial's interior, which FLOAT never trains."""
    u = torch.rand(2, generator=g).tolist()
    return 1.0 if u[0] < ROBUST_END_SHARE else min(max(u[1], 1e-6), 1.0 - 1e-6)


def oat_loss(o: Objective, x: torch.Tensor, y: torch.Tensor, width: float, g: torch.Generator) -> BatchLoss:
    """mean over samples of (1−λ_i)·CE(clean_i) + λ_i·CE(adv_i); only the λ_i > 0 samples are attacked
    (the reference's efficient=True). The zeros come first (`sample_lambdas`)."""
    m, lam = o.model, o.oat_lambdas(x, g)
    k = int((lam == 0).sum())
    m.set_lambda(lam, width, n_clean=k)
    out_c = m(x)
    loss = ((1 - lam) * F.cross_entropy(out_c, y, reduction="none")).sum()
    if k == x.shape[0]:
        return BatchLoss(loss / x.shape[0], (out_c, y), None)
    m.set_lambda(lam[k:], width, n_clean=0)
    out_a = m(o.attack(x[k:], y[k:], g))
    loss = loss + (lam[k:] * F.cross_entropy(out_a, y[k:], reduction="none")).sum()
    return BatchLoss(loss / x.shape[0], (out_c, y), (out_a, y[k:]))


LossFn = Callable[["Objective", torch.Tensor, torch.Tensor, float, torch.Generator], BatchLoss]
LOSSES: dict[str, LossFn] = {"float": float_loss, "floats": float_loss, "pgdat": pgdat_loss,
                             "standard": standard_loss, "oat": oat_loss, "oats": oat_loss}
assert set(LOSSES) == set(METHODS)


class Objective(nn.Module):
    """The model, the method's loss and the training attack, as one module, so that DistributedDataParallel
    sees one forward per backward even though FLOAT runs the network twice and attacks it in between."""

    def __init__(self, model: FloatModel, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg
        self.loss_fn = LOSSES[cfg.method]

    def set_point(self, lam: float, width: float) -> None:
        """Put the model at training λ `lam` under the run's training dial (λ_th 0: λ=0 is (s=0, BN_C), λ=1 is
        (s=1, BN_A))."""
        p = OperatingPoint(lam, width, 0.0, self.cfg.train_dial)
        self.model.set_state(p.noise_scale, p.bn_weight, width)

    def train_lambda(self, x: torch.Tensor, g: torch.Generator) -> float:
        """The batch's training λ for FLOAT's second half: 1 under the switch dial (FLOAT as specified), drawn once
        per batch under a mixing dial (shared by every width of the batch, as OATS shares its λ)."""
        if self.cfg.train_dial == SWITCH:
            return 1.0
        if getattr(self, "_lam_train_batch", None) is not x:
            self._lam_train_batch, self._lam_train = x, sample_train_lambda(g)
        return self._lam_train

    def attack(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return pgd(self.model, x, y, self.cfg.eps, self.cfg.step_size, self.cfg.pgd_steps, generator=g)

    def oat_lambdas(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One λ sample per batch, shared by every width of that batch (OATS Algorithm 2): resampled when
        the trainer hands over a new batch tensor."""
        if getattr(self, "_lam_batch", None) is not x:
            self._lam_batch, self._lam = x, sample_lambdas(x.shape[0], g).to(x.device)
        return self._lam

    def forward(self, x: torch.Tensor, y: torch.Tensor, width: float, g: torch.Generator) -> BatchLoss:
        return self.loss_fn(self, x, y, width, g)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """α in its own group without weight decay (PNI: decay would drive α to 0)."""
    alphas = [p for n, p in model.named_parameters() if n.endswith(".alpha")]
    others = [p for n, p in model.named_parameters() if not n.endswith(".alpha")]
    groups = [{"params": others, "weight_decay": cfg.weight_decay}]
    if alphas:
        groups.append({"params": alphas, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(run_dir: Path, state: dict) -> None:
    atomic_write(run_dir / CHECKPOINT, lambda f: torch.save(state, f))


def _unreadable(path: Path, exc: Exception) -> str:
    """What is wrong with a checkpoint torch.load refused, in words a user can act on."""
    head = path.read_bytes()[:4] if path.is_file() else b""
    size = path.stat().st_size if path.is_file() else 0
    if head[:2] == b"PK" and not zipfile.is_zipfile(path):
        return (f"the file is cut short ({size} bytes, the end of its zip archive is missing): a copy or download "
                f"that did not finish; checkpoints written by training are never left half-written")
    if "GLOBAL" in str(exc):  # torch's weights-only unpickler met a class or function (torch 2.6+ wording)
        return "it holds Python objects other than tensors and plain data, which floatedge refuses to unpickle"
    if head[:2] != b"PK":
        return f"the file is not a torch.save archive ({size} bytes that do not start like one)"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unknown error'}"


def load_checkpoint(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise TrainError(f"{run_dir}: no checkpoint ({CHECKPOINT}) found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainError(f"{path}: not a readable floatedge checkpoint: {_unreadable(path, exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path}: not a floatedge checkpoint of format {CHECKPOINT_FORMAT}")
    missing = [k for k, t in (("config", dict), ("dataset", dict), ("model", dict), ("epoch", int))
               if not isinstance(ckpt.get(k), t)]
    if missing:
        raise TrainError(f"{path}: damaged floatedge checkpoint (missing or bad: {', '.join(missing)})")
    return ckpt


def load_model(run_dir: str | Path) -> tuple[FloatModel, TrainConfig, dict]:
    """Rebuild the trained model from a run directory, with its recorded noise draw, in eval mode."""
    ckpt = load_checkpoint(run_dir)
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = build_model(cfg, ckpt["dataset"])
    _restore(run_dir, cfg, lambda: model.load_state_dict(ckpt["model"]))
    model.eval()
    return model, cfg, ckpt


def _restore(run_dir: str | Path, cfg: TrainConfig, load: Callable[[], object]) -> None:
    """Run `load` (state-dict loading); a state that does not fit the model is a TrainError of one line."""
    try:
        load()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise TrainError(f"{run_dir}: checkpoint does not match architecture {cfg.arch}: "
                         f"{str(exc).splitlines()[0]}") from None


def epochs_done(run_dir: str | Path) -> int:
    """Epochs saved in a run directory's checkpoint (0 when there is none)."""
    return int(load_checkpoint(run_dir)["epoch"]) if (Path(run_dir) / CHECKPOINT).exists() else 0


# ---------------------------------------------------------------- train
@dataclass
class Run:
    """Everything `build` makes and an epoch uses."""

    cfg: TrainConfig
    run_dir: Path
    ds: Dataset
    meta: dict
    model: FloatModel
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    objective: nn.Module
    scaler: torch.amp.GradScaler
    device: torch.device
    dist: Dist


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True,
          dataset: Dataset | None = None, until_epoch: int | None = None) -> Path:
    """Train `cfg` into run directory `out` (checkpoint.pt, config.json, log.jsonl); returns it.

    `until_epoch` stops after that epoch (the schedule still spans `cfg.epochs`), so several runs can be
    trained interleaved, epoch by epoch, each resumed exactly (`floatedge compare` does this). With nothing
    left to train (a finished run resumed), nothing is written. A new run that fails or is interrupted before
    its first checkpoint leaves no run directory behind."""
    run_dir, given_data = Path(out), cfg.data
    device = resolve_device(cfg.device)
    dist_info = init_distributed(device)
    cfg, ckpt = resume_checks(cfg, run_dir, resume)
    start = int(ckpt["epoch"]) if ckpt else 0
    stop = min(cfg.epochs, until_epoch or cfg.epochs)
    if start >= stop:
        return run_dir
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with _new_run_dir(run_dir, create=dist_info.main and not resume):
        ds = dataset if dataset is not None else load_run_data(cfg.dataset, cfg.data, recorded=resume and not given_data)
        run = build(cfg, run_dir, ckpt, ds, device, dist_info)
        for epoch in range(start, stop):
            record = train_one_epoch(run, epoch, progress)
            if dist_info.main:
                checkpoint_and_record(run, epoch, record)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
    run.model.eval()
    return run_dir


def resume_checks(cfg: TrainConfig, run_dir: Path, resume: bool) -> tuple[TrainConfig, dict | None]:
    """The config to train with and the checkpoint to start from (None for a new run), or a TrainError saying
    why --out does not fit this request. On resume the run's own settings win; only the epoch budget, the
    device, the threads and the data location may be given anew."""
    if not resume:
        if (run_dir / CHECKPOINT).exists():
            raise TrainError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        return cfg, None
    ckpt = load_checkpoint(run_dir)
    saved = TrainConfig.from_dict(ckpt["config"])
    ident = lambda c: (c.arch, c.method, c.widths, c.dataset)
    if ident(saved) != ident(cfg):
        raise TrainError(f"{run_dir}: checkpoint is {saved.method}/{saved.arch} widths {list(saved.widths)} "
                         f"on {saved.dataset}, not {cfg.method}/{cfg.arch} widths {list(cfg.widths)} "
                         f"on {cfg.dataset}")
    cfg = dataclasses.replace(saved, epochs=cfg.epochs, device=cfg.device, threads=cfg.threads,
                              data=cfg.data or saved.data)
    if cfg.epochs < int(ckpt["epoch"]):
        raise TrainError(f"{run_dir}: the checkpoint has {ckpt['epoch']} epochs, more than --epochs {cfg.epochs}")
    return cfg, ckpt


@contextlib.contextmanager
def _new_run_dir(run_dir: Path, create: bool) -> Iterator[None]:
    """Create a new run's directory (proving it writable before any work); if the run then fails or is
    interrupted before its first checkpoint, remove the files and directories it created."""
    if not create:
        yield
        return
    made = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # deepest first
    try:
        check_writable_dir(run_dir)
    except OSError as exc:
        raise TrainError(str(exc)) from None
    try:
        yield
    except BaseException:
        if made and not (run_dir / CHECKPOINT).exists():
            for name in (LOG, CONFIG_JSON):
                (run_dir / name).unlink(missing_ok=True)
            for p in made:
                with contextlib.suppress(OSError):
                    p.rmdir()
        raise


def build(cfg: TrainConfig, run_dir: Path, ckpt: dict | None, ds: Dataset, device: torch.device,
          dist_info: Dist) -> Run:
    """The training subset, model, optimiser, scheduler and objective; restored from `ckpt` when resuming."""
    if cfg.limit_train:
        ds = ds.limit(train=cfg.limit_train, seed=cfg.seed)
    meta = dataset_meta(ds)
    if ckpt is not None and (meta["num_classes"], meta["input_shape"]) != \
            (ckpt["dataset"]["num_classes"], list(ckpt["dataset"]["input_shape"])):
        raise TrainError(f"{run_dir}: checkpoint was trained on {ckpt['dataset']['name']} "
                         f"{ckpt['dataset']['input_shape']}, not {ds.name} {meta['input_shape']}")

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, meta)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if ckpt is not None:
        _restore(run_dir, cfg, lambda: (model.load_state_dict(ckpt["model"]), opt.load_state_dict(ckpt["optimizer"])))
        sched.load_state_dict(ckpt["scheduler"])
        sched.T_max = cfg.epochs
    model.to(device)
    cuda = device.type == "cuda"
    if cfg.channels_last:  # ~15% faster on CPU (oneDNN) as well as on CUDA
        model.to(memory_format=torch.channels_last)
    objective: nn.Module = Objective(model, cfg)
    if dist_info.world > 1:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index or 0] if cuda else None, find_unused_parameters=True)
    if dist_info.main and ckpt is not None:
        _truncate_log(run_dir / LOG, int(ckpt["epoch"]))
    return Run(cfg, run_dir, ds, meta, model, opt, sched, objective,
               torch.amp.GradScaler("cuda", enabled=amp_dtype(device, cfg.amp) == torch.float16), device, dist_info)


def load_run_data(name: str, path: str | None, recorded: bool) -> Dataset:
    """A run's data set. When `path` is the one the run recorded (no --data given) and it does not read — the data
    moved, or the run came from another machine — the error says so and how to point elsewhere."""
    try:
        return load_dataset(name, path)
    except DataError as exc:
        if recorded and path:
            raise DataError(f"{exc} (the data path this run recorded; give --data to read the data from elsewhere)") \
                from None
        raise


def train_one_epoch(run: Run, epoch: int, progress: bool) -> dict:
    """One pass over this rank's shard of the epoch order; returns the epoch's log record."""
    cfg, model, ds, device = run.cfg, run.model, run.ds, run.device
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    g = torch.Generator().manual_seed(cfg.seed * 7_919 + epoch)
    order = epoch_order(len(ds.x_train), cfg.seed, epoch)[run.dist.rank :: run.dist.world]
    local_batch = cfg.batch_size // run.dist.world
    steps = max(1, len(ds.x_train) // cfg.batch_size)
    amp = amp_dtype(device, cfg.amp)
    resample = cfg.noise_mode == "resample" and cfg.noisy
    model.train()
    t0 = time.perf_counter()
    loss_sum, images = 0.0, 0
    counts = {"clean": [0, 0], "adv": [0, 0]}  # correct, seen
    bar = progress_bar(steps, f"epoch {epoch + 1}/{cfg.epochs}", progress and run.dist.main)
    for step in range(steps):
        idx = order[step * local_batch : (step + 1) * local_batch]
        x = to_float(ds.x_train[idx])
        if ds.augment:
            x = augment_batch(x, g)
        x, y = x.to(device), ds.y_train[idx].to(device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if resample:
            model.draw_noise(cfg.noise_seed * 1_000_003 + epoch * 10_007 + step + 1)
        run.opt.zero_grad(set_to_none=True)
        for w in model.widths:  # widest first; one width unless FLOATS/OATS
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = run.objective(x, y, w, g)
            run.scaler.scale(out.loss).backward()
            loss_sum += float(out.loss.detach()) / len(model.widths)
            for key, pair in (("clean", out.clean), ("adv", out.adv)):
                if pair is not None:
                    counts[key][0] += int((pair[0].argmax(1) == pair[1]).sum())
                    counts[key][1] += int(pair[1].numel())
        run.scaler.step(run.opt)
        run.scaler.update()
        images += len(idx)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / (step + 1):.3f}")
    bar.close()
    run.sched.step()
    if resample:
        model.draw_noise(cfg.noise_seed)  # the recorded draw: what is evaluated and deployed
    seconds = time.perf_counter() - t0
    if run.dist.world > 1:
        _sync_buffers(model)
    alphas = model.alphas()
    return {
        "epoch": epoch + 1,
        "loss": loss_sum / steps,
        # None where the method measures no such images (standard: no attack; PGD-AT at λ=1: no clean pass)
        "train_clean_acc": counts["clean"][0] / counts["clean"][1] if counts["clean"][1] else None,
        "train_adv_acc": counts["adv"][0] / counts["adv"][1] if counts["adv"][1] else None,
        "lr": run.opt.param_groups[0]["lr"],
        "alpha_mean": (sum(alphas.values()) / len(alphas)) if alphas else None,
        "seconds": seconds,
        "images_per_s": images * run.dist.world / seconds,
    }


def checkpoint_and_record(run: Run, epoch: int, record: dict) -> None:
    """config.json, the epoch's log line, then the checkpoint. The log goes first: a kill between the two
    leaves a line that resume drops (`_truncate_log`), never a checkpoint without its line."""
    cfg = run.cfg
    atomic_write_json(run.run_dir / CONFIG_JSON, {"config": cfg.to_dict(), "dataset": run.meta, "version": __version__})
    with open(run.run_dir / LOG, "a") as f:
        f.write(json.dumps(record) + "\n")
    save_checkpoint(run.run_dir, {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "config": cfg.to_dict(),
        "dataset": run.meta,
        "epoch": epoch + 1,
        "finished": epoch + 1 == cfg.epochs,
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(),
        "noise_seed": cfg.noise_seed,
    })


def _sync_buffers(model: nn.Module) -> None:
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b, 0)


def _truncate_log(path: Path, epochs: int) -> None:
    """On resume, drop log lines of epochs the checkpoint does not hold (a kill between the two writes)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if _log_epoch(ln) <= epochs]
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def _log_epoch(line: str) -> float:
    """The epoch of a log line; a blank or half-written line (killed mid-write) counts as none."""
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """The progress bar every long loop shows (off when not `enabled`)."""
    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=not enabled)


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / LOG
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


__all__ = ["TrainConfig", "TrainError", "METHODS", "SLIM_METHODS", "LOSSES", "BatchLoss", "Objective", "train",
           "resume_checks", "build", "train_one_epoch", "checkpoint_and_record", "load_checkpoint", "load_model",
           "epochs_done", "read_log", "CHECKPOINT", "LOG"]
