"""FLOAT's training variant with a mixing dial (issue 15, docs/lambda-dial.md): the second half of each batch trains
at a λ drawn per batch, under the dial's (s, t), with loss (1−λ)·CE(clean) + λ·CE(adv); BN running statistics stay
those of the two ends; α and both BN sets receive gradient."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from test_train import LN2, LN4, Probe, _cfg, _probe_loss

from floatedge.train.data import load_synthetic
from floatedge.train.layers import DualBatchNorm2d
from floatedge.train.trainer import Objective, TrainError, build_model, dataset_meta, read_log, sample_train_lambda, train


def _lam(seed: int) -> float:
    return sample_train_lambda(torch.Generator().manual_seed(seed))


def test_sampled_lambdas_half_at_the_robust_end_else_inside():
    lams = [_lam(s) for s in range(400)]
    ends = sum(v == 1.0 for v in lams)
    inside = [v for v in lams if v != 1.0]
    assert 160 < ends < 240 and all(0 < v < 1 for v in inside)
    assert min(inside) < 0.1 and max(inside) > 0.9  # the whole interior, not a few knots


def test_mix_loss_at_the_drawn_lambda_by_hand():
    """Probe (CE of a clean image ln 2, of a PGD example ln 4): 0.5·ln 2 + 0.5·((1−λ)·ln 2 + λ·ln 4) at the λ the
    batch drew, the attack and both second-half forwards at (s, t) = (λ, λ); FLOAT's 0.5·ln 2 + 0.5·ln 4 is another
    number, so is a loss without the clean term."""
    lam = _lam(1)
    assert 0.1 < lam < 0.9  # seed 1 draws an interior λ first
    probe = Probe().train()
    x, y = torch.full((4, 1, 2, 2), 0.5), torch.arange(4) % 2
    out = Objective(probe, _cfg(method="float", eps=0.5, pgd_steps=10, train_dial="mix"))(
        x, y, 1.0, torch.Generator().manual_seed(1))
    want = 0.5 * LN2 + 0.5 * ((1 - lam) * LN2 + lam * LN4)
    assert out.loss.item() == pytest.approx(want, rel=1e-6)
    assert abs(want - (0.5 * LN2 + 0.5 * LN4)) > 0.05 and abs(want - (0.5 * LN2 + 0.5 * lam * LN4)) > 0.05
    (s0, t0), n0, tr0 = probe.seen[0]
    assert (s0, t0, n0, tr0) == (0.0, 0.0, 2, True)  # clean half at λ = 0
    states = {st for st, _, _ in probe.seen[1:]}
    assert len(states) == 1 and all(v == pytest.approx(lam, rel=1e-6) for v in states.pop())
    assert [(n, tr) for _, n, tr in probe.seen[-2:]] == [(2, True), (2, True)]  # the adv forward, the clean one
    assert not any(tr for _, _, tr in probe.seen[1:-2])  # attack steps: BN in eval mode
    assert torch.equal(out.adv[1], y[2:])


def test_switch_dial_is_float_as_specified():
    out, probe, _ = _probe_loss("float")
    assert out.loss.item() == pytest.approx(0.5 * LN2 + 0.5 * LN4, rel=1e-6)
    assert {st for st, _, _ in probe.seen[1:]} == {(1.0, 1.0)}


def test_interior_step_trains_alpha_and_both_bn_sets_but_keeps_end_statistics():
    ds = load_synthetic()
    cfg = _cfg(train_dial="mix", pgd_steps=1)
    torch.manual_seed(0)
    model = build_model(cfg, dataset_meta(ds)).train()
    ref = copy.deepcopy(model)
    obj = Objective(model, cfg)
    g = torch.Generator().manual_seed(1)  # draws an interior λ first (test above)
    x, y = ds.x_train[:32].float() / 255, ds.y_train[:32]
    obj(x, y, 1.0, g).loss.backward()
    ref.set_state(0.0, 0, 1.0)
    with torch.no_grad():
        ref(x[:16])  # the clean half alone, at λ = 0
    bns = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    refs = [m for m in ref.modules() if isinstance(m, DualBatchNorm2d)]
    for m, r in zip(bns, refs, strict=True):
        clean, adv = m.bns[0]
        torch.testing.assert_close(clean.running_mean, r.bns[0][0].running_mean)  # BN_C: the clean half only
        torch.testing.assert_close(clean.running_var, r.bns[0][0].running_var)
        assert torch.equal(adv.running_mean, torch.zeros_like(adv.running_mean))  # the blend left BN_A's alone
        assert torch.equal(adv.running_var, torch.ones_like(adv.running_var))
        assert clean.weight.grad.abs().sum() > 0 and adv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs() > 0 for n, p in model.named_parameters() if n.endswith(".alpha"))


def test_a_mix_run_records_its_dial_and_trains(tmp_path, synthetic):
    run = train(_cfg(train_dial="mix", epochs=2), tmp_path / "r", progress=False, dataset=synthetic)
    cfg = torch.load(run / "checkpoint.pt", weights_only=True)["config"]
    assert cfg["train_dial"] == "mix"
    assert all(math.isfinite(r["loss"]) for r in read_log(run))


@pytest.mark.parametrize("kw,msg", [(dict(train_dial="bogus"), "unknown training dial 'bogus'"),
                                    (dict(method="pgdat", train_dial="mix"), "for --method float or floats")])
def test_bad_training_dial(kw, msg):
    with pytest.raises(TrainError, match=msg):
        _cfg(**kw)


def test_a_training_blend_is_the_literal_blend_and_leaves_running_statistics():
    """In training mode (1−t)·BN_C(x) + t·BN_A(x), both normalising with the batch's statistics, computed as one
    normalisation with the blended γ, β; neither set's running statistics move."""
    torch.manual_seed(0)
    bn = DualBatchNorm2d([5]).train()
    for m in bn.bns[0]:
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.normal_()
    ref = copy.deepcopy(bn)
    x = torch.randn(6, 5, 3, 3) * 3 + 1
    bn.bn = 0.3
    got = bn(x)
    clean, adv = ref.bns[0]
    torch.testing.assert_close(got, 0.7 * clean(x) + 0.3 * adv(x))
    for m in bn.bns[0]:
        assert torch.equal(m.running_mean, torch.zeros(5)) and torch.equal(m.running_var, torch.ones(5))
    got.sum().backward()
    assert all(m.weight.grad.abs().sum() > 0 for m in bn.bns[0])
