"""PGD/FGSM on a small model trained on real CIFAR-10 images: ε-ball, [0, 1], loss goes up, no side effects."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from floatedge.train.attacks import ATTACKS, EPS, eval_mode, fgsm, pgd, run_attack
from floatedge.train.data import to_float
from floatedge.train.models import create_model


@pytest.fixture(scope="module")
def trained(cifar_slice):
    """A tiny FLOAT model fitted for 60 Adam steps on 512 real CIFAR-10 images, and 64 test images."""
    ds = cifar_slice
    torch.manual_seed(0)
    m = create_model("tiny", mean=ds.mean, std=ds.std)
    m.draw_noise(1)
    m.set_state(1.0, 1, 1.0)
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    x, y = to_float(ds.x_train), ds.y_train
    m.train()
    for i in range(60):
        idx = slice((i % 4) * 128, (i % 4 + 1) * 128)
        opt.zero_grad()
        F.cross_entropy(m(x[idx]), y[idx]).backward()
        opt.step()
    m.eval()
    m.zero_grad(set_to_none=True)
    return m, to_float(ds.x_test[:64]), ds.y_test[:64]


def _loss(m, x, y):
    with torch.no_grad():
        return F.cross_entropy(m(x), y).item()


def test_model_learned_something(trained):
    m, x, y = trained
    with torch.no_grad():
        assert (m(x).argmax(1) == y).float().mean() > 0.15  # chance is 0.10


@pytest.mark.parametrize("steps", [1, 7])
def test_pgd_stays_in_the_eps_ball_and_in_pixel_range(trained, steps):
    m, x, y = trained
    adv = pgd(m, x, y, steps=steps, generator=torch.Generator().manual_seed(0))
    assert adv.shape == x.shape and not adv.requires_grad
    assert (adv - x).abs().max().item() <= EPS + 1e-6
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
    # it uses the room it has: most pixels not at a [0,1] edge end on the ball's surface
    interior = (x > EPS) & (x < 1 - EPS)
    on_surface = ((adv - x).abs() > EPS - 1e-5) & interior
    frac = (on_surface.sum() / interior.sum()).item()
    assert frac > (0.6 if steps == 7 else 0.08), frac


def test_pgd_raises_the_loss_beyond_random_noise(trained):
    m, x, y = trained
    g = torch.Generator().manual_seed(1)
    clean = _loss(m, x, y)
    rand = _loss(m, (x + EPS * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1), y)
    pgd5 = _loss(m, pgd(m, x, y, steps=5, generator=g), y)
    pgd20 = _loss(m, pgd(m, x, y, steps=20, generator=g), y)
    assert pgd5 > clean + 0.5 and pgd5 > rand + 0.5
    assert pgd20 >= pgd5 - 0.05
    with torch.no_grad():
        acc_clean = (m(x).argmax(1) == y).float().mean()
        acc_adv = (m(pgd(m, x, y, steps=10, generator=g)).argmax(1) == y).float().mean()
    assert acc_adv < acc_clean


def test_fgsm_moves_every_free_pixel_by_eps(trained):
    m, x, y = trained
    adv = fgsm(m, x, y)
    d = (adv - x).abs()
    interior = (x > EPS) & (x < 1 - EPS)
    # sign of the gradient: each interior pixel moves by exactly ε (unless its gradient is exactly 0)
    assert torch.allclose(d[interior], torch.full_like(d[interior], EPS), atol=1e-6) or \
        (d[interior] > EPS - 1e-6).float().mean() > 0.99
    assert _loss(m, adv, y) > _loss(m, x, y)


def test_attack_has_no_side_effects_on_the_model(trained):
    """The attack runs BN in eval mode (no running-stat updates), restores train/eval, leaves .grad alone."""
    m, x, y = trained
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    try:
        pgd(m, x, y, steps=3, generator=torch.Generator().manual_seed(0))
        assert m.training
    finally:
        m.eval()
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in m.parameters())
    with eval_mode(m):
        assert not m.training
    assert not m.training


def test_pgd_is_seeded(trained):
    m, x, y = trained
    a = pgd(m, x, y, steps=2, generator=torch.Generator().manual_seed(3))
    b = pgd(m, x, y, steps=2, generator=torch.Generator().manual_seed(3))
    c = pgd(m, x, y, steps=2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(run_attack("pgd7", m, x, y, seed=5), run_attack("pgd7", m, x, y, seed=5))


def test_pgd_works_inside_no_grad(trained):
    m, x, y = trained
    with torch.no_grad():
        adv = pgd(m, x[:8], y[:8], steps=2, generator=torch.Generator().manual_seed(0))
    assert (adv - x[:8]).abs().max() > 0


def test_run_attack_names_and_eps(trained):
    m, x, y = trained
    assert run_attack("clean", m, x, y) is x
    eps = 2 / 255
    for name in ("fgsm", "pgd7"):
        adv = run_attack(name, m, x[:16], y[:16], eps=eps)
        assert (adv - x[:16]).abs().max().item() <= eps + 1e-6
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        run_attack("cw", m, x, y)
    assert set(ATTACKS) >= {"clean", "fgsm", "pgd7", "pgd20", "autoattack"}
