"""The service core both transports call: the model being served, inference, the operating point, hot swaps.

One `Slot` is one opened bundle (its runtime, its batcher, its description). The core serves exactly one slot,
held in one reference: a request reads it once and runs entirely on it, so a hot swap — building a new slot
and assigning the reference — can never give a request half of one bundle and half of the other, and the old
slot is closed only after its last request has finished. A failed swap never touches the reference: the old
bundle keeps serving (Triton's rule, `docs/user_guide/model_management.md`: a failed reload leaves the old
model serving).

The operating point is the runtime's (`floatedge.runtime`: prepared off the serving path, made current in one
assignment); the core adds who asked and why (`reason`: "manual", "pin", "policy", "swap", "startup",
"config"), the pin, logging and metrics. Per-request points (`lambda_n` / `width` request parameters) are
served by the runtime's `run(images, point=...)`.
"""
from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import floatedge.runtime as rt
from floatedge import __version__
from floatedge.bundle import Bundle, BundleError, open_bundle
from floatedge.oppoint import OperatingPoint, OperatingPointError

from .batching import DynamicBatcher
from .config import ServeConfig
from .metrics import Metrics
from .protocol import (
    EXTENSIONS,
    POINT_PARAMS,
    InferRequest,
    InferResponse,
    OutputWanted,
    ServeError,
    TensorOut,
    bad,
    classify,
    number_param,
)

log = logging.getLogger("floatedge.serve")
VERSION = "1"  # the one version of the model the server holds (a hot swap replaces it)
OUTPUT = "logits"
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}


