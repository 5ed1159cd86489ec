"""The backend contract every runtime backend honours (after Polygraphy's `backend/base/runner.py`).

A backend turns a bundle into *executables*: objects that run the model at one operating point. The
base class owns what must behave the same whatever runs the model, so each backend stays small:

* input checking, in one place (`InputSpec.check`), before any backend sees the array;
* the switch: a new point is prepared off the serving path (one builder thread), then made current by
  assigning one reference (`self._active`); each request reads that reference once, so it runs on one
  whole model and can report the point it ran at — nothing is ever half switched;
* in-graph vs materialised: both are `_prepare` modes; `mode="auto"` times both and keeps the faster;
* instant switches: a materialised runtime whose backend has a warm in-graph executable for the new
  point's width (`_bridge`) makes the point current on it at once and swaps the materialised executable
  in when a background thread has prepared it;
* per-request points (`run(images, point=...)`) and the observer events (`observe.py`).

A backend implements `_prepare(point, mode) -> Executable`, `_input_spec()`, `operating_points()` and
`_close()`, and optionally `_bridge(point)`. This module imports only numpy and the standard library.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol

import numpy as np

from floatedge.oppoint import OperatingPoint, OperatingPointError, check_width_in

from .observe import Observers, RequestEvent, SwapEvent, SwitchEvent, log

MODES = ("in-graph", "materialised")
POINT_KEYS = ("lambda_n", "width", "lambda_th")  # what a request's point dict may set (and `dial`, checked)
_new_tuple = tuple.__new__
_FLOAT32 = np.dtype(np.float32)


class InputError(ValueError):
    """One request's images are unusable (shape, dtype, NaN, ...). The runtime stays usable."""


class ClosedError(RuntimeError):
    """The runtime was closed."""


class Stale(Exception):
    """Raised by an executable whose weights were replaced after the request picked it; retried."""


NONFINITE = "contain NaN or Inf (or values near ±1e34, whose sum overflows float32)"


def mean_bounds(value_range: tuple[float, float] | None) -> tuple[float, float]:
    """Bounds on a batch's mean pixel that pixels inside `value_range` ([lo, hi], the bundle manifest's
    `input.range`) can never pass, with half the span as margin: [0, 1] → (−0.5, 1.5). Outside them the
    pixels are on another scale (0..255 images: a mean near 100) or normalised far below it. No range:
    (−inf, inf)."""
    if not value_range:
        return (-math.inf, math.inf)
    lo, hi = value_range
    return (lo - (hi - lo) / 2, hi + (hi - lo) / 2)


def value_error(name: str, total: float, count: int, check_finite: bool,
                value_range: tuple[float, float] | None) -> InputError | None:
    """Why a batch whose `count` values sum to `total` is refused, or None. The mean test is exact in one
    direction: pixels in [lo, hi] have a mean in [lo, hi], so nothing in range is ever refused."""
    if not math.isfinite(total):
        return InputError(f"{name} {NONFINITE}") if check_finite else None
    lo, hi = mean_bounds(value_range)
    mean = total / count
    if lo <= mean <= hi:
        return None
    rng = f"[{value_range[0]:g}, {value_range[1]:g}]"  # type: ignore[index] - finite bounds imply a range
    if mean > hi:
        return InputError(f"{name} have mean value {mean:.4g}, far above this model's input range {rng}: "
                          "0..255 pixels? pass float32 pixels / 255")
    return InputError(f"{name} have mean value {mean:.4g}, far below this model's input range {rng}: "
                      f"already normalised? pass raw pixels in {rng}, the model normalises them itself")


