"""Dynamic batching (Triton's `dynamic_batching { max_queue_delay_microseconds }`): requests that arrive
within a short delay of one another run as one batch and are split back.

Triton's rule (`triton-inference-server/server:docs/user_guide/model_configuration.md`, "Dynamic Batcher"): a
batch is formed from the queue as soon as it reaches the preferred size, or when the oldest request has
waited the configured delay. Here the same, with one floatedge addition: only requests that run at the same
operating point share a batch (a request's own `lambda_n`/`width` parameters, or the current point), so each
response's point is the point its logits came from. Requests keep their arrival order; a request whose point
differs from the batch being formed ends that batch and starts the next one.

Whether it pays is measured (benchmarks/serve_bench.py, docs/serve.md): batching trades up to one delay of
latency for fewer, larger model runs. On a GPU a batch of 8 costs little more than a batch of 1; on a 2-core
CPU the model runs are already compute-bound, so it is off by default there.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

import numpy as np

from floatedge.oppoint import OperatingPoint


class _Item:
    __slots__ = ("images", "point", "key", "future", "enqueued")

    def __init__(self, images: np.ndarray, point: OperatingPoint | None, key: Hashable) -> None:
        self.images, self.point, self.key = images, point, key
        self.future: Future = Future()
        self.enqueued = time.perf_counter()


class BatchResult:
    """One request's share of a batch: its logits, the point they came from, and the batch's timings."""

    __slots__ = ("logits", "point", "queue_s", "infer_s", "batch")

    def __init__(self, logits: np.ndarray, point: OperatingPoint, queue_s: float, infer_s: float, batch: int) -> None:
        self.logits, self.point, self.queue_s, self.infer_s, self.batch = logits, point, queue_s, infer_s, batch


class DynamicBatcher:
    """Queue of requests served by `workers` threads, each running merged batches through `run(images, point)`,
    which returns (logits, the point they ran at). `max_batch`: images per run at most; `delay_s`: how long
    the oldest request may wait for company."""

    def __init__(self, run: Callable[[np.ndarray, OperatingPoint | None], tuple[np.ndarray, OperatingPoint]], *,
                 max_batch: int, delay_s: float, workers: int = 1, name: str = "floatedge-batcher") -> None:
        if max_batch < 1 or delay_s < 0 or workers < 1:
            raise ValueError("a batcher needs max_batch ≥ 1, delay ≥ 0 and at least one worker")
        self._run = run
        self.max_batch = int(max_batch)
        self.delay_s = float(delay_s)
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def configure(self, max_batch: int | None = None, delay_s: float | None = None) -> None:
        """Change the limits live (SIGHUP): the next batch formed uses them."""
        with self._cond:
            if max_batch is not None:
                self.max_batch = max(1, int(max_batch))
            if delay_s is not None:
                self.delay_s = max(0.0, float(delay_s))

    def submit(self, images: np.ndarray, point: OperatingPoint | None) -> Future:
        """Queue one request; the future resolves to its `BatchResult` (or the batch's exception)."""
        key: Any = None if point is None else point.effective()
        item = _Item(images, point, key)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(item)
            self._cond.notify()
        return item.future

    def _take(self) -> list[_Item] | None:
        """Form the next batch (under the lock): the oldest request, then later ones at its point while they
        fit, waiting until the oldest has waited `delay_s` or the batch is full."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            items, n = [first], first.images.shape[0]
            deadline = first.enqueued + self.delay_s
            while n < self.max_batch:
                q = self._queue
                while q and q[0].key == first.key and n + q[0].images.shape[0] <= self.max_batch:
                    item = q.popleft()
                    items.append(item)
                    n += item.images.shape[0]
                if n >= self.max_batch or (q and (q[0].key != first.key or n + q[0].images.shape[0] > self.max_batch)):
                    break  # full, or the next request cannot join: run now, it starts the next batch
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            return items

    def _work(self) -> None:
        while (items := self._take()) is not None:
            started = time.perf_counter()
            try:
                x = items[0].images if len(items) == 1 else np.concatenate([it.images for it in items])
                logits, point = self._run(x, items[0].point)
            except BaseException as exc:  # noqa: BLE001 - delivered to every request of the batch
                for it in items:
                    it.future.set_exception(exc)
                continue
            infer_s = time.perf_counter() - started
            at = 0
            for it in items:
                n = it.images.shape[0]
                it.future.set_result(BatchResult(logits[at:at + n], point, started - it.enqueued, infer_s, x.shape[0]))
                at += n

    def close(self) -> None:
        """Run what is queued, then stop the workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=30)
