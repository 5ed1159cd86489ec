"""The backend contract every runtime backend honours (after Polygraphy's `backend/base/runner.py`).

A backend turns a bundle into *executables*: objects that run the model at one operating point. The
base class owns what must behave the same whatever runs the model, so each backend stays small:

* input checking, in one place (`InputSpec.check`), before any backend sees the array;
* the switch: a new point is prepared off the serving path (one builder thread), then made current by
  assigning one reference (`self._active`); each request reads that reference once, so it runs on one
  whole model and can report the point it ran at — nothing is ever half switched;
* in-graph vs materialised: both are `_prepare` modes; `mode="auto"` times both and keeps the faster.

A backend implements `_prepare(point, mode) -> Executable`, `_input_spec()`, `operating_points()` and
`_close()`. This module imports only numpy and the standard library.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol

import numpy as np

from floatedge.oppoint import OperatingPoint, check_width_in

MODES = ("in-graph", "materialised")
_ADMIT_ALL = nullcontext()  # the gate of concurrency=0
_FLOAT32 = np.dtype(np.float32)


class InputError(ValueError):
    """One request's images are unusable (shape, dtype, NaN, ...). The runtime stays usable."""


class ClosedError(RuntimeError):
    """The runtime was closed."""


class Stale(Exception):
    """Raised by an executable whose weights were replaced after the request picked it; retried."""


NONFINITE = "contain NaN or Inf (or values near ±1e34, whose sum overflows float32)"


