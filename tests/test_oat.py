"""OAT/OATS: FiLM semantics, λ encoding and routing, the sampler, the fold, training and evaluation."""
from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner

from floatedge.oppoint import BN_ADV, BN_CLEAN
from floatedge.train.film import (
    OAT_LAMBDAS,
    BNFiLM,
    FiLM,
    LambdaEncoder,
    SplitDualBatchNorm2d,
    fold_film,
    sample_lambdas,
)
from floatedge.train.models import create_model


def _oat(arch="tiny", widths=(1.0,), film_dim=128, init="reference", seed=0, dual=True):
    torch.manual_seed(seed)
    return create_model(arch, noisy=False, dual=dual, widths=widths, film_dim=film_dim, film_seed=seed,
                        film_init=init)


def _warm(model, widths, n=8, size=16):
    """Give both BN sets of every width distinct running statistics, then switch to eval."""
    model.train()
    x = torch.rand(n, 3, size, size)
    lam = torch.tensor([0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 1.0, 1.0][:n])
    with torch.no_grad():
        for w in widths:
            model.set_lambda(lam, w)
            model(x * 2)
    return model.eval()


# ---------------------------------------------------------------- FiLM
def test_film_identity_at_identity_init_and_not_at_reference_init():
    x = torch.randn(5, 8, 4, 4)
    enc = LambdaEncoder(128, seed=3)
    for lam in (0.0, 0.3, 1.0):
        film = FiLM([8], 128, init="identity")
        film.cond = enc(torch.tensor([lam]))
        assert torch.equal(film(x), x)
    ref = FiLM([8], 128, init="reference")
    ref.cond = enc(torch.tensor([0.3]))
    assert (ref(x) - x).abs().max() > 1e-2


def test_oat_model_at_identity_init_equals_the_plain_dual_bn_model():
    """With every FiLM the identity, an OAT model computes what the same net without FiLM computes."""
    torch.manual_seed(0)
    oat = create_model("tiny", noisy=False, dual=True, film_dim=128, film_init="identity")
    plain = create_model("tiny", noisy=False, dual=True)
    state = {k.replace(".bn.bns", ".bns"): v for k, v in oat.state_dict().items() if ".film." not in k
             and not k.startswith("lambda_encoder")}
    plain.load_state_dict(state)
    oat.eval()
    plain.eval()
    x = torch.rand(4, 3, 16, 16)
    for lam, bn in ((0.0, BN_CLEAN), (0.4, BN_ADV), (1.0, BN_ADV)):
        oat.set_lambda(lam)
        plain.set_state(0.0, bn, 1.0)
        torch.testing.assert_close(oat(x), plain(x))


def test_film_slices_gamma_and_beta_rows_per_channel():
    """At width 0.5 channel c uses the same γ/β rows of fc2 as at width 1 (only the hidden layer shrinks)."""
    film = FiLM([8, 4], 3, init="reference")
    cond = torch.randn(2, 3)
    film.width_idx = 0
    g_full, b_full = film.coefficients(cond)
    with torch.no_grad():  # make the hidden units beyond 2·C_w irrelevant: then both widths must agree
        film.fc2.weight[:, 8:] = 0
    g_full, b_full = film.coefficients(cond)
    film.width_idx = 1
    g_half, b_half = film.coefficients(cond)
    assert g_half.shape == (2, 4)
    torch.testing.assert_close(g_half, g_full[:, :4])
    torch.testing.assert_close(b_half, b_full[:, :4])


def test_film_placement_follows_the_reference():
    """ResNet: FiLM after the stem BN and both block BNs, none after a shortcut BN; WRN: none on the final BN."""
    r20 = create_model("resnet20", noisy=False, film_dim=1)
    n_blocks = 9
    assert sum(isinstance(m, FiLM) for m in r20.modules()) == 1 + 2 * n_blocks
    for name, m in r20.named_modules():
        if name.endswith("shortcut"):
            assert isinstance(m[1], SplitDualBatchNorm2d) and not isinstance(m[1], BNFiLM)
    w = create_model("wrn16_8", noisy=False, film_dim=1)
    assert sum(isinstance(m, FiLM) for m in w.modules()) == 12
    assert not isinstance(w.bn, BNFiLM)


def test_parameter_counts_match_the_reference_analysis():
    """baselines.md §4: ResNet-34 OAT with FiLM input 1 and one BN = 31.404 M (the paper's 31.4), with the
    128-d encoding and dual BN 33.355 M; plain conv+FC 21.28 M."""
    def n(m):
        return sum(p.numel() for p in m.parameters())

    assert round(n(create_model("resnet34", noisy=False, dual=False, film_dim=1)) / 1e6, 3) == 31.404
    assert round(n(create_model("resnet34", noisy=False, dual=True, film_dim=128)) / 1e6, 3) == 33.355
    assert round(n(create_model("resnet34", noisy=False, dual=False)) / 1e6, 2) == 21.28


