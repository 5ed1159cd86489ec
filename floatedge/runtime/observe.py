"""What the runtime tells an observer: one event per request, per switch, and per bridge swap.

A server turns these into Prometheus metrics (Triton's `nv_inference_request_success/failure`,
`nv_inference_queue_duration_us`, `nv_inference_compute_infer_duration_us`, `floatedge_switches_total{reason}`,
…) and a governor reads the latencies and the point each request ran at. So the events carry raw
figures (seconds, the point, the batch size) and no aggregation: counting and histograms are the
consumer's, in its own metrics library.

    class Counter:                                   # any object with one or more of these methods
        def on_request(self, e: RequestEvent): ...   # on the request's own thread, after it finished
        def on_switch(self, e: SwitchEvent): ...     # on the thread that made the new point current
        def on_swap(self, e: SwapEvent): ...         # on the runtime's background thread

    model.add_observer(Counter())

Observers are called synchronously, so they must be quick and thread-safe (several request threads call
them at once). An observer's exception is counted (`Observers.errors`), logged once per observer, and never
reaches the request or the switch. With no observer the request path does not time anything.

The events are immutable named tuples (fields by name, `_asdict()`), not frozen dataclasses: building a
frozen dataclass goes through `object.__setattr__` once per field, measured here at 4–5 µs against ~1 µs
for the tuple, and a request event is built on every request — 1% of a 0.2 ms batch-1 inference is 2 µs.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from floatedge.oppoint import OperatingPoint

log = logging.getLogger("floatedge.runtime")

KINDS = ("request", "switch", "swap")


class RequestEvent(NamedTuple):
    """One `run`/`infer` call, successful or not.

    queue_s: from the call until the model started on it (input check, preparing a cold per-request point,
    waiting for a slot of the request gate); run_s: the model run itself; both 0 when the request failed
    before reaching them. point: where it ran (or would have: None when its point was impossible or the
    runtime closed). mode: "materialised" or "in-graph" — the executable that served it ("in-graph" under a
    materialised runtime means the instant-switch bridge served it). own_point: it asked for its own
    point (`run(images, point=...)`). error: the exception's type name (`InputError`, `ClosedError`,
    `OperatingPointError`, …) or None. done: `time.perf_counter()` when it finished."""

    point: OperatingPoint | None
    batch: int
    queue_s: float
    run_s: float
    ok: bool
    error: str | None
    mode: str
    own_point: bool
    done: float


class SwitchEvent(NamedTuple):
    """The current operating point changed (`set_operating_point`).

    effect_s: from the call until requests started running at `to_point` (the first one admitted after
    this runs there). cached: the point's materialised executable was already prepared (a warm switch);
    otherwise it is cold. bridged: it took effect on the width's in-graph session (λ_n fed as an input)
    while the materialised one is prepared; a `SwapEvent` follows when that is swapped in. reason: the
    caller's (`set_operating_point(..., reason=...)`), "set_operating_point" by default."""

    from_point: OperatingPoint
    to_point: OperatingPoint
    reason: str
    effect_s: float
    cached: bool
    bridged: bool
    done: float


class SwapEvent(NamedTuple):
    """After a bridged switch: the materialised executable of `point` replaced the in-graph bridge.

    after_s: from the `set_operating_point` call until the swap; prepare_s: preparing the materialised
    executable (weights, session, one warm-up run). Not sent when another switch came first."""

    point: OperatingPoint
    reason: str
    after_s: float
    prepare_s: float
    done: float


class Observers:
    """The observers of one runtime. Each kind's handlers are one tuple, replaced whole on add/remove, so
    the request path reads it without a lock and an empty tuple means "time nothing"."""

    __slots__ = ("request", "switch", "swap", "errors", "_observers", "_failed", "_lock")

    def __init__(self) -> None:
        self.request: tuple[Callable[[Any], None], ...] = ()
        self.switch: tuple[Callable[[Any], None], ...] = ()
        self.swap: tuple[Callable[[Any], None], ...] = ()
        self.errors = 0
        self._observers: list[Any] = []
        self._failed: set[int] = set()
        self._lock = threading.Lock()

    def add(self, observer: Any) -> None:
        if not any(callable(getattr(observer, f"on_{k}", None)) for k in KINDS):
            raise TypeError(f"an observer needs a method on_request, on_switch or on_swap; "
                            f"{type(observer).__name__} has none")
        with self._lock:
            self._observers.append(observer)
            self._rebuild()

    def __len__(self) -> int:
        return len(self._observers)

    def remove(self, observer: Any) -> None:
        """Remove `observer` (compared by identity); ValueError if it was not added."""
        with self._lock:
            for i, o in enumerate(self._observers):
                if o is observer:
                    del self._observers[i]
                    self._rebuild()
                    return
        raise ValueError(f"{type(observer).__name__} object is not an observer of this runtime")

    def _rebuild(self) -> None:
        for k in KINDS:
            handlers = tuple(m for m in (getattr(o, f"on_{k}", None) for o in self._observers) if callable(m))
            setattr(self, k, handlers)

    def emit(self, handlers: tuple[Callable[[Any], None], ...], event: Any) -> None:
        for handler in handlers:
            try:
                handler(event)
            except Exception:  # noqa: BLE001 - an observer never fails a request or a switch
                self.failed(handler, event)

    def failed(self, handler: Callable[[Any], None], event: Any) -> None:
        """Called from the `except` of a handler that raised: count it, log the first one per observer."""
        self.errors += 1  # a lost increment under a race only undercounts a diagnostic
        owner = id(getattr(handler, "__self__", handler))
        if owner not in self._failed:
            self._failed.add(owner)
            log.exception("observer %r failed on %s (reported once per observer; the request is unaffected)",
                          handler, type(event).__name__)
