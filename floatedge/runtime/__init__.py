"""floatedge.runtime: run a bundle, switch its operating point under load. Importable without torch.

    import floatedge.runtime as rt
    with rt.open("model.febundle") as model:           # ONNX Runtime, mode chosen by measurement
        logits = model.infer(images)                     # float32 N×C×H×W in [0, 1]
        model.set_operating_point(lambda_n=0.7, width=0.5, reason="slo")   # in effect at once
        result = model.run(images)                       # .logits and the .point it ran at
        one = model.run(images, point={"lambda_n": 1.0})  # this request only; the current point stays
        model.add_observer(metrics)                      # .on_request/.on_switch/.on_swap(event)

Backends (`backend=`): "onnxruntime" (the default; CPU, CUDA and TensorRT execution providers) and
"tensorrt" (native TensorRT 8.5/8.6/10.x, needs tensorrt and cuda-python or pycuda). See docs/runtime.md.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from floatedge.oppoint import OperatingPoint, OperatingPointError

from .base import MODES, Backend, ClosedError, InputError, InputSpec, Result
from .observe import RequestEvent, SwapEvent, SwitchEvent

BACKENDS = ("onnxruntime", "tensorrt")


def available_backends() -> list[str]:
    """Backends whose libraries import here (without importing them)."""
    out = []
    if importlib.util.find_spec("onnxruntime"):
        out.append("onnxruntime")
    if importlib.util.find_spec("tensorrt"):
        out.append("tensorrt")
    return out


def open(bundle: Any, backend: str = "auto", **options: Any) -> Backend:  # noqa: A001 - the API the issue names
    """Open a bundle (path or `floatedge.bundle.Bundle`) on a backend.

    backend: "auto" (= "onnxruntime", the embedded default; it already picks the CUDA/TensorRT execution
    providers when present), "onnxruntime"/"ort", or "tensorrt"/"trt".
    options: mode ("auto" | "in-graph" | "materialised"), point (an OperatingPoint to start at),
    threads, concurrency, providers (ORT), check_finite, check_range, cache_size, verify (bundle
    checksums), bridge (ORT: instant switches through warm in-graph sessions, default on), and for
    TensorRT precision, cache_dir, max_batch.
    """
    if isinstance(bundle, (str, Path)) and not Path(bundle).exists():
        raise FileNotFoundError(f"no bundle at {bundle}")
    name = {"auto": "onnxruntime", "ort": "onnxruntime", "trt": "tensorrt"}.get(backend, backend)
    if name == "onnxruntime":
        from .onnxrt import OnnxRuntimeBackend

        return OnnxRuntimeBackend(bundle, **options)
    if name == "tensorrt":
        from .trt import TensorRTBackend

        return TensorRTBackend(bundle, **options)
    raise ValueError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")


__all__ = ["open", "available_backends", "Backend", "InputSpec", "InputError", "ClosedError", "Result",
           "OperatingPoint", "OperatingPointError", "RequestEvent", "SwitchEvent", "SwapEvent", "MODES", "BACKENDS"]