def accepts(fn: Any, name: str) -> bool:
    """Whether `fn` takes a keyword `name` (runtime features that arrive in later versions)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class Slot:
    """One opened bundle, ready to serve."""

    runtime: Any
    bundle: Bundle
    path: Path
    name: str
    sha: str
    spec: Any
    classes: list[str]
    per_request: bool
    batcher: DynamicBatcher | None = None
    inflight: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)
    retired: bool = False
    on_exec: Any = None  # called with the images of each model run (nv_inference_exec_count)

    def enter(self) -> None:
        with self.cond:
            self.inflight += 1

    def leave(self) -> None:
        with self.cond:
            self.inflight -= 1
            if self.inflight == 0:
                self.cond.notify_all()

    def idle(self, timeout: float) -> bool:
        """Wait (up to `timeout`) until no request is in flight; True if none is."""
        with self.cond:
            return self.cond.wait_for(lambda: self.inflight == 0, timeout=timeout)

    def close(self, timeout: float) -> None:
        """Wait (up to `timeout`) for its requests in flight, then release the runtime."""
        self.retired = True
        self.idle(timeout)
        if self.batcher is not None:
            self.batcher.close()
        self.runtime.close()

    def run(self, images: np.ndarray, point: OperatingPoint | None) -> tuple[np.ndarray, OperatingPoint]:
        res = self.runtime.run(images) if point is None else self.runtime.run(images, point=point)
        if self.on_exec is not None:
            self.on_exec(images.shape[0])
        return res.logits, res.point

    def describe(self) -> dict[str, Any]:
        return {"bundle": self.path.name, "sha256": self.sha, "architecture": self.bundle.architecture,
                "widths": list(self.bundle.widths), "lambda_th": self.bundle.lambda_th, "classes": len(self.classes)}


class Core:
    def __init__(self, cfg: ServeConfig, metrics: Metrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.slot: Slot | None = None
        self.draining = False
        self.pinned = cfg.pinned
        self.last_switch: dict[str, Any] | None = None
        self.last_swap: dict[str, Any] | None = None
        self._switch_lock = threading.Lock()  # switches and swaps, one at a time
        self.on_point_change: list[Any] = []  # callbacks(point, pinned): state record, sd_notify STATUS
        # the last requests for the policy (governor.Request's fields: done, e2e s, model call s, λ_n, width, batch)
        self.requests: deque[tuple] = deque(maxlen=4096)

    # ----------------------------------------------------------------------------------- loading
    def open_slot(self, path: Path, point: dict[str, float] | None, check: Any = None) -> Slot:
        """Open, verify and warm a bundle (not yet serving). `check(bundle)` may refuse it (signatures)."""
        bundle = open_bundle(path, verify=True)  # checksums of the manifest and every file
        if check is not None:
            check(bundle)
        start = self._start_point(bundle, point)
        model = rt.open(bundle, backend=self.cfg.backend, mode=self.cfg.mode, threads=self.cfg.threads,
                        max_batch=self.cfg.max_batch, point=start)
        try:
            spec = model.input_spec
            slot = Slot(model, bundle, Path(path), self.cfg.name, str(bundle.manifest["manifest_sha256"]), spec,
                        bundle.classes, accepts(model.run, "point"))
            warm = np.full((1, spec.channels, spec.height, spec.width), 0.5, dtype=np.float32)
            logits = slot.run(warm, None)[0]
            if logits.shape != (1, len(slot.classes)):
                raise BundleError(f"{path.name}: the model returns {list(logits.shape)} logits for one image but the "
                                  f"bundle names {len(slot.classes)} classes")
            slot.on_exec = self.metrics.executed  # after the warm-up run, which is not a request
            if self.cfg.batching:
                slot.batcher = DynamicBatcher(slot.run, max_batch=self.cfg.batch_max,
                                              delay_s=self.cfg.batch_delay_ms / 1e3,
                                              workers=max(1, getattr(model, "concurrency", 1) or 1))
            if accepts(getattr(model, "add_observer", None), "observer"):
                model.add_observer(_SwitchObserver(self))
            return slot
        except BaseException:
            model.close()
            raise

    def _start_point(self, bundle: Bundle, point: dict[str, float] | None) -> OperatingPoint:
        """`point` (the serving point, carried across a swap or a restart) where this bundle can run it; else
        the configured start point; a width the bundle lacks becomes its widest."""
        p = point or {"lambda_n": self.cfg.lambda_n, "width": self.cfg.width}
        width = p.get("width") or bundle.widths[0]
        if not any(math.isclose(width, w) for w in bundle.widths):
            width = bundle.widths[0]
        return bundle.operating_point(float(p.get("lambda_n", 0.0)), width)

    def install(self, slot: Slot, reason: str) -> Slot | None:
        """Make `slot` the one serving (one reference assignment); returns the slot it replaced."""
        old, self.slot = self.slot, slot
        self.metrics.set_model(slot.name, VERSION, slot.path.name, slot.bundle.architecture, slot.runtime.name,
                               slot.sha)
        self._point_changed(reason)
        return old

    # ----------------------------------------------------------------------------------- serving
    def current(self, model: str, version: str = "") -> Slot:
        slot = self.slot
        if slot is None:
            raise ServeError(503, "the server is starting; no model is loaded yet")
        if model != slot.name:
            raise ServeError(404, f"unknown model {model!r}; this server serves {slot.name!r}")
        if version not in ("", VERSION):
            raise ServeError(404, f"unknown version {version!r} of model {model!r}; it has version {VERSION}")
        return slot

    def infer(self, req: InferRequest) -> InferResponse:
        if self.draining:  # calls in flight finish; a new one is told to go elsewhere (daemon/server.py)
            self.metrics.failure("REJECTED")
            raise ServeError(503, "the server is stopping: it finishes the requests in flight and takes no new ones; "
                                  "retry on another replica")
        t0 = req.received or time.perf_counter()
        ts = req.started or t0
        slot = self.current(req.model, req.version)
        slot.enter()
        self.metrics.pending(1)
        try:
            x = self._images(slot, req)
            point = self._request_point(slot, req.parameters)
            wanted = self._outputs(req)
            t1 = time.perf_counter()
            if slot.batcher is not None:
                r = slot.batcher.submit(x, point).result()
                logits, at, queue_s, infer_s = r.logits, r.point, (ts - t0) + r.queue_s, r.infer_s
                t2 = time.perf_counter()
            else:
                logits, at = slot.run(x, point)
                t2 = time.perf_counter()
                queue_s, infer_s = ts - t0, t2 - t1
            outputs = [self._output(slot, w, logits) for w in wanted]
            params = {"lambda_n": at.lambda_n, "width": at.width, "lambda_th": at.lambda_th, "bundle_sha256": slot.sha}
            resp = InferResponse(slot.name, VERSION, req.id, params, outputs)
            t3 = time.perf_counter()
            self.metrics.success(x.shape[0], t3 - t0, queue_s, t1 - ts, infer_s, t3 - t2)
            self.requests.append((t3, t3 - t0, infer_s, at.lambda_n, at.width, x.shape[0]))  # deque: atomic
            return resp
        except ServeError:
            self.metrics.failure("REJECTED")
            raise
        except (rt.InputError, OperatingPointError) as exc:
            self.metrics.failure("REJECTED")
            raise bad(str(exc)) from None
        except rt.ClosedError as exc:
            self.metrics.failure("CANCELED")
            raise ServeError(503, f"the model was being replaced or the server is stopping ({exc}); retry") from None
        except Exception:
            self.metrics.failure("BACKEND")
            raise
        finally:
            self.metrics.pending(-1)
            slot.leave()

    def _images(self, slot: Slot, req: InferRequest) -> np.ndarray:
        spec = slot.spec
        if len(req.inputs) != 1:
            raise bad(f"model {slot.name!r} takes exactly one input, {spec.name!r}; got {len(req.inputs)}")
        t = req.inputs[0]
        if t.name != spec.name:
            raise bad(f"unknown input {t.name!r} for model {slot.name!r}; its input is {spec.name!r}")
        if t.datatype != "FP32":
            raise bad(f"input {spec.name!r} must be FP32, got {t.datatype}")
        want = (spec.channels, spec.height, spec.width)
        if len(t.shape) != 4 or tuple(t.shape[1:]) != want:
            raise bad(f"input {spec.name!r} must have shape [N, {', '.join(map(str, want))}] (NCHW), got {list(t.shape)}")
        n = t.shape[0]
        if not 1 <= n <= self.cfg.max_batch:
            raise bad(f"batch of {n} images is outside 1..{self.cfg.max_batch} (max_batch_size)")
        x = t.array
        if x.dtype != np.float32 or not x.flags.c_contiguous or not x.flags.aligned:
            x = np.ascontiguousarray(x, dtype=np.float32)  # big-endian, unaligned or a view of the body
        if slot.batcher is not None and not math.isfinite(float(x.sum(dtype=np.float64))):
            # checked per request before batching: one bad request must not fail the batch it joins
            raise bad(f"input {spec.name!r} contains NaN or Inf")
        return x

    def _request_point(self, slot: Slot, params: dict[str, Any]) -> OperatingPoint | None:
        lam, width = (number_param(params, k) for k in POINT_PARAMS)
        if lam is None and width is None:
            return None
        if not slot.per_request:
            raise bad("per-request operating points (lambda_n, width) need a runtime with run(images, point=...); "
                      "this build's runtime has none")
        cur = slot.runtime.operating_point
        return slot.bundle.operating_point(cur.lambda_n if lam is None else lam, cur.width if width is None else width)

    def _outputs(self, req: InferRequest) -> list[OutputWanted]:
        if req.outputs is None:
            return [OutputWanted(OUTPUT)]
        for w in req.outputs:
            if w.name != OUTPUT:
                raise bad(f"unknown output {w.name!r}; this model's output is {OUTPUT!r}")
            if w.classification < 0:
                raise bad(f"classification must be ≥ 0, got {w.classification}")
        return req.outputs

    def _output(self, slot: Slot, w: OutputWanted, logits: np.ndarray) -> TensorOut:
        if w.classification:
            k = min(w.classification, logits.shape[1])
            return TensorOut(OUTPUT, "BYTES", (logits.shape[0], k), items=classify(logits, k, slot.classes),
                             binary=bool(w.binary))
        return TensorOut(OUTPUT, "FP32", tuple(logits.shape), array=logits, binary=bool(w.binary))

    # ----------------------------------------------------------------------------------- descriptions
    def server_metadata(self) -> dict[str, Any]:
        return {"name": "floatedge", "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        slot = self.current(model, version)
        s = slot.spec
        return {"name": slot.name, "versions": [VERSION], "platform": PLATFORMS.get(slot.runtime.name, slot.runtime.name),
                "inputs": [{"name": s.name, "datatype": "FP32", "shape": [-1, s.channels, s.height, s.width]}],
                "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(slot.classes)]}],
                "parameters": {"bundle": slot.path.name, "bundle_sha256": slot.sha,
                               "architecture": slot.bundle.architecture}}

    def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        """Triton's ModelConfig as JSON (the fields image_client.py reads: max_batch_size, input format)."""
        slot = self.current(model, version)
        s = slot.spec
        cfg: dict[str, Any] = {
            "name": slot.name, "platform": PLATFORMS.get(slot.runtime.name, slot.runtime.name),
            "backend": slot.runtime.name, "max_batch_size": self.cfg.max_batch,
            "input": [{"name": s.name, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW",
                       "dims": [s.channels, s.height, s.width]}],
            "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [len(slot.classes)]}],
            "parameters": {"classes": {"string_value": ",".join(slot.classes)}},
        }
        if slot.batcher is not None:
            cfg["dynamic_batching"] = {"max_queue_delay_microseconds": int(self.cfg.batch_delay_ms * 1000),
                                       "preferred_batch_size": [self.cfg.batch_max]}
        return cfg

    def ready(self) -> bool:
        return self.slot is not None and not self.draining

    # ----------------------------------------------------------------------------------- the point
    def point(self) -> OperatingPoint:
        slot = self.slot
        if slot is None:
            raise ServeError(503, "no model is loaded yet")
        return slot.runtime.operating_point

    def set_point(self, lambda_n: float | None, width: float | None, reason: str) -> dict[str, Any]:
        """Switch the serving point (λ_n and/or width); returns the switch record. Raises ServeError 400 for an
        impossible point (nothing changes)."""
        with self._switch_lock:
            slot = self.slot
            if slot is None:
                raise ServeError(503, "no model is loaded yet")
            before = slot.runtime.operating_point
            try:
                target = slot.bundle.operating_point(before.lambda_n if lambda_n is None else lambda_n,
                                                     before.width if width is None else width)
                t0 = time.perf_counter()
                if accepts(slot.runtime.set_operating_point, "reason"):
                    slot.runtime.set_operating_point(target.lambda_n, target.width, reason=reason)
                else:
                    slot.runtime.set_operating_point(target.lambda_n, target.width)
                effect = time.perf_counter() - t0
            except OperatingPointError as exc:
                raise bad(str(exc)) from None
            record = {"from": before.to_dict(), "to": target.to_dict(), "reason": reason,
                      "time_to_effect_ms": round(effect * 1e3, 3), "at": time.time()}
            self.last_switch = record
            if not accepts(getattr(slot.runtime, "add_observer", None), "observer"):
                self.metrics.switched(reason, effect)  # else the runtime's switch event reports it
            log.info("switch", extra={"event": "switch", **record})
            self._point_changed(reason)
            return record

    def _point_changed(self, reason: str) -> None:
        slot = self.slot
        if slot is None:
            return
        p = slot.runtime.operating_point
        self.metrics.set_point(p, self.pinned, slot.bundle.lookup(p))
        for cb in self.on_point_change:
            cb(p, self.pinned, reason)

    def calibrated(self) -> dict | None:
        slot = self.slot
        return slot.bundle.lookup(slot.runtime.operating_point) if slot else None


class _SwitchObserver:
    """The runtime's switch events (when the runtime has observers) → switch metrics with their reason."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def on_switch(self, e: Any) -> None:
        self.core.metrics.switched(getattr(e, "reason", "unknown"), getattr(e, "effect_s", None))

    def on_swap(self, e: Any) -> None:
        log.debug("materialised", extra={"event": "materialised", "point": e.point.to_dict(),
                                         "after_ms": round(e.after_s * 1e3, 3)})