# ---------------------------------------------------------------- encoding
def test_encoding_is_seeded_orthogonal_and_interpolates_unseen_lambdas():
    a, b, c = LambdaEncoder(128, seed=5), LambdaEncoder(128, seed=5), LambdaEncoder(128, seed=6)
    assert torch.equal(a.matrix, b.matrix) and not torch.equal(a.matrix, c.matrix)
    torch.testing.assert_close(a.matrix @ a.matrix.T, torch.eye(128), atol=1e-5, rtol=0)
    rows = a(torch.tensor(OAT_LAMBDAS))
    torch.testing.assert_close(rows, a.matrix[: len(OAT_LAMBDAS)])  # a training λ gets exactly its row
    mid = a(torch.tensor([0.7]))[0]  # halfway between 0.4 (row 4) and 1.0 (row 5)
    torch.testing.assert_close(mid, 0.5 * a.matrix[4] + 0.5 * a.matrix[5])
    assert torch.equal(LambdaEncoder(1)(torch.tensor([0.25, 1.0])), torch.tensor([[0.25], [1.0]]))


def test_encoding_lives_in_the_state_dict():
    m = _oat(seed=1)
    assert "lambda_encoder.matrix" in m.state_dict()
    other = _oat(seed=2)
    assert not torch.equal(other.lambda_encoder.matrix, m.lambda_encoder.matrix)
    other.load_state_dict(m.state_dict())
    assert torch.equal(other.lambda_encoder.matrix, m.lambda_encoder.matrix)


# ---------------------------------------------------------------- routing
def test_routing_by_lambda():
    """λ = 0 → BN_C, λ > 0 → BN_A (oppoint.bn_set at λ_th = 0), on every dual BN, FiLM or not."""
    m = _oat("resnet20")
    duals = [x for x in m.modules() if isinstance(x, SplitDualBatchNorm2d)]
    m.set_lambda(0.0)
    assert {d.bn for d in duals} == {BN_CLEAN}
    for lam in (1e-3, 0.2, 0.55, 1.0):
        m.set_lambda(lam)
        assert {d.bn for d in duals} == {BN_ADV}
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.set_lambda(1.5)


def test_per_sample_lambda_equals_each_sample_alone():
    """A mixed batch (zeros first → BN_C, the rest → BN_A, each with its own FiLM) computes row by row what
    the model computes for each sample at its own λ."""
    m = _warm(_oat(), (1.0,))
    x = torch.rand(6, 3, 16, 16)
    lam = torch.tensor([0.0, 0.0, 0.1, 0.4, 1.0, 0.7])
    m.set_lambda(lam)
    mixed = m(x)
    for i in range(6):
        m.set_lambda(float(lam[i]))
        torch.testing.assert_close(mixed[i : i + 1], m(x[i : i + 1]), atol=1e-5, rtol=1e-5)


def test_split_bn_routes_rows_in_training_mode():
    bn = SplitDualBatchNorm2d([4])
    bn.train()
    x = torch.randn(6, 4, 3, 3)
    bn.n_clean = 2
    bn(x)
    clean, adv = bn.bns[0]
    torch.testing.assert_close(clean.running_mean, 0.1 * x[:2].mean((0, 2, 3)))
    torch.testing.assert_close(adv.running_mean, 0.1 * x[2:].mean((0, 2, 3)))


# ---------------------------------------------------------------- sampler
@pytest.mark.parametrize("batch", [128, 64, 7])
def test_sampler_zeros_first_and_uniform_over_the_rest(batch):
    g = torch.Generator().manual_seed(0)
    n_zero = math.ceil(batch / 6)
    counts = {c: 0 for c in OAT_LAMBDAS}
    draws = 3000 if batch == 128 else 200
    for _ in range(draws):
        lam = sample_lambdas(batch, g)
        assert lam.shape == (batch,)
        assert torch.equal(lam[:n_zero], torch.zeros(n_zero)) and bool((lam[n_zero:] > 0).all())
        for v in lam[n_zero:].tolist():
            counts[round(v, 6)] += 1
    nonzero = [c for c in OAT_LAMBDAS if c]
    total = draws * (batch - n_zero)
    if batch == 128:  # 5 choices, 318,000 samples: each share within 1% of 1/5
        for c in nonzero:
            assert abs(counts[c] / total - 0.2) < 0.01, counts
    assert set(k for k, v in counts.items() if v) <= set(nonzero)