@dataclass(frozen=True)
class InputSpec:
    """The one input a floatedge model takes: float32 images N×C×H×W, min_batch ≤ N ≤ max_batch (None: any).

    `check_finite`: refuse NaN/Inf pixels. Where the backend's executables test that inside the model
    (`in_model_finite`, ONNX Runtime), `check` leaves it to them; otherwise it is `np.isfinite` here."""

    name: str
    channels: int
    height: int
    width: int
    max_batch: int | None = None
    min_batch: int = 1
    check_finite: bool = True
    in_model_finite: bool = False
    _chw: tuple[int, int, int] = field(init=False, repr=False, compare=False)
    _max: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_chw", (self.channels, self.height, self.width))
        object.__setattr__(self, "_max", sys.maxsize if self.max_batch is None else self.max_batch)

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
        if self.check_finite and not self.in_model_finite and not np.isfinite(images).all():
            raise InputError(f"{self.name} {NONFINITE}")
        return images

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
    exe: Executable
    point: OperatingPoint


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
        self._active: _Active | None = None
        self._cache: OrderedDict[tuple, Executable] = OrderedDict()
        self._cache_size = max(1, int(cache_size))
        self._cache_lock = threading.Lock()
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="floatedge-switch")
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
        self._active = _Active(self._get(point), point)

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
    def run(self, images: np.ndarray) -> Result:
        """Infer one batch; the result says which operating point produced it (the executable and its
        point are read together, once)."""
        spec = self._spec
        if spec is None:
            raise ClosedError(f"{self.name} runtime is closed")
        x = spec.check(images)
        with self._gate or _ADMIT_ALL:
            return self._run_current(x)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Logits for a float32 N×C×H×W batch at the current operating point."""
        spec, gate = self._spec, self._gate  # the short path of `run`: this is the hot call
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
                return active.exe.run(x)
            except Stale:
                return self._run_current(x).logits  # retried in the slot it holds, not at the back of the queue
        finally:
            if gate is not None:
                gate.release()

    def _run_current(self, x: np.ndarray) -> Result:
        """Run a checked batch on the current executable; the caller holds a gate slot."""
        for _ in range(8):
            active = self._active  # read once admitted: a switch made while the request queued applies
            if active is None:
                raise ClosedError(f"{self.name} runtime is closed")
            try:
                return Result(active.exe.run(x), active.point)
            except Stale:  # its weights were swapped after we picked it: run on the new current one
                continue
        raise RuntimeError("operating point kept changing under the request; retried 8 times")

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

    # -- switching -------------------------------------------------------------------------------
    def check_point(self, point: OperatingPoint) -> OperatingPoint:
        check_width_in(point.width, self.widths)
        return point

    def set_operating_point(self, lambda_n: float | None = None, width: float | None = None,
                            lambda_th: float | None = None, *, wait: bool = True) -> OperatingPoint | Future:
        """Switch to a new point; arguments left out keep their current value. Thread-safe.

        The new point is prepared on the builder thread while the current one keeps serving, then made
        current in one assignment. With wait=True (default) return the point once in effect; with
        wait=False return a Future of it. Switches take effect in the order they were asked for. An
        impossible point raises OperatingPointError here and changes nothing."""
        over = {"lambda_n": lambda_n, "width": width, "lambda_th": lambda_th}
        self._resolve(self.operating_point, over)  # raise now, in the caller, if impossible
        fut = self._builder.submit(self._switch, over, time.perf_counter())
        return fut.result() if wait else fut

    def _resolve(self, cur: OperatingPoint, over: dict[str, float | None]) -> OperatingPoint:
        merged = {k: getattr(cur, k) if v is None else v for k, v in over.items()}
        return self.check_point(OperatingPoint(**merged))

    def _switch(self, over: dict[str, float | None], asked: float) -> OperatingPoint:
        # Resolved here, not in the caller: switches run in order, so "width=0.5" after a pending
        # "lambda_n=1" keeps λ=1.
        active = self._active
        if active is None:
            raise ClosedError(f"{self.name} runtime is closed")
        point = self._resolve(active.point, over)
        cached = self._cached(point) is not None
        exe = self._get(point)
        self._active = _Active(exe, point)  # the switch: one reference assignment
        self.last_switch = {"from": active.point.to_dict(), "to": point.to_dict(), "cached": cached,
                            "seconds": time.perf_counter() - asked}
        return point

    def prepare(self, points: list[OperatingPoint]) -> None:
        """Prepare points ahead (on the builder thread) so switching to them later is instant."""
        for p in points:
            self._builder.submit(self._get, self.check_point(p)).result()

    def _key(self, point: OperatingPoint, mode: str) -> tuple:
        return (mode, point.effective())

    def _cached(self, point: OperatingPoint, mode: str | None = None) -> Executable | None:
        key = self._key(point, mode or self.mode)
        with self._cache_lock:
            exe = self._cache.get(key)
            if exe is not None and exe.alive():
                self._cache.move_to_end(key)
                return exe
            self._cache.pop(key, None)
            return None

    def _get(self, point: OperatingPoint, mode: str | None = None) -> Executable:
        """The executable for `point` from the cache, or prepared now (LRU-bounded)."""
        mode = mode or self.mode
        exe = self._cached(point, mode)
        if exe is None:
            with responsive_gil():
                exe = self._prepare(point, mode)
            with self._cache_lock:
                self._cache[self._key(point, mode)] = exe
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)  # in-flight requests keep their own reference
        return exe

    # -- description and shutdown ----------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        spec = self.input_spec
        return {"backend": self.name, "mode": self.mode, "mode_choice": self.mode_choice,
                "concurrency": self.concurrency,
                "operating_point": self.operating_point.to_dict(), "widths": list(self.widths),
                "input": {"name": spec.name, "shape": list(spec.shape), "dtype": "float32"},
                "cached_executables": len(self._cache)}

    def close(self) -> None:
        """Stop switching, release models. Later calls raise ClosedError; requests in flight finish."""
        if self._active is None and self._spec is None:
            return
        self._builder.shutdown(wait=True, cancel_futures=True)
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
        except Exception:  # noqa: BLE001 - interpreter teardown
            pass


@contextmanager
def responsive_gil(interval_s: float = 2e-4) -> Iterator[None]:
    """Lower the interpreter's GIL switch interval while a point is prepared.

    Preparing runs Python (weights of the point, session set-up) on the builder thread; a request thread
    that needs the GIL meanwhile waits up to the switch interval (5 ms by default, `sys.setswitchinterval`)
    before the builder is made to yield — several times a batch-1 latency. At 0.2 ms it yields promptly.
    The setting is process-wide, so it is restored as soon as the preparation ends. (Lowering the builder's
    OS priority instead starves it while it holds the GIL: a priority inversion measured at 50–150 ms
    stalls, see docs/runtime.md.)"""
    old = sys.getswitchinterval()
    sys.setswitchinterval(min(old, interval_s))
    try:
        yield
    finally:
        sys.setswitchinterval(old)
