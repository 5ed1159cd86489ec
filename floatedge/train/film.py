"""OAT's conditioning layers: λ encoding, FiLM, dual BN split by λ, and the FiLM fold.

OAT (Wang et al., NeurIPS 2020) conditions a network on its trade-off λ with a FiLM after BN layers:
`out = γ(λ)·BN(x) + β(λ)`, γ and β per channel, each from a small MLP with LeakyReLU on an encoding of λ.
What follows the reference code (VITA-Group/Once-for-All-Adversarial-Training; notes in
shared/reference/baselines.md §3), and where we differ:

* MLP `Linear(d → 2C) → LeakyReLU → Linear(2C → 2C)`, both outputs through LeakyReLU, then
  `x·γ + β` — as the reference. Choice: by default the last Linear starts at zero weight and bias
  (1…1, 0…0), so every FiLM is the identity at initialisation (`init="identity"`); `init="reference"`
  keeps PyTorch's default init as the reference code does.
* λ encoding, `dim` = 1: the scalar λ itself. `dim` > 1: the reference's random orthogonal encoding
  (Q of the QR decomposition of a d×d Gaussian matrix), but drawn from a recorded seed and held as a
  buffer, so it is saved in the checkpoint and never regenerated (the reference regenerates it on
  resume). The reference maps a training λ to row j of Q and cannot encode any other λ; we interpolate
  linearly between the rows of the two neighbouring training λs, so every λ in [0, 1] has an encoding
  and a training λ gets exactly its own row.
* Slimming (OATS): the MLP slices like a slimmable layer — hidden and output sized 2·C_w at width w.
  Choice: γ rows are the first C_w of the γ block and β rows the first C_w of the β block, so channel c
  keeps its γ/β rows at every width (the reference splits `out[:C_w]`/`out[C_w:2C_w]`, so a row that is a
  shift at width 0.5 is a scale at width 1.0).
* Dual BN routed by λ (λ = 0 → BN_C, λ > 0 → BN_A: `oppoint.bn_set(λ, 0)`), and within a training batch
  the reference's `idx2BN`: the first `n_clean` rows go through BN_C, the rest through BN_A.

Nothing here reads global state: `FloatModel.set_lambda` writes `cond` (the per-sample encoding) on
every FiLM and `n_clean` on every split dual BN.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from floatedge.oppoint import check_lambda

from .layers import DualBatchNorm2d, _Conditional

OAT_LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.4, 1.0)  # the reference's --lambda_choices (paper's S1)
FILM_INITS = ("identity", "reference")
REFERENCE_DIM = 128


class LambdaEncoder(nn.Module):
    """λ (scalar or per-sample tensor) → encoding of size `dim`, held in buffers that the checkpoint keeps."""

    def __init__(self, dim: int, seed: int = 0, grid: Sequence[float] = OAT_LAMBDAS) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"FiLM input size must be ≥ 1, got {dim}")
        grid = sorted(float(v) for v in grid)
        if dim > 1 and (len(grid) > dim or grid[0] != 0.0 or grid[-1] != 1.0):
            raise ValueError(f"the encoding grid {grid} must start at 0, end at 1 and have ≤ {dim} values")
        self.dim = dim
        self.register_buffer("grid", torch.tensor(grid, dtype=torch.float32))
        if dim > 1:
            g = torch.Generator().manual_seed(int(seed))
            q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
            self.register_buffer("matrix", q.float())
        else:
            self.register_buffer("matrix", None)

    def forward(self, lam: torch.Tensor) -> torch.Tensor:
        lam = lam.reshape(-1).float()
        if self.dim == 1:
            return lam[:, None]
        grid = self.grid.to(lam.device)
        hi = torch.searchsorted(grid, lam.clamp(0, 1), right=False).clamp(1, len(grid) - 1)
        lo = hi - 1
        t = ((lam - grid[lo]) / (grid[hi] - grid[lo])).clamp(0, 1)[:, None]
        rows = self.matrix.to(lam.device)
        return (1 - t) * rows[lo] + t * rows[hi]


class FiLM(nn.Module, _Conditional):
    """Per-channel γ(λ)·x + β(λ), sliceable to the widths of `num_list`."""

    def __init__(self, num_list: Sequence[int], in_dim: int, init: str = "identity") -> None:
        super().__init__()
        if init not in FILM_INITS:
            raise ValueError(f"FiLM init must be one of {FILM_INITS}, got {init!r}")
        self.num_list, self.in_dim = list(num_list), in_dim
        c = max(num_list)
        self.fc1 = nn.Linear(in_dim, 2 * c)
        self.fc2 = nn.Linear(2 * c, 2 * c)
        if init == "identity":
            with torch.no_grad():
                self.fc2.weight.zero_()
                self.fc2.bias.copy_(torch.cat([torch.ones(c), torch.zeros(c)]))
        self.cond: torch.Tensor | None = None  # (1 or N) × in_dim, set by FloatModel.set_lambda

    def coefficients(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(γ, β), each (rows of cond) × C_w, at the current width."""
        c, cw = max(self.num_list), self.num_list[self.width_idx]
        w1, b1 = self.fc1.weight[: 2 * cw], self.fc1.bias[: 2 * cw]
        rows = torch.cat([torch.arange(cw), c + torch.arange(cw)]).to(cond.device)
        w2, b2 = self.fc2.weight[rows][:, : 2 * cw], self.fc2.bias[rows]
        out = F.leaky_relu(F.linear(F.leaky_relu(F.linear(cond, w1, b1)), w2, b2))
        return out[:, :cw], out[:, cw:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cond is None:
            raise RuntimeError("FiLM has no λ: call model.set_lambda(...) or set_operating_point(...) first")
        gamma, beta = self.coefficients(self.cond.to(x.dtype))
        if gamma.shape[0] not in (1, x.shape[0]):
            raise RuntimeError(f"FiLM: λ set for {gamma.shape[0]} samples, batch has {x.shape[0]}")
        return x * gamma[:, :, None, None] + beta[:, :, None, None]


class SplitDualBatchNorm2d(DualBatchNorm2d):
    """Dual BN that can also split a batch by index: rows [0, n_clean) → BN_C, the rest → BN_A (`idx2BN`)."""

    n_clean: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.n_clean
        if k is None or not self.dual:
            return self.select()(x)
        sets = self.bns[self.width_idx]
        if k <= 0:
            return sets[1](x)
        if k >= x.shape[0]:
            return sets[0](x)
        return torch.cat([sets[0](x[:k]), sets[1](x[k:])])


class BNFiLM(nn.Module):
    """Dual BN followed by FiLM: what OAT puts where a plain network has a BN."""

    def __init__(self, num_list: Sequence[int], dual: bool, film_dim: int, init: str = "identity") -> None:
        super().__init__()
        self.bn = SplitDualBatchNorm2d(num_list, dual=dual)
        self.film = FiLM(num_list, film_dim, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.film(self.bn(x))


def check_lambdas(lam: float | torch.Tensor) -> torch.Tensor:
    """λ as a float tensor, every value checked to lie in [0, 1]."""
    t = torch.as_tensor(lam, dtype=torch.float32).reshape(-1)
    if t.numel() == 0:
        raise ValueError("no λ given")
    if not bool(((t >= 0) & (t <= 1)).all()):
        bad = t[~((t >= 0) & (t <= 1))][0].item()
        check_lambda(bad)  # raises the usual one-line error
    return t


def sample_lambdas(batch: int, generator: torch.Generator, choices: Sequence[float] = OAT_LAMBDAS) -> torch.Tensor:
    """The reference's element-wise sampler: ⌈B/|choices|⌉ zeros first (so the dual BN can split by index),
    every other sample uniform over the non-zero choices."""
    nonzero = torch.tensor([c for c in choices if c != 0.0], dtype=torch.float32)
    n_zero = -(-batch // len(choices))
    if 0.0 not in choices or len(nonzero) == 0:
        raise ValueError(f"λ choices {list(choices)} need 0 and at least one non-zero value")
    picks = torch.randint(0, len(nonzero), (batch - n_zero,), generator=generator)
    return torch.cat([torch.zeros(n_zero), nonzero[picks]])


def fold_film(model: nn.Module, lambda_n: float, width: float = 1.0) -> nn.Module:
    """A copy of an OAT model fixed at (λ, width) in which every BN(+FiLM) is one plain BatchNorm2d.

    In eval mode BN is x ↦ a·x + b per channel and FiLM is y ↦ γ·y + β, so FiLM∘BN is a BN with weight γ·a_w
    and bias γ·b + β over the same running statistics (a_w, b: the BN's affine weight and bias). The copy has
    no MLPs and no λ input; its outputs equal the model's at (λ, width) in eval mode. The copy's other
    conditional layers stay fixed at `width`: do not call `set_state` on it. `model` is left set to (λ, width).
    """
    model.set_lambda(lambda_n, width)
    folded = copy.deepcopy(model).eval()
    for m in folded.modules():
        if isinstance(m, FiLM):
            m.cond = None  # the copy does not keep the encoding tensor
    cond = model.lambda_encoder(torch.tensor([float(lambda_n)]))

    def plain_bn(dual: DualBatchNorm2d, film: FiLM | None) -> nn.BatchNorm2d:
        src = dual.select()
        cw = dual.num_list[dual.width_idx]
        bn = nn.BatchNorm2d(cw, eps=src.eps)
        with torch.no_grad():
            bn.running_mean.copy_(src.running_mean[:cw])
            bn.running_var.copy_(src.running_var[:cw])
            w, b = src.weight[:cw].clone(), src.bias[:cw].clone()
            if film is not None:
                gamma, beta = (t[0] for t in film.coefficients(cond))
                w, b = gamma * w, gamma * b + beta
            bn.weight.copy_(w)
            bn.bias.copy_(b)
        return bn.eval()

    for parent in list(folded.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BNFiLM):
                setattr(parent, name, plain_bn(child.bn, child.film))
            elif isinstance(child, DualBatchNorm2d):
                setattr(parent, name, plain_bn(child, None))
    if hasattr(folded, "lambda_encoder"):
        del folded.lambda_encoder
    folded.folded_at = (float(lambda_n), float(width))
    return folded


__all__ = ["OAT_LAMBDAS", "LambdaEncoder", "FiLM", "SplitDualBatchNorm2d", "BNFiLM", "sample_lambdas",
           "fold_film", "check_lambdas", "FILM_INITS", "REFERENCE_DIM"]
