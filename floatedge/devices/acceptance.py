"""Prove an engine: what is measured is what is deployed.

A bundle exported with `--acceptance N` carries N test images with labels, PGD-20 images per robust operating
point (crafted against the exported fp32 model at that point, stored float16), the exported fp32 model's own
accuracy on them, and its predictions (bundle.py, `acceptance` in the manifest). On the device, every calibrated
point of a width is run on the engine being proven, and it passes when

* clean accuracy is within `tolerance` points of the bundle's figure on the same images,
* accuracy on the fixed adversarial images is within `tolerance` points of the bundle's (robust points),
* the argmax agrees with the exported fp32 model's on at least `min_agreement` of all the images run at that
  point (clean and adversarial together).

Accuracies can agree while predictions swap, and fp16 can flip a few predictions without moving accuracy, so
both are checked. The figures compared are the bundle's figures on *these* images, not the eval table's (which
may come from more images): a 512-image subset moves accuracy by ±2 points on its own, which would drown a
1-point tolerance. The eval table's figure is reported beside it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from floatedge.bundle import Bundle, BundleError
from floatedge.oppoint import OperatingPoint

TOLERANCE_POINTS = 1.0
MIN_AGREEMENT = 0.99
BATCH = 64


@dataclass
class AcceptanceSet:
    """The arrays of a bundle's acceptance set, loaded without pickle and checked against the manifest."""

    images: np.ndarray  # float32 N×C×H×W in [0, 1]
    labels: np.ndarray  # int64 N
    predictions: np.ndarray  # int32 P×2×N
    points: list[dict]
    bundle: Bundle

    @property
    def n(self) -> int:
        return int(len(self.labels))

    @classmethod
    def load(cls, bundle: Bundle) -> AcceptanceSet:
        acc = bundle.acceptance
        if not acc:
            raise BundleError(f"{bundle.path}: no acceptance set (export with --acceptance N)")
        raw = bundle.read_array(acc["images"]["file"])
        labels = bundle.read_array(acc["labels"])
        preds = bundle.read_array(acc["predictions"])
        n, points = len(labels), acc["points"]
        shape = (n, *bundle.input_shape)
        problem = None
        if raw.shape != shape or str(raw.dtype) != acc["images"]["dtype"]:
            problem = f"images are {raw.dtype} {raw.shape}, the manifest says {acc['images']['dtype']} {shape}"
        elif labels.ndim != 1 or labels.dtype.kind not in "iu":
            problem = f"labels are {labels.dtype} {labels.shape}"
        elif preds.shape != (len(points), 2, n) or preds.dtype.kind not in "iu":
            problem = f"predictions are {preds.dtype} {preds.shape}, expected {(len(points), 2, n)}"
        if problem:
            raise BundleError(f"{bundle.path}: malformed acceptance set: {problem}")
        images = raw.astype(np.float32) / 255.0 if raw.dtype == np.uint8 else raw.astype(np.float32)
        return cls(np.ascontiguousarray(images), labels.astype(np.int64), preds, list(points), bundle)

    def adversarial(self, i: int) -> np.ndarray | None:
        name = self.points[i].get("adversarial")
        if not name:
            return None
        arr = self.bundle.read_array(name)
        if arr.shape != self.images.shape:
            raise BundleError(f"{self.bundle.path}: {name} has shape {arr.shape}, expected {self.images.shape}")
        return np.ascontiguousarray(arr.astype(np.float32))

    def indices(self, width: float) -> list[int]:
        return [i for i, p in enumerate(self.points) if float(p["width"]) == float(width)]

    def first_point(self, width: float) -> OperatingPoint:
        idx = self.indices(width)
        p = self.points[idx[0]] if idx else {"lambda_n": 0.0, "lambda_th": self.bundle.lambda_th}
        return OperatingPoint(float(p["lambda_n"]), float(width), float(p["lambda_th"]))


def predict(model: Any, images: np.ndarray) -> np.ndarray:
    """argmax of the runtime's logits, in batches its input spec takes."""
    cap = model.input_spec.max_batch or BATCH
    step = max(1, min(BATCH, cap))
    return np.concatenate([model.infer(images[i:i + step]).argmax(1) for i in range(0, len(images), step)])


