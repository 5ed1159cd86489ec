"""The operating point and the one rule that maps it to (noise scale s, BN mixing weight t).

Everything that needs to know what λ_n means — training, evaluation, the ONNX graph, the runtime —
calls this module. It imports only the standard library and numpy so the device side can use it
without torch.

A *dial* is that rule. Two kinds exist, and a bundle records which one its graphs compute (`Dial`,
manifest key ``dial``):

``switch`` — the FLOAT paper's Eq. 5, with a threshold λ_th:

* λ_th = 0   (as OAT): BN_A iff λ_n > 0, noise scale s = λ_n;
* λ_th = 0.5:          λ_n ≤ 0.5 → BN_C, s = 2·λ_n;  λ_n > 0.5 → BN_A, s = 2·(λ_n − 0.5).

Both are instances of one rule for any λ_th in [0, 1): below or at the threshold the clean BN is used
and s rises linearly from 0 to 1 across [0, λ_th]; above it the adversarial BN is used and s rises from
0 to 1 across (λ_th, 1]. We implement that general rule (choice: the paper only names 0 and 0.5) and
test it against the paper's two tables. Training uses only λ ∈ {0, 1}: (BN_C, s=0) and (BN_A, s=1).

``mix`` (and its variants) — BN interpolation, no retraining (issue 15: at full-data scale a switch dial
gives two operating points, not a dial, because the noise scale barely moves CA or RA and all the
trade-off sits in the BN switch). Every BN becomes the blend of its two sets' *outputs*

    BN_t(x) = (1 − t)·BN_C(x) + t·BN_A(x),   t = t(λ_n) ∈ [0, 1],   s = s(λ_n),

with t and s piecewise-linear in λ_n through a few knots (`Dial.t`, `Dial.s`; `DIALS` lists the named
ones; `mix` is t = s = λ_n). In evaluation mode a BN is an affine map per channel,
BN_X(x) = k_X·x + b_X with k_X = γ_X/√(σ²_X + ε) and b_X = β_X − μ_X·k_X, so the blend is exact and
linear: k = k_C + t·(k_A − k_C), b = b_C + t·(b_A − b_C) — one affine per channel at a fixed t
(`mix_affine`). Materialised it costs nothing (the static form's BN holds that affine; TensorRT folds it
into the conv as it folds any BN); in the scalable graph it is two Mul/Add pairs per BN on per-channel
constants, driven by the λ_n input. At t ∈ {0, 1} it is BN_C or BN_A.

Why outputs and not statistics (choice): mixing the parameters and statistics instead,
μ = (1−t)μ_C + tμ_A, σ² = (1−t)σ²_C + tσ²_A, γ and β likewise, gives a BN whose output is *not* between
the two sets' outputs — k = γ_t/√(σ²_t + ε) is a ratio of blends, so the map is nonlinear in t and a
channel whose σ_C and σ_A differ a lot (BN_A sees adversarial activations) swings beyond both ends on
the way. Blending outputs keeps every channel's affine on the segment between the two trained ones,
and it is what the torch model computes literally (`floatedge.train.layers.DualBatchNorm2d`), so the
torch model, the scalable graph, the static form and the runtime agree by construction, not by a
second derivation.

A point's λ_th means something only under ``switch``; under a mixing dial it does not exist and is
reported as 0 (as for OAT). `OperatingPoint.dial` None means "the dial of whatever runs it": a bundle
fills its own in (`floatedge.bundle.Bundle.check_point`), and with none known it is ``switch``.
Which dial measured best, and so is the default (`DEFAULT_DIAL` = ``mix``): docs/RESULTS.md, section "λ_n as a
dial" — on ResNet-20 FLOAT trained on all of CIFAR-10 for 10 epochs (PGD-20, 1000 test images) the ends are
79.5 / 0.0 and 58.0 / 33.9 % CA / RA under every dial; between them the switch gives BN_C points with RA 0 or BN_A
points within a point of the robust end, while `mix` gives 69.0 / 7.6, 67.0 / 14.3, 64.4 / 22.5 and 61.4 / 30.3 at
λ_n = 0.6–0.9, each Pareto-useful by issue 15's bar.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BN_CLEAN = 0
BN_ADV = 1
BN_NAMES = ("clean", "adv")

DEFAULT_LAMBDA_TH = 0.5
SWITCH = "switch"
PAPER_LAMBDA_THS = (0.0, 0.5)
PAPER_LAMBDAS = (0.0, 0.2, 0.7, 1.0)


class OperatingPointError(ValueError):
    """An operating point that cannot exist (λ outside [0,1], unknown width, ...)."""


def check_lambda(lambda_n: float, name: str = "lambda_n") -> float:
    value = float(lambda_n)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise OperatingPointError(f"{name} must be in [0, 1], got {lambda_n!r}")
    return value


def check_lambda_th(lambda_th: float) -> float:
    value = float(lambda_th)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise OperatingPointError(f"lambda_th must be in [0, 1), got {lambda_th!r}")
    return value


def check_width(width: float) -> float:
    value = float(width)
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise OperatingPointError(f"width must be in (0, 1], got {width!r}")
    return value


def check_width_in(width: float, widths: Sequence[float]) -> float:
    """`width` if it is one of `widths` (a bundle's, a runtime's), else the one message every caller gives."""
    w = check_width(width)
    for have in widths:
        if math.isclose(float(have), w, abs_tol=1e-9):
            return float(have)
    raise OperatingPointError(f"width {w:g} is not in this bundle; it has {', '.join(f'{x:g}' for x in widths)}")


def _parse(text: str | Sequence[float], check: Callable[[float], float], what: str) -> list[float]:
    """A comma list (or a sequence) of numbers, each passed through `check`; at least one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = [check(float(v)) for v in items if str(v).strip() != ""]
    except ValueError as exc:
        raise OperatingPointError(f"bad {what}s {text!r}: {exc}") from None
    if not values:
        raise OperatingPointError(f"at least one {what} is needed")
    return values