@dataclass(frozen=True)
class InputSpec:
    """The one input a floatedge model takes: float32 images N×C×H×W, min_batch ≤ N ≤ max_batch (None: any).

    `check_finite`: refuse NaN/Inf pixels. `value_range` (the manifest's, [0, 1]): refuse a batch whose mean
    pixel is outside `mean_bounds` — float32 0..255 pixels given to a model that expects [0, 1]. Where the
    backend's executables test both inside the model (`in_model_finite`, ONNX Runtime: one ReduceSum whose
    result answers both), `check` leaves them to it; otherwise it is `np.isfinite` and a sum here."""

    name: str
    channels: int
    height: int
    width: int
    max_batch: int | None = None
    min_batch: int = 1
    check_finite: bool = True
    in_model_finite: bool = False
    value_range: tuple[float, float] | None = None
    _chw: tuple[int, int, int] = field(init=False, repr=False, compare=False)
    _max: int = field(init=False, repr=False, compare=False)
    _values: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_chw", (self.channels, self.height, self.width))
        object.__setattr__(self, "_max", sys.maxsize if self.max_batch is None else self.max_batch)
        object.__setattr__(self, "_values", not self.in_model_finite and (self.check_finite or bool(self.value_range)))

    @property
    def shape(self) -> tuple[int | None, int, int, int]:
        return (self.max_batch, self.channels, self.height, self.width)

    def check(self, images: Any) -> np.ndarray:
        """Return `images` unchanged if a model can run it, else raise InputError with one clear line.

        No silent conversion: a float64 or strided array is a caller bug whose fix (cast/copy once,
        upstream) is cheaper than a hidden copy on every request. The common case is one combined test:
        per-call Python is a measurable share of a 1 ms batch-1 inference (docs/RESULTS.md)."""
        if not (type(images) is np.ndarray and images.dtype == _FLOAT32 and images.ndim == 4
                and images.shape[1:] == self._chw and self.min_batch <= images.shape[0] <= self._max
                and images.flags.c_contiguous):
            self._explain(images)  # raises, unless it is a well-formed ndarray subclass (np.memmap, ...)
        # NaN/Inf: ~15–30 µs next to real inference (cold caches), ~2–3% of a ResNet-20 batch-1 call, so
        # ONNX Runtime does it inside the model (~0.5%) and this runs only for other backends.
        if self._values:
            self._check_values(images)
        return images

    def _check_values(self, images: np.ndarray) -> None:
        if self.check_finite and not np.isfinite(images).all():
            raise InputError(f"{self.name} {NONFINITE}")
        if self.value_range:
            error = value_error(self.name, float(images.sum(dtype=np.float64)), images.size, False, self.value_range)
            if error is not None:
                raise error

    def _explain(self, images: Any) -> None:
        """The first reason `images` failed the fast test, as an InputError."""
        if not isinstance(images, np.ndarray):
            raise InputError(f"{self.name} must be a numpy.ndarray, got {type(images).__name__}")
        if images.ndim != 4:
            raise InputError(f"{self.name} must be rank 4 (N×C×H×W), got shape {images.shape}")
        n, c, h, w = images.shape
        if c != self.channels:
            raise InputError(f"{self.name} must have {self.channels} channels (N×C×H×W), got {c} "
                             f"in shape {images.shape}")
        if (h, w) != (self.height, self.width):
            raise InputError(f"{self.name} must be {self.height}×{self.width} pixels, got {h}×{w} "
                             f"in shape {images.shape}")
        if n < 1:
            raise InputError(f"{self.name} is an empty batch")
        if self.max_batch is not None and n > self.max_batch:
            raise InputError(f"batch of {n} exceeds this model's maximum batch {self.max_batch}")
        if n < self.min_batch:
            raise InputError(f"batch of {n} is below this model's fixed batch {self.min_batch}")
        if images.dtype != _FLOAT32:
            raise InputError(f"{self.name} must be float32 (native byte order), got {images.dtype}")
        if not images.flags.c_contiguous:
            raise InputError(f"{self.name} must be C-contiguous; pass np.ascontiguousarray(images)")


class Executable(Protocol):
    """The model at one operating point, ready to run. `run` must be safe from several threads."""

    def run(self, images: np.ndarray) -> np.ndarray: ...

    def alive(self) -> bool: ...


class Result(NamedTuple):
    """What one request got, and the operating point it ran at."""

    logits: np.ndarray
    point: OperatingPoint


class _Active(NamedTuple):
    """What serves the current point: read once per request, replaced whole by a switch."""

    exe: Executable
    point: OperatingPoint
    mode: str  # the executable's kind: the runtime's mode, or "in-graph" while the bridge serves
    key: tuple  # `Backend._key(point, runtime mode)`: the function it computes


