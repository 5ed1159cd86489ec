"""The operating-point rule λ_n → (noise scale s, BN set) against the FLOAT paper's two tables (Eq. 5)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from floatedge.oppoint import (
    BN_ADV,
    BN_CLEAN,
    OperatingPoint,
    OperatingPointError,
    bn_set,
    channels,
    noise_scale,
    noise_scale_array,
    parse_lambdas,
    parse_widths,
)

# The paper's S_λn = {0, 0.2, 0.7, 1} under both thresholds, written out by hand.
# λ_th = 0 (as OAT): BN_A iff λ_n > 0, s = λ_n.
TABLE_TH0 = {0.0: (0.0, BN_CLEAN), 0.2: (0.2, BN_ADV), 0.7: (0.7, BN_ADV), 1.0: (1.0, BN_ADV)}
# λ_th = 0.5: λ_n ≤ 0.5 → BN_C, s = 2λ_n; λ_n > 0.5 → BN_A, s = 2(λ_n − 0.5).
TABLE_TH05 = {0.0: (0.0, BN_CLEAN), 0.2: (0.4, BN_CLEAN), 0.5: (1.0, BN_CLEAN), 0.7: (0.4, BN_ADV),
              1.0: (1.0, BN_ADV)}


@pytest.mark.parametrize("th,table", [(0.0, TABLE_TH0), (0.5, TABLE_TH05)])
def test_paper_tables(th, table):
    for lam, (s, bn) in table.items():
        assert noise_scale(lam, th) == pytest.approx(s, abs=1e-12), (lam, th)
        assert bn_set(lam, th) == bn, (lam, th)
        op = OperatingPoint(lam, 1.0, th)
        assert (op.noise_scale, op.bn) == (pytest.approx(s, abs=1e-12), bn)
        assert op.bn_name == ("adv" if bn == BN_ADV else "clean")


@pytest.mark.parametrize("th", [0.0, 0.5])
def test_paper_formulas_on_a_fine_grid(th):
    for lam in np.linspace(0, 1, 1001):
        lam = float(lam)
        if th == 0.0:
            want = (lam, BN_ADV if lam > 0 else BN_CLEAN)
        else:
            want = (2 * lam, BN_CLEAN) if lam <= 0.5 else (2 * (lam - 0.5), BN_ADV)
        assert noise_scale(lam, th) == pytest.approx(want[0], abs=1e-12)
        assert bn_set(lam, th) == want[1]


@pytest.mark.parametrize("th", [0.0, 0.25, 0.5, 0.9])
def test_noise_scale_array_matches_scalar_rule(th):
    grid = np.linspace(0, 1, 4001).astype(np.float32)
    s, use_adv = noise_scale_array(grid, th)
    assert s.dtype == np.float32 and s.shape == grid.shape
    want_s = np.array([noise_scale(float(v), th) for v in grid])
    want_bn = np.array([bn_set(float(v), th) == BN_ADV for v in grid])
    np.testing.assert_array_equal(use_adv, want_bn)
    np.testing.assert_allclose(s, want_s, atol=1e-6)
    # s is continuous inside each branch and spans [0, 1] in both
    assert s.min() == 0.0 and s.max() == pytest.approx(1.0)


def test_training_points_are_the_boundaries():
    clean, adv = OperatingPoint.training(False), OperatingPoint.training(True)
    assert (clean.bn, clean.noise_scale) == (BN_CLEAN, 0.0)
    assert (adv.bn, adv.noise_scale) == (BN_ADV, 1.0)
    assert OperatingPoint.training(True, 0.5).width == 0.5


def test_lambda_one_is_the_same_function_under_both_thresholds():
    a, b = OperatingPoint(1.0, 1.0, 0.0), OperatingPoint(1.0, 1.0, 0.5)
    assert a.effective() == b.effective()
    assert OperatingPoint(0.0, 1.0, 0.0).effective() == OperatingPoint(0.0, 1.0, 0.5).effective()
    assert OperatingPoint(0.2, 1.0, 0.0).effective() != OperatingPoint(0.2, 1.0, 0.5).effective()
    assert OperatingPoint(1.0, 1.0).effective() != OperatingPoint(1.0, 0.5).effective()


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf])
def test_lambda_outside_unit_interval_is_refused(bad):
    with pytest.raises(OperatingPointError, match="lambda_n must be in"):
        OperatingPoint(bad)
    with pytest.raises(OperatingPointError):
        noise_scale(bad)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2.0, math.nan])
def test_lambda_th_must_be_below_one(bad):
    with pytest.raises(OperatingPointError, match="lambda_th"):
        OperatingPoint(0.5, 1.0, bad)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, math.nan])
def test_width_outside_zero_one(bad):
    with pytest.raises(OperatingPointError, match="width"):
        OperatingPoint(0.0, bad)


def test_parse_widths():
    assert parse_widths("0.5,1.0,0.75") == (1.0, 0.75, 0.5)
    assert parse_widths([0.25, 1]) == (1.0, 0.25)
    assert parse_widths("1.0,") == (1.0,)
    for bad, msg in [("1.0,1.5", r"\(0, 1\]"), ("0,1", r"\(0, 1\]"), ("1,abc", "bad widths"),
                     ("1,1.0", "duplicate"), ("", "at least one")]:
        with pytest.raises(OperatingPointError, match=msg):
            parse_widths(bad)


def test_parse_lambdas():
    assert parse_lambdas("0,0.2,0.7,1") == (0.0, 0.2, 0.7, 1.0)
    assert parse_lambdas("1,1,0") == (1.0, 0.0)  # duplicates dropped, order kept
    for bad in ("0,1.2", "-1", "x", ""):
        with pytest.raises(OperatingPointError):
            parse_lambdas(bad)


def test_channels_keeps_ceil_of_width_times_c():
    assert channels(1.0, 64) == 64
    assert channels(0.75, 64) == 48
    assert channels(0.5, 3) == 2  # ⌈1.5⌉
    assert channels(0.3, 10) == 3  # 0.3·10 = 3.0000000000000004 in floats: still 3
    assert channels(0.01, 8) == 1  # never zero