def parse_widths(text: str | Sequence[float]) -> tuple[float, ...]:
    """'1.0,0.75,0.5' → (1.0, 0.75, 0.5), widest first, duplicates refused."""
    widths = _parse(text, check_width, "width")
    if len(set(widths)) != len(widths):
        raise OperatingPointError(f"duplicate widths in {text!r}")
    return tuple(sorted(widths, reverse=True))


def parse_lambdas(text: str | Sequence[float]) -> tuple[float, ...]:
    """'0,0.2,0.7,1' → (0.0, 0.2, 0.7, 1.0), in the order given, repeats dropped."""
    return tuple(dict.fromkeys(_parse(text, check_lambda, "lambda")))


def channels(width: float, full: int) -> int:
    """Channels kept at `width`: the first ⌈w·C⌉ (slimmable networks keep the first channels)."""
    return max(1, math.ceil(round(width * full, 6)))


def noise_scale(lambda_n: float, lambda_th: float = DEFAULT_LAMBDA_TH) -> float:
    lam, th = check_lambda(lambda_n), check_lambda_th(lambda_th)
    if lam <= th:
        return 0.0 if th == 0.0 else lam / th
    return (lam - th) / (1.0 - th)


def bn_set(lambda_n: float, lambda_th: float = DEFAULT_LAMBDA_TH) -> int:
    return BN_ADV if check_lambda(lambda_n) > check_lambda_th(lambda_th) else BN_CLEAN


