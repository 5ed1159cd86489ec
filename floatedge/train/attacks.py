"""L∞ attacks on [0, 1] pixels: PGD-k with random start, FGSM, and AutoAttack (reference code).

Every attack runs with BN in eval mode against the model at whatever operating point the caller set
(`FloatModel.set_operating_point`); `eval_mode` restores the previous train/eval state afterwards.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import EPS

STEP = EPS / 4  # the papers' PGD step, 2/255 at ε = 8/255


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = EPS,
    step: float = STEP,
    steps: int = 7,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted L∞ PGD (Madry et al.): sign-gradient ascent on CE, projected to the ε-ball and [0,1]."""
    with eval_mode(model), torch.enable_grad():  # also when called under no_grad (evaluation code)
        x = x.detach()
        if random_start:
            noise = torch.rand(x.shape, generator=generator, device="cpu").to(x) * 2 - 1
            adv = (x + eps * noise).clamp(0, 1)
        else:
            adv = x.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), y)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = adv.detach() + step * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    return pgd(model, x, y, eps=eps, step=eps, steps=1, random_start=False)


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = EPS, version: str = "standard",
               seed: int = 0, batch_size: int = 250) -> torch.Tensor:
    """AutoAttack through the authors' reference code (PyPI `pyautoattack`)."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("AutoAttack needs the pyautoattack package (pip install pyautoattack)") from exc
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    with eval_mode(model):
        aa = AutoAttack(model, norm="Linf", eps=eps, version=version, device=x.device, seed=seed)
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv.detach()


@dataclass(frozen=True)
class AttackSpec:
    name: str
    description: str


ATTACKS = {
    "clean": AttackSpec("clean", "no attack"),
    "fgsm": AttackSpec("fgsm", "FGSM"),
    "pgd7": AttackSpec("pgd7", "PGD-7, step ε/4, random start"),
    "pgd20": AttackSpec("pgd20", "PGD-20, step ε/4, random start"),
    "autoattack": AttackSpec("autoattack", "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)"),
}


def check_attacks(names: Sequence[str]) -> tuple[str, ...]:
    """Attack names a user asked for (not "clean"), each known; ValueError with one line otherwise."""
    for a in names:
        if a not in ATTACKS or a == "clean":
            raise ValueError(f"unknown attack {a!r}; choose from {', '.join(k for k in ATTACKS if k != 'clean')}")
    return tuple(names)


def run_attack(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0,
               eps: float = EPS) -> torch.Tensor:
    """Run a named attack; PGD's step is ε/4 (2/255 at the papers' ε = 8/255)."""
    g = torch.Generator().manual_seed(seed)
    if name == "clean":
        return x
    if name == "fgsm":
        return fgsm(model, x, y, eps=eps)
    if name == "pgd7":
        return pgd(model, x, y, eps=eps, step=eps / 4, steps=7, generator=g)
    if name == "pgd20":
        return pgd(model, x, y, eps=eps, step=eps / 4, steps=20, generator=g)
    if name == "autoattack":
        return autoattack(model, x, y, eps=eps, seed=seed)
    raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
