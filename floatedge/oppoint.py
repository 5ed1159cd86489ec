"""The operating point and the one rule that maps it to (noise scale, BN set).

Everything that needs to know what λ_n means — training, evaluation, the ONNX graph, the runtime —
calls this module. It imports only the standard library and numpy so the device side can use it
without torch.

The FLOAT paper (Eq. 5) gives two thresholds:

* λ_th = 0   (as OAT): BN_A iff λ_n > 0, noise scale s = λ_n;
* λ_th = 0.5:          λ_n ≤ 0.5 → BN_C, s = 2·λ_n;  λ_n > 0.5 → BN_A, s = 2·(λ_n − 0.5).

Both are instances of one rule for any λ_th in [0, 1): below or at the threshold the clean BN is used
and s rises linearly from 0 to 1 across [0, λ_th]; above it the adversarial BN is used and s rises from
0 to 1 across (λ_th, 1]. We implement that general rule (choice: the paper only names 0 and 0.5) and
test it against the paper's two tables. Training uses only λ ∈ {0, 1}: (BN_C, s=0) and (BN_A, s=1).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

BN_CLEAN = 0
BN_ADV = 1
BN_NAMES = ("clean", "adv")

DEFAULT_LAMBDA_TH = 0.5
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


@dataclass(frozen=True)
class OperatingPoint:
    """Where a deployed model runs: trade-off λ_n, width, and the BN threshold λ_th."""

    lambda_n: float = 0.0
    width: float = 1.0
    lambda_th: float = DEFAULT_LAMBDA_TH

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambda_n", check_lambda(self.lambda_n))
        object.__setattr__(self, "width", check_width(self.width))
        object.__setattr__(self, "lambda_th", check_lambda_th(self.lambda_th))

    @property
    def noise_scale(self) -> float:
        return noise_scale(self.lambda_n, self.lambda_th)

    @property
    def bn(self) -> int:
        return bn_set(self.lambda_n, self.lambda_th)

    @property
    def bn_name(self) -> str:
        return BN_NAMES[self.bn]

    def effective(self) -> tuple[float, int, float]:
        """(s, bn, width): two points with the same triple compute the same function."""
        return (round(self.noise_scale, 9), self.bn, self.width)

    def to_dict(self) -> dict:
        return {"lambda_n": self.lambda_n, "width": self.width, "lambda_th": self.lambda_th}

    @classmethod
    def training(cls, adversarial: bool, width: float = 1.0) -> OperatingPoint:
        """FLOAT trains only at its two boundaries: λ=0 (BN_C, s=0) and λ=1 (BN_A, s=1)."""
        return cls(1.0 if adversarial else 0.0, width, 0.0)

    def __str__(self) -> str:
        return f"λn={self.lambda_n:g} w={self.width:g} λth={self.lambda_th:g} (s={self.noise_scale:.3g}, BN_{'A' if self.bn else 'C'})"


def equivalent_lambda(point: OperatingPoint, graph_lambda_th: float) -> float:
    """The λ_n to feed a scalable graph whose λ_th is baked in, so that it computes `point` (which may
    name another λ_th). Checked against the λ rule itself (`OperatingPoint.effective`)."""
    if point.lambda_th == graph_lambda_th:
        return point.lambda_n
    s, th = point.noise_scale, graph_lambda_th
    lam = th + s * (1.0 - th) if point.bn else s * th
    lam = float(np.float32(min(1.0, max(0.0, lam))))
    got = OperatingPoint(lam, point.width, th)
    if got.bn != point.bn or abs(got.noise_scale - point.noise_scale) > 1e-6:
        raise OperatingPointError(f"the in-graph model bakes λ_th={graph_lambda_th:g} and cannot compute {point}; "
                                  "open the runtime with mode='materialised'")
    return lam
