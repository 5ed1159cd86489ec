"""The observable runtime (issue 9, item 2): observer events, per-request operating points, instant switches
through the in-graph bridge, ClosedError for a pending switch, the GIL setting under overlapping
preparations, the umask reader, the private ONNX Runtime fast path, and the input-range check. Real
bundles and real ONNX Runtime sessions (the fixtures of test_runtime.py); no timing limits (those are in
benchmarks/runtime_bench.py)."""
from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
import time
from concurrent.futures import Future

import numpy as np
import onnxruntime as ort
import pytest
from test_runtime import bundle, reference, wait_each_ran  # noqa: F401 - the shared module fixtures

import floatedge.runtime as rt
from floatedge.bundle import PARITY_TOL
from floatedge.fsutil import _umask_by_mkdir, current_umask
from floatedge.oppoint import OperatingPoint, OperatingPointError
from floatedge.runtime.base import InputSpec, responsive_gil
from floatedge.runtime.observe import RequestEvent, SwapEvent, SwitchEvent


class Recorder:
    """Keeps every event, in arrival order (list.append is atomic under the GIL)."""

    def __init__(self) -> None:
        self.events: list = []

    def on_request(self, e: RequestEvent) -> None:
        self.events.append(e)

    def on_switch(self, e: SwitchEvent) -> None:
        self.events.append(e)

    def on_swap(self, e: SwapEvent) -> None:
        self.events.append(e)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def open_rt(path, **kw):
    return rt.open(path, threads=1, **kw)


def hold(executor) -> threading.Event:
    """Park `executor`'s one thread on an event, so what is submitted after waits its turn."""
    release, parked = threading.Event(), threading.Event()
    executor.submit(lambda: (parked.set(), release.wait(60)))
    assert parked.wait(30)
    return release


@pytest.fixture
def warm(bundle):  # noqa: F811
    """A materialised runtime with every width's bridge warm, and a recorder attached."""
    with open_rt(bundle, mode="materialised") as model:
        model.wait_idle(60)
        assert model.describe()["bridge"] == {"enabled": True, "warm_widths": [1.0, 0.75, 0.5]}
        rec = Recorder()
        model.add_observer(rec)
        yield model, rec


# ------------------------------------------------------------------------------------------ request events
def test_request_events_say_what_each_request_did(warm, reference):  # noqa: F811
    model, rec = warm
    _, images, ref = reference
    start = model.operating_point
    t0 = time.perf_counter()
    res = model.run(images[:3])
    logits = model.infer(images[:2])
    np.testing.assert_allclose(logits, ref(start, images[:2]), atol=PARITY_TOL, rtol=0)
    with pytest.raises(rt.InputError, match="float32"):
        model.infer(images[:2].astype(np.float64))
    nan = images[:1].copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(rt.InputError, match="NaN"):
        model.run(nan)  # refused inside the model: it was admitted and ran
    a, b, c, d = rec.events
    assert (a.point, a.batch, a.ok, a.error, a.mode, a.own_point) == (start, 3, True, None, "materialised", False)
    assert (b.batch, b.ok, b.point) == (2, True, start)
    assert (c.ok, c.error, c.batch, c.run_s) == (False, "InputError", 2, 0.0)  # refused before the model
    assert (d.ok, d.error, d.batch, d.point) == (False, "InputError", 1, start)
    assert d.run_s > 0
    assert all(e.queue_s >= 0 for e in rec.events) and a.run_s > 0 and b.run_s > 0
    assert t0 < a.done < b.done < c.done < d.done <= time.perf_counter()  # in call order, on this thread
    assert res.point == start


