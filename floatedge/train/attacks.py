"""L∞ attacks on [0, 1] pixels: PGD-k with random start, FGSM, AutoAttack (reference code), and the stronger
and different attacks that check a robust accuracy is real (issue 14):

* `pgd100x5-ce`, `pgd100x5-dlr` — PGD-100 with 5 random restarts on the cross-entropy or on the DLR margin loss
  (Croce & Hein 2020, Eq. 2), keeping per image the worst case over every iterate of every restart (`pgd_best`);
* `apgd-ce-t` — APGD-CE then APGD-T (9 target classes), the first two attacks of AutoAttack standard with their
  standard parameters, through the reference code's custom version (`autoattack(..., attacks=...)`);
* `transfer-pgd20`, `transfer-pgd100` — PGD made on another model (`source`, e.g. a PGD-AT run), evaluated here;
* `noisefree-pgd100x5` — for noisy models: gradients from the same weights without noise (s = 0) and with BN_A
  (`NoiseFree`), every iterate judged on the model at the caller's point; a check for noise-made gradient masking.

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

from floatedge.oppoint import BN_ADV

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
               seed: int = 0, batch_size: int = 250, attacks: Sequence[str] | None = None) -> torch.Tensor:
    """AutoAttack through the authors' reference code (PyPI `pyautoattack` 0.2). With `attacks` (e.g. ("apgd-ce",
    "apgd-t")) its custom version runs those attacks with the parameters the standard version gives them at L∞
    (APGD-CE one restart of 100 iterations, APGD-T 9 target classes × 100 iterations): pyautoattack/autoattack.py,
    `AutoAttack.__init__(model, *, attacks=..., version='custom', ...)` builds APGD with 5 restarts and
    `_set_version('standard')` sets `apgd.n_restarts = 1` and `apgd_targeted.n_target_classes = 9` for Linf."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("AutoAttack needs the pyautoattack package (pip install pyautoattack)") from exc
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    with eval_mode(model):
        if attacks:
            aa = AutoAttack(model, norm="Linf", eps=eps, version="custom", attacks=list(attacks), device=x.device,
                            seed=seed)
            aa.apgd.n_restarts = 1
        else:
            aa = AutoAttack(model, norm="Linf", eps=eps, version=version, device=x.device, seed=seed)
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, classes - 1)
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv.detach()


