"""One readable training loop: config → data → model → optimiser → epochs → checkpoint → resume.

Methods differ in one place, `Objective.loss` (the loss of a batch at one width):

* ``float``  — FLOAT, Algorithm 1: first half of the batch clean at λ=0 (BN_C, s=0), second half
  PGD-7 at λ=1 (BN_A, s=1), loss 0.5·L_C + 0.5·L_A.
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
dropout) is seeded from (seed, e), so a run resumed from the checkpoint of epoch e−1 continues exactly.
Distributed: under ``torchrun`` each rank takes a disjoint shard of the epoch order and the objective
is wrapped in DistributedDataParallel; rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from floatedge import __version__
from floatedge.fsutil import atomic_write, atomic_write_json, atomic_write_text, check_writable_dir
from floatedge.oppoint import BN_ADV, BN_CLEAN, check_lambda, parse_widths

from .attacks import EPS, STEP, pgd
from .data import Dataset, augment_batch, epoch_order, load_dataset, to_float
from .film import FILM_INITS, sample_lambdas
from .layers import NOISE_MODES
from .models import FloatModel, create_model, list_models

METHODS = ("float", "floats", "pgdat", "standard", "oat", "oats")
SLIM_METHODS = ("floats", "oats")
CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
CHECKPOINT_FORMAT = 1


class TrainError(ValueError):
    """A training request that cannot be carried out (bad flag, mismatched checkpoint, ...)."""


@dataclass
class TrainConfig:
    method: str = "float"
    arch: str = "resnet20"
    dataset: str = "cifar10"
    data: str | None = None
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    widths: tuple[float, ...] = (1.0,)
    lam: float = 1.0  # PGD-AT's fixed λ
    noise_mode: str = "fixed"
    seed: int = 0
    noise_seed: int | None = None
    limit_train: int | None = None
    pgd_steps: int = 7
    eps: float = EPS
    step_size: float = STEP
    device: str = "auto"
    amp: bool = True  # used on CUDA only
    channels_last: bool = True
    threads: int | None = None
    film_dim: int = 128  # OAT's FiLM input: 128 = the reference's orthogonal encoding, 1 = scalar λ
    film_init: str = "identity"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise TrainError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.arch not in list_models():
            raise TrainError(f"unknown architecture {self.arch!r}; choose from {', '.join(list_models())}")
        if self.noise_mode not in NOISE_MODES:
            raise TrainError(f"unknown noise mode {self.noise_mode!r}; choose from {', '.join(NOISE_MODES)}")
        try:
            self.widths = parse_widths(self.widths)
            self.lam = check_lambda(self.lam, "lambda")
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        if self.method not in SLIM_METHODS and len(self.widths) > 1:
            raise TrainError(f"method {self.method} trains one width; "
                             f"use --method floats or oats for {list(self.widths)}")
        if self.oat and not 1 <= self.film_dim <= 4096:
            raise TrainError(f"FiLM input size must be in 1..4096, got {self.film_dim}")
        if self.epochs < 1 or self.batch_size < 2:
            raise TrainError("epochs must be ≥ 1 and batch size ≥ 2")
        if (self.limit_train is not None and self.limit_train < 2) or self.pgd_steps < 0:
            raise TrainError(f"limit_train must be ≥ 2 (got {self.limit_train}) "
                             f"and pgd_steps ≥ 0 (got {self.pgd_steps})")
        if self.film_init not in FILM_INITS:
            raise TrainError(f"unknown FiLM init {self.film_init!r}; choose from {', '.join(FILM_INITS)}")
        if self.noise_seed is None:
            self.noise_seed = self.seed + 1

    @property
    def noisy(self) -> bool:
        return self.method in ("float", "floats")

    @property
    def oat(self) -> bool:
        return self.method in ("oat", "oats")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise TrainError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


class Objective(nn.Module):
    """The loss of a batch at one width: the only place the training methods differ.

    Wrapped as one module so that DistributedDataParallel sees one forward per backward even though
    FLOAT runs the network twice (clean and adversarial halves) and attacks it in between.
    """

    def __init__(self, model: FloatModel, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def attack(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return pgd(self.model, x, y, self.cfg.eps, self.cfg.step_size, self.cfg.pgd_steps, generator=g)

    def oat_lambdas(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One λ sample per batch, shared by every width of that batch (OATS Algorithm 2): resampled when
        the trainer hands over a new batch tensor."""
        if getattr(self, "_lam_batch", None) is not x:
            self._lam_batch, self._lam = x, sample_lambdas(x.shape[0], g).to(x.device)
        return self._lam

    def forward(self, x: torch.Tensor, y: torch.Tensor, width: float, g: torch.Generator):
        m, cfg = self.model, self.cfg
        if cfg.oat:
            lam = self.oat_lambdas(x, g)
            k = int((lam == 0).sum())  # the zeros come first
            m.set_lambda(lam, width, n_clean=k)
            out_c = m(x)
            loss = ((1 - lam) * F.cross_entropy(out_c, y, reduction="none")).sum()
            out_a = None
            if k < x.shape[0]:  # adversarial term only for λ > 0 (reference: efficient=True)
                m.set_lambda(lam[k:], width, n_clean=0)
                x_adv = self.attack(x[k:], y[k:], g)
                out_a = m(x_adv)
                loss = loss + (lam[k:] * F.cross_entropy(out_a, y[k:], reduction="none")).sum()
            return loss / x.shape[0], (out_c, y), (None if out_a is None else (out_a, y[k:]))
        if cfg.method in ("float", "floats"):
            h = x.shape[0] // 2
            m.set_state(0.0, BN_CLEAN, width)
            out_c = m(x[:h])
            m.set_state(1.0, BN_ADV, width)
            x_adv = self.attack(x[h:], y[h:], g)
            out_a = m(x_adv)
            loss = 0.5 * F.cross_entropy(out_c, y[:h]) + 0.5 * F.cross_entropy(out_a, y[h:])
            return loss, (out_c, y[:h]), (out_a, y[h:])
        m.set_state(0.0, BN_CLEAN, width)
        if cfg.method == "standard" or cfg.lam == 0.0:
            out = m(x)
            return F.cross_entropy(out, y), (out, y), None
        x_adv = self.attack(x, y, g)
        out_a = m(x_adv)
        if cfg.lam == 1.0:
            return F.cross_entropy(out_a, y), None, (out_a, y)
        out_c = m(x)
        loss = (1 - cfg.lam) * F.cross_entropy(out_c, y) + cfg.lam * F.cross_entropy(out_a, y)
        return loss, (out_c, y), (out_a, y)


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