def test_observer_that_raises_never_fails_a_request(warm, reference, caplog):  # noqa: F811
    model, rec = warm
    _, images, ref = reference

    class Broken:
        def on_request(self, e):
            raise RuntimeError("observer bug")

        def on_switch(self, e):
            raise KeyError("observer bug")

    broken = Broken()
    model.add_observer(broken)
    with caplog.at_level(logging.ERROR, logger="floatedge.runtime"):
        for _ in range(3):
            np.testing.assert_allclose(model.infer(images[:2]), ref(model.operating_point, images[:2]),
                                       atol=PARITY_TOL, rtol=0)
        assert model.set_operating_point(lambda_n=0.2) == OperatingPoint(0.2, 1.0, 0.5)
    assert model.observers.errors == 4
    assert len([r for r in caplog.records if "observer" in r.getMessage()]) == 1  # logged once per observer
    assert len(rec.of(RequestEvent)) == 3 and len(rec.of(SwitchEvent)) == 1  # the others still hear everything
    model.remove_observer(broken)
    model.infer(images[:1])
    assert model.observers.errors == 4
    with pytest.raises(ValueError, match="not an observer"):
        model.remove_observer(broken)
    with pytest.raises(TypeError, match="needs a method on_request"):
        model.add_observer(object())
    model.remove_observer(rec)
    model.infer(images[:1])
    assert len(rec.of(RequestEvent)) == 4 and model.describe()["observers"] == 0


def test_a_closed_runtime_reports_the_refused_request(bundle):  # noqa: F811
    rec = Recorder()
    model = open_rt(bundle, mode="materialised", bridge=False)
    model.add_observer(rec)
    model.close()
    with pytest.raises(rt.ClosedError):
        model.run(np.zeros((1, 3, 16, 16), np.float32))
    (e,) = rec.events
    assert (e.ok, e.error, e.point) == (False, "ClosedError", None)


# ------------------------------------------------------------------------------------------ instant switches
def test_cold_lambda_change_takes_effect_at_once_on_the_bridge_then_swaps(warm, reference):  # noqa: F811
    """The first request after set_operating_point already runs at the new point (on the width's in-graph
    session); once the materialised session is ready it is swapped in, same point, same logits."""
    model, rec = warm
    _, images, ref = reference
    start = model.operating_point
    target = OperatingPoint(0.7, 1.0, start.lambda_th)
    release = hold(model._background)  # the materialisation waits until we have looked
    try:
        assert model.set_operating_point(lambda_n=0.7, reason="governor: slo") == target
        res = model.run(images[:4])
        assert res.point == target == model.operating_point
        np.testing.assert_allclose(res.logits, ref(target, images[:4]), atol=PARITY_TOL, rtol=0)
        assert model.describe()["serving"] == "in-graph"
    finally:
        release.set()
    model.wait_idle(60)
    assert model.describe()["serving"] == "materialised"
    res = model.run(images[:4])
    np.testing.assert_allclose(res.logits, ref(target, images[:4]), atol=PARITY_TOL, rtol=0)
    switch, first, swap, second = rec.events
    assert isinstance(switch, SwitchEvent) and isinstance(swap, SwapEvent)
    assert (switch.from_point, switch.to_point, switch.reason) == (start, target, "governor: slo")
    assert (switch.cached, switch.bridged) == (False, True) and switch.effect_s >= 0
    assert (first.point, first.mode) == (target, "in-graph")
    assert (swap.point, swap.reason) == (target, "governor: slo") and swap.after_s >= swap.prepare_s > 0
    assert (second.point, second.mode) == (target, "materialised")
    assert switch.done < first.done < swap.done < second.done
    assert model.last_switch["bridged"] is True and model.last_switch["reason"] == "governor: slo"
    # back to the start point: prepared, so a plain cached switch
    model.set_operating_point(lambda_n=start.lambda_n)
    back = rec.of(SwitchEvent)[-1]
    assert (back.cached, back.bridged, back.reason) == (True, False, "set_operating_point")


def test_cold_width_change_is_instant_too(warm, reference):  # noqa: F811
    model, rec = warm
    _, images, ref = reference
    release = hold(model._background)
    try:
        point = model.set_operating_point(width=0.5, lambda_n=0.9)
        res = model.run(images[:2])
    finally:
        release.set()
    assert res.point == point == OperatingPoint(0.9, 0.5, 0.5)
    assert rec.of(RequestEvent)[0].mode == "in-graph" and rec.of(SwitchEvent)[0].bridged
    np.testing.assert_allclose(res.logits, ref(point, images[:2]), atol=PARITY_TOL, rtol=0)
    model.wait_idle(60)
    assert len(rec.of(SwapEvent)) == 1 and model.describe()["serving"] == "materialised"


