"""benchmarks/gpu_fullscale.py: CIFAR-10 travels to a lent GPU losslessly compressed and comes back as a data set
floatedge's own loader reads; the trainer's mixed-precision rule."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_fullscale as gf  # noqa: E402

from floatedge.train.data import load_cifar10  # noqa: E402
from floatedge.train.trainer import amp_dtype  # noqa: E402


def test_finite_difference_inverts_exactly_and_compresses_images():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(7, 3, 32, 32), dtype=np.uint8)
    assert np.array_equal(gf.undiff2(gf.diff2(x)), x)  # wraps mod 256 both ways, including 0 and 255
    smooth = np.broadcast_to(np.arange(32, dtype=np.uint8) * 7, (2, 3, 32, 32)).copy()
    assert np.count_nonzero(gf.diff2(smooth)) < np.count_nonzero(smooth) // 10  # a gradient becomes nearly all zeros


def test_staged_parts_are_read_by_the_cifar_loader(tmp_path, monkeypatch):
    """pack's file format, written by hand for 100 images, staged part by part into a directory load_cifar10 reads."""
    monkeypatch.setattr(gf, "STAGE", tmp_path / "stage")
    monkeypatch.setattr(gf, "PARTS", {"a": (0, 60), "b": (60, 100)})
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (100, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 100).astype(np.uint8)
    xt, yt = rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 20).astype(np.uint8)
    classes = [f"c{i}" for i in range(10)]
    import lzma
    for part, (lo, hi) in gf.PARTS.items():
        d = tmp_path / part
        d.mkdir()
        arrays = {"x_train": x[lo:hi], "y_train": y[lo:hi]} | ({"x_test": xt, "y_test": yt} if part == "b" else {})
        meta = {"part": part, "classes": classes, "arrays": {}}
        for name, a in arrays.items():
            (d / f"{name}.xz").write_bytes(lzma.compress((gf.diff2(a) if a.ndim == 4 else a).tobytes()))
            meta["arrays"][name] = {"shape": list(a.shape), "sha256": gf.sha(a)}
        (d / "meta.json").write_text(json.dumps(meta))
    for part in ("a", "b"):
        gf.stage(type("A", (), {"part": str(tmp_path / part)}))
    ds = load_cifar10(tmp_path / "stage" / "cifar-10-batches-py")
    assert np.array_equal(np.asarray(ds.x_train), x) and np.array_equal(np.asarray(ds.y_train), y.astype(np.int64))
    assert np.array_equal(np.asarray(ds.x_test), xt) and ds.classes == classes


def test_a_corrupted_part_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(gf, "STAGE", tmp_path / "stage")
    d = tmp_path / "a"
    d.mkdir()
    a = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    import lzma
    (d / "x_train.xz").write_bytes(lzma.compress(gf.diff2(a + 1).tobytes()))
    (d / "meta.json").write_text(json.dumps({"arrays": {"x_train": {"shape": [2, 3, 32, 32], "sha256": gf.sha(a)}}}))
    with pytest.raises(SystemExit, match="sha256 mismatch"):
        gf.stage(type("A", (), {"part": str(d)}))


def test_mixed_precision_only_on_cuda_and_bf16_where_the_gpu_has_it():
    assert amp_dtype(torch.device("cpu"), True) is None
    assert amp_dtype(torch.device("cuda"), False) is None
