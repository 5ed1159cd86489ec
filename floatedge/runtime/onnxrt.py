"""The ONNX Runtime backend: the embedded default.

Two executables per operating point (the `mode`s of `base.Backend`):

* **in-graph** — the bundle's runtime-scalable model, one session per width; λ_n is fed as the
  `lambda_n` input on every call. Switching λ is free; every call recomputes `W + s·α·η` and selects
  the BN set, and ORT cannot fold BN into conv or pre-pack weights that are not constants.
* **materialised** — the static form of the point (`floatedge.graph.static`), weights as constants, so
  ORT fuses conv+BN and pre-packs as for any plain network. A switch builds a session for the new point
  on the builder thread. The graph of a width is serialized once with its point-dependent initializers
  marked external, and each point's values are passed from memory with
  `SessionOptions.add_external_initializers` (OrtApi::AddExternalInitializers, ORT ≥ 1.12: "Replace
  initialized Tensors with external data with the data provided in initializers … before any of the
  optimizations take place", https://onnxruntime.ai/docs/api/c/struct_ort_api-members.html). Why: the
  session constructor parses the model proto while holding the GIL (measured here: a 70 MB model
  stalled other Python threads for 40–130 ms; the same model with its weights passed this way, 3 ms),
  and requests in flight during a switch must not stall.

Providers: TensorRT and CUDA execution providers first when this onnxruntime build has them, CPU last
(edge.md §5; https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html). Outputs
come back to host memory as numpy arrays either way, so plain `run()` is used; IOBinding
(https://onnxruntime.ai/docs/performance/tune-performance/iobinding.html) would only pay off if logits
stayed on the device.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from onnx.external_data_helper import set_external_data

from floatedge.bundle import INPUT, LAMBDA, OUTPUT, Bundle, open_bundle
from floatedge.graph.scalable import initializer_arrays
from floatedge.graph.static import freeze, point_arrays
from floatedge.oppoint import OperatingPoint, OperatingPointError, equivalent_lambda

from .base import Backend, ClosedError, InputSpec, mean_bounds, responsive_gil, usable_cpus, value_error
from .observe import log

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CHECK_OUTPUT = "floatedge.nonfinite"


def with_finite_check(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with a second output, ReduceSum(images): finite when every value is, NaN or ±Inf
    as soon as one value is NaN or ±Inf (IEEE 754: NaN propagates, Inf + −Inf = NaN). A finite batch can
    only sum to Inf if its values approach 1e34 (float32 overflow); such input is refused as well. The same
    sum divided by the number of values is the batch's mean pixel, which the range check compares with
    the manifest's input range (`base.value_error`): one kernel answers both.

    Why in the model: next to a real inference `np.isfinite(x).all()` costs 15–30 µs in Python (cold caches
    after the run), 2–3% of a ResNet-20 batch-1 call on CPU; this one kernel costs ~0.5% (docs/runtime.md).
    Exact alternatives measured: ReduceSum(images · 0), 1.1% at width 0.5."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    g.node.append(helper.make_node("ReduceSum", [INPUT], [CHECK_OUTPUT], keepdims=0, name="floatedge/check_sum"))
    g.output.append(helper.make_tensor_value_info(CHECK_OUTPUT, TensorProto.FLOAT, []))
    return out


def default_providers() -> list[str]:
    """The accelerated providers this onnxruntime build has, best first, CPU last."""
    have = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in have] or ["CPUExecutionProvider"]


def default_concurrency(threads: int | None) -> int:
    """Requests run at once: as many as the usable CPUs hold sessions of `threads` intra-op threads (a
    request runs on its caller's thread plus threads-1 pool threads); `threads=None` is ORT's default pool,
    one thread per core, so one request at a time."""
    return 1 if threads is None else max(1, usable_cpus() // max(1, int(threads)))


def session_options(threads: int | None) -> ort.SessionOptions:
    """One place for session settings, so the benchmark's bare session uses exactly these.

    intra-op threads: None → ORT's default (one per physical core). Requests from several Python threads
    run concurrently on one session (InferenceSession.run is thread-safe and releases the GIL), so
    inter-op parallelism inside one request is off."""
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


class _Checks:
    """The value checks a session's in-model sum answers (`with_finite_check`): NaN/Inf, and the batch's
    mean pixel against the bounds of the manifest's input range (`base.mean_bounds`)."""

    __slots__ = ("finite", "value_range", "lo", "hi")

    def __init__(self, finite: bool, value_range: tuple[float, float] | None) -> None:
        self.finite, self.value_range = finite, value_range
        self.lo, self.hi = mean_bounds(value_range)

    @property
    def any(self) -> bool:
        return self.finite or self.value_range is not None


class _Session:
    """A session of the static form at one point (`lam` None), or of the scalable model with the λ_n to
    feed it. With `checks`, the model also returns ReduceSum(images) (`with_finite_check`), and one chained
    comparison of it — false for NaN, ±Inf and a mean outside the bounds — is the whole per-call cost of
    the NaN/Inf and range checks; the message is worked out only when it fails.

    On the CPU provider alone, `run` calls the session's binding (`InferenceSession._sess.run`) directly:
    the public `InferenceSession.run` (onnxruntime_inference_collection.py) first validates the feed's
    names and OrtValue ownership and checks for graph capture — 4–6 µs a call measured here, 1% of a
    ResNet-20 width-0.5 batch-1 inference — and none of it can fail for the one fixed numpy feed the
    runtime builds; after them it makes this very call, `self._sess.run(output_names, input_feed,
    run_options)` (tests/test_runtime_observer.py fails if a new ONNX Runtime changes that). Should the
    private call ever be missing or refuse these arguments (TypeError), the public one is used from then
    on. With another provider the public call is kept for its fallback to CPU on an EP failure."""

    __slots__ = ("session", "lam", "outputs", "checks", "_run", "_bounds")

    def __init__(self, session: ort.InferenceSession, lam: float | None, checks: _Checks | None) -> None:
        self.session, self.checks = session, checks
        self.lam = None if lam is None else np.array(lam, dtype=np.float32)
        self.outputs = [OUTPUT, CHECK_OUTPUT] if checks else [OUTPUT]
        self._bounds = (checks.lo, checks.hi) if checks else None
        cpu_only = session.get_providers() == ["CPUExecutionProvider"]
        self._run = getattr(getattr(session, "_sess", None), "run", None) if cpu_only else None

    def run(self, images: np.ndarray) -> np.ndarray:
        feed = {INPUT: images} if self.lam is None else {INPUT: images, LAMBDA: self.lam}
        run = self._run
        if run is None:
            out = self.session.run(self.outputs, feed)
        else:
            try:
                out = run(self.outputs, feed, None)
            except TypeError:  # the private binding changed its signature: the public call from now on
                self._run = None
                out = self.session.run(self.outputs, feed)
        bounds = self._bounds
        if bounds is not None:
            n = images.size
            total = out[1].item()
            if not bounds[0] * n <= total <= bounds[1] * n:  # NaN fails every comparison
                self._refuse(total, n)
        return out[0]

    def _refuse(self, total: float, n: int) -> None:
        checks = self.checks
        error = value_error(INPUT, total, n, checks.finite, checks.value_range)
        if error is not None:
            raise error

    def alive(self) -> bool:
        return True


class _Width:
    """What one width of the bundle needs, loaded once: the scalable model, its manifest entry, its
    in-graph session (lazily) and the external-weights template of its static form."""

    def __init__(self, bundle: Bundle, width: float, checks: _Checks | None) -> None:
        self.entry = bundle.model_entry(width)
        self.data = bundle.model_bytes(width)
        self.model = onnx.load_from_string(self.data)
        self.inits = initializer_arrays(self.model)  # decoded once; every materialised point reads them
        self.checks = checks
        self.ingraph: ort.InferenceSession | None = None
        self.bridge_warm = False  # `ingraph` made and run once: a switch may serve on it at once
        self.template: bytes | None = None
        self.lock = threading.Lock()


class OnnxRuntimeBackend(Backend):
    """A bundle run by ONNX Runtime. See `floatedge.runtime.open` for the options.

    `bridge` (default on; materialised mode only): keep each width's in-graph session warm (made in the
    background after open), so a switch to a point not yet prepared takes effect at once on it — λ_n fed
    as an input — while the materialised session is prepared, then swapped in. Costs one scalable-model
    session per width in memory; off, a cold switch takes effect when its session is ready."""

    name = "onnxruntime"
    concurrent_prepare = True  # sessions are built per point; a width's shared parts under its own lock

    def __init__(self, bundle: str | Path | Bundle, *, mode: str = "auto", point: OperatingPoint | None = None,
                 providers: list[str] | None = None, threads: int | None = None, check_finite: bool = True,
                 check_range: bool = True, max_batch: int | None = None, cache_size: int = 8, verify: bool = True,
                 concurrency: int | None = None, bridge: bool = True) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle, verify=verify)
        if concurrency is None:
            concurrency = default_concurrency(threads)
        super().__init__(self.bundle.widths, self.bundle.lambda_th, cache_size=cache_size, concurrency=concurrency)
        self.providers = list(providers) if providers else default_providers()
        self.threads = threads
        self.check_finite = check_finite
        value_range = self.bundle.manifest["input"].get("range") if check_range else None
        self.value_range = tuple(float(v) for v in value_range) if value_range else None
        checks = _Checks(check_finite, self.value_range)
        self._checks = checks if checks.any else None
        self.max_batch = max_batch
        self.bridge = bridge
        self._widths: dict[float, _Width] = {}
        self._widths_lock = threading.Lock()
        self._start(point or self.bundle.operating_point(0.0, self.widths[0]), mode)
        if self.bridge and self.mode == "materialised":
            widths = sorted(self.widths, key=lambda w: w != self.operating_point.width)  # the current one first
            self._background.submit(self._warm_bridges, widths)

    # -- loading
    def _width(self, width: float) -> _Width:
        with self._widths_lock:
            if width not in self._widths:
                self._widths[width] = _Width(self.bundle, width, self._checks)
            return self._widths[width]

    def _session(self, model: bytes, external: dict[str, np.ndarray] | None = None) -> ort.InferenceSession:
        so = session_options(self.threads)
        if external:
            names = list(external)
            so.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(external[n]) for n in names])
        return ort.InferenceSession(model, so, providers=self.providers)

    def _template(self, w: _Width, point: OperatingPoint, values: dict[str, np.ndarray]) -> bytes:
        """The static graph of a width with the point-dependent initializers marked external (no data)."""
        with w.lock:
            if w.template is None:
                model = freeze(w.model, w.entry, point)
                for t in model.graph.initializer:
                    if t.name in values:
                        set_external_data(t, location="floatedge-point")  # supplied from memory per session
                        t.ClearField("raw_data")
                        del t.float_data[:]
                w.template = (with_finite_check(model) if w.checks else model).SerializeToString()
            return w.template

    def _ingraph(self, w: _Width) -> ort.InferenceSession:
        """The width's scalable-model session (λ_n an input), made once."""
        with w.lock:
            if w.ingraph is None:
                w.ingraph = self._session(with_finite_check(w.model).SerializeToString() if w.checks else w.data)
            return w.ingraph

    def _warm_bridges(self, widths: list[float]) -> None:
        try:
            for w in widths:
                self._warm_bridge(w)
        except ClosedError:
            pass
        except Exception:  # noqa: BLE001 - without a warm bridge a cold switch waits for its session
            log.exception("warming the in-graph bridge failed; cold switches wait for their session")

    def _warm_bridge(self, width: float) -> None:
        """Make the width's in-graph session and run it once (its first run allocates), in the background."""
        if self._closed:
            return
        with responsive_gil():
            w = self._width(width)
            session = self._ingraph(w)
        spec = self.input_spec
        x = np.zeros((spec.min_batch, spec.channels, spec.height, spec.width), np.float32)
        _Session(session, equivalent_lambda(self.operating_point, self.bundle.lambda_th, self.bundle.dial)
                 if self.operating_point.width == width else 0.0, w.checks).run(x)
        w.bridge_warm = True

    # -- the backend hooks
    def _prepare(self, point: OperatingPoint, mode: str) -> Any:
        w = self._width(point.width)
        if mode == "in-graph":
            return _Session(self._ingraph(w), equivalent_lambda(point, self.bundle.lambda_th, self.bundle.dial), w.checks)
        values = {k: np.ascontiguousarray(v, dtype=np.float32)
                  for k, v in point_arrays(w.model, w.entry, point, w.inits).items()}
        return _Session(self._session(self._template(w, point, values), values), None, w.checks)

    def _bridge(self, point: OperatingPoint) -> _Session | None:
        """The width's warm in-graph session fed the point's λ_n, if it is warm (never made here)."""
        if not self.bridge or self.mode != "materialised":
            return None
        w = self._widths.get(point.width)
        if w is None or not w.bridge_warm:
            return None
        try:
            lam = equivalent_lambda(point, self.bundle.lambda_th, self.bundle.dial)
        except OperatingPointError:  # a λ_th the graph cannot compute: materialise it the slow way
            return None
        return _Session(w.ingraph, lam, w.checks)

    def check_point(self, point: OperatingPoint) -> OperatingPoint:
        """The bundle's own rule (width present; an OAT bundle refuses λ_th ≠ 0), in every mode."""
        return self.bundle.check_point(point)

    def _input_spec(self) -> InputSpec:
        c, h, w = self.bundle.input_shape
        graph_input = next(i for i in self._width(self.widths[0]).model.graph.input if i.name == INPUT)
        dim = graph_input.type.tensor_type.shape.dim[0]
        fixed = dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
        cap = fixed or self.max_batch  # a fixed-batch graph, or the caller's bound on request size
        return InputSpec(INPUT, int(c), int(h), int(w), max_batch=cap, min_batch=fixed or 1,
                         check_finite=self.check_finite, in_model_finite=True, value_range=self.value_range)

    def operating_points(self) -> list[dict]:
        return self.bundle.table()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"bundle": str(self.bundle.path), "architecture": self.bundle.architecture, "dial": self.bundle.dial.name,
                  "providers": self.providers, "intra_op_threads": self.threads, "onnxruntime": ort.__version__,
                  "bridge": {"enabled": self.bridge and self.mode == "materialised",
                             "warm_widths": [w for w, x in sorted(self._widths.items(), reverse=True) if x.bridge_warm]}})
        return d

    def _close(self) -> None:
        with self._widths_lock:
            self._widths.clear()
