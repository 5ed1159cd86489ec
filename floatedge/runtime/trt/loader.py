"""Getting TensorRT engines: build from ONNX, cache on disk by `EngineKey`, deserialize.

Fleet practice (edge.md §3): ship ONNX, build on the device, cache keyed by device/TRT/precision; a
plan that fails to deserialize (TRT upgrade: "Version tag does not match", edge.md §1.4) is rebuilt,
never trusted. Builder calls per TRT `python/src/infer/pyCore.cpp` and `samples/python/common.py`
(release/8.5, 8.6, 10.3); only the calls common to 8.5–10.x are used, with `TrtApi` choosing where
they differ.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from floatedge.fsutil import atomic_write

from .common import EngineKey, TrtApi


def build_plan(trt: Any, api: TrtApi, onnx_bytes: bytes, key: EngineKey, input_name: str,
               chw: tuple[int, int, int], logger: Any, timing_cache: Path | None = None,
               configure: Callable[[Any], None] | None = None) -> bytes:
    """Parse `onnx_bytes` and build a serialized engine with the key's precision, flags and batch profile.

    Keyword names are the bindings' own (pyCore.cpp; checked against the real 8.6.1–11.x bindings by
    tests/test_trt_conformance.py): `set_memory_pool_limit(pool, pool_size)`, `set_timing_cache(cache,
    ignore_mismatch)`, `set_shape(input, min, opt, max)`."""
    builder = trt.Builder(logger)
    flags = (1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)) if api.explicit_batch_flag else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT {api.version} could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, key.workspace_mb << 20)  # 8.4+
    if key.precision == "fp16" and not api.strongly_typed:
        # 8.x/10.x: fp16 kernels allowed by a flag. 11.x has no BuilderFlag.FP16 (strongly typed only): there
        # the caller hands an fp16 network (common.fp16_model) and the types say it all.
        config.set_flag(trt.BuilderFlag.FP16)
    if "refit" in key.flags:
        # Refittable engines allow one optimization profile (NvInfer.h, release/8.5 and 10.3) — one it is.
        config.set_flag(trt.BuilderFlag.REFIT)
    if configure is not None:  # the caller's own settings (floatedge build: DLA core, GPU fallback)
        configure(config)
    profile = builder.create_optimization_profile()
    lo, opt, hi = key.batch
    profile.set_shape(input_name, (lo, *chw), (opt, *chw), (hi, *chw))
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT {api.version} failed to build the {key.kind} engine for width {key.width:g}")
    if cache is not None:
        data = bytes(config.get_timing_cache().serialize())
        atomic_write(timing_cache, lambda f: f.write(data))
    return bytes(plan)


def load_engine(trt: Any, runtime: Any, path: Path, build: Any) -> tuple[Any, bool]:
    """(engine, built): deserialize the cached plan at `path`, or build, cache and deserialize. `build` None:
    the plan must deserialize (it came from `floatedge build`), else RuntimeError naming it."""
    if path.exists():
        try:
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
        except Exception:  # noqa: BLE001 - a stale plan is rebuilt, whatever TensorRT says about it
            engine = None
        if engine is not None:
            return engine, False
    if build is None:
        raise RuntimeError(f"TensorRT {getattr(trt, '__version__', '?')} cannot open the engine {path}: "
                           "rebuild it with floatedge build")
    plan = build()
    atomic_write(path, lambda f: f.write(plan))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise RuntimeError(f"TensorRT could not deserialize the engine it just built ({path.name})")
    return engine, True
