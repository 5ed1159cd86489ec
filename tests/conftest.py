"""Shared fixtures: small real things (a CIFAR-10 slice, a tiny trained run), built once per session."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
# the data set beside the repository (../shared/data), or where FLOATEDGE_CIFAR10 says (a clone elsewhere, as CI's may be)
CIFAR10 = Path(os.environ.get("FLOATEDGE_CIFAR10", ROOT.parent / "shared" / "data" / "cifar-10-batches-py"))


@pytest.fixture(scope="session")
def cifar10_path() -> Path:
    """The real CIFAR-10 beside the repository. Missing, the test is skipped on a workstation — but fails when the
    environment variable CI is set: a skip there would hide a broken data path behind a green run."""
    if not (CIFAR10 / "data_batch_1").exists():
        if os.environ.get("CI"):
            pytest.fail(f"real CIFAR-10 not found at {CIFAR10}, and CI is set: the tests that need it must run")
        pytest.skip(f"real CIFAR-10 not found at {CIFAR10}")
    return CIFAR10


@pytest.fixture(scope="session")
def cifar_slice(cifar10_path):
    """512 training and 128 test images of the real CIFAR-10 (seeded subset)."""
    from floatedge.train.data import load_cifar10

    return load_cifar10(cifar10_path).limit(train=512, test=128, seed=0)


def _train_tiny(tmp_path_factory, method: str, widths, dataset, **extra):
    from floatedge.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp(f"run_{method}")
    cfg = TrainConfig(method=method, arch="tiny", dataset=dataset.name, epochs=1, batch_size=64, widths=widths,
                      pgd_steps=2, lr=0.05, **extra)
    return train(cfg, out, progress=False, dataset=dataset)


@pytest.fixture(scope="session")
def synthetic():
    from floatedge.train.data import load_synthetic

    return load_synthetic()


@pytest.fixture(scope="session")
def float_run(tmp_path_factory, synthetic) -> Path:
    """A tiny FLOAT model (one width) trained for one epoch on synthetic 16×16 data."""
    return _train_tiny(tmp_path_factory, "float", (1.0,), synthetic)


@pytest.fixture(scope="session")
def floats_run(tmp_path_factory, synthetic) -> Path:
    """A tiny FLOATS model (widths 1.0, 0.75, 0.5) trained for one epoch on synthetic data."""
    return _train_tiny(tmp_path_factory, "floats", (1.0, 0.75, 0.5), synthetic)


@pytest.fixture(scope="session")
def oat_run(tmp_path_factory, synthetic) -> Path:
    """A tiny OAT model (128-d orthogonal λ encoding, one width) trained for one epoch on synthetic data. The
    reference FiLM init, so γ(λ)/β(λ) differ clearly between λs after one epoch."""
    return _train_tiny(tmp_path_factory, "oat", (1.0,), synthetic, film_dim=128, film_init="reference")


@pytest.fixture(scope="session")
def oats_run(tmp_path_factory, synthetic) -> Path:
    """A tiny OATS model (scalar λ encoding, widths 1.0 and 0.5), one epoch on synthetic data."""
    return _train_tiny(tmp_path_factory, "oats", (1.0, 0.5), synthetic, film_dim=1, film_init="reference")


def write_cifar10(root: Path, per_batch: int = 6, seed: int = 0, protocol: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A small CIFAR-10 in the official layout: data_batch_1..5, test_batch, batches.meta; bytes keys,
    (N, 3072) uint8 rows (1024 R, 1024 G, 1024 B), labels a list. Returns all images and labels in file order."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        blob = {b"batch_label": name.encode(), b"labels": y, b"data": x,
                b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]}
        (root / name).write_bytes(pickle.dumps(blob, protocol=protocol))
        xs.append(x)
        ys.append(np.array(y))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture(name="write_cifar10")
def _write_cifar10_fixture():
    """The writer above, for tests that need a small CIFAR-10 directory."""
    return write_cifar10


class Hostile:
    """Unpickling an instance runs os.system(cmd): what a hostile data file or checkpoint would do."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        import os

        return (os.system, (self.cmd,))


@pytest.fixture
def hostile_pickle():
    """hostile_pickle(sentinel_path, wrap) → pickle bytes that would `touch` the sentinel when loaded."""

    def make(sentinel: Path, wrap=lambda evil: {b"data": evil}) -> bytes:
        return pickle.dumps(wrap(Hostile(f"touch {sentinel}")), protocol=2)

    return make
