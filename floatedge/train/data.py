"""Data sets, held in memory as uint8 NCHW tensors, with CIFAR-style augmentation done in torch.

No DataLoader: images are indexed straight out of a tensor and shuffled by a per-epoch generator
(`epoch_order`), which keeps a run reproducible and makes resume exact (the order of epoch e depends
only on the seed and e).

Pickled data (CIFAR) is read by `SafeUnpickler`, which admits only the three numpy globals those
files hold; anything else — a hostile pickle that names `os.system`, say — raises `DataError`.
"""
from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DataError(ValueError):
    """A data path or file that cannot be read as the data set asked for."""


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # uint8 N×C×H×W
    y_train: torch.Tensor  # int64 N
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool  # pad-4 random crop + horizontal flip

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @classmethod
    def from_numpy(cls, name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                   classes: list[str], mean: tuple[float, ...], std: tuple[float, ...], augment: bool) -> Dataset:
        """From uint8 N×C×H×W images and int64 labels, (x, y) for each split."""
        (x, y), (xt, yt) = train, test
        return cls(name, torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xt), torch.from_numpy(yt),
                   classes, mean, std, augment)

    def limit(self, train: int | None = None, test: int | None = None, seed: int = 0) -> Dataset:
        """A seeded random subset (the shared CIFAR-10 is not in official order, so no index slices)."""
        g = torch.Generator().manual_seed(seed)
        xt, yt, xs, ys = self.x_train, self.y_train, self.x_test, self.y_test
        if train is not None and train < len(xt):
            idx = torch.randperm(len(xt), generator=g)[:train]
            xt, yt = xt[idx], yt[idx]
        if test is not None and test < len(xs):
            idx = torch.randperm(len(xs), generator=g)[:test]
            xs, ys = xs[idx], ys[idx]
        return Dataset(self.name, xt, yt, xs, ys, self.classes, self.mean, self.std, self.augment)


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Pad-`pad` random crop and horizontal flip of a float N×C×H×W batch."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


# ---------------------------------------------------------------- safe pickle
class SafeUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays under pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes under protocol 2 written by Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name}: not a CIFAR data file")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # numpy 2 renamed it; avoids a warning
        return super().find_class(module, name)


def safe_load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    except Exception as exc:  # truncated or corrupted
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _require(root: Path, names: list[str], what: str) -> None:
    if not root.is_dir():
        raise DataError(f"{what}: data path {root} is not a directory")
    missing = [n for n in names if not (root / n).exists()]
    if missing:
        raise DataError(f"{what}: {root} lacks {', '.join(missing)}")


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = safe_load_pickle(path)
    try:
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[label_key], dtype=np.int64)
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a CIFAR batch ({type(exc).__name__}: {exc})") from None
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


def _label_names(meta: dict, key: str, n: int) -> list[str]:
    """Class names from a CIFAR meta file (bytes or str), else "0".."n-1"."""
    return [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(key, [])] or [str(i) for i in range(n)]


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def load_cifar10(path: str | Path) -> Dataset:
    root = Path(path)
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    _require(root, train_files + ["test_batch", "batches.meta"], "cifar10")
    parts = [_cifar_batch(root / f, "labels") for f in train_files]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    classes = _label_names(safe_load_pickle(root / "batches.meta"), "label_names", 10)
    return Dataset.from_numpy("cifar10", train, _cifar_batch(root / "test_batch", "labels"), classes,
                              CIFAR10_MEAN, CIFAR10_STD, True)


