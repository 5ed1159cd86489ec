"""Shared fixtures: small real things (a CIFAR-10 slice, a tiny trained run), built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CIFAR10 = ROOT.parent / "shared" / "data" / "cifar-10-batches-py"


@pytest.fixture(scope="session")
def cifar10_path() -> Path:
    if not (CIFAR10 / "data_batch_1").exists():
        pytest.skip(f"real CIFAR-10 not found at {CIFAR10}")
    return CIFAR10


@pytest.fixture(scope="session")
def cifar_slice(cifar10_path):
    """512 training and 128 test images of the real CIFAR-10 (seeded subset)."""
    from floatedge.train.data import load_cifar10

    return load_cifar10(cifar10_path).limit(train=512, test=128, seed=0)


def _train_tiny(tmp_path_factory, method: str, widths, dataset):
    from floatedge.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp(f"run_{method}")
    cfg = TrainConfig(method=method, arch="tiny", dataset=dataset.name, epochs=1, batch_size=64, widths=widths,
                      pgd_steps=2, lr=0.05)
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
