"""The native TensorRT backend (8.5, 8.6, 10.x, 11.x): one engine per width, refit for λ_n, shared activations.

Design (edge.md §1):
* **materialised** (the refit mode): per width, two refittable engines built from the static form
  (`BuilderFlag.REFIT`). A λ_n change refits the *standby* engine of the target width to the new
  point's weights on the builder thread while the active one serves, then the base class swaps the
  reference. TensorRT ≥ 10: `OnnxParserRefitter.refit_from_bytes(static model)` (10.0, IParserRefitter),
  which redoes the parser's own weight transforms (BN folded into a Scale layer) and
  `refit_cuda_engine_async` on a private stream ("contexts survive refitCudaEngineAsync", NvInferRuntime.h
  release/10.3). TensorRT 8.5/8.6: `Refitter.set_named_weights` for conv/linear weights (the parser keeps
  ONNX initializer names) and `set_weights(layer, SCALE/SHIFT)` with BN folded as the parser folds it,
  then whatever `get_missing_weights()` still asks for (fused groups), then `refit_cuda_engine()`.
* **in-graph** (TRT ≥ 8.5 only: tensor conv weights, NvInfer.h "Input 1 is the kernel tensor"): one
  engine per width from the runtime-scalable model, λ_n a device scalar written before each call.
  Costs the weight computation and padFilterWeights per inference (NVIDIA/TensorRT#3740).
* **activation memory shared** across every engine: contexts are created without device memory and all
  point at one buffer of the largest `device_memory_size` (NVIDIA/TensorRT#3276). Engines therefore run
  one at a time, on one stream, under one lock — which a single Jetson GPU does anyway.
* IO through `set_tensor_address` + `execute_async_v3` (8.5+; `samples/python/common_runtime.py`),
  buffers through cuda-python or pycuda (`cuda.py`).
* fp16: `BuilderFlag.FP16` up to 10.x; 11.x has no such flag (strongly typed only), so there the network itself
  is made fp16 (`common.fp16_model`) and refits hand it fp16 weights.

Every TensorRT call here is checked, per version (8.6.1, 10.3, newest 10.x and 11.x), against the real bindings'
signatures by tests/test_trt_conformance.py; where versions differ, `TrtApi` decides, never a hasattr probe.

A request that picked an engine whose weights were replaced since sees a generation mismatch under the
lock, raises `Stale`, and the base class reruns it on the current engine: never half-switched weights.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from floatedge.bundle import INPUT, LAMBDA, OUTPUT, Bundle, open_bundle
from floatedge.graph.scalable import initializer_arrays
from floatedge.graph.static import freeze, load_scalable
from floatedge.oppoint import OperatingPoint, equivalent_lambda

from ..base import Backend, InputSpec, Stale
from .common import EngineKey, TrtApi, bn_layers, bn_scale_shift, complete_refit, fp16_model, refit_plan
from .cuda import load_cuda
from .loader import build_plan, load_engine


class _Slot:
    """One engine instance with its context; `generation` changes whenever its weights do."""

    def __init__(self, engine: Any, context: Any, width: float, kind: str) -> None:
        self.engine, self.context, self.width, self.kind = engine, context, width, kind
        self.generation = 0
        self.key: tuple | None = None  # OperatingPoint.effective() of the weights it holds
        self.weights: dict[str, np.ndarray] | None = None  # what was last set (8.x diffing)
        self.used = 0.0


class _Exe:
    __slots__ = ("backend", "slot", "generation", "lam")

    def __init__(self, backend: TensorRTBackend, slot: _Slot, lam: float | None = None) -> None:
        self.backend, self.slot, self.generation = backend, slot, slot.generation
        self.lam = None if lam is None else np.float32(lam)

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.backend._execute(self, images)

    def alive(self) -> bool:
        return self.slot.generation == self.generation


class TensorRTBackend(Backend):
    """A bundle run by TensorRT directly. Options as `floatedge.runtime.open`, plus precision ("fp16",
    "fp32"), max_batch / opt_batch (the one optimization profile), cache_dir (engine plans), workspace_mb,
    identity ({'device': part number, 'l4t': release} of the Jetson, from `floatedge.devices.identity.
    jetson_identity`; it keys the engine cache, and without it plans are keyed by the host name).

    engines ({'<width>/<kind>': plan path}, what `floatedge build` made: floatedge/devices/engines.py, which keys,
    checksums and proves them): open exactly those plans and never build; a plan that does not deserialize is an
    error naming it. Without `engines` the plans are built on first use into `cache_dir` (development only)."""

    name = "tensorrt"

    def __init__(self, bundle: str | Path | Bundle, *, mode: str = "auto", point: OperatingPoint | None = None,
                 precision: str = "fp16", max_batch: int = 32, opt_batch: int = 8, cache_dir: str | Path | None = None,
                 workspace_mb: int = 256, check_finite: bool = True, check_range: bool = True, cache_size: int = 8,
                 verify: bool = True, engines: Mapping[str, str | Path] | None = None,
                 cuda: tuple[str, ...] | Any | None = None, identity: Mapping[str, str] | None = None) -> None:
        import tensorrt as trt

        self.trt = trt
        self.api = TrtApi.for_version(trt.__version__)
        if not self.api.supported:
            raise RuntimeError(f"TensorRT {trt.__version__} is older than 8.5 (no set_tensor_address/"
                               "execute_async_v3); use backend='onnxruntime'")
        self.modes = ("in-graph", "materialised") if self.api.tensor_weights_conv else ("materialised",)
        self.engines = None if engines is None else {str(k): Path(v) for k, v in engines.items()}
        if self.engines is not None:  # the modes whose engines were built
            self.modes = tuple(m for m in self.modes if any(k.endswith(f"/{m}") for k in self.engines)) or self.modes
        self.bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle, verify=verify)
        # one request at a time (one stream, one context): the base class's FIFO gate orders them, so the
        # exec lock below only arbitrates between a request and a refit
        super().__init__(self.bundle.widths, self.bundle.lambda_th, cache_size=cache_size, concurrency=1)
        if precision not in ("fp16", "fp32"):
            raise ValueError(f"precision must be fp16 or fp32, got {precision!r}")
        self.precision, self.max_batch, self.opt_batch = precision, int(max_batch), int(min(opt_batch, max_batch))
        self.workspace_mb, self.check_finite = int(workspace_mb), check_finite
        value_range = self.bundle.manifest["input"].get("range") if check_range else None
        self.value_range = tuple(float(v) for v in value_range) if value_range else None  # see InputSpec
        default_cache = os.environ.get("FLOATEDGE_ENGINE_CACHE", "~/.cache/floatedge/engines")
        self.cache_dir = Path(cache_dir or default_cache).expanduser()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        # `cuda`: binding names to try in order, or an object with the `cuda.py` interface
        self.cuda = load_cuda(cuda or self.api.cuda_modules) if cuda is None or isinstance(cuda, tuple) else cuda
        # the device the engines are built for ({'device': part number, 'l4t': release}); the caller reads it
        # (floatedge.devices.identity.jetson_identity) and passes it in: the runtime never imports devices/
        self.identity = {"device": "", "l4t": "", **(identity or {})}
        self.chw = tuple(int(v) for v in self.bundle.input_shape)
        self.classes = len(self.bundle.classes)
        self._exec_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._slots: dict[tuple[float, str], list[_Slot]] = {}
        self._models: dict[float, tuple[onnx.ModelProto, dict]] = {}
        self.built: list[str] = []
        self._scratch, self._scratch_size = 0, 0
        self.cuda.push()
        try:
            self.stream = self.cuda.stream()
            self.refit_stream = self.cuda.stream()
            n_in = self.max_batch * int(np.prod(self.chw))
            self.h_in, self._h_in_ptr = self.cuda.host_empty(n_in, np.float32)
            self.h_out, self._h_out_ptr = self.cuda.host_empty(self.max_batch * self.classes, np.float32)
            self.h_lam, self._h_lam_ptr = self.cuda.host_empty(1, np.float32)
            self.d_in = self.cuda.malloc(n_in * 4)
            self.d_out = self.cuda.malloc(self.max_batch * self.classes * 4)
            self.d_lam = self.cuda.malloc(4)
        finally:
            self.cuda.pop()
        self._start(point or OperatingPoint(0.0, self.widths[0], self.bundle.lambda_th), mode)

    # -- engines
    @contextmanager
    def _cuda_context(self):
        """The device context current in this thread for TensorRT and CUDA calls (pycuda contexts are per
        thread; cuda-python's runtime API needs nothing)."""
        self.cuda.push()
        try:
            yield
        finally:
            self.cuda.pop()

    def _model(self, width: float) -> tuple[onnx.ModelProto, dict]:
        if width not in self._models:
            self._models[width] = load_scalable(self.bundle, width)
        return self._models[width]

    def _engine_key(self, width: float, kind: str) -> EngineKey:
        entry = self.bundle.model_entry(width)
        return EngineKey(onnx_sha256=self.bundle.manifest["files"][entry["file"]]["sha256"], kind=kind, width=width,
                         trt_version=self.trt.__version__, precision=self.precision,
                         flags=("refit",) if kind == "materialised" else (),
                         batch=(1, self.opt_batch, self.max_batch), device=self.identity["device"] or self._gpu_name(),
                         l4t=self.identity["l4t"], workspace_mb=self.workspace_mb)

    def _gpu_name(self) -> str:
        try:
            import platform

            return f"{platform.machine()}-{platform.node()}"  # off-Jetson: the host (plans are per GPU)
        except Exception:  # noqa: BLE001
            return "unknown"

    def _typed(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The network in the precision asked for, where TensorRT takes precision from types (11.x: no
        BuilderFlag.FP16); elsewhere unchanged (the builder flag does it, loader.build_plan)."""
        return fp16_model(model) if self.api.strongly_typed and self.precision == "fp16" else model

    def _slots_for(self, width: float, kind: str) -> list[_Slot]:
        """The engine instances of (width, kind), loaded or built on first use: two refittable ones
        (active + standby) for materialised, one for in-graph."""
        with self._load_lock:
            if (width, kind) in self._slots:
                return self._slots[(width, kind)]
            model, entry = self._model(width)
            key = self._engine_key(width, kind)

            def build() -> bytes:
                src = model
                if kind == "materialised":  # any point: the engine is refit before first use
                    src = freeze(model, entry, OperatingPoint(0.0, width, self.bundle.lambda_th))
                src = self._typed(src)
                return build_plan(self.trt, self.api, src.SerializeToString(), key, INPUT, self.chw, self.logger,
                                  self.cache_dir / f"timing.trt{self.trt.__version__}.{key.device}.cache")

            path = self.cache_dir / key.filename()
            if self.engines is not None:  # built and checked by `floatedge build`: opened, never built here
                path = self.engines.get(f"{width:g}/{kind}")  # type: ignore[assignment]
                if path is None:
                    raise RuntimeError(f"no {kind} engine of width {width:g} was given; run floatedge build")
                build = None  # type: ignore[assignment]
            with self._cuda_context():
                engine, built = load_engine(self.trt, self.runtime, path, build)
                engines = [engine]
                if kind == "materialised":  # a second instance of the same plan: the standby to refit
                    engines.append(self.runtime.deserialize_cuda_engine(path.read_bytes()))
                slots = [self._new_slot(e, width, kind) for e in engines]
            if built:
                self.built.append(path.name)
            self._slots[(width, kind)] = slots
            return slots

    def _new_slot(self, engine: Any, width: float, kind: str) -> _Slot:
        if self.api.user_managed_context == "strategy":
            context = engine.create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        else:
            context = engine.create_execution_context_without_device_memory()
        slot = _Slot(engine, context, width, kind)
        with self._exec_lock:
            need = int(getattr(engine, self.api.device_memory_size_attr))
            if need > self._scratch_size:  # grow the shared buffer and re-point every context
                if self._scratch:
                    self.cuda.free(self._scratch)
                self._scratch, self._scratch_size = self.cuda.malloc(need), need
                for s in (x for v in self._slots.values() for x in v):
                    self._bind_memory(s.context)
            self._bind_memory(context)
            context.set_tensor_address(INPUT, self.d_in)
            context.set_tensor_address(OUTPUT, self.d_out)
            if kind == "in-graph":
                context.set_tensor_address(LAMBDA, self.d_lam)
        return slot

    def _bind_memory(self, context: Any) -> None:
        if self.api.set_device_memory == "set_device_memory":
            context.set_device_memory(self._scratch, self._scratch_size)
        else:
            context.device_memory = self._scratch

    # -- refit
    def _refit(self, slot: _Slot, point: OperatingPoint) -> None:
        with self._cuda_context():
            self._refit_in_context(slot, point)

    def _refit_in_context(self, slot: _Slot, point: OperatingPoint) -> None:
        trt = self.trt
        model, entry = self._model(point.width)
        refitter = trt.Refitter(slot.engine, self.logger)
        keep: list[Any] = []  # weights must outlive refit_cuda_engine (pyCore.cpp: keep_alive on set_*_weights)
        static = freeze(model, entry, point)  # the point's constant-weight graph, made once per refit
        if self.api.parser_refitter:  # 10.0+, with refit_cuda_engine_async (the same release)
            parser_refitter = trt.OnnxParserRefitter(refitter, self.logger)
            static = self._typed(static)  # an fp16 strongly typed engine takes fp16 weights
            if not parser_refitter.refit_from_bytes(static.SerializeToString()):
                errors = "; ".join(str(parser_refitter.get_error(i)) for i in range(parser_refitter.num_errors))
                raise RuntimeError(f"TensorRT refit from the static form failed: {errors}")
            ok = refitter.refit_cuda_engine_async(self.refit_stream)
            self.cuda.sync(self.refit_stream)
        else:
            target = initializer_arrays(static)  # = refit_weights(bundle, point), without re-reading the bundle
            names = set(refitter.get_all_weights())
            plan = refit_plan(target, names, slot.weights)
            for name, arr in plan.items():
                keep.append(arr)
                self._set(refitter.set_named_weights(name, arr), name)
            layers, roles = refitter.get_all()
            settable = set(zip(layers, [str(r) for r in roles], strict=True))
            for node, (g, b, m, v), eps in bn_layers(static):
                scale, shift = bn_scale_shift(target[g], target[b], target[m], target[v], eps)
                for role, arr in ((trt.WeightsRole.SCALE, scale), (trt.WeightsRole.SHIFT, shift)):
                    if (node, str(role)) in settable:
                        keep.append(arr)
                        self._set(refitter.set_weights(node, role, arr), f"{node} {role}")
            extra = complete_refit(list(refitter.get_missing_weights()), target, plan)
            for name, arr in extra.items():
                keep.append(arr)
                self._set(refitter.set_named_weights(name, arr), name)
            missing_layers, _ = refitter.get_missing()
            if len(missing_layers):
                raise RuntimeError(f"TensorRT still misses weights of layers {list(missing_layers)[:5]} after refit")
            ok = refitter.refit_cuda_engine()
            slot.weights = target
        if not ok:
            raise RuntimeError(f"TensorRT refit to {point} failed")

    @staticmethod
    def _set(ok: bool, what: str) -> None:
        """Refitter setters return False (and log) for a name the engine lacks or weights of another count or
        type (NvInferRuntime.h): a refit that went on would keep the old values there, silently."""
        if not ok:
            raise RuntimeError(f"TensorRT refused the refit weights of {what} (unknown, or another count or type)")

    # -- backend hooks
    def _prepare(self, point: OperatingPoint, mode: str) -> _Exe:
        if mode == "in-graph":
            slot = self._slots_for(point.width, "in-graph")[0]
            return _Exe(self, slot, equivalent_lambda(point, self.bundle.lambda_th))
        slots = self._slots_for(point.width, "materialised")
        key = point.effective()
        for s in slots:
            if s.key == key:
                return _Exe(self, s)
        active = self._active.exe.slot if self._active is not None else None
        victim = min((s for s in slots if s is not active), key=lambda s: s.used)
        with self._exec_lock:  # requests still holding the victim see the new generation and retry
            victim.generation += 1
            victim.key = None
        self._refit(victim, point)
        victim.key = key
        return _Exe(self, victim)

    def _execute(self, exe: _Exe, images: np.ndarray) -> np.ndarray:
        n = images.shape[0]
        out_n = n * self.classes
        cuda = self.cuda
        with self._exec_lock:
            slot = exe.slot
            if slot.generation != exe.generation:
                raise Stale
            slot.used = time.monotonic()
            cuda.push()
            try:
                np.copyto(self.h_in[: images.size], images.reshape(-1))
                cuda.h2d(self.d_in, self.h_in, images.nbytes, self.stream)
                if exe.lam is not None:
                    self.h_lam[0] = exe.lam
                    cuda.h2d(self.d_lam, self.h_lam, 4, self.stream)
                slot.context.set_input_shape(INPUT, tuple(images.shape))
                if not slot.context.execute_async_v3(self.stream):
                    raise RuntimeError("TensorRT execute_async_v3 failed")
                cuda.d2h(self.h_out, self.d_out, out_n * 4, self.stream)
                cuda.sync(self.stream)
                return self.h_out[:out_n].reshape(n, self.classes).copy()
            finally:
                cuda.pop()

    def check_point(self, point: OperatingPoint) -> OperatingPoint:
        """The bundle's own rule (width present; an OAT bundle refuses λ_th ≠ 0), in every mode."""
        return self.bundle.check_point(point)

    def _input_spec(self) -> InputSpec:
        c, h, w = self.chw
        return InputSpec(INPUT, c, h, w, max_batch=self.max_batch, check_finite=self.check_finite,
                         value_range=self.value_range)

    def operating_points(self) -> list[dict]:
        return self.bundle.table()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"bundle": str(self.bundle.path), "tensorrt": self.trt.__version__, "cuda_binding": self.cuda.name,
                  "precision": self.precision, "device": self.identity, "engine_cache": str(self.cache_dir),
                  "engines_built": list(self.built), "shared_activation_bytes": self._scratch_size,
                  "engine_instances": {f"{w:g}/{k}": len(v) for (w, k), v in self._slots.items()}})
        return d

    def _close(self) -> None:
        with self._exec_lock:
            self._slots.clear()
            self.cuda.push()
            try:
                for ptr in (self.d_in, self.d_out, self.d_lam, self._scratch):
                    if ptr:
                        self.cuda.free(ptr)
                for ptr in (self._h_in_ptr, self._h_out_ptr, self._h_lam_ptr):
                    self.cuda.free_host(ptr)
                self.cuda.destroy_stream(self.stream)
                self.cuda.destroy_stream(self.refit_stream)
            finally:
                self.cuda.pop()
            self._scratch = 0
