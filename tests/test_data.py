"""Data loaders on small files written in the official formats, the safe unpickler, and the real CIFAR-10."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from floatedge.train.data import (
    CIFAR10_MEAN,
    DataError,
    augment_batch,
    epoch_order,
    load_cifar10,
    load_cifar100,
    load_dataset,
    load_digits,
    load_imagefolder,
    load_stl10,
    load_svhn,
    load_synthetic,
    safe_load_pickle,
)


# ---------------------------------------------------------------- writers in the official formats
def _dump(path: Path, obj, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


# ---------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_layout(tmp_path, protocol, write_cifar10):
    """Python 3 writes the same layout differently per pickle protocol (2: bytes via _codecs.encode,
    5: arrays via _frombuffer); all are legitimate CIFAR files."""
    x, y = write_cifar10(tmp_path / "c10", protocol=protocol)
    ds = load_cifar10(tmp_path / "c10")
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.classes[0] == "airplane"
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (6, 3, 32, 32) and ds.y_train.dtype == torch.int64
    # row = 1024 R, 1024 G, 1024 B, each plane row-major
    assert np.array_equal(ds.x_train.numpy(), x[:30].reshape(-1, 3, 32, 32))
    assert ds.x_train[0, 1, 2, 3].item() == x[0, 1024 + 2 * 32 + 3]
    assert np.array_equal(ds.y_train.numpy(), y[:30]) and np.array_equal(ds.y_test.numpy(), y[30:])
    assert ds.mean == CIFAR10_MEAN and ds.augment


def test_cifar100_layout(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    parts = {}
    for split, n in (("train", 10), ("test", 4)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        _dump(root / split, {b"filenames": [b"f"] * n, b"fine_labels": fine, b"coarse_labels": [0] * n, b"data": x})
        parts[split] = (x, fine)
    _dump(root / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                          b"coarse_label_names": [b"k"] * 20})
    ds = load_cifar100(root)
    assert ds.num_classes == 100 and ds.classes[7] == "c7"
    assert np.array_equal(ds.x_train.numpy(), parts["train"][0].reshape(-1, 3, 32, 32))
    assert ds.y_train.tolist() == parts["train"][1] and ds.y_test.tolist() == parts["test"][1]
    assert ds.input_shape == (3, 32, 32)


def test_cifar100_missing_file(tmp_path):
    (tmp_path / "train").write_bytes(b"")
    with pytest.raises(DataError, match="cifar100: .* lacks test, meta"):
        load_cifar100(tmp_path)


def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path, write_cifar10, hostile_pickle):
    root = tmp_path / "c10"
    write_cifar10(root)
    sentinel = tmp_path / "pwned"
    (root / "data_batch_3").write_bytes(hostile_pickle(sentinel, lambda evil: {b"labels": [0], b"data": evil}))
    # the payload is real: a plain pickle.load would run it
    assert b"system" in (root / "data_batch_3").read_bytes()
    with pytest.raises(DataError, match=r"data_batch_3: refusing to unpickle (posix|os|nt)\.system"):
        load_cifar10(root)
    assert not sentinel.exists()


@pytest.mark.parametrize("wrap", [lambda evil: {b"data": evil}, lambda evil: [evil]])
def test_safe_unpickler_refuses_any_foreign_global(tmp_path, wrap, hostile_pickle):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "batch"
    path.write_bytes(hostile_pickle(sentinel, wrap))
    with pytest.raises(DataError, match="refusing to unpickle"):
        safe_load_pickle(path)
    assert not sentinel.exists()
    # other classic gadgets too
    for module, name in (("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load")):
        blob = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
        path.write_bytes(blob)
        with pytest.raises(DataError, match=f"refusing to unpickle {module}.{name}"):
            safe_load_pickle(path)


@pytest.mark.parametrize("content,match", [
    (lambda good: good[: len(good) // 2], "not a readable pickle"),  # truncated
    (lambda good: b"\x00garbage" * 10, "not a readable pickle"),
    (lambda good: pickle.dumps([1, 2, 3]), "expected a dict, found list"),
    (lambda good: pickle.dumps({b"data": np.zeros(5, np.uint8), b"labels": [0]}), "not a CIFAR batch"),
    (lambda good: pickle.dumps({b"labels": [0]}), "not a CIFAR batch"),
    (lambda good: pickle.dumps({b"data": None, b"labels": [0]}), "not a CIFAR batch"),
    (lambda good: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "2 images but 1 labels"),
])
def test_corrupted_cifar_batch(tmp_path, content, match, write_cifar10):
    root = tmp_path / "c10"
    write_cifar10(root)
    good = (root / "test_batch").read_bytes()
    (root / "test_batch").write_bytes(content(good))
    with pytest.raises(DataError, match=match):
        load_cifar10(root)


def test_cifar10_missing_files(tmp_path, write_cifar10):
    with pytest.raises(DataError, match="is not a directory"):
        load_cifar10(tmp_path / "nowhere")
    root = tmp_path / "c10"
    write_cifar10(root)
    (root / "data_batch_4").unlink()
    with pytest.raises(DataError, match="lacks data_batch_4"):
        load_cifar10(root)


def test_real_cifar10_slice(cifar_slice, cifar10_path):
    ds = cifar_slice
    assert ds.x_train.shape == (512, 3, 32, 32) and ds.x_test.shape == (128, 3, 32, 32)
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert set(ds.y_train.tolist()) == set(range(10))
    # per-channel mean of a 512-image slice near the canonical training mean
    mean = ds.x_train.float().div(255).mean((0, 2, 3))
    assert torch.allclose(mean, torch.tensor(CIFAR10_MEAN), atol=0.03)
    # the subset is seeded: the same call gives the same images
    again = ds.limit(train=100, seed=3)
    assert torch.equal(again.x_train, ds.limit(train=100, seed=3).x_train)
    assert not torch.equal(again.x_train, ds.limit(train=100, seed=4).x_train)


# ---------------------------------------------------------------- SVHN, STL-10, ImageFolder
def test_svhn_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(2)
    imgs = {}
    for split, n in (("train", 7), ("test", 3)):
        nchw = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = np.array([10, 1, 2, 3, 4, 5, 9][:n], dtype=np.uint8).reshape(-1, 1)  # 10 means digit 0
        # official layout: X is (32, 32, 3, N) = H, W, C, N
        scipy_io.savemat(tmp_path / f"{split}_32x32.mat", {"X": nchw.transpose(2, 3, 1, 0), "y": labels})
        imgs[split] = (nchw, labels.reshape(-1))
    ds = load_svhn(tmp_path)
    assert np.array_equal(ds.x_train.numpy(), imgs["train"][0])
    assert np.array_equal(ds.x_test.numpy(), imgs["test"][0])
    assert ds.y_train.tolist() == [0, 1, 2, 3, 4, 5, 9] and ds.y_test.tolist() == [0, 1, 2]
    assert ds.num_classes == 10 and not ds.augment


def test_svhn_bad_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(tmp_path / "train_32x32.mat", {"images": np.zeros((2, 2))})
    (tmp_path / "test_32x32.mat").write_bytes(b"not matlab")
    with pytest.raises(DataError, match="train_32x32.mat: not an SVHN .mat file"):
        load_svhn(tmp_path)
    with pytest.raises(DataError, match="svhn: .* lacks"):
        load_svhn(tmp_path / "..")


def test_stl10_binary_column_major(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "stl10_binary"
    root.mkdir()
    want = {}
    for split, n in (("train", 3), ("test", 2)):
        nchw = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        labels = np.array([1, 10, 5][:n], dtype=np.uint8)  # 1..10 on disk
        # column-major: each channel plane stored transposed
        np.ascontiguousarray(nchw.transpose(0, 1, 3, 2)).tofile(root / f"{split}_X.bin")
        labels.tofile(root / f"{split}_y.bin")
        want[split] = (nchw, labels.astype(int) - 1)
    (root / "class_names.txt").write_text("\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse",
                                                     "monkey", "ship", "truck"]) + "\n")
    ds = load_stl10(tmp_path)  # the parent of stl10_binary/ is accepted too
    assert np.array_equal(ds.x_train.numpy(), want["train"][0])
    assert np.array_equal(ds.x_test.numpy(), want["test"][0])
    assert ds.y_train.tolist() == [0, 9, 4] and ds.y_test.tolist() == [0, 9]
    assert ds.classes[7] == "monkey" and ds.input_shape == (3, 96, 96)


def test_stl10_bad_files(tmp_path):
    root = tmp_path / "stl10_binary"
    root.mkdir()
    np.zeros(3 * 96 * 96 + 1, np.uint8).tofile(root / "train_X.bin")
    np.ones(1, np.uint8).tofile(root / "train_y.bin")
    np.zeros(3 * 96 * 96, np.uint8).tofile(root / "test_X.bin")
    np.zeros(1, np.uint8).tofile(root / "test_y.bin")
    with pytest.raises(DataError, match="not a multiple of 3×96×96"):
        load_stl10(root)
    np.zeros(3 * 96 * 96, np.uint8).tofile(root / "train_X.bin")
    with pytest.raises(DataError, match="outside 1..10"):  # test label 0
        load_stl10(root)


def test_imagefolder_png(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(4)
    want = {}
    for split, n in (("train", 3), ("val", 1)):
        for c in ("cat", "dog"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                hwc = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                Image.fromarray(hwc).save(d / f"{i}.png")
                want.setdefault(split, []).append((hwc.transpose(2, 0, 1), c))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    ds = load_imagefolder(tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert ds.x_train.shape == (6, 3, 10, 12) and ds.x_test.shape == (2, 3, 10, 12)
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1, 1] and ds.y_test.tolist() == [0, 1]
    assert all(np.array_equal(ds.x_train[i].numpy(), want["train"][i][0]) for i in range(6))
    expected_mean = np.stack([w[0] for w in want["train"]]).astype(float).mean((0, 2, 3)) / 255
    assert np.allclose(ds.mean, expected_mean)
    assert not ds.augment  # images smaller than 32 px are not crop-augmented


def test_imagefolder_errors(tmp_path):
    from PIL import Image

    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="lacks test/"):
        load_imagefolder(tmp_path)
    (tmp_path / "test" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images under"):
        load_imagefolder(tmp_path)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "train" / "a" / "0.png")
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(tmp_path / "train" / "a" / "1.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "test" / "a" / "0.png")
    with pytest.raises(DataError, match="differ in size"):
        load_imagefolder(tmp_path)


# ---------------------------------------------------------------- embedded and synthetic
def test_digits_embedded():
    ds = load_digits()
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.x_train.shape == (1500, 1, 8, 8) and ds.x_test.shape == (297, 1, 8, 8)
    assert ds.x_train.max().item() == 255 and ds.x_train.min().item() == 0
    assert set(ds.y_test.tolist()) == set(range(10))
    assert torch.equal(ds.x_train, load_digits().x_train)  # fixed split


def test_synthetic_is_seeded_and_separable():
    a, b = load_synthetic(), load_synthetic()
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.shape == (256, 3, 16, 16) and a.num_classes == 4
    assert not torch.equal(a.x_train, load_synthetic(seed=1).x_train)


def test_load_dataset_dispatch(tmp_path, write_cifar10):
    with pytest.raises(DataError, match="unknown dataset 'mnist'; choose from cifar10"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="dataset svhn needs --data PATH"):
        load_dataset("svhn")
    assert load_dataset("synthetic").name == "synthetic"
    write_cifar10(tmp_path)
    assert load_dataset("cifar10", tmp_path).x_train.shape[0] == 30


# ---------------------------------------------------------------- ordering and augmentation
def test_epoch_order_depends_only_on_seed_and_epoch():
    a = epoch_order(100, 0, 3)
    assert sorted(a.tolist()) == list(range(100))
    assert torch.equal(a, epoch_order(100, 0, 3))
    assert not torch.equal(a, epoch_order(100, 0, 4)) and not torch.equal(a, epoch_order(100, 1, 3))


def test_augment_batch_is_a_crop_or_flip_of_the_padded_image():
    x = torch.rand(16, 3, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    again = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        views = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], v) or torch.equal(out[i], v.flip(-1)) for v in views)
    assert not torch.equal(out, x)