def load_cifar100(path: str | Path) -> Dataset:
    root = Path(path)
    _require(root, ["train", "test", "meta"], "cifar100")
    classes = _label_names(safe_load_pickle(root / "meta"), "fine_label_names", 100)
    return Dataset.from_numpy("cifar100", _cifar_batch(root / "train", "fine_labels"),
                              _cifar_batch(root / "test", "fine_labels"), classes,
                              (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True)


def _svhn_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat  # scipy: the [data] extra

    try:
        d = loadmat(path)
        x = np.ascontiguousarray(np.asarray(d["X"], dtype=np.uint8).transpose(3, 2, 0, 1))
        y = np.asarray(d["y"], dtype=np.int64).reshape(-1)
    except Exception as exc:
        raise DataError(f"{path}: not an SVHN .mat file ({type(exc).__name__}: {exc})") from None
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    return x, y


def load_svhn(path: str | Path) -> Dataset:
    root = Path(path)
    _require(root, ["train_32x32.mat", "test_32x32.mat"], "svhn")
    return Dataset.from_numpy("svhn", _svhn_split(root / "train_32x32.mat"), _svhn_split(root / "test_32x32.mat"),
                              [str(i) for i in range(10)], (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False)


def _stl_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(root / f"{split}_X.bin", dtype=np.uint8)
    if raw.size % (3 * 96 * 96):
        raise DataError(f"{root / (split + '_X.bin')}: size {raw.size} is not a multiple of 3×96×96")
    x = np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))  # stored column-major
    y = np.fromfile(root / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
    if len(x) != len(y) or (len(y) and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"{root}: {split} labels do not match images or are outside 1..10")
    return x, y


def load_stl10(path: str | Path) -> Dataset:
    root = Path(path)
    if (root / "stl10_binary").is_dir():
        root = root / "stl10_binary"
    _require(root, ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"], "stl10")
    names = (root / "class_names.txt").read_text().split() if (root / "class_names.txt").exists() else []
    return Dataset.from_numpy("stl10", _stl_split(root, "train"), _stl_split(root, "test"),
                              names if len(names) == 10 else [str(i) for i in range(10)],
                              (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), True)


def load_imagefolder(path: str | Path) -> Dataset:
    """`root/train/<class>/*.png|jpg` and `root/test/<class>/...` (or `val/`), all images one size."""
    from PIL import Image  # pillow: comes with matplotlib

    root = Path(path)
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    _require(root, ["train"], "imagefolder")
    if not test_dir.is_dir():
        raise DataError(f"imagefolder: {root} lacks test/ (or val/)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"imagefolder: {root / 'train'} has no class folders")

    def read(split: Path) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for label, c in enumerate(classes):
            for f in sorted((split / c).glob("*")):
                if f.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"}:
                    xs.append(np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
                    ys.append(label)
        if not xs:
            raise DataError(f"imagefolder: no images under {split}")
        if len({a.shape for a in xs}) != 1:
            raise DataError(f"imagefolder: images under {split} differ in size; resize them first")
        return np.stack(xs), np.asarray(ys, dtype=np.int64)

    x, y = read(root / "train")
    scaled = x.astype(np.float64) / 255
    mean = tuple(float(v) for v in scaled.mean(axis=(0, 2, 3)))
    std = tuple(float(v) for v in scaled.std(axis=(0, 2, 3)))
    return Dataset.from_numpy("imagefolder", (x, y), read(test_dir), classes, mean, std, x.shape[-1] >= 32)


def load_digits(path: str | Path | None = None) -> Dataset:
    """The embedded default: scikit-learn's 1,797 8×8 digits (shipped inside the package), split
    1,500 / 297 by a fixed permutation, scaled from 0..16 to 0..255."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    return Dataset.from_numpy("digits", (x[:1500], y[:1500]), (x[1500:], y[1500:]), [str(i) for i in range(10)],
                              (0.3,), (0.4,), False)


def load_synthetic(path: str | Path | None = None, n_train: int = 256, n_test: int = 64, size: int = 16,
                   channels: int = 3, classes: int = 4, seed: int = 0) -> Dataset:
    """Class-dependent colour blobs plus noise: learnable in a few steps, for tests."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(classes, channels, 1, 1, generator=g)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (n,), generator=g)
        x = centers[y] + 0.15 * torch.randn(n, channels, size, size, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    x, y = make(n_train)
    xt, yt = make(n_test)
    return Dataset("synthetic", x, y, xt, yt, [str(i) for i in range(classes)], (0.5,) * channels, (0.25,) * channels, False)


LOADERS: dict[str, Callable[..., Dataset]] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "stl10": load_stl10,
    "imagefolder": load_imagefolder,
    "digits": load_digits,
    "synthetic": load_synthetic,
}
NEEDS_PATH = {"cifar10", "cifar100", "svhn", "stl10", "imagefolder"}


def load_dataset(name: str, path: str | Path | None = None) -> Dataset:
    if name not in LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(sorted(LOADERS))}")
    if name in NEEDS_PATH and path is None:
        raise DataError(f"dataset {name} needs --data PATH")
    return LOADERS[name](path)