def save_checkpoint(run_dir: Path, state: dict) -> None:
    atomic_write(run_dir / CHECKPOINT, lambda f: torch.save(state, f))


def load_checkpoint(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise TrainError(f"{run_dir}: no checkpoint ({CHECKPOINT}) found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainError(f"{path}: not a readable floatedge checkpoint ({type(exc).__name__})") from None
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


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _accuracy(pair) -> tuple[int, int]:
    if pair is None:
        return 0, 0
    out, y = pair
    return int((out.argmax(1) == y).sum()), int(y.numel())


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True,
          dataset: Dataset | None = None, until_epoch: int | None = None) -> Path:
    """Train `cfg` into run directory `out` (checkpoint.pt, config.json, log.jsonl); returns it.

    `until_epoch` stops after that epoch (the schedule still spans `cfg.epochs`), so several runs can be
    trained interleaved, epoch by epoch, each resumed exactly (`floatedge compare` does this)."""
    run_dir = Path(out)
    device = resolve_device(cfg.device)
    dist_info = init_distributed(device)
    if dist_info.main:
        try:
            check_writable_dir(run_dir)
        except OSError as exc:
            raise TrainError(str(exc)) from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    start_epoch, ckpt = 0, None
    if resume:
        ckpt = load_checkpoint(run_dir)
        saved = TrainConfig.from_dict(ckpt["config"])
        ident = lambda c: (c.arch, c.method, c.widths, c.dataset)
        if ident(saved) != ident(cfg):
            raise TrainError(f"{run_dir}: checkpoint is {saved.method}/{saved.arch} widths {list(saved.widths)} "
                             f"on {saved.dataset}, not {cfg.method}/{cfg.arch} widths {list(cfg.widths)} "
                             f"on {cfg.dataset}")
        # the data (set, subset) is the checkpoint's; only its location may be given anew
        cfg = dataclasses.replace(saved, epochs=cfg.epochs, device=cfg.device, threads=cfg.threads,
                                  data=cfg.data or saved.data)
        start_epoch = int(ckpt["epoch"])
        if cfg.epochs < start_epoch:
            raise TrainError(f"{run_dir}: the checkpoint has {start_epoch} epochs, more than --epochs {cfg.epochs}")
    elif (run_dir / CHECKPOINT).exists():
        raise TrainError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")

    ds = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data)
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
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and cfg.amp)

    if dist_info.main:
        atomic_write_json(run_dir / "config.json", {"config": cfg.to_dict(), "dataset": meta, "version": __version__})
        _truncate_log(run_dir / LOG, start_epoch)

    n = len(ds.x_train)
    local_batch = cfg.batch_size // dist_info.world
    steps_per_epoch = max(1, n // cfg.batch_size)
    for epoch in range(start_epoch, min(cfg.epochs, until_epoch or cfg.epochs)):
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        g = torch.Generator().manual_seed(cfg.seed * 7_919 + epoch)
        order = epoch_order(n, cfg.seed, epoch)[dist_info.rank :: dist_info.world]
        model.train()
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "clean_correct": 0, "clean_n": 0, "adv_correct": 0, "adv_n": 0, "images": 0}
        bar = progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", progress and dist_info.main)
        for step in range(steps_per_epoch):
            idx = order[step * local_batch : (step + 1) * local_batch]
            x = to_float(ds.x_train[idx])
            if ds.augment:
                x = augment_batch(x, g)
            x, y = x.to(device), ds.y_train[idx].to(device)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if cfg.noise_mode == "resample" and cfg.noisy:
                model.draw_noise(cfg.noise_seed * 1_000_003 + epoch * 10_007 + step + 1)
            opt.zero_grad(set_to_none=True)
            for w in model.widths:  # widest first; one width unless FLOATS
                with torch.autocast(device.type, dtype=torch.float16, enabled=cuda and cfg.amp):
                    loss, clean, adv = objective(x, y, w, g)
                scaler.scale(loss).backward()
                sums["loss"] += float(loss.detach()) / len(model.widths)
                for key, pair in (("clean", clean), ("adv", adv)):
                    c, k = _accuracy(pair)
                    sums[f"{key}_correct"] += c
                    sums[f"{key}_n"] += k
            scaler.step(opt)
            scaler.update()
            sums["images"] += len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / (step + 1):.3f}")
        bar.close()
        sched.step()
        if cfg.noise_mode == "resample" and cfg.noisy:
            model.draw_noise(cfg.noise_seed)  # the recorded draw: what is evaluated and deployed
        seconds = time.perf_counter() - t0
        if dist_info.world > 1:
            _sync_buffers(model)
        if dist_info.main:
            alphas = model.alphas()
            record = {
                "epoch": epoch + 1,
                "loss": sums["loss"] / steps_per_epoch,
                "train_clean_acc": sums["clean_correct"] / max(1, sums["clean_n"]),
                "train_adv_acc": sums["adv_correct"] / max(1, sums["adv_n"]),
                "lr": opt.param_groups[0]["lr"],
                "alpha_mean": (sum(alphas.values()) / len(alphas)) if alphas else None,
                "seconds": seconds,
                "images_per_s": sums["images"] * dist_info.world / seconds,
            }
            state = {
                "format": CHECKPOINT_FORMAT,
                "version": __version__,
                "config": cfg.to_dict(),
                "dataset": meta,
                "epoch": epoch + 1,
                "finished": epoch + 1 == cfg.epochs,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": _rng_state(),
                "noise_seed": cfg.noise_seed,
            }
            # log first: a kill between the two writes leaves a line that resume drops (_truncate_log)
            with open(run_dir / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")
            save_checkpoint(run_dir, state)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
    model.eval()
    return run_dir


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


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar when enabled (and tqdm is installed), else an object that ignores every call."""
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
        except ImportError:  # pragma: no cover
            pass
    return _NullBar()


class _NullBar:
    def update(self, *_: Any) -> None: ...
    def set_postfix(self, **_: Any) -> None: ...
    def set_description(self, *_: Any) -> None: ...
    def close(self) -> None: ...


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / LOG
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