class _Found(NamedTuple):
    point: OperatingPoint
    key: tuple
    exe: Executable
    mode: str
    cached: bool
    bridged: bool


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or `taskset`'s), else the count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class FairGate:
    """At most `slots` holders at once; the others wait, served strictly first come, first served.

    Why the runtime has one: concurrent requests beyond the cores they need do not finish sooner, they
    preempt one another. Measured on 2 cores, 4 client threads, ResNet-20 batch 1 (docs/RESULTS.md): without
    a gate the slowest request of a 40 ms window is ×5–×23 the p50, because the OS parks a runnable
    inference thread for a scheduler slice (several ms) to run another; with a 2-slot gate the waiting
    threads sleep instead, and a request's latency is its queue position times the service time. The price
    is a thread wake-up per queued request: 5–17% less throughput in the switch test (`concurrency=0` to
    turn the gate off).

    A released slot is handed to the oldest waiter directly (each waiter sleeps on its own lock), so a
    thread that just released cannot barge back in ahead of it: `threading.Semaphore` makes no such
    promise, and its barging is a tail-latency source of its own."""

    __slots__ = ("slots", "_free", "_lock", "_waiters")

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a gate needs at least one slot, got {slots}")
        self.slots = int(slots)
        self._free = self.slots
        self._lock = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        lock = self._lock  # explicit acquire/release: this is on every request (~0.7 µs a pair)
        lock.acquire()
        if self._free and not self._waiters:
            self._free -= 1
            lock.release()
            return
        mine = threading.Lock()
        mine.acquire()
        self._waiters.append(mine)
        lock.release()
        mine.acquire()  # released by `release`, which hands us its slot

    def release(self) -> None:
        lock = self._lock
        lock.acquire()
        if self._waiters:
            self._waiters.popleft().release()  # the slot passes on; `_free` is unchanged
        else:
            self._free += 1
        lock.release()

    def __enter__(self) -> FairGate:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Backend:
    """Open a bundle, infer, switch operating point, describe inputs, close; a context manager.

    `concurrency`: how many requests run at once (the others queue, first come first served, see
    `FairGate`); 0 lets every calling thread run at once. Each backend sets its default."""

    name: ClassVar[str] = "base"
    modes: ClassVar[tuple[str, ...]] = MODES
    concurrent_prepare: ClassVar[bool] = False  # may `_prepare` run on several threads at once?

    def __init__(self, widths: tuple[float, ...], lambda_th: float, *, cache_size: int = 8,
                 concurrency: int = 0) -> None:
        if concurrency < 0:
            raise ValueError(f"concurrency must be ≥ 0 (0: unbounded), got {concurrency}")
        self.concurrency = int(concurrency)
        self._gate = FairGate(concurrency) if concurrency else None
        self.widths = tuple(widths)
        self.lambda_th = float(lambda_th)
        self.mode: str = ""
        self.mode_choice: dict[str, Any] = {}
        self.last_switch: dict[str, Any] = {}
        self.observers = Observers()
        self._active: _Active | None = None
        self._cache: OrderedDict[tuple, Executable] = OrderedDict()
        self._cache_size = max(1, int(cache_size))
        self._cache_lock = threading.Lock()
        self._inflight: dict[tuple, Future] = {}  # key → the preparation under way (one per key)
        self._later: set[tuple] = set()  # keys queued for background preparation
        self._prepare_lock = nullcontext() if self.concurrent_prepare else threading.Lock()
        # switches: applied in call order; `_queued` counts those handed to the builder thread, and while
        # any is, a new one queues behind it instead of being applied in the caller
        self._switch_lock = threading.Lock()
        self._queued = 0
        self._waiters: set[Future] = set()
        self._closed = False
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="floatedge-switch")
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="floatedge-materialise")
        self._spec: InputSpec | None = None

    # -- hooks -----------------------------------------------------------------------------------
    def _prepare(self, point: OperatingPoint, mode: str) -> Executable:
        raise NotImplementedError

    def _input_spec(self) -> InputSpec:
        raise NotImplementedError

    def operating_points(self) -> list[dict]:
        """The bundle's calibration table: the points the model was measured at."""
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def _bridge(self, point: OperatingPoint) -> Executable | None:
        """An executable that computes `point` at once, with nothing to prepare (the width's warm in-graph
        session, λ_n fed as an input), for a materialised runtime to serve while it prepares the point; None
        when the backend has none ready."""
        return None

    # -- start -----------------------------------------------------------------------------------
    def _start(self, point: OperatingPoint, mode: str) -> None:
        """Called by subclasses at the end of __init__: choose the mode, make `point` current."""
        point = self.check_point(point)
        if mode == "auto":
            mode = self._choose_mode(point)
        elif mode not in self.modes:
            raise ValueError(f"mode must be 'auto' or one of {self.modes} for {self.name}, got {mode!r}")
        else:
            self.mode_choice = {"chosen": mode, "how": "requested"}
        self.mode = mode
        self._spec = self._input_spec()
        self._active = _Active(self._get(point), point, mode, self._key(point, mode))

    def _choose_mode(self, point: OperatingPoint, budget_s: float = 0.6, max_runs: int = 40) -> str:
        """Time both modes at `point`, batch 1, interleaved (one run of each per round, so a busy core
        slows both alike); keep the faster median."""
        if len(self.modes) == 1:
            self.mode_choice = {"chosen": self.modes[0], "how": "only mode"}
            return self.modes[0]
        spec = self._input_spec()
        x = np.random.default_rng(0).random((1, spec.channels, spec.height, spec.width), dtype=np.float32)
        exes = {m: self._get(point, m) for m in self.modes}
        times: dict[str, list[float]] = {m: [] for m in self.modes}
        for exe in exes.values():
            exe.run(x)  # warm-up
        deadline = time.perf_counter() + budget_s
        first = times[self.modes[0]]
        order = list(exes.items())
        while len(first) < max_runs and (time.perf_counter() < deadline or len(first) < 5):
            order.reverse()  # A B B A …: each mode runs once after the other and once after itself
            for m, exe in order:
                t0 = time.perf_counter()
                exe.run(x)
                times[m].append(time.perf_counter() - t0)
        med = {m: float(np.median(t)) * 1e3 for m, t in times.items()}
        chosen = min(med, key=med.get)
        self.mode_choice = {"chosen": chosen, "how": "measured", "batch": 1, "runs": len(times[chosen]),
                            "median_ms": {m: round(v, 4) for m, v in med.items()}}
        return chosen

    # -- serving ---------------------------------------------------------------------------------
    def run(self, images: np.ndarray, point: OperatingPoint | Mapping[str, float] | None = None) -> Result:
        """Infer one batch; the result says which operating point produced it (the executable and its
        point are read together, once).

        `point`: serve this request at another point — an `OperatingPoint`, or a dict of `lambda_n`,
        `width`, `lambda_th` whose missing keys take the current point's values. Prepared on first use and
        cached with the switch targets (served meanwhile by the width's in-graph bridge where there is
        one); the current operating point does not change."""
        if point is not None or self.observers.request:
            return _new_tuple(Result, self._serve(images, point))
        logits, active = self._call(images)
        return _new_tuple(Result, (logits, active.point))  # tuple.__new__: Result's own __new__ is Python

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Logits for a float32 N×C×H×W batch at the current operating point."""
        if self.observers.request:
            return self._serve(images, None)[0]
        return self._call(images)[0]

    def _call(self, images: Any) -> tuple[np.ndarray, _Active]:
        """The request path of `infer` and `run` without observers or a point of its own: check, admit,
        run on the current executable. The hot path: per-call Python is a measurable share of a 0.2–1 ms
        batch-1 inference, so explicit acquire/release, no context manager."""
        spec, gate = self._spec, self._gate
        if spec is None:
            raise ClosedError(f"{self.name} runtime is closed")
        x = spec.check(images)
        if gate is not None:
            gate.acquire()
        try:
            active = self._active  # read once admitted: a switch made while the request queued applies
            if active is None:
                raise ClosedError(f"{self.name} runtime is closed")
            try:
                return active.exe.run(x), active
            except Stale:
                return self._run_current(x)  # retried in the slot it holds, not at the back of the queue
        finally:
            if gate is not None:
                gate.release()

    def _run_current(self, x: np.ndarray) -> tuple[np.ndarray, _Active]:
        """Run a checked batch on the current executable; the caller holds a gate slot."""
        for _ in range(8):
            active = self._active  # read once admitted: a switch made while the request queued applies
            if active is None:
                raise ClosedError(f"{self.name} runtime is closed")
            try:
                return active.exe.run(x), active
            except Stale:  # its weights were swapped after we picked it: run on the new current one
                continue
        raise RuntimeError("operating point kept changing under the request; retried 8 times")

    def _serve(self, images: Any, point: Any) -> tuple[np.ndarray, OperatingPoint]:
        """`run` with a per-request point or with observers: the same steps, timed and reported; returns
        (logits, point). Written for speed like `infer`: with one observer this path is the whole of the
        observer's cost on every request (RESULTS.md, bar ≤ 1% at batch 1)."""
        clock = time.perf_counter
        t0 = t1 = clock()
        at: OperatingPoint | None = None
        active: _Active | None = None
        mode, batch = "", 0
        try:
            spec = self._spec
            if spec is None:
                raise ClosedError(f"{self.name} runtime is closed")
            x = spec.check(images)
            batch = x.shape[0]
            exe = None
            if point is not None:
                at = self._request_point(point)
                exe, mode = self._executable_for(at)  # before the gate: a cold point is prepared here
            gate = self._gate
            if gate is not None:
                gate.acquire()
            t1 = clock()
            try:
                if exe is None:
                    active = self._active  # read once admitted, as in `infer`
                    if active is None:
                        raise ClosedError(f"{self.name} runtime is closed")
                    try:
                        logits = active.exe.run(x)
                    except Stale:
                        logits, active = self._run_current(x)
                    at, mode = active.point, active.mode
                else:
                    logits = self._run_own(exe, at, x)
            finally:
                if gate is not None:
                    gate.release()
        except BaseException as exc:
            handlers = self.observers.request
            if handlers:
                t2 = clock()
                if not batch and isinstance(images, np.ndarray) and images.ndim:
                    batch = int(images.shape[0])  # refused by the input check: the batch it claimed
                if active is not None:  # it ran, and the model refused it (NaN, range) or failed
                    at, mode = active.point, active.mode
                self.observers.emit(handlers, RequestEvent(at, batch, t1 - t0, t2 - t1 if t1 > t0 else 0.0, False,
                                                           type(exc).__name__, mode, point is not None, t2))
            raise
        handlers = self.observers.request
        if handlers:
            t2 = clock()
            # tuple.__new__ directly: the NamedTuple's own __new__ is a Python function, a third of the event's cost
            event = _new_tuple(RequestEvent, (at, batch, t1 - t0, t2 - t1, True, None, mode, point is not None, t2))
            for handler in handlers:
                try:
                    handler(event)
                except Exception:  # noqa: BLE001 - an observer never fails a request
                    self.observers.failed(handler, event)
        return logits, at

    def _request_point(self, point: Any) -> OperatingPoint:
        if isinstance(point, OperatingPoint):
            return self.check_point(point)
        if not isinstance(point, Mapping):
            raise OperatingPointError(f"point must be an OperatingPoint or a dict of lambda_n, width, lambda_th; "
                                      f"got {type(point).__name__}")
        unknown = sorted(set(point) - {*POINT_KEYS, "dial"})
        if unknown:
            raise OperatingPointError(f"unknown operating point key(s) {', '.join(map(str, unknown))}; "
                                      "use lambda_n, width, lambda_th")
        # `dial` (what OperatingPoint.to_dict writes under a mixing dial) is checked against the model's own
        return self._resolve(self.operating_point, {k: point.get(k) for k in (*POINT_KEYS, "dial")})

    def _executable_for(self, point: OperatingPoint) -> tuple[Executable, str]:
        """What serves one request at `point`: the current executable if it computes the same function, a
        prepared one, else the bridge (the materialised one is then prepared in the background), else one
        prepared now."""
        active = self._active
        if active is None:
            raise ClosedError(f"{self.name} runtime is closed")
        key = self._key(point, self.mode)
        if key == active.key:
            return active.exe, active.mode
        exe = self._cached(point)
        if exe is not None:
            return exe, self.mode
        bridge = self._bridge(point)
        if bridge is not None:
            self._prepare_later(point, key)
            return bridge, "in-graph"
        if self.concurrent_prepare:
            return self._get(point), self.mode
        # a backend that prepares one point at a time (TensorRT refits its standby engine) does it on the
        # builder thread, between switches, so a request never refits the engine a switch just prepared
        return self._submit(self._builder, self._get, point).result(), self.mode

    def _run_own(self, exe: Executable, point: OperatingPoint, x: np.ndarray) -> np.ndarray:
        for _ in range(8):
            try:
                return exe.run(x)
            except Stale:  # a TensorRT standby engine refitted under it: get the point's executable again
                exe = self._executable_for(point)[0]
        raise RuntimeError(f"the executable of {point} kept being replaced under the request; retried 8 times")

    @property
    def operating_point(self) -> OperatingPoint:
        active = self._active
        if active is None:
            raise ClosedError(f"{self.name} runtime is closed")
        return active.point

    @property
    def input_spec(self) -> InputSpec:
        """What `infer` accepts (name, channels, height, width, maximum batch)."""
        if self._spec is None:
            raise ClosedError(f"{self.name} runtime is closed")
        return self._spec

    # -- observers -------------------------------------------------------------------------------
    def add_observer(self, observer: Any) -> None:
        """Call `observer.on_request(RequestEvent)`, `.on_switch(SwitchEvent)`, `.on_swap(SwapEvent)` (those
        it has) from now on; see `floatedge.runtime.observe`. Its exceptions never reach a request."""
        self.observers.add(observer)

    def remove_observer(self, observer: Any) -> None:
        self.observers.remove(observer)

    # -- switching -------------------------------------------------------------------------------
    def check_point(self, point: OperatingPoint) -> OperatingPoint:
        check_width_in(point.width, self.widths)
        return point

    def set_operating_point(self, lambda_n: float | None = None, width: float | None = None,
                            lambda_th: float | None = None, *, wait: bool = True,
                            reason: str = "set_operating_point") -> OperatingPoint | Future:
        """Switch to a new point; arguments left out keep their current value. Thread-safe.

        A point already prepared, or one the width's warm in-graph bridge can serve, is made current at
        once, in the caller (the materialised executable is then prepared in the background and swapped in);
        any other is prepared on the builder thread while the current one keeps serving, then made current
        in one assignment. With wait=True (default) return the point once in effect; with wait=False return
        a Future of it. Switches take effect in the order they were asked for. An impossible point raises
        OperatingPointError here and changes nothing; closing the runtime fails a pending switch with
        ClosedError. `reason` is passed to observers (`SwitchEvent.reason`)."""
        asked = time.perf_counter()
        over = {"lambda_n": lambda_n, "width": width, "lambda_th": lambda_th}
        self._resolve(self.operating_point, over)  # raise now, in the caller, if impossible
        with self._switch_lock:
            if self._closed:
                raise ClosedError(f"{self.name} runtime is closed")
            found = None if self._queued else self._find(self._resolve(self._active.point, over))
            if found is None:
                fut: Future = Future()
                self._waiters.add(fut)
                self._queued += 1
                self._builder.submit(self._switch_task, fut, over, asked, reason)
            else:
                event = self._apply(found, asked, reason)
        if found is None:
            return fut.result() if wait else fut
        self._announce(event)
        if wait:
            return event.to_point
        done: Future = Future()
        done.set_result(event.to_point)
        return done

    def _resolve(self, cur: OperatingPoint, over: dict[str, Any]) -> OperatingPoint:
        merged = {k: getattr(cur, k) if v is None else v for k, v in over.items()}
        return self.check_point(OperatingPoint(**merged))

    def _find(self, point: OperatingPoint) -> _Found | None:
        """`point`'s executable if it needs no preparing (the current one, a cached one, or the bridge);
        the caller holds the switch lock."""
        active = self._active
        key = self._key(point, self.mode)
        if key == active.key:  # same function (e.g. λ_th only moved the threshold): keep the executable
            return _Found(point, key, active.exe, active.mode, True, False)
        exe = self._cached(point)
        if exe is not None:
            return _Found(point, key, exe, self.mode, True, False)
        exe = self._bridge(point)
        if exe is not None:
            return _Found(point, key, exe, "in-graph", False, True)
        return None

    def _apply(self, found: _Found, asked: float, reason: str) -> SwitchEvent:
        """Make `found` current (the caller holds the switch lock): the switch is this one assignment."""
        before = self._active
        if before is None:
            raise ClosedError(f"{self.name} runtime is closed")
        self._active = _Active(found.exe, found.point, found.mode, found.key)
        done = time.perf_counter()
        self.last_switch = {"from": before.point.to_dict(), "to": found.point.to_dict(), "cached": found.cached,
                            "bridged": found.bridged, "reason": reason, "seconds": done - asked}
        return SwitchEvent(before.point, found.point, reason, done - asked, found.cached, found.bridged, done)

    def _announce(self, event: SwitchEvent) -> None:
        """After a switch, outside the lock: tell the observers; after a bridged one, prepare the point."""
        if self.observers.switch:
            self.observers.emit(self.observers.switch, event)
        if event.bridged:
            key = self._key(event.to_point, self.mode)
            try:
                self._background.submit(self._materialise, key, event.to_point, event.done - event.effect_s,
                                        event.reason)
            except RuntimeError:  # closing
                pass

    def _switch_task(self, fut: Future, over: dict[str, float | None], asked: float, reason: str) -> None:
        """On the builder thread: a switch whose point has to be prepared first."""
        try:
            if not fut.set_running_or_notify_cancel():  # the caller cancelled it
                return
            try:
                with self._switch_lock:
                    active = self._active
                    if active is None:
                        raise ClosedError(f"{self.name} runtime is closed")
                    point = self._resolve(active.point, over)  # resolved now: "width=0.5" after "lambda_n=1" keeps λ=1
                    found = self._find(point)
                if found is None:
                    found = _Found(point, self._key(point, self.mode), self._get(point), self.mode, False, False)
                with self._switch_lock:
                    event = self._apply(found, asked, reason)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the Future
                fut.set_exception(exc)
                return
            self._announce(event)
            fut.set_result(event.to_point)
        finally:
            with self._switch_lock:
                self._queued -= 1
                self._waiters.discard(fut)

    def _materialise(self, key: tuple, point: OperatingPoint, asked: float, reason: str) -> None:
        """On the background thread, after a bridged switch: prepare the point's materialised executable,
        run it once (its first run allocates), and swap it in if the bridge still serves that point."""
        if not self._bridged(key):
            return  # another switch came first: skip the work
        t0 = time.perf_counter()
        try:
            exe = self._get(point)
            self._warm(exe)
        except Exception:  # noqa: BLE001 - the bridge keeps serving; nothing else to tell
            log.exception("preparing %s in the background failed; its in-graph session keeps serving it", point)
            return
        with self._switch_lock:
            active = self._active
            if not self._bridged(key):
                return
            self._active = _Active(exe, active.point, self.mode, key)
        done = time.perf_counter()
        if self.observers.swap:
            self.observers.emit(self.observers.swap, SwapEvent(active.point, reason, done - asked, done - t0, done))

    def _bridged(self, key: tuple) -> bool:
        active = self._active
        return active is not None and active.key == key and active.mode != self.mode

    def _warm(self, exe: Executable) -> None:
        spec = self._spec
        if spec is not None:
            exe.run(np.zeros((spec.min_batch, spec.channels, spec.height, spec.width), np.float32))

    def _prepare_later(self, point: OperatingPoint, key: tuple) -> None:
        """Prepare `point` on the background thread (once, however many requests ask meanwhile)."""
        with self._cache_lock:
            if key in self._later or key in self._inflight:
                return
            self._later.add(key)

        def task() -> None:
            try:
                self._warm(self._get(point))
            except Exception:  # noqa: BLE001 - the next request at this point prepares it itself
                log.exception("preparing %s in the background failed", point)
            finally:
                with self._cache_lock:
                    self._later.discard(key)

        try:
            self._background.submit(task)
        except RuntimeError:  # closing
            with self._cache_lock:
                self._later.discard(key)

    def prepare(self, points: list[OperatingPoint]) -> None:
        """Prepare points ahead (on the builder thread) so switching to them later is instant."""
        for p in points:
            self._submit(self._builder, self._get, self.check_point(p)).result()

    def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until the switches asked for so far, and the background work they started (materialising
        bridged points, warming bridges) are done. For tests, benchmarks and a server's readiness."""
        for executor in (self._builder, self._background):
            self._submit(executor, lambda: None).result(timeout)

    def _submit(self, executor: ThreadPoolExecutor, fn: Any, *args: Any) -> Future:
        try:
            return executor.submit(fn, *args)
        except RuntimeError:  # shut down
            raise ClosedError(f"{self.name} runtime is closed") from None

    def _key(self, point: OperatingPoint, mode: str) -> tuple:
        return (mode, point.effective())

    def _cached(self, point: OperatingPoint, mode: str | None = None) -> Executable | None:
        return self._lookup(self._key(point, mode or self.mode))

    def _lookup(self, key: tuple) -> Executable | None:
        with self._cache_lock:
            exe = self._cache.get(key)
            if exe is not None and exe.alive():
                self._cache.move_to_end(key)
                return exe
            self._cache.pop(key, None)
            return None

    def _get(self, point: OperatingPoint, mode: str | None = None) -> Executable:
        """The executable for `point` from the cache, or prepared now (LRU-bounded). Threads asking for
        the same point at once share one preparation."""
        key = self._key(point, mode or self.mode)
        with self._cache_lock:
            exe = self._cache.get(key)
            if exe is not None and exe.alive():
                self._cache.move_to_end(key)
                return exe
            pending = self._inflight.get(key)
            if pending is None:
                self._inflight[key] = mine = Future()
        if pending is not None:
            return pending.result()
        try:
            with self._prepare_lock, responsive_gil():
                exe = self._prepare(point, key[0])
        except BaseException as exc:
            with self._cache_lock:
                del self._inflight[key]
            mine.set_exception(exc)
            raise
        with self._cache_lock:
            self._cache[key] = exe
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)  # in-flight requests keep their own reference
            del self._inflight[key]
        mine.set_result(exe)
        return exe

    # -- description and shutdown ----------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        spec = self.input_spec
        active = self._active
        return {"backend": self.name, "mode": self.mode, "mode_choice": self.mode_choice,
                "concurrency": self.concurrency,
                "operating_point": self.operating_point.to_dict(), "widths": list(self.widths),
                "serving": active.mode if active else None,
                "input": {"name": spec.name, "shape": list(spec.shape), "dtype": "float32",
                          "range": list(spec.value_range) if spec.value_range else None},
                "cached_executables": len(self._cache), "observers": len(self.observers),
                "observer_errors": self.observers.errors}

    def close(self) -> None:
        """Stop switching, release models. Later calls raise ClosedError, and so does a switch still
        waiting for its turn; requests in flight finish."""
        with self._switch_lock:
            if self._closed:
                return
            self._closed = True
        self._builder.shutdown(wait=True, cancel_futures=True)  # a switch under way completes
        with self._switch_lock:
            pending = list(self._waiters)
        for fut in pending:  # their tasks were cancelled before they ran
            if not fut.done():
                try:
                    fut.set_exception(ClosedError(f"{self.name} runtime closed before the switch took effect"))
                except Exception:  # noqa: BLE001 - the caller cancelled it meanwhile (InvalidStateError)
                    pass
        self._background.shutdown(wait=True, cancel_futures=True)
        self._active = None
        self._spec = None
        with self._cache_lock:
            self._cache.clear()
        self._close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._builder.shutdown(wait=False)
            self._background.shutdown(wait=False)
        except Exception:  # noqa: BLE001 - interpreter teardown
            pass