def _gap(name: str, got: float, ref: float, tolerance: float) -> str | None:
    delta = 100 * (got - ref)
    if abs(delta) <= tolerance + 1e-9:
        return None
    return f"{name} {100 * got:.2f}% vs the bundle's {100 * ref:.2f}% ({delta:+.2f} points, tolerance {tolerance:g})"


def check(model: Any, aset: AcceptanceSet, width: float, precision: str, tolerance: float = TOLERANCE_POINTS,
          min_agreement: float = MIN_AGREEMENT) -> list[dict]:
    """Run every acceptance point of `width` on `model` (a runtime Backend holding the engine under test)."""
    out = []
    table = {(float(r["width"]), float(r["lambda_n"]), float(r["lambda_th"])): r for r in aset.bundle.table()}
    for i in aset.indices(width):
        p = aset.points[i]
        model.set_operating_point(lambda_n=float(p["lambda_n"]), width=float(width), lambda_th=float(p["lambda_th"]))
        clean = predict(model, aset.images)
        agree = [clean == aset.predictions[i, 0]]
        clean_acc = float((clean == aset.labels).mean())
        failures = [f for f in [_gap("clean accuracy", clean_acc, float(p["clean_acc"]), tolerance)] if f]
        adv_acc = None
        adv = aset.adversarial(i)
        if adv is not None:
            adv_pred = predict(model, adv)
            agree.append(adv_pred == aset.predictions[i, 1])
            adv_acc = float((adv_pred == aset.labels).mean())
            gap = _gap("adversarial accuracy", adv_acc, float(p["adv_acc"]), tolerance)
            failures += [gap] if gap else []
        agreement = float(np.concatenate(agree).mean())
        if agreement < min_agreement:
            failures.append(f"argmax agrees with fp32 on {100 * agreement:.2f}% of images "
                            f"(needs ≥ {100 * min_agreement:g}%)")
        row = table.get((float(width), float(p["lambda_n"]), float(p["lambda_th"])), {})
        out.append({"width": float(width), "lambda_n": float(p["lambda_n"]), "lambda_th": float(p["lambda_th"]),
                    "precision": precision, "clean_acc": clean_acc, "ref_clean_acc": float(p["clean_acc"]),
                    "adv_acc": adv_acc, "ref_adv_acc": p.get("adv_acc"), "agreement": agreement,
                    "table_clean_acc": row.get("clean_acc"), "passed": not failures, "failures": failures})
    return out


def describe(r: Mapping[str, Any]) -> str:
    """One line of a point's result, as `floatedge build` prints it."""
    adv = "" if r["adv_acc"] is None else f", adversarial {100 * r['adv_acc']:.2f}% (bundle {100 * r['ref_adv_acc']:.2f}%)"
    verdict = "ok" if r["passed"] else "FAIL: " + "; ".join(r["failures"])
    return (f"{r['precision']} width {r['width']:g} λ_n {r['lambda_n']:g}: clean {100 * r['clean_acc']:.2f}% "
            f"(bundle {100 * r['ref_clean_acc']:.2f}%){adv}, agreement {100 * r['agreement']:.2f}% — {verdict}")


def calibrated_points(bundle: Bundle) -> list[OperatingPoint]:
    """The operating points a device runs and profiles: the acceptance set's, else the table's rows at the bundle's
    λ_th, else λ_n 0 and 1 per width; widest first, then by λ_n."""
    th = bundle.lambda_th
    if bundle.acceptance:
        pairs = {(float(p["width"]), float(p["lambda_n"]), float(p["lambda_th"])) for p in bundle.acceptance["points"]}
    else:
        pairs = {(float(r["width"]), float(r["lambda_n"]), float(r["lambda_th"])) for r in bundle.table()
                 if float(r["lambda_th"]) == th}
    if not pairs:
        lams = (0.0, 1.0) if bundle.manifest.get("alphas") or bundle.kind == "oat" else (0.0,)
        pairs = {(w, lam, th) for w in bundle.widths for lam in lams}
    return [OperatingPoint(lam, w, t) for w, lam, t in sorted(pairs, key=lambda p: (-p[0], p[1], p[2]))]