# ---------------------------------------------------------------- fold
@pytest.mark.parametrize("arch,widths", [("resnet20", (1.0,)), ("tiny", (1.0, 0.5)), ("wrn40_2", (1.0,))])
def test_fold_equals_unfolded_model(arch, widths):
    m = _oat(arch, widths=widths)
    size = 32 if arch != "tiny" else 16
    _warm(m, widths, size=size)
    x = torch.rand(4, 3, size, size)
    for w in widths:
        for lam in (0.0, 0.15, 0.4, 0.7, 1.0):  # training λs and unseen ones
            m.set_lambda(lam, w)
            with torch.no_grad():
                ref = m(x)
                folded = fold_film(m, lam, w)
                out = folded(x)
            assert (out - ref).abs().max() <= 1e-5, (lam, w)
            assert not any(isinstance(k, (FiLM, SplitDualBatchNorm2d)) for k in folded.modules())
    if widths == (1.0,):  # folded = the plain network's parameter count: no MLPs, one BN per layer
        plain = create_model(arch, noisy=False, dual=False)
        assert sum(p.numel() for p in folded.parameters()) == sum(p.numel() for p in plain.parameters())


# ---------------------------------------------------------------- training
def test_oats_training_smoke_on_cifar_slice(tmp_path, cifar_slice, cifar10_path):
    from floatedge.train.evaluate import evaluate
    from floatedge.train.trainer import TrainConfig, load_model, read_log, train

    ds = cifar_slice.limit(train=256, test=64, seed=0)
    cfg = TrainConfig(method="oats", arch="tiny", dataset="cifar10", epochs=1, batch_size=64, widths=(1.0, 0.5),
                      pgd_steps=2, lr=0.05, film_dim=128)
    before = create_model("tiny", noisy=False, widths=(1.0, 0.5), film_dim=128, film_seed=0).state_dict()
    run = train(cfg, tmp_path / "oats", progress=False, dataset=ds)
    log = read_log(run)
    assert len(log) == 1 and math.isfinite(log[0]["loss"]) and log[0]["train_adv_acc"] > 0
    model, saved, _ = load_model(run)
    assert saved.method == "oats" and model.widths == (1.0, 0.5)
    torch.testing.assert_close(model.lambda_encoder.matrix, before["lambda_encoder.matrix"])
    # both widths trained: every width's BN_C and BN_A saw data
    bn = model.bn1.bn.bns
    for w in range(2):
        for s in range(2):
            assert int(bn[w][s].num_batches_tracked) > 0
    # any λ, seen or unseen, at the narrow width
    res = evaluate(run, lambdas=(0.0, 0.15, 0.9), widths=(0.5,), attacks=("fgsm",), limit=32,
                   data=str(cifar10_path), progress=False)
    assert [(r["lambda_n"], r["bn"], r["lambda_th"]) for r in res["rows"]] == [
        (0.0, "clean", 0.0), (0.15, "adv", 0.0), (0.9, "adv", 0.0)]


def test_oat_resume_keeps_the_encoding_and_continues_exactly(tmp_path, synthetic):
    from floatedge.train.trainer import TrainConfig, load_checkpoint, train

    cfg = TrainConfig(method="oat", arch="tiny", dataset="synthetic", epochs=2, batch_size=64, pgd_steps=1, lr=0.05)
    straight = train(cfg, tmp_path / "a", progress=False, dataset=synthetic)
    train(cfg, tmp_path / "b", progress=False, dataset=synthetic, until_epoch=1)
    assert load_checkpoint(tmp_path / "b")["epoch"] == 1
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False, dataset=synthetic)
    a, b = load_checkpoint(straight)["model"], load_checkpoint(resumed)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_cli_train_oat_and_bad_flags(tmp_path):
    from floatedge.cli import main

    r = CliRunner().invoke(main, ["train", "--method", "oat", "--arch", "tiny", "--dataset", "synthetic",
                                  "--epochs", "1", "--batch-size", "64", "--pgd-steps", "1", "--film-dim", "1",
                                  "--quiet", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "o"), "--lambdas", "0,0.33", "--attacks", "fgsm",
                                  "--quiet", "--out", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    assert "0.33" in r.output
    r = CliRunner().invoke(main, ["train", "--method", "oat", "--widths", "1.0,0.5", "--dataset", "synthetic",
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "oats" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["train", "--method", "oat", "--film-dim", "0", "--dataset", "synthetic",
                                  "--out", str(tmp_path / "y")])
    assert r.exit_code == 1 and "FiLM input" in r.output
