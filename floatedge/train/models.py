"""Architectures, registered by name and built with `create_model(name, ...)`.

Every model is built from the conditional layers, so one class serves FLOAT (noisy, dual BN),
FLOATS (plus widths), PGD-AT and standard training (`noisy=False, dual=False`). The operating point
reaches the layers only through `FloatModel.set_state`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from floatedge.oppoint import BN_ADV, BN_CLEAN, OperatingPoint, bn_set, channels

from .film import BNFiLM, FiLM, LambdaEncoder, SplitDualBatchNorm2d, check_lambdas
from .layers import DualBatchNorm2d, NoisyConv2d, NoisyLinear, Normalize, _Conditional


@dataclass(frozen=True)
class LayerSpec:
    """What the conditional layers share: the widths, the FLOAT switches, and OAT's FiLM.

    `film_dim` > 0 makes an OAT model: `bn(c)` is then a dual BN followed by a FiLM whose input is the
    λ encoding of size `film_dim` (1 = scalar λ); `bn(c, film=False)` is a dual BN alone (OAT puts no
    FiLM after a shortcut BN or a WRN's final BN).
    """

    widths: tuple[float, ...] = (1.0,)
    noisy: bool = True
    dual: bool = True
    noise_mode: str = "fixed"
    film_dim: int = 0
    film_seed: int = 0
    film_init: str = "identity"

    def ch(self, full: int) -> list[int]:
        return [channels(w, full) for w in self.widths]

    def conv(self, cin: int | list[int], cout: int, k: int, stride: int = 1, padding: int = 0) -> NoisyConv2d:
        in_list = cin if isinstance(cin, list) else self.ch(cin)
        return NoisyConv2d(in_list, self.ch(cout), k, stride, padding, noisy=self.noisy, noise_mode=self.noise_mode)

    def bn(self, c: int, film: bool = True) -> nn.Module:
        if not self.film_dim:
            return DualBatchNorm2d(self.ch(c), dual=self.dual)
        if not film:
            return SplitDualBatchNorm2d(self.ch(c), dual=self.dual)
        return BNFiLM(self.ch(c), self.dual, self.film_dim, self.film_init)

    def linear(self, cin: int, num_classes: int) -> NoisyLinear:
        return NoisyLinear(self.ch(cin), [num_classes] * len(self.widths), noisy=self.noisy, noise_mode=self.noise_mode)


class FloatModel(nn.Module):
    """Base class: normalisation, the operating-point switch, and parameter accounting."""

    def __init__(self, spec: LayerSpec, in_channels: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.spec = spec
        self.widths = tuple(spec.widths)
        self.normalize = Normalize(mean, std)
        if spec.film_dim:
            self.lambda_encoder = LambdaEncoder(spec.film_dim, spec.film_seed)

    @property
    def is_oat(self) -> bool:
        return bool(self.spec.film_dim)

    def conditional_layers(self):
        return (m for m in self.modules() if isinstance(m, _Conditional))

    def set_state(self, noise_scale: float, bn: float, width: float) -> None:
        """`bn`: the weight t of BN_A — BN_CLEAN (0), BN_ADV (1), or a blend in between (a mixing dial)."""
        if width not in self.widths:
            raise ValueError(f"width {width:g} not trained; this model has widths {list(self.widths)}")
        if not BN_CLEAN <= bn <= BN_ADV:
            raise ValueError(f"bn must be 0 or 1 (BN_C, BN_A) or a blend weight between them, got {bn}")
        bn = int(bn) if bn in (BN_CLEAN, BN_ADV) else float(bn)
        idx = self.widths.index(width)
        for m in self.conditional_layers():
            m.noise_scale, m.bn, m.width_idx = float(noise_scale), bn, idx
            if isinstance(m, SplitDualBatchNorm2d):
                m.n_clean = None

    def set_lambda(self, lam: float | torch.Tensor, width: float = 1.0, n_clean: int | None = None) -> None:
        """OAT models: condition every FiLM on λ (one value, or one per sample) and route the dual BNs by λ
        (λ = 0 → BN_C, λ > 0 → BN_A, i.e. `bn_set(λ, 0)`). With per-sample λ, `n_clean` says how many leading
        samples go through BN_C (the reference's idx2BN); it defaults to the number of leading zeros."""
        if not self.is_oat:
            raise ValueError("set_lambda is for OAT models (built with a FiLM); use set_operating_point")
        lams = check_lambdas(lam)
        if n_clean is None:
            nonzero = (lams > 0).nonzero()
            n_clean = int(nonzero[0]) if len(nonzero) else len(lams)
        if lams.numel() == 1:
            self.set_state(0.0, bn_set(float(lams[0]), 0.0), width)
        else:
            self.set_state(0.0, BN_ADV, width)
        cond = self.lambda_encoder(lams.to(self.lambda_encoder.grid.device))
        for m in self.conditional_layers():
            if isinstance(m, FiLM):
                m.cond = cond
            elif isinstance(m, SplitDualBatchNorm2d) and lams.numel() > 1:
                m.n_clean = n_clean

    def set_operating_point(self, op: OperatingPoint) -> None:
        if self.is_oat:  # λ_th does not exist for OAT: λ reaches the FiLM and the BN routing
            self.set_lambda(op.lambda_n, op.width)
        else:
            self.set_state(op.noise_scale, op.bn_weight, op.width)

    def draw_noise(self, seed: int) -> None:
        """Draw every layer's z from one seed, in module order: the recorded, deployed draw."""
        g = torch.Generator().manual_seed(int(seed))
        for m in self.modules():
            if isinstance(m, (NoisyConv2d, NoisyLinear)):
                m.draw_noise(g)

    def alphas(self) -> dict[str, float]:
        return {n.removesuffix(".alpha"): float(p.detach()) for n, p in self.named_parameters() if n.endswith(".alpha")}

    def plain_parameter_count(self) -> int:
        """Conv and linear weights + biases at full width: what the FLOAT paper's Table 1 counts."""
        total = 0
        for m in self.modules():
            if isinstance(m, (NoisyConv2d, NoisyLinear)):
                total += m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def body(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


_REGISTRY: dict[str, Callable[..., FloatModel]] = {}


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    widths: Sequence[float] = (1.0,),
    noisy: bool = True,
    dual: bool = True,
    noise_mode: str = "fixed",
    film_dim: int = 0,
    film_seed: int = 0,
    film_init: str = "identity",
) -> FloatModel:
    """`film_dim` > 0 builds the OAT form of the architecture (FiLM after the BNs, see `film.py`)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown architecture {name!r}; choose from {', '.join(list_models())}")
    spec = LayerSpec(tuple(sorted((float(w) for w in widths), reverse=True)), noisy, dual, noise_mode,
                     int(film_dim), int(film_seed), film_init)
    return _REGISTRY[name](spec=spec, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)


# ---------------------------------------------------------------- tiny (tests)
class Tiny(FloatModel):
    """Two convs and a linear head: fast enough for tests on any input size."""

    def __init__(self, spec, num_classes, in_channels, mean, std):
        super().__init__(spec, in_channels, mean, std)
        self.conv1 = spec.conv([in_channels] * len(spec.widths), 8, 3, 1, 1)
        self.bn1 = spec.bn(8)
        self.conv2 = spec.conv(8, 16, 3, 2, 1)
        self.bn2 = spec.bn(16)
        self.fc = spec.linear(16, num_classes)

    def body(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


register("tiny")(Tiny)


# ---------------------------------------------------------------- ResNets
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, spec: LayerSpec, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = spec.conv(cin, cout, 3, stride, 1)
        self.bn1 = spec.bn(cout)
        self.conv2 = spec.conv(cout, cout, 3, 1, 1)
        self.bn2 = spec.bn(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            # 1×1 projection shortcut (He et al. option B), as the OAT/kuangliu ResNet-34 uses.
            # No FiLM after the shortcut BN (OAT's resnet_OAT.py).
            self.shortcut = nn.Sequential(spec.conv(cin, cout, 1, stride, 0), spec.bn(cout, film=False))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(FloatModel):
    """ResNet for 32×32 inputs. `stem`=16, 3 stages → CIFAR ResNet-20/32; `stem`=64, 4 stages → the
    kuangliu-style ResNet-34 of the OAT and FLOAT papers."""

    def __init__(self, spec, num_classes, in_channels, mean, std, blocks: Sequence[int], planes: Sequence[int]):
        super().__init__(spec, in_channels, mean, std)
        self.conv1 = spec.conv([in_channels] * len(spec.widths), planes[0], 3, 1, 1)
        self.bn1 = spec.bn(planes[0])
        layers, cin = [], planes[0]
        for i, (n, p) in enumerate(zip(blocks, planes, strict=False)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(BasicBlock(spec, cin, p, stride if j == 0 else 1))
                cin = p
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self.fc = spec.linear(cin, num_classes)

    def body(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register("resnet20")
def resnet20(**kw) -> ResNet:
    return ResNet(blocks=(3, 3, 3), planes=(16, 32, 64), **kw)


@register("resnet34")
def resnet34(**kw) -> ResNet:
    return ResNet(blocks=(3, 4, 6, 3), planes=(64, 128, 256, 512), **kw)


# ---------------------------------------------------------------- Wide ResNets
class WideBlock(nn.Module):
    """Pre-activation wide block (Zagoruyko & Komodakis)."""

    def __init__(self, spec: LayerSpec, cin: int, cout: int, stride: int, drop: float) -> None:
        super().__init__()
        self.bn1 = spec.bn(cin)
        self.conv1 = spec.conv(cin, cout, 3, stride, 1)
        self.bn2 = spec.bn(cout)
        self.conv2 = spec.conv(cout, cout, 3, 1, 1)
        self.drop = drop
        self.shortcut = spec.conv(cin, cout, 1, stride, 0) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.drop > 0:
            y = F.dropout(y, p=self.drop, training=self.training)
        y = self.conv2(y)
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(FloatModel):
    def __init__(self, spec, num_classes, in_channels, mean, std, depth: int, k: int, drop: float = 0.0):
        super().__init__(spec, in_channels, mean, std)
        n = (depth - 4) // 6
        planes = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = spec.conv([in_channels] * len(spec.widths), planes[0], 3, 1, 1)
        stages, cin = [], planes[0]
        for i, p in enumerate(planes[1:]):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[WideBlock(spec, cin if j == 0 else p, p, stride if j == 0 else 1, drop) for j in range(n)]))
            cin = p
        self.layers = nn.Sequential(*stages)
        self.bn = spec.bn(cin, film=False)  # OAT's WRNs have no FiLM on the final BN
        self.fc = spec.linear(cin, num_classes)

    def body(self, x):
        x = self.layers(self.conv1(x))
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register("wrn16_8")
def wrn16_8(**kw) -> WideResNet:
    return WideResNet(depth=16, k=8, **kw)


@register("wrn40_2")
def wrn40_2(**kw) -> WideResNet:
    return WideResNet(depth=40, k=2, **kw)