class _GilSetting:
    """`responsive_gil`'s state: how many preparations want the short switch interval now, and the
    interval to restore when the last of them ends. Overlapping preparations (the builder, the background
    thread, a request preparing its own point) would otherwise restore each other's setting: A saves 5 ms,
    B saves A's 0.2 ms, A restores 5 ms under B, B restores 0.2 ms for good."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved = 0.0


_GIL = _GilSetting()


@contextmanager
def responsive_gil(interval_s: float = 2e-4) -> Iterator[None]:
    """Lower the interpreter's GIL switch interval while a point is prepared.

    Preparing runs Python (weights of the point, session set-up) on the builder thread; a request thread
    that needs the GIL meanwhile waits up to the switch interval (5 ms by default, `sys.setswitchinterval`)
    before the builder is made to yield — several times a batch-1 latency. At 0.2 ms it yields promptly.
    The setting is process-wide: it is lowered when the first of any overlapping preparations starts and
    restored when the last one ends. (Lowering the builder's OS priority instead starves it while it holds
    the GIL: a priority inversion measured at 50–150 ms stalls, see docs/runtime.md.)"""
    with _GIL.lock:
        if _GIL.users == 0:
            _GIL.saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_GIL.saved, interval_s))
        _GIL.users += 1
    try:
        yield
    finally:
        with _GIL.lock:
            _GIL.users -= 1
            if _GIL.users == 0:
                sys.setswitchinterval(_GIL.saved)
