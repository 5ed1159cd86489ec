"""The training configuration: one dataclass, the one place the training defaults live.

Imports no torch, so `floatedge --help` and the device-side commands start without it, and the CLI takes its
option defaults from the fields here (`default`) instead of restating them. The checks that need the model and
data registries import them when a config is built, i.e. when a command runs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from floatedge.oppoint import DIALS, SWITCH, check_lambda, parse_widths

METHODS = ("float", "floats", "pgdat", "standard", "oat", "oats")
SLIM_METHODS = ("floats", "oats")
DEVICES = ("auto", "cpu", "cuda")
EPS = 8 / 255  # the papers' L∞ budget on CIFAR-10


class TrainError(ValueError):
    """A training request that cannot be carried out (bad flag, mismatched checkpoint, ...)."""


@dataclass
class TrainConfig:
    """Everything a run is trained with; recorded in its checkpoint and config.json.

    The defaults are the papers' (FLOAT §4.1, OAT §4): SGD momentum 0.9, lr 0.1 on a cosine schedule, weight
    decay 5e-4, batch 128, 200 epochs, PGD-7 at ε = 8/255 with step ε/4."""

    method: str = "float"
    arch: str = "resnet20"
    dataset: str = "cifar10"
    data: str | None = None  # stored resolved, so a run can be evaluated or resumed from any directory
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    widths: tuple[float, ...] = (1.0,)
    lam: float = 1.0  # PGD-AT's fixed λ
    noise_mode: str = "fixed"
    # FLOAT/FLOATS: the dial the second half of each batch trains under. "switch": FLOAT as specified (λ = 1 only);
    # a mixing dial ("mix": t = s = λ): λ drawn per batch over the dial (docs/lambda-dial.md, issue 15)
    train_dial: str = SWITCH
    seed: int = 0
    noise_seed: int | None = None  # None: seed + 1
    limit_train: int | None = None
    pgd_steps: int = 7
    eps: float = EPS
    step_size: float | None = None  # None: ε/4
    device: str = "auto"
    amp: bool = True  # used on CUDA only
    channels_last: bool = True
    threads: int | None = None
    film_dim: int = 128  # OAT's FiLM input: 128 = the reference's orthogonal encoding, 1 = scalar λ
    film_init: str = "identity"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .data import LOADERS
        from .film import FILM_INITS
        from .layers import NOISE_MODES
        from .models import list_models

        for what, value, known in (("method", self.method, METHODS), ("architecture", self.arch, list_models()),
                                   ("dataset", self.dataset, sorted(LOADERS)),
                                   ("noise mode", self.noise_mode, NOISE_MODES), ("FiLM init", self.film_init, FILM_INITS),
                                   ("device", self.device, DEVICES)):
            if value not in known:
                raise TrainError(f"unknown {what} {value!r}; choose from {', '.join(known)}")
        try:
            self.widths = parse_widths(self.widths)
            self.lam = check_lambda(self.lam, "lambda")
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        if self.method not in SLIM_METHODS and len(self.widths) > 1:
            raise TrainError(f"method {self.method} trains one width; "
                             f"use --method floats or oats for {list(self.widths)}")
        if self.train_dial not in DIALS:
            raise TrainError(f"unknown training dial {self.train_dial!r}; choose from {', '.join(DIALS)}")
        if self.train_dial != SWITCH and not self.noisy:
            raise TrainError(f"training dial {self.train_dial} is for --method float or floats, not {self.method}")
        if self.oat and not 1 <= self.film_dim <= 4096:
            raise TrainError(f"FiLM input size must be in 1..4096, got {self.film_dim}")
        if self.epochs < 1 or self.batch_size < 2:
            raise TrainError("epochs must be ≥ 1 and batch size ≥ 2")
        if (self.limit_train is not None and self.limit_train < 2) or self.pgd_steps < 0:
            raise TrainError(f"limit_train must be ≥ 2 (got {self.limit_train}) "
                             f"and pgd_steps ≥ 0 (got {self.pgd_steps})")
        if not (math.isfinite(self.eps) and 0 < self.eps <= 1):
            raise TrainError(f"eps must be in (0, 1] (pixels are in [0, 1]; 8/255 = {EPS:.4f}), got {self.eps}")
        if self.step_size is None:
            self.step_size = self.eps / 4
        if not (math.isfinite(self.step_size) and 0 < self.step_size <= self.eps):
            raise TrainError(f"step size must be in (0, eps = {self.eps:.4g}], got {self.step_size}")
        if self.noise_seed is None:
            self.noise_seed = self.seed + 1
        if self.data is not None:
            self.data = str(Path(self.data).expanduser().resolve())

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


def default(name: str) -> Any:
    """The default of one TrainConfig field, read without building a config (no torch)."""
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
