"""Conditional layers: noisy, slimmable conv/linear and per-width dual batch norm.

A layer never reads global state. The model sets its operating point through one method,
`FloatModel.set_state`, which writes three plain attributes on every conditional layer:
`noise_scale` (s), `bn` (the weight t of BN_A: 0 = BN_C, 1 = BN_A, in between a blend — see below) and
`width_idx` (index into the layer's width list).

Noise (FLOAT Eq. 4, after Parametric Noise Injection):
    W_eff = W + s · α · η,   η = σ(W) · z,   z ~ N(0, 1)
σ is the std of the full (unsliced) weight, detached, so only α receives the noise gradient. z is a
buffer drawn from a recorded seed. In `fixed` mode that draw is kept for the whole run; in `resample`
mode the trainer redraws z before every optimisation step (one draw shared by that step's attack and
loss — choice: PNI redraws per forward, we redraw per step so the attack sees the noise it trains
against), and restores the recorded draw before evaluating or saving. Evaluation and export always use
the recorded draw, so what is measured is what is deployed.

Slimming: at width index k a layer uses the first `out_list[k]` output channels and the first
`in_list[k]` input channels of W and of η (η is sliced like W, as the FLOAT paper asks: "scale the
noise tensor along with the weight tensors"). σ is taken from the full weight — choice: one η per
layer, sliced, rather than a σ recomputed per width; then the exported η of every width is a slice of
the same tensor.

Dual BN under a mixing dial (`floatedge.oppoint`, issue 15): with 0 < t < 1 a `DualBatchNorm2d` returns
(1 − t)·BN_C(x) + t·BN_A(x), the blend of its two sets' outputs — literally, so this is the definition the
exported graph's folded affine (k_C + t·(k_A − k_C), b likewise) is tested against; it is computed as one
normalisation (`DualBatchNorm2d.blend`). In training mode a blend normalises with the batch's statistics and
updates neither set's running statistics (FLOAT trains only at t ∈ {0, 1}; the `--train-dial mix` variant blends).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NOISE_MODES = ("fixed", "resample")
ALPHA_INIT = 0.25


class _Conditional:
    """Mixin holding the operating-point attributes shared by every conditional layer."""

    noise_scale: float = 0.0
    bn: float = 0  # t, the weight of BN_A: 0 or 1 selects a set, in between blends the two (DualBatchNorm2d)
    width_idx: int = 0


class _NoisyMixin(_Conditional):
    """Shared weight-noise logic for NoisyConv2d and NoisyLinear."""

    noisy: bool
    noise_mode: str

    def _init_noise(self, noisy: bool, noise_mode: str) -> None:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        self.noisy = noisy
        self.noise_mode = noise_mode
        if noisy:
            self.alpha = nn.Parameter(torch.tensor(ALPHA_INIT))
            self.register_buffer("z", torch.zeros_like(self.weight))
        else:
            self.register_parameter("alpha", None)
            self.register_buffer("z", None)

    def draw_noise(self, generator: torch.Generator) -> None:
        if self.noisy:
            with torch.no_grad():
                self.z.copy_(torch.randn(self.z.shape, generator=generator).to(self.z))

    def eta(self) -> torch.Tensor:
        """η = σ(W)·z with σ detached: the noise tensor that export bakes."""
        sigma = self.weight.detach().std()
        return sigma * self.z

    def effective_weight(self, out_c: int, in_c: int) -> torch.Tensor:
        w = self.weight[:out_c, :in_c]
        if not self.noisy or self.noise_scale == 0.0:
            return w
        sigma = self.weight.detach().std()
        return w + self.noise_scale * self.alpha * (sigma * self.z[:out_c, :in_c])


class NoisyConv2d(nn.Conv2d, _NoisyMixin):
    """Conv2d whose weight becomes W + s·α·η, sliceable to the widths in in_list/out_list."""

    def __init__(
        self,
        in_list: Sequence[int],
        out_list: Sequence[int],
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        noisy: bool = True,
        noise_mode: str = "fixed",
    ) -> None:
        super().__init__(max(in_list), max(out_list), kernel_size, stride, padding, bias=bias)
        self.in_list, self.out_list = list(in_list), list(out_list)
        self._init_noise(noisy, noise_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_c, in_c = self.out_list[self.width_idx], self.in_list[self.width_idx]
        if x.shape[1] != in_c:
            raise RuntimeError(f"{type(self).__name__}: expected {in_c} input channels, got {x.shape[1]}")
        bias = self.bias[:out_c] if self.bias is not None else None
        return F.conv2d(x, self.effective_weight(out_c, in_c), bias, self.stride, self.padding)


class NoisyLinear(nn.Linear, _NoisyMixin):
    """Linear layer with the same noise and slicing rules as NoisyConv2d."""

    def __init__(
        self,
        in_list: Sequence[int],
        out_list: Sequence[int],
        bias: bool = True,
        noisy: bool = True,
        noise_mode: str = "fixed",
    ) -> None:
        super().__init__(max(in_list), max(out_list), bias=bias)
        self.in_list, self.out_list = list(in_list), list(out_list)
        self._init_noise(noisy, noise_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_c, in_c = self.out_list[self.width_idx], self.in_list[self.width_idx]
        bias = self.bias[:out_c] if self.bias is not None else None
        return F.linear(x, self.effective_weight(out_c, in_c), bias)


class DualBatchNorm2d(nn.Module, _Conditional):
    """One BatchNorm2d per (width, BN set): `bns[width_idx][bn]`, BN_C = 0 and BN_A = 1; a `bn` strictly
    between 0 and 1 blends the two sets' outputs, (1 − bn)·BN_C(x) + bn·BN_A(x) (see the module docstring).

    With `dual=False` there is a single set (PGD-AT and standard training use one BN).
    """

    def __init__(self, num_list: Sequence[int], dual: bool = True) -> None:
        super().__init__()
        self.num_list = list(num_list)
        self.dual = dual
        self.bns = nn.ModuleList(
            nn.ModuleList(nn.BatchNorm2d(n) for _ in range(2 if dual else 1)) for n in num_list
        )

    def select(self) -> nn.BatchNorm2d:
        """The set in use; in a blend, the one weighing more."""
        sets = self.bns[self.width_idx]
        return sets[int(self.bn > 0.5) if self.dual else 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = float(self.bn)
        if not self.dual or t in (0.0, 1.0):
            return self.select()(x)
        return self.blend(x, t)

    def blend(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """(1 − t)·BN_C(x) + t·BN_A(x) as one normalisation, at the cost of one BN (two BNs and three elementwise
        passes doubled a ResNet-20 step on CPU). Evaluation: the blended per-channel affine k·x + b of the two
        folded sets. Training: both sets normalise with the batch's statistics, so the blend is that normalisation
        with the blended γ and β; running statistics are left as they are, so each set's stay those of its end
        (FLOAT trains only the ends; `floatedge train --train-dial mix` also blends)."""
        clean, adv = self.bns[self.width_idx]
        if self.training:
            return F.batch_norm(x, None, None, torch.lerp(clean.weight, adv.weight, t),
                                torch.lerp(clean.bias, adv.bias, t), True, 0.0, clean.eps)
        k_c, k_a = (m.weight / torch.sqrt(m.running_var + m.eps) for m in (clean, adv))
        b_c, b_a = clean.bias - clean.running_mean * k_c, adv.bias - adv.running_mean * k_a
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(torch.lerp(b_c, b_a, t).view(shape), x, torch.lerp(k_c, k_a, t).view(shape))


class Normalize(nn.Module):
    """Per-channel (x − mean)/std inside the model, so attacks work on [0, 1] pixels."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