def noise_scale_array(lambda_n: np.ndarray, lambda_th: float) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised form of the rule, written with the same elementwise ops the ONNX graph uses
    (Greater, Where, Sub, Div), so the export can mirror it op for op and a test can compare the two on
    a fine grid. Returns (s, use_adv)."""
    lam = np.asarray(lambda_n, dtype=np.float32)
    th = np.float32(lambda_th)
    use_adv = lam > th
    low = lam / th if th > 0 else np.zeros_like(lam)
    high = (lam - th) / (np.float32(1.0) - th)
    return np.where(use_adv, high, low).astype(np.float32), use_adv


Knots = tuple[tuple[float, float], ...]


def _knots(value: Sequence[Sequence[float]], what: str, hi: float | None) -> Knots:
    """Checked knots (λ, y): λ strictly rising from 0 to 1, y finite, ≥ 0 and ≤ `hi` when given."""
    try:
        knots = tuple((float(x), float(y)) for x, y in value)
    except (TypeError, ValueError):
        raise OperatingPointError(f"dial {what}: knots must be pairs (λ_n, value), got {value!r}") from None
    xs = [x for x, _ in knots]
    if len(knots) < 2 or xs[0] != 0.0 or xs[-1] != 1.0 or any(b <= a for a, b in zip(xs, xs[1:], strict=False)):
        raise OperatingPointError(f"dial {what}: knots must rise strictly from λ_n = 0 to 1, got {value!r}")
    if not all(math.isfinite(y) and y >= 0 and (hi is None or y <= hi) for _, y in knots):
        span = f"[0, {hi:g}]" if hi is not None else "[0, ∞)"
        raise OperatingPointError(f"dial {what}: values must be in {span}, got {value!r}")
    return knots


def pwl_constants(knots: Knots) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.float32]:
    """(starts, spans, slopes, y0) in float32 for `pwl`: the same constants the ONNX graph stores."""
    x = np.array([k[0] for k in knots], np.float64)
    y = np.array([k[1] for k in knots], np.float64)
    return (x[:-1].astype(np.float32), np.diff(x).astype(np.float32), (np.diff(y) / np.diff(x)).astype(np.float32),
            np.float32(y[0]))


def pwl(lam: np.ndarray, knots: Knots) -> np.ndarray:
    """The piecewise-linear function through `knots` at `lam` (float32), written with the ops the graph uses:
    y0 + Σ_k slope_k · min(max(λ − start_k, 0), span_k)  (Sub, Max, Min, Mul, ReduceSum, Add)."""
    starts, spans, slopes, y0 = pwl_constants(knots)
    lam = np.asarray(lam, np.float32)[..., None]
    seg = np.minimum(np.maximum(lam - starts, np.float32(0)), spans)
    return (y0 + (seg * slopes).sum(-1, dtype=np.float32)).astype(np.float32)


@dataclass(frozen=True)
class Dial:
    """How λ_n sets the noise scale s and the BN mixing weight t (see the module docstring).

    `name` "switch" is Eq. 5 with the point's λ_th (`t` and `s` empty; t ∈ {0, 1}); any other is a mixing
    dial, t and s piecewise-linear through their knots ((λ_n, value), λ_n from 0 to 1)."""

    name: str = SWITCH
    t: Knots = ()
    s: Knots = ()

    def __post_init__(self) -> None:
        if self.name == SWITCH:
            if self.t or self.s:
                raise OperatingPointError("the switch dial takes no knots")
            return
        object.__setattr__(self, "t", _knots(self.t, "t", 1.0))
        object.__setattr__(self, "s", _knots(self.s, "s", None))

    @property
    def mixes(self) -> bool:
        return self.name != SWITCH

    def __repr__(self) -> str:
        return f"Dial({self.name!r})" if DIALS.get(self.name) == self else super().__repr__()

    def arrays(self, lambda_n: np.ndarray, lambda_th: float) -> tuple[np.ndarray, np.ndarray]:
        """(s, t) in float32 at `lambda_n` (any shape), as the graph computes them."""
        if not self.mixes:
            s, use_adv = noise_scale_array(lambda_n, lambda_th)
            return s, use_adv.astype(np.float32)
        return pwl(lambda_n, self.s), pwl(lambda_n, self.t)

    def to_dict(self) -> dict:
        return {"name": self.name, "t": [list(k) for k in self.t], "s": [list(k) for k in self.s]}

    def describe(self) -> str:
        if not self.mixes:
            return "switch (FLOAT Eq. 5: BN_C or BN_A by λ_th, s rising from 0 to 1 in each branch)"
        pts = lambda kn: " ".join(f"({x:g}, {y:g})" for x, y in kn)  # noqa: E731
        return f"{self.name} (BN mixed: t through {pts(self.t)}; s through {pts(self.s)})"


_LINEAR: Knots = ((0.0, 0.0), (1.0, 1.0))
# The named dials (a bundle records its dial by name and knots; `get_dial()` checks they agree). Measured side by
# side in docs/RESULTS.md "lambda-dial" (benchmarks/lambda_dial.py).
DIALS: dict[str, Dial] = {d.name: d for d in (
    Dial(SWITCH),
    Dial("mix", _LINEAR, _LINEAR),                       # t = s = λ_n
    Dial("mix-s1", _LINEAR, ((0.0, 1.0), (1.0, 1.0))),   # t = λ_n, s = 1 everywhere (noise always on)
    Dial("mix-s0", _LINEAR, ((0.0, 0.0), (1.0, 0.0))),   # t = λ_n, no noise anywhere (BN interpolation alone)
)}
# What measured best (docs/RESULTS.md "λ_n as a dial", ResNet-20 FLOAT on all of CIFAR-10, 10 epochs, PGD-20 on 1000
# images): `mix` gives four Pareto-useful interior points (λ_n 0.6–0.9), either switch none. So `floatedge eval` and
# `floatedge export` use it unless told `--dial switch` (FLOAT as the paper specifies it).
DEFAULT_DIAL = "mix"


def get_dial(value: Dial | str | Mapping | None) -> Dial:
    """A Dial from a name, a manifest entry ({name, t, s}: must match the named dial), a Dial, or None (switch)."""
    if value is None:
        return DIALS[SWITCH]
    if isinstance(value, Dial):
        return value
    name = value if isinstance(value, str) else value.get("name") if isinstance(value, Mapping) else None
    if name not in DIALS:
        raise OperatingPointError(f"unknown dial {name!r}; known: {', '.join(DIALS)}")
    known = DIALS[name]
    if isinstance(value, Mapping) and Dial(name, value.get("t") or (), value.get("s") or ()) != known:
        raise OperatingPointError(f"dial {name!r} is recorded with other knots than this floatedge's "
                                  f"({known.describe()}); upgrade floatedge")
    return known


@dataclass(frozen=True, eq=False)
class OperatingPoint:
    """Where a deployed model runs: trade-off λ_n, width, the BN threshold λ_th (switch dial only) and the dial.

    `dial` None: the dial of whatever runs the point (a bundle fills its own in), switch where none is known.
    A mixing dial has no λ_th: it is stored as 0. Equality and hashing go by the rule (`rule`), so a point naming
    switch equals the same point naming none."""

    lambda_n: float = 0.0
    width: float = 1.0
    lambda_th: float = DEFAULT_LAMBDA_TH
    dial: Dial | str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambda_n", check_lambda(self.lambda_n))
        object.__setattr__(self, "width", check_width(self.width))
        object.__setattr__(self, "lambda_th", check_lambda_th(self.lambda_th))
        d = None if self.dial is None else get_dial(self.dial)
        object.__setattr__(self, "dial", d)
        if d is not None and d.mixes:
            object.__setattr__(self, "lambda_th", 0.0)

    def _identity(self) -> tuple:
        return (self.lambda_n, self.width, self.lambda_th, self.rule)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OperatingPoint) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    @property
    def rule(self) -> Dial:
        """The dial this point is computed with (switch when none is named)."""
        return self.dial or DIALS[SWITCH]

    def _st(self) -> tuple[float, float]:
        s, t = self.rule.arrays(np.float32(self.lambda_n), self.lambda_th)
        return float(s), float(t)

    @property
    def noise_scale(self) -> float:
        if not self.rule.mixes:  # the exact scalar rule (float64), as before dials existed
            return noise_scale(self.lambda_n, self.lambda_th)
        return self._st()[0]

    @property
    def bn_weight(self) -> float:
        """t: the weight of BN_A in the blend (1 − t for BN_C); 0 or 1 under the switch dial."""
        return float(bn_set(self.lambda_n, self.lambda_th)) if not self.rule.mixes else self._st()[1]

    @property
    def bn(self) -> int:
        """The BN set used (switch), or the one weighing more in the blend (a mixing dial)."""
        return BN_ADV if self.bn_weight > 0.5 else BN_CLEAN

    @property
    def bn_name(self) -> str:
        t = self.bn_weight
        return BN_NAMES[int(t)] if t in (0.0, 1.0) else f"mix {t:.2f}"

    def effective(self) -> tuple[float, float, float]:
        """(s, t, width): two points with the same triple compute the same function."""
        return (round(self.noise_scale, 9), round(self.bn_weight, 9), self.width)

    def with_dial(self, d: Dial | str | None) -> OperatingPoint:
        """This point under dial `d` (a bundle's): filled in if the point names none; OperatingPointError if it
        names another."""
        d = get_dial(d)
        if self.dial is None and not d.mixes:
            return self
        if self.dial is None:
            return OperatingPoint(self.lambda_n, self.width, self.lambda_th, d)
        if self.dial != d:
            raise OperatingPointError(f"the point names dial {self.dial.name!r}, this model's is {d.name!r}")
        return self

    def to_dict(self) -> dict:
        out = {"lambda_n": self.lambda_n, "width": self.width, "lambda_th": self.lambda_th}
        return out | ({"dial": self.dial.name} if self.rule.mixes else {})

    @classmethod
    def training(cls, adversarial: bool, width: float = 1.0) -> OperatingPoint:
        """FLOAT trains only at its two boundaries: λ=0 (BN_C, s=0) and λ=1 (BN_A, s=1)."""
        return cls(1.0 if adversarial else 0.0, width, 0.0)

    def __str__(self) -> str:
        if self.rule.mixes:
            return f"λn={self.lambda_n:g} w={self.width:g} {self.rule.name} (s={self.noise_scale:.3g}, t={self.bn_weight:.3g})"
        return f"λn={self.lambda_n:g} w={self.width:g} λth={self.lambda_th:g} (s={self.noise_scale:.3g}, BN_{'A' if self.bn else 'C'})"


def mix_affine(scale_c: np.ndarray, shift_c: np.ndarray, scale_a: np.ndarray, shift_a: np.ndarray,
               t: float | np.floating) -> tuple[np.ndarray, np.ndarray]:
    """The blended per-channel affine at weight t, as the scalable graph computes it: X_C + t·(X_A − X_C)."""
    t = np.float32(t)
    return ((scale_c + t * (scale_a - scale_c)).astype(np.float32),
            (shift_c + t * (shift_a - shift_c)).astype(np.float32))


def fold_bn(weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """One BN set as the affine the mixing graph stores: (scale, shift) with scale = γ/√(σ²+ε)·√(1+ε) and
    shift = β − μ·γ/√(σ²+ε), in float32 (computed in float64). The graph's BatchNormalization node then runs with
    mean 0 and variance 1, so it multiplies by scale/√(1+ε) = γ/√(σ²+ε)."""
    k = np.asarray(weight, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    return ((k * math.sqrt(1.0 + eps)).astype(np.float32),
            (np.asarray(bias, np.float64) - np.asarray(mean, np.float64) * k).astype(np.float32))


def equivalent_lambda(point: OperatingPoint, graph_lambda_th: float, graph_dial: Dial | str | None = None) -> float:
    """The λ_n to feed a scalable graph whose λ_th (and dial, `graph_dial`; None: the point's own) is baked in,
    so that it computes `point` (which may name another λ_th). Checked against the λ rule itself
    (`OperatingPoint.effective`). A mixing dial has no λ_th: its graph takes the point's λ_n as it is."""
    if graph_dial is not None and point.rule != get_dial(graph_dial):
        raise OperatingPointError(f"the in-graph model computes dial {get_dial(graph_dial).name!r} and cannot compute "
                                  f"{point}; open the runtime with mode='materialised'")
    if point.rule.mixes or point.lambda_th == graph_lambda_th:
        return point.lambda_n
    s, th = point.noise_scale, graph_lambda_th
    lam = th + s * (1.0 - th) if point.bn else s * th
    lam = float(np.float32(min(1.0, max(0.0, lam))))
    got = OperatingPoint(lam, point.width, th)
    if got.bn != point.bn or abs(got.noise_scale - point.noise_scale) > 1e-6:
        raise OperatingPointError(f"the in-graph model bakes λ_th={graph_lambda_th:g} and cannot compute {point}; "
                                  "open the runtime with mode='materialised'")
    return lam
