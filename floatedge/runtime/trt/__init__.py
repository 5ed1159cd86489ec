"""The native TensorRT backend (Polygraphy layout: `loader.py` gets engines, `runner.py` runs them).

`common.py` is pure Python (version table, engine cache keys, refit plans) and imports anywhere;
`TensorRTBackend` imports tensorrt, so it is loaded only when asked for.
"""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "TensorRTBackend":
        try:
            import tensorrt  # noqa: F401
        except ImportError as exc:
            raise ImportError("the tensorrt backend needs TensorRT 8.5+ (JetPack 5+) and cuda-python or pycuda; "
                              f"use backend='onnxruntime' here ({exc})") from None
        from .runner import TensorRTBackend

        return TensorRTBackend
    raise AttributeError(name)