def test_a_later_switch_cancels_the_pending_materialisation(warm):
    """λ 0.7 then 0.3 before 0.7's session could be prepared: only 0.3 is materialised and swapped in."""
    model, rec = warm
    release = hold(model._background)
    try:
        model.set_operating_point(lambda_n=0.7)
        model.set_operating_point(lambda_n=0.3)
    finally:
        release.set()
    model.wait_idle(60)
    assert [e.to_point.lambda_n for e in rec.of(SwitchEvent)] == [0.7, 0.3]
    assert [e.point.lambda_n for e in rec.of(SwapEvent)] == [0.3]
    assert model._cached(OperatingPoint(0.7, 1.0, 0.5)) is None  # never prepared
    assert model.describe()["serving"] == "materialised"


def test_without_the_bridge_a_cold_switch_waits_for_its_session(bundle):  # noqa: F811
    rec = Recorder()
    with open_rt(bundle, mode="materialised", bridge=False) as model:
        model.add_observer(rec)
        fut = model.set_operating_point(lambda_n=0.4, wait=False)
        assert isinstance(fut, Future) and fut.result(60) == OperatingPoint(0.4, 1.0, 0.5)
        done = model.set_operating_point(lambda_n=0.0, wait=False)  # cached: applied in the caller
        assert done.done() and done.result() == OperatingPoint(0.0, 1.0, 0.5)
        assert model.describe()["bridge"] == {"enabled": False, "warm_widths": []}
    cold, cached = rec.of(SwitchEvent)
    assert (cold.cached, cold.bridged, cached.cached, cached.bridged) == (False, False, True, False)
    assert not rec.of(SwapEvent)


def test_close_with_a_switch_pending_raises_closed_error_in_its_waiters(bundle):  # noqa: F811
    model = open_rt(bundle, mode="materialised", bridge=False)
    release = hold(model._builder)  # the switches below queue behind this
    fut = model.set_operating_point(lambda_n=0.9, wait=False)
    waited: list[BaseException] = []

    def waiter() -> None:
        try:
            model.set_operating_point(width=0.5)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            waited.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    while model._queued < 2:
        time.sleep(0.001)
    closer = threading.Thread(target=model.close)
    closer.start()
    while not model._builder._shutdown:  # close() has cancelled the queued tasks
        time.sleep(0.001)
    release.set()
    closer.join(60)
    t.join(60)
    with pytest.raises(rt.ClosedError, match="closed before the switch took effect"):
        fut.result(10)
    assert len(waited) == 1 and isinstance(waited[0], rt.ClosedError)
    with pytest.raises(rt.ClosedError):
        model.set_operating_point(lambda_n=0.1)
    with pytest.raises(rt.ClosedError):
        model.wait_idle()


# ------------------------------------------------------------------------------------------ per-request points
def test_per_request_point_serves_one_request_and_leaves_the_current_point(warm, reference):  # noqa: F811
    model, rec = warm
    _, images, ref = reference
    start = model.operating_point
    for point in ({"lambda_n": 0.7, "width": 0.5}, OperatingPoint(0.2, 0.75, 0.5), {"lambda_n": 1.0}):
        res = model.run(images[:3], point=point)
        want = point if isinstance(point, OperatingPoint) else OperatingPoint(
            point.get("lambda_n", start.lambda_n), point.get("width", start.width), start.lambda_th)
        assert res.point == want and model.operating_point == start
        np.testing.assert_allclose(res.logits, ref(want, images[:3]), atol=PARITY_TOL, rtol=0)
    model.wait_idle(60)  # their materialised sessions were prepared in the background and cached
    res = model.run(images[:3], point={"lambda_n": 0.7, "width": 0.5})
    np.testing.assert_allclose(res.logits, ref(res.point, images[:3]), atol=PARITY_TOL, rtol=0)
    events = rec.of(RequestEvent)
    assert [e.mode for e in events] == ["in-graph"] * 3 + ["materialised"] and all(e.own_point for e in events)
    assert not rec.of(SwitchEvent)
    same = model.run(images[:1], point={"lambda_n": start.lambda_n})  # the current point: its own executable
    assert same.point == start and rec.of(RequestEvent)[-1].mode == "materialised"