# ------------------------------------------------------------------------------------ stronger PGD
def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample DLR loss (Croce & Hein, ICML 2020, Eq. 2): −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3), π the
    logits sorted high to low. A margin (the CW loss) divided by a logit spread, so scaling the logits (as a
    temperature or a noise that grows them would) cannot shrink its gradient. Needs ≥ 3 classes."""
    top = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None])[:, 0]
    other = torch.where(top[:, 0] == z_y, top[:, 1], top[:, 0])  # the largest logit other than y's
    return -(z_y - other) / (top[:, 0] - top[:, 2] + 1e-12)


LOSSES = {"ce": lambda logits, y: F.cross_entropy(logits, y, reduction="none"), "dlr": dlr_loss}


def pgd_best(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = EPS, step: float = STEP, steps: int = 100,
             restarts: int = 5, loss: str = "ce", generator: torch.Generator | None = None,
             grad_model: nn.Module | None = None) -> torch.Tensor:
    """PGD-`steps` with `restarts` random starts on `loss` ("ce" or "dlr"), returning per image its worst case:
    the first iterate of any restart that `model` misclassifies, else the iterate of highest loss on `model`.
    Restarts after the first attack only the images still classified correctly. Gradients come from
    `grad_model` (default `model`: white box); iterates are always judged on `model`."""
    fn = LOSSES[loss]
    grad_model = model if grad_model is None else grad_model
    x = x.detach()
    best = x.clone()
    best_loss = torch.full((len(x),), -torch.inf, device=x.device)
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    def judge(idx: torch.Tensor, adv: torch.Tensor, logits: torch.Tensor) -> None:
        with torch.no_grad():
            wrong = logits.argmax(1) != y[idx]
            value = fn(logits, y[idx])
            take = (wrong & ~fooled[idx]) | (~wrong & ~fooled[idx] & (value > best_loss[idx]))
            best[idx[take]] = adv[take]
            best_loss[idx[take]] = value[take]
            fooled[idx[wrong]] = True

    with eval_mode(model), eval_mode(grad_model), torch.enable_grad():
        for _ in range(restarts):
            idx = (~fooled).nonzero()[:, 0]
            if len(idx) == 0:
                break
            noise = torch.rand(x[idx].shape, generator=generator, device="cpu").to(x) * 2 - 1
            adv = (x[idx] + eps * noise).clamp(0, 1)
            for k in range(steps + 1):
                adv.requires_grad_(k < steps)
                logits = grad_model(adv) if k < steps else _forward(model, adv)
                if k < steps:
                    (grad,) = torch.autograd.grad(fn(logits, y[idx]).sum(), adv)
                adv = adv.detach()
                judge(idx, adv, logits.detach() if grad_model is model or k == steps else _forward(model, adv))
                if k == steps:
                    break
                live = ~fooled[idx]  # an image's worst case is settled once it is misclassified: attack the rest
                if not live.any():
                    break
                idx, adv, grad = idx[live], adv[live], grad[live]
                adv = adv + step * grad.sign()
                adv = torch.min(torch.max(adv, x[idx] - eps), x[idx] + eps).clamp(0, 1)
    return best.detach()


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# ------------------------------------------------------------------------------------ noise-free gradients
class NoiseFree(nn.Module):
    """The noise-free twin of a FLOAT model: the same weights and noise draw, run at s = 0 with BN_A (the
    λ_n = 0 weights with the adversarial BN) at the width the model is set to. Each forward sets that state and
    then puts back every conditional layer's operating-point attributes as they were, so the wrapped model stays
    at the caller's point. For a model without noise or dual BN it computes the model itself."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self.model.conditional_layers())
        saved = [(m, {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"}) for m in layers]
        width = self.model.widths[layers[0].width_idx] if layers else 1.0
        try:
            self.model.set_state(0.0, BN_ADV, width)
            return self.model(x)
        finally:
            for m, attrs in saved:
                for k, v in attrs.items():
                    setattr(m, k, v)


@dataclass(frozen=True)
class AttackSpec:
    name: str
    description: str
    needs_source: bool = False  # a transfer attack: run_attack needs `source`, the model the examples are made on


ATTACKS = {
    "clean": AttackSpec("clean", "no attack"),
    "fgsm": AttackSpec("fgsm", "FGSM"),
    "pgd7": AttackSpec("pgd7", "PGD-7, step ε/4, random start"),
    "pgd20": AttackSpec("pgd20", "PGD-20, step ε/4, random start"),
    "pgd100x5-ce": AttackSpec("pgd100x5-ce", "PGD-100 × 5 random restarts on cross-entropy, step ε/4, per image the "
                              "worst iterate"),
    "pgd100x5-dlr": AttackSpec("pgd100x5-dlr", "PGD-100 × 5 random restarts on the DLR margin loss, step ε/4, per "
                               "image the worst iterate"),
    "noisefree-pgd100x5": AttackSpec("noisefree-pgd100x5", "PGD-100 × 5 restarts on cross-entropy with gradients "
                                     "from the noise-free weights (s = 0, BN_A), judged on the model at the point"),
    "transfer-pgd20": AttackSpec("transfer-pgd20", "PGD-20 (step ε/4) made on a source model, evaluated on this one",
                                 needs_source=True),
    "transfer-pgd100": AttackSpec("transfer-pgd100", "PGD-100 (step ε/4) made on a source model, evaluated on this one",
                                  needs_source=True),
    "apgd-ce-t": AttackSpec("apgd-ce-t", "APGD-CE + APGD-T (AutoAttack custom: standard's first two attacks)"),
    "autoattack": AttackSpec("autoattack", "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)"),
}


def check_attacks(names: Sequence[str]) -> tuple[str, ...]:
    """Attack names a user asked for (not "clean"), each known; ValueError with one line otherwise."""
    for a in names:
        if a not in ATTACKS or a == "clean":
            raise ValueError(f"unknown attack {a!r}; choose from {', '.join(k for k in ATTACKS if k != 'clean')}")
    return tuple(names)


def run_attack(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0,
               eps: float = EPS, source: nn.Module | None = None) -> torch.Tensor:
    """Run a named attack; PGD's step is ε/4 (2/255 at the papers' ε = 8/255). Transfer attacks make their
    examples on `source` (set to the operating point it should be attacked at) and ignore `model`."""
    g = torch.Generator().manual_seed(seed)
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    if ATTACKS[name].needs_source and source is None:
        raise ValueError(f"{name} needs a source model to make its examples on")
    if name == "clean":
        return x
    if name == "fgsm":
        return fgsm(model, x, y, eps=eps)
    if name in ("pgd7", "pgd20"):
        return pgd(model, x, y, eps=eps, step=eps / 4, steps=int(name[3:]), generator=g)
    if name in ("pgd100x5-ce", "pgd100x5-dlr"):
        return pgd_best(model, x, y, eps=eps, step=eps / 4, steps=100, restarts=5, loss=name[9:], generator=g)
    if name == "noisefree-pgd100x5":
        return pgd_best(model, x, y, eps=eps, step=eps / 4, steps=100, restarts=5, generator=g,
                        grad_model=NoiseFree(model))
    if name in ("transfer-pgd20", "transfer-pgd100"):
        return pgd(source, x, y, eps=eps, step=eps / 4, steps=int(name[12:]), generator=g)
    if name == "apgd-ce-t":
        return autoattack(model, x, y, eps=eps, seed=seed, attacks=("apgd-ce", "apgd-t"))
    return autoattack(model, x, y, eps=eps, seed=seed)
