"""`floatedge verify`: is this bundle intact, valid ONNX, and does it compute what the trained model does?

Checks, in order: schema version and every checksum (`open_bundle`; a failure here is a BundleError,
one line); `onnx.checker` with full shape inference on every model; then, at each λ_n of
`VERIFY_LAMBDAS` and every width, max |Δlogits| between

* the static form (`freeze`) and the runtime-scalable model, both in ONNX Runtime — always;
* ONNX Runtime and PyTorch (`load_model` of the run) — only with `run_dir`, as the device has no torch.

Images are seeded uniform noise in [0, 1]: parity is about arithmetic, not accuracy, and noise images
exercise every channel. Torch is imported only when `run_dir` is given.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from floatedge.bundle import (
    INPUT,
    LAMBDA,
    OUTPUT,
    PARITY_TOL,
    VERIFY_LAMBDAS,
    Bundle,
    BundleError,
    FileStatus,
    open_bundle,
    sha256_file,
)
from floatedge.graph.static import freeze
from floatedge.oppoint import OperatingPoint


@dataclass
class ParityRow:
    width: float
    lambda_n: float
    static_delta: float  # static form vs runtime-scalable, both ONNX Runtime
    torch_delta: float | None = None  # ONNX Runtime vs PyTorch (None: not checked)


@dataclass
class VerifyReport:
    path: Path
    files: list[FileStatus]
    checker: dict[float, str | None]  # width → None if onnx.checker passed, else its first line
    parity: list[ParityRow] = field(default_factory=list)
    tol: float = PARITY_TOL
    torch_checked: bool = False
    n_images: int = 0

    def failures(self) -> list[str]:
        out = [st.message() for st in self.files if not st.ok]
        out += [f"onnx.checker failed on width {w:g}: {err}" for w, err in self.checker.items() if err]
        for r in self.parity:
            if not r.static_delta <= self.tol:
                out.append(f"static form differs from the scalable model at width {r.width:g}, λ_n={r.lambda_n:g}: "
                           f"max |Δlogits| {r.static_delta:.3g} > {self.tol:g}")
            if r.torch_delta is not None and not r.torch_delta <= self.tol:
                out.append(f"ONNX Runtime differs from PyTorch at width {r.width:g}, λ_n={r.lambda_n:g}: "
                           f"max |Δlogits| {r.torch_delta:.3g} > {self.tol:g}")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()

    def max_delta(self, which: str = "torch") -> float | None:
        vals = [r.torch_delta if which == "torch" else r.static_delta for r in self.parity]
        vals = [v for v in vals if v is not None]
        return max(vals) if vals else None


def ort_session(model: bytes | onnx.ModelProto, threads: int = 1):
    """A CPU ONNX Runtime session (`threads` intra-op threads: parity, not speed)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def run_scalable(session, images: np.ndarray, lambda_n: float) -> np.ndarray:
    return session.run([OUTPUT], {INPUT: images, LAMBDA: np.array(lambda_n, dtype=np.float32)})[0]


def images_for(input_shape: Sequence[int], n: int = 8, seed: int = 0) -> np.ndarray:
    """The parity images: seeded uniform noise in [0, 1), N×C×H×W float32 (export and verify use the same)."""
    return np.random.default_rng(seed).random((n, *input_shape), dtype=np.float32)


def parity_images(bundle: Bundle, n: int = 8, seed: int = 0) -> np.ndarray:
    return images_for(bundle.input_shape, n, seed)


def _checker(model: onnx.ModelProto) -> str | None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError; either is a finding, not a crash
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def _torch_outputs(bundle: Bundle, run_dir: str | Path, images: np.ndarray,
                   lambdas: Sequence[float]) -> dict[tuple[float, float], np.ndarray]:
    import torch

    from floatedge.train.trainer import CHECKPOINT, load_model

    run_dir = Path(run_dir)
    want = bundle.manifest["provenance"].get("checkpoint_sha256")
    ckpt_path = run_dir / CHECKPOINT
    if ckpt_path.exists() and want:
        have = sha256_file(ckpt_path)
        if have != want:
            raise BundleError(f"{run_dir} is not the run {bundle.path} was exported from "
                              f"(checkpoint sha256 {have[:12]}…, bundle records {want[:12]}…)")
    model, _, _ = load_model(run_dir)
    x = torch.from_numpy(images)
    out = {}
    with torch.no_grad():
        for w in bundle.widths:
            for lam in lambdas:
                model.set_operating_point(bundle.operating_point(lam, w))
                out[(w, lam)] = model(x).numpy()
    return out


def verify_bundle(path: str | Path, run_dir: str | Path | None = None, lambdas: Sequence[float] = VERIFY_LAMBDAS,
                  tol: float = PARITY_TOL, n_images: int = 8, seed: int = 0, threads: int = 1) -> VerifyReport:
    """Verify the bundle at `path`; BundleError if it cannot even be opened (schema, checksums)."""
    bundle = open_bundle(path)
    report = VerifyReport(bundle.path, bundle.check_files(), {}, tol=tol, n_images=n_images)
    images = parity_images(bundle, n_images, seed)
    reference = _torch_outputs(bundle, run_dir, images, lambdas) if run_dir is not None else {}
    report.torch_checked = run_dir is not None
    for w in bundle.widths:
        entry = bundle.model_entry(w)
        model = onnx.load_from_string(bundle.read(entry["file"]))
        report.checker[w] = _checker(model)
        scalable = ort_session(model, threads)
        for lam in lambdas:
            op: OperatingPoint = bundle.operating_point(lam, w)
            got = run_scalable(scalable, images, lam)
            frozen = ort_session(freeze(model, entry, op), threads).run([OUTPUT], {INPUT: images})[0]
            row = ParityRow(w, lam, float(np.abs(frozen - got).max()))
            if reference:
                row.torch_delta = float(np.abs(reference[(w, lam)] - got).max())
            report.parity.append(row)
    return report