@pytest.mark.parametrize(("point", "pattern"), [
    ({"width": 0.6}, r"width 0.6 is not in this bundle"),
    ({"lambda": 0.5}, r"unknown operating point key\(s\) lambda; use lambda_n, width, lambda_th"),
    ({"lambda_n": 2.0}, r"lambda_n must be in \[0, 1\]"),
    ((0.5, 1.0), r"point must be an OperatingPoint or a dict"),
])
def test_impossible_per_request_point_is_refused(warm, point, pattern):
    model, rec = warm
    before = model.operating_point
    with pytest.raises(OperatingPointError, match=pattern):
        model.run(np.zeros((1, 3, 16, 16), np.float32), point=point)
    (e,) = rec.events
    assert (e.ok, e.error, e.point, e.own_point) == (False, "OperatingPointError", None, True)
    assert model.operating_point == before


def test_per_request_points_stay_isolated_under_concurrent_threads_and_switches(bundle, reference):  # noqa: F811
    """4 threads, each with its own point (one without, following the current point), while a fifth
    switches the current point: every result is exactly its own point's logits."""
    b, images, ref = reference
    th = b.lambda_th
    own = [OperatingPoint(0.7, 0.5, th), OperatingPoint(0.2, 1.0, th), OperatingPoint(1.0, 0.75, th), None]
    plan = [OperatingPoint(lam, w, th) for lam, w in [(0.4, 1.0), (0.9, 0.5), (0.0, 0.75), (0.6, 1.0)]]
    start = OperatingPoint(0.0, 1.0, th)
    expected = {p: ref(p, images[:2]) for p in {start, *plan, *[p for p in own if p]}}
    records: list[list] = [[] for _ in own]
    errors: list[BaseException] = []
    stop = threading.Event()
    with open_rt(bundle, mode="materialised") as model:
        model.wait_idle(60)

        def client(k: int) -> None:
            while not stop.is_set():
                try:
                    records[k].append(model.run(images[:2], point=own[k]))
                except BaseException as exc:  # noqa: BLE001 - asserted on
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=client, args=(k,)) for k in range(len(own))]
        for t in threads:
            t.start()
        try:
            for p in plan:
                model.set_operating_point(lambda_n=p.lambda_n, width=p.width)
                wait_each_ran(records, errors, 3)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert model.operating_point == plan[-1]
    assert not errors, errors[:3]
    for k, recs in enumerate(records):
        assert len(recs) > len(plan)
        for res in recs:
            if own[k] is not None:
                assert res.point == own[k]
            np.testing.assert_allclose(res.logits, expected[res.point], atol=PARITY_TOL, rtol=0)
    assert {r.point for r in records[-1]} >= {plan[-1]}


# ------------------------------------------------------------------------------------------ input range
@pytest.mark.parametrize("mode", ["in-graph", "materialised"])
def test_0_255_pixels_are_refused_with_a_clear_message(bundle, reference, mode):  # noqa: F811
    _, images, ref = reference
    with open_rt(bundle, mode=mode) as model:
        with pytest.raises(rt.InputError, match=r"^images have mean value \d+.*far above this model's input range "
                                                r"\[0, 1\]: 0\.\.255 pixels\? pass float32 pixels / 255$"):
            model.infer(images[:2] * np.float32(255))
        with pytest.raises(rt.InputError, match=r"far below this model's input range \[0, 1\]: already normalised"):
            model.infer(np.full((1, 3, 16, 16), -3.0, np.float32))
        for edge in (np.zeros((2, 3, 16, 16), np.float32), np.ones((2, 3, 16, 16), np.float32)):
            assert np.isfinite(model.infer(edge)).all()  # the ends of the range are fine
        np.testing.assert_allclose(model.infer(images[:2]), ref(model.operating_point, images[:2]), atol=PARITY_TOL,
                                   rtol=0)
    with open_rt(bundle, mode=mode, check_range=False) as model:
        assert np.isfinite(model.infer(images[:2] * np.float32(255))).all()


