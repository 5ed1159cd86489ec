"""Layer semantics: W_eff = W + s·α·η with η = σ(W)·z, slicing to the first ⌈w·C⌉ channels, dual BN."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from floatedge.train.layers import ALPHA_INIT, DualBatchNorm2d, NoisyConv2d, NoisyLinear, Normalize


def _noisy_conv(cin=(16, 8), cout=(32, 16), k=3, bias=True, seed=0):
    torch.manual_seed(seed)
    conv = NoisyConv2d(list(cin), list(cout), k, stride=1, padding=1, bias=bias)
    conv.draw_noise(torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        conv.alpha.fill_(0.3)
    return conv


def test_alpha_init_and_buffers():
    conv = NoisyConv2d([4], [8], 3)
    assert isinstance(conv.alpha, nn.Parameter) and conv.alpha.item() == ALPHA_INIT == 0.25
    assert conv.alpha.dim() == 0  # one scalar per layer
    assert "z" in dict(conv.named_buffers()) and "z" not in dict(conv.named_parameters())
    plain = NoisyConv2d([4], [8], 3, noisy=False)
    assert plain.alpha is None and plain.z is None
    with pytest.raises(ValueError, match="noise mode"):
        NoisyConv2d([4], [8], 3, noise_mode="sometimes")


def test_s_zero_reproduces_plain_conv_exactly():
    conv = _noisy_conv(cin=[16], cout=[32])
    ref = nn.Conv2d(16, 32, 3, padding=1, bias=True)
    ref.load_state_dict({"weight": conv.weight.detach(), "bias": conv.bias.detach()})
    x = torch.randn(4, 16, 9, 9)
    conv.noise_scale = 0.0
    assert conv.z.abs().sum() > 0  # the noise is there, it just must not act
    assert torch.equal(conv(x), ref(x))
    conv.noise_scale = 1.0
    assert not torch.allclose(conv(x), ref(x))


def test_s_zero_reproduces_plain_linear_exactly():
    torch.manual_seed(0)
    lin = NoisyLinear([20], [5])
    lin.draw_noise(torch.Generator().manual_seed(3))
    ref = nn.Linear(20, 5)
    ref.load_state_dict({"weight": lin.weight.detach(), "bias": lin.bias.detach()})
    x = torch.randn(7, 20)
    lin.noise_scale = 0.0
    assert torch.equal(lin(x), ref(x))


def test_noise_is_s_alpha_sigma_z_and_its_std_is_alpha_sigma():
    conv = _noisy_conv(cin=[64], cout=[64])
    w = conv.weight.detach()
    sigma = w.std()
    for s in (1.0, 0.4):
        conv.noise_scale = s
        delta = (conv.effective_weight(64, 64) - w).detach()
        # exactly s·α·σ(W)·z ...
        torch.testing.assert_close(delta, s * 0.3 * sigma * conv.z, rtol=1e-5, atol=1e-7)
        # ... so with z ~ N(0,1) over 36,864 entries its std is s·α·σ within sampling error (≈0.4%)
        assert delta.std().item() == pytest.approx(s * 0.3 * sigma.item(), rel=0.02)
        assert abs(delta.mean().item()) < 0.02 * sigma.item()
    # η = σ·z, exported as is
    torch.testing.assert_close(conv.eta(), sigma * conv.z)


def test_noise_gradient_reaches_alpha_not_sigma():
    """σ is detached: dL/dW through W_eff is exactly dL/dW_eff; α gets Σ dL/dW_eff · s·η."""
    conv = _noisy_conv(cin=[8], cout=[8], bias=False)
    conv.noise_scale = 0.7
    x = torch.randn(2, 8, 5, 5)
    conv(x).square().sum().backward()
    w_eff = conv.effective_weight(8, 8).detach().requires_grad_(True)
    F.conv2d(x, w_eff, None, 1, 1).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, w_eff.grad)
    torch.testing.assert_close(conv.alpha.grad, (w_eff.grad * 0.7 * conv.eta()).sum())


def test_draw_noise_is_reproducible_from_the_seed():
    a, b = NoisyConv2d([3], [4], 3), NoisyConv2d([3], [4], 3)
    a.draw_noise(torch.Generator().manual_seed(5))
    b.draw_noise(torch.Generator().manual_seed(5))
    assert torch.equal(a.z, b.z)
    b.draw_noise(torch.Generator().manual_seed(6))
    assert not torch.equal(a.z, b.z)
    assert a.z.std().item() == pytest.approx(1.0, abs=0.3)


@pytest.mark.parametrize("s", [0.0, 0.6, 1.0])
def test_conv_slice_equals_a_narrow_conv_built_by_hand(s):
    conv = _noisy_conv(cin=(16, 12, 8), cout=(32, 24, 16))
    sigma_full = conv.weight.detach().std()
    for k, (ci, co) in enumerate(zip(conv.in_list, conv.out_list, strict=True)):
        conv.width_idx, conv.noise_scale = k, s
        narrow = nn.Conv2d(ci, co, 3, padding=1, bias=True)
        with torch.no_grad():
            # the first co/ci channels of W and of η, σ from the full weight (η sliced like W)
            narrow.weight.copy_(conv.weight[:co, :ci] + s * 0.3 * sigma_full * conv.z[:co, :ci])
            narrow.bias.copy_(conv.bias[:co])
        x = torch.randn(3, ci, 6, 6)
        out = conv(x)
        assert out.shape == (3, co, 6, 6)
        torch.testing.assert_close(out, narrow(x), rtol=1e-5, atol=1e-6)


def test_linear_slice_equals_a_narrow_linear_built_by_hand():
    torch.manual_seed(1)
    lin = NoisyLinear([64, 32], [10, 10])
    lin.draw_noise(torch.Generator().manual_seed(2))
    sigma = lin.weight.detach().std()
    lin.width_idx, lin.noise_scale = 1, 1.0
    narrow = nn.Linear(32, 10)
    with torch.no_grad():
        narrow.weight.copy_(lin.weight[:, :32] + 0.25 * sigma * lin.z[:, :32])
        narrow.bias.copy_(lin.bias)
    x = torch.randn(5, 32)
    torch.testing.assert_close(lin(x), narrow(x))


def test_conv_refuses_wrong_input_width():
    conv = _noisy_conv(cin=(16, 8), cout=(32, 16))
    conv.width_idx = 1
    with pytest.raises(RuntimeError, match="expected 8 input channels, got 16"):
        conv(torch.randn(1, 16, 4, 4))


def test_dual_bn_selects_per_width_and_set():
    bn = DualBatchNorm2d([8, 4], dual=True)
    assert len(bn.bns) == 2 and all(len(s) == 2 for s in bn.bns)
    x = torch.randn(6, 4, 3, 3) + 3.0
    bn.width_idx, bn.bn = 1, 1
    assert bn.select() is bn.bns[1][1]
    bn.train()
    bn(x)
    # only BN_A of width 1 saw the batch
    torch.testing.assert_close(bn.bns[1][1].running_mean, 0.1 * x.mean((0, 2, 3)))
    for k, j in [(0, 0), (0, 1), (1, 0)]:
        assert torch.equal(bn.bns[k][j].running_mean, torch.zeros_like(bn.bns[k][j].running_mean))
        assert bn.bns[k][j].num_batches_tracked.item() == 0
    single = DualBatchNorm2d([8], dual=False)
    single.bn = 1
    assert len(single.bns[0]) == 1 and single.select() is single.bns[0][0]


def test_normalize():
    norm = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    x = torch.rand(2, 3, 4, 4)
    want = (x - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), want)
