"""Registry, parameter counts and the operating-point switch of whole models."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from floatedge.oppoint import BN_ADV, BN_CLEAN, OperatingPoint, channels
from floatedge.train.layers import DualBatchNorm2d, NoisyConv2d, NoisyLinear
from floatedge.train.models import create_model, list_models


def test_registry_names():
    assert {"tiny", "resnet20", "resnet34", "wrn16_8", "wrn40_2"} <= set(list_models())
    assert list_models() == sorted(list_models())
    with pytest.raises(KeyError, match="unknown architecture 'resnet1000'"):
        create_model("resnet1000")


def test_resnet34_parameter_count_matches_the_papers():
    """The kuangliu ResNet-34 of the OAT/FLOAT papers has 21.28 M parameters (BN included)."""
    plain = create_model("resnet34", noisy=False, dual=False)
    assert sum(p.numel() for p in plain.parameters()) / 1e6 == pytest.approx(21.28, abs=0.005)
    flt = create_model("resnet34")
    n_conv = sum(isinstance(m, (NoisyConv2d, NoisyLinear)) for m in flt.modules())
    n_bn = sum(p.numel() for m in flt.modules() if isinstance(m, DualBatchNorm2d) for p in m.parameters())
    # FLOAT adds one α per conv/linear and a second BN set, nothing else
    assert len(flt.alphas()) == n_conv
    extra = sum(p.numel() for p in flt.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == n_conv + n_bn // 2
    assert flt.plain_parameter_count() == plain.plain_parameter_count()


def test_resnet20_count():
    plain = create_model("resnet20", noisy=False, dual=False)
    assert sum(p.numel() for p in plain.parameters()) / 1e6 == pytest.approx(0.272, abs=0.001)


@pytest.mark.parametrize("name", ["tiny", "resnet20", "wrn40_2"])
def test_forward_every_width_and_bn(name):
    m = create_model(name, widths=(1.0, 0.5), num_classes=7)
    m.eval()
    x = torch.rand(2, 3, 32, 32)
    outs = {}
    for w in m.widths:
        for bn in (BN_CLEAN, BN_ADV):
            m.set_state(1.0, bn, w)
            outs[w, bn] = m(x)
            assert outs[w, bn].shape == (2, 7) and torch.isfinite(outs[w, bn]).all()
    assert not torch.equal(outs[1.0, BN_CLEAN], outs[0.5, BN_CLEAN])


def test_set_state_reaches_every_conditional_layer_and_validates():
    m = create_model("resnet20", widths=(1.0, 0.75, 0.5))
    assert m.widths == (1.0, 0.75, 0.5)
    m.set_operating_point(OperatingPoint(0.7, 0.75, 0.5))
    layers = list(m.conditional_layers())
    assert len(layers) > 20
    assert all((lay.noise_scale, lay.bn, lay.width_idx) == (pytest.approx(0.4), BN_ADV, 1) for lay in layers)
    with pytest.raises(ValueError, match="width 0.25 not trained"):
        m.set_state(0.0, BN_CLEAN, 0.25)
    with pytest.raises(ValueError, match="bn must be 0 or 1"):
        m.set_state(0.0, 2, 1.0)


def test_plain_models_have_no_noise_and_one_bn():
    m = create_model("tiny", noisy=False, dual=False)
    assert m.alphas() == {}
    assert not any(n.endswith(".z") for n, _ in m.named_buffers())
    x = torch.rand(3, 3, 16, 16)
    m.eval()
    m.set_state(0.0, BN_CLEAN, 1.0)
    a = m(x)
    m.set_state(1.0, BN_ADV, 1.0)  # nothing conditional to switch
    assert torch.equal(a, m(x))


def test_draw_noise_seeded_per_model():
    a, b = create_model("tiny"), create_model("tiny")
    a.draw_noise(3)
    b.draw_noise(3)
    assert all(torch.equal(za, zb) for (_, za), (_, zb) in zip(a.named_buffers(), b.named_buffers(), strict=True))
    zs = [m.z for m in a.modules() if isinstance(m, (NoisyConv2d, NoisyLinear))]
    assert len(zs) == 3 and not torch.equal(zs[0].flatten()[:10], zs[1].flatten()[:10])


def test_floats_tiny_at_half_width_equals_a_narrow_network_by_hand():
    """A FLOATS model at width w computes the narrow network made of the first ⌈w·C⌉ channels of each
    weight and noise tensor, with that width's own BN."""
    torch.manual_seed(0)
    m = create_model("tiny", widths=(1.0, 0.5), num_classes=4, mean=(0.5,) * 3, std=(0.25,) * 3)
    m.draw_noise(1)
    x = torch.rand(8, 3, 12, 12)
    m.train()
    for w in m.widths:  # give every BN its own statistics
        for bn in (0, 1):
            m.set_state(0.0, bn, w)
            m(x * (1 + w + bn))
    m.eval()
    s, bn = 0.6, BN_ADV
    m.set_state(s, bn, 0.5)
    c1, c2 = channels(0.5, 8), channels(0.5, 16)

    def w_eff(layer, o, i):
        return layer.weight[:o, :i] + s * layer.alpha * layer.weight.std() * layer.z[:o, :i]

    def bn_eval(layer, h):
        b = layer.bns[1][bn]  # width index 1 = 0.5
        return F.batch_norm(h, b.running_mean, b.running_var, b.weight, b.bias, False, 0.0, b.eps)

    with torch.no_grad():
        h = (x - 0.5) / 0.25
        h = F.relu(bn_eval(m.bn1, F.conv2d(h, w_eff(m.conv1, c1, 3), None, 1, 1)))
        h = F.relu(bn_eval(m.bn2, F.conv2d(h, w_eff(m.conv2, c2, c1), None, 2, 1)))
        h = h.mean((2, 3))
        want = F.linear(h, w_eff(m.fc, 4, c2), m.fc.bias)
        got = m(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