def test_range_check_without_the_in_model_sum():
    """Backends that cannot test inside the model (TensorRT) check the same rule in numpy."""
    spec = InputSpec("images", 3, 4, 4, value_range=(0.0, 1.0))
    spec.check(np.ones((2, 3, 4, 4), np.float32))
    with pytest.raises(rt.InputError, match="0..255 pixels"):
        spec.check(np.full((2, 3, 4, 4), 200.0, np.float32))
    with pytest.raises(rt.InputError, match="NaN or Inf"):
        spec.check(np.full((1, 3, 4, 4), np.nan, np.float32))
    InputSpec("images", 3, 4, 4, check_finite=False).check(np.full((1, 3, 4, 4), 200.0, np.float32))


# ------------------------------------------------------------------------------------------ process state
def test_responsive_gil_is_restored_only_when_the_last_overlapping_preparation_ends():
    original = sys.getswitchinterval()
    a_in, b_in, a_out, b_out = (threading.Event() for _ in range(4))
    seen: dict[str, float] = {}

    def prep(name: str, entered: threading.Event, leave: threading.Event) -> None:
        with responsive_gil():
            entered.set()
            leave.wait(10)
        seen[name] = sys.getswitchinterval()

    a = threading.Thread(target=prep, args=("a", a_in, a_out))
    b = threading.Thread(target=prep, args=("b", b_in, b_out))
    a.start()
    a_in.wait(10)
    b.start()
    b_in.wait(10)
    a_out.set()  # A ends first while B still prepares: the short interval stays
    a.join(10)
    assert seen["a"] == pytest.approx(2e-4) and sys.getswitchinterval() == pytest.approx(2e-4)
    b_out.set()
    b.join(10)
    assert sys.getswitchinterval() == original == seen["b"]


def _proc_umask() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_current_umask_never_changes_the_process_umask():
    """A thread watches the umask through /proc while current_umask is called again and again: it must
    never see it change (the old reader set it to 0 for an instant)."""
    old = os.umask(0o027)
    try:
        stop, seen = threading.Event(), set()

        def watch() -> None:
            while not stop.is_set():
                seen.add(_proc_umask())

        t = threading.Thread(target=watch)
        t.start()
        try:
            got = {current_umask() for _ in range(3000)}
        finally:
            stop.set()
            t.join()
        assert got == {0o027} and seen == {0o027}
        assert _umask_by_mkdir() == 0o027  # the fallback where /proc is missing agrees
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------------ ORT fast path
def test_the_private_onnxruntime_call_is_what_the_public_one_makes():
    """`_Session.run` bypasses InferenceSession.run's checks and calls `self._sess.run` directly. If a new
    ONNX Runtime stops delegating this way, this fails: review onnxrt._Session before upgrading."""
    src = inspect.getsource(ort.InferenceSession.run)
    assert "return self._sess.run(output_names, input_feed, run_options)" in src, (
        f"onnxruntime {ort.__version__} changed InferenceSession.run; re-check onnxrt._Session's fast path")


def test_fast_path_in_use_and_fallback_to_the_public_call(bundle, reference):  # noqa: F811
    _, images, ref = reference
    with open_rt(bundle, mode="materialised", bridge=False) as model:
        exe = model._active.exe
        assert exe._run is not None, f"onnxruntime {ort.__version__}: no InferenceSession._sess.run; fast path off"
        want = ref(model.operating_point, images[:2])
        np.testing.assert_allclose(model.infer(images[:2]), want, atol=PARITY_TOL, rtol=0)

        def changed(*args):  # what a future binding with another signature would do
            raise TypeError("run(): incompatible function arguments")

        exe._run = changed
        np.testing.assert_allclose(model.infer(images[:2]), want, atol=PARITY_TOL, rtol=0)
        assert exe._run is None  # the public call from now on
        np.testing.assert_allclose(model.infer(images[:2]), want, atol=PARITY_TOL, rtol=0)
