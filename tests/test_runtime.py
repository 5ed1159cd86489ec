"""floatedge.runtime on CPU with the ONNX Runtime backend: parity with the bundle, switching under real
concurrent inference, every bad input the issue lists, and the runtime without torch. Real bundles (a tiny
FLOATS model trained for one epoch and exported), real ONNX Runtime sessions, real threads. No timing
limits here: those belong to `floatedge bench` and docs/RESULTS.md."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import floatedge.runtime as rt
from floatedge.bundle import PARITY_TOL, VERIFY_LAMBDAS, open_bundle
from floatedge.cli import main
from floatedge.export.torch_export import export_bundle
from floatedge.export.verify import ort_session, parity_images, run_scalable
from floatedge.oppoint import OperatingPoint, OperatingPointError
from floatedge.runtime.base import FairGate, InputSpec, usable_cpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(floats_run, tmp_path_factory) -> Path:
    """A tiny FLOATS bundle, widths 1.0/0.75/0.5, the switch dial at λ_th 0.5, 16×16 RGB inputs."""
    return export_bundle(floats_run, tmp_path_factory.mktemp("rtb") / "floats.febundle", dial="switch").path


@pytest.fixture(scope="module")
def reference(bundle):
    """The bundle's parity reference: its runtime-scalable model of each width in a bare ORT session fed
    `lambda_n` (what `floatedge verify` checks against PyTorch), on the verify images."""
    b = open_bundle(bundle)
    images = parity_images(b)
    sessions = {w: ort_session(b.model_bytes(w)) for w in b.widths}

    def logits(point: OperatingPoint, x: np.ndarray = images) -> np.ndarray:
        assert point.lambda_th == b.lambda_th
        return run_scalable(sessions[point.width], x, point.lambda_n)

    return b, images, logits


def open_rt(bundle, **kw):
    return rt.open(bundle, threads=1, **kw)


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("mode", ["in-graph", "materialised"])
def test_every_operating_point_equals_the_parity_reference(bundle, reference, mode):
    b, images, ref = reference
    with open_rt(bundle, mode=mode) as model:
        assert model.mode == mode
        for w in b.widths:
            for lam in VERIFY_LAMBDAS:
                point = model.set_operating_point(lambda_n=lam, width=w)
                assert point == OperatingPoint(lam, w, b.lambda_th) == model.operating_point
                res = model.run(images)
                assert res.point == point
                np.testing.assert_allclose(res.logits, ref(point), atol=PARITY_TOL, rtol=0)


def test_parity_with_pytorch(bundle, floats_run, reference):
    """The runtime against the trained torch model itself, not only against another ONNX session."""
    import torch

    from floatedge.train.trainer import load_model

    b, images, _ = reference
    net, _, _ = load_model(floats_run)
    with open_rt(bundle) as model, torch.no_grad():
        for w in b.widths:
            for lam in (0.0, 0.7, 1.0):
                point = model.set_operating_point(lambda_n=lam, width=w)
                net.set_operating_point(point)
                np.testing.assert_allclose(model.infer(images), net(torch.from_numpy(images)).numpy(),
                                           atol=PARITY_TOL, rtol=0)


def test_operating_points_differ(bundle, reference):
    """The switch is real: λ and width change the logits (else the parity tests would prove little)."""
    b, images, _ = reference
    with open_rt(bundle) as model:
        outs = [model.set_operating_point(lambda_n=lam, width=w) and model.infer(images)
                for w in b.widths for lam in (0.0, 0.3, 1.0)]
    for i in range(len(outs)):
        for j in range(i):
            assert np.abs(outs[i] - outs[j]).max() > 1e-3


def test_another_lambda_th(bundle, reference):
    """Both modes serve a λ_th other than the one baked into the graph, and agree."""
    b, images, ref = reference
    outs = {}
    for mode in ("in-graph", "materialised"):
        with open_rt(bundle, mode=mode) as model:
            point = model.set_operating_point(lambda_n=0.25, width=0.75, lambda_th=0.0)  # BN_A, s = 0.25
            assert point.lambda_th == 0.0
            outs[mode] = model.infer(images)
    np.testing.assert_allclose(outs["in-graph"], outs["materialised"], atol=PARITY_TOL, rtol=0)
    # λ=0.25 under λ_th=0 computes what λ=0.625 computes under the bundle's λ_th=0.5 (s=0.25, BN_A)
    np.testing.assert_allclose(outs["materialised"], ref(OperatingPoint(0.625, 0.75, 0.5)), atol=PARITY_TOL, rtol=0)


def test_mode_is_chosen_by_measurement_and_said(bundle):
    with open_rt(bundle) as model:
        d = model.describe()
        assert d["mode"] in rt.MODES
        choice = d["mode_choice"]
        assert choice["how"] == "measured" and choice["chosen"] == d["mode"]
        assert set(choice["median_ms"]) == set(rt.MODES)
        assert choice["median_ms"][d["mode"]] == min(choice["median_ms"].values())
        assert d["input"] == {"name": "images", "shape": [None, 3, 16, 16], "dtype": "float32", "range": [0.0, 1.0]}
        assert d["providers"][-1] == "CPUExecutionProvider"


def test_api_surface(bundle):
    b = open_bundle(bundle)
    with open_rt(bundle, point=OperatingPoint(0.2, 0.5, b.lambda_th)) as model:
        assert model.operating_point == OperatingPoint(0.2, 0.5, b.lambda_th)
        assert model.operating_points() == b.table()
        spec = model.input_spec
        assert (spec.name, spec.channels, spec.height, spec.width, spec.max_batch) == ("images", 3, 16, 16, None)
        out = model.infer(np.zeros((5, 3, 16, 16), np.float32))
        assert out.shape == (5, len(b.classes)) and out.dtype == np.float32
        fut = model.set_operating_point(lambda_n=0.9, wait=False)
        assert fut.result(timeout=60) == OperatingPoint(0.9, 0.5, b.lambda_th)
    with pytest.raises(rt.ClosedError, match="closed"):
        model.infer(np.zeros((1, 3, 16, 16), np.float32))
    model.close()  # twice is fine


def test_switching_back_is_served_from_the_cache(bundle):
    with open_rt(bundle, mode="materialised") as model:
        model.wait_idle(60)  # the in-graph bridges are warm
        model.set_operating_point(lambda_n=0.7)
        assert model.last_switch["cached"] is False and model.last_switch["bridged"] is True
        model.wait_idle(60)  # λ=0.7 materialised in the background
        model.set_operating_point(lambda_n=0.0)
        assert model.last_switch["cached"] is True  # the start point
        model.set_operating_point(lambda_n=0.7)
        assert model.last_switch["cached"] is True


def test_points_with_equal_effect_share_one_executable(bundle):
    """λ=1 under λ_th=0 and λ=1 under λ_th=0.5 compute the same function (OperatingPoint.effective)."""
    with open_rt(bundle, mode="materialised") as model:
        model.set_operating_point(lambda_n=1.0)
        model.set_operating_point(lambda_n=1.0, lambda_th=0.0)
        assert model.last_switch["cached"] is True
        assert model.operating_point.lambda_th == 0.0  # but the point reported is the one asked for


# ------------------------------------------------------------------------------------------ switching
@pytest.mark.parametrize(("mode", "concurrency"), [("in-graph", None), ("materialised", None), ("materialised", 0)])
def test_switch_during_concurrent_inference_loses_nothing_and_mixes_nothing(bundle, reference, mode, concurrency):
    """4 real client threads infer without pause while λ and width change (cold and cached points,
    blocking and non-blocking switches), through the runtime's request gate (default) and without one (0).
    Every request must succeed, and its logits must be exactly those of the operating point it reports —
    a half-switched model would match neither point."""
    b, images, ref = reference
    plan = [OperatingPoint(lam, w, b.lambda_th) for w, lam in
            [(1.0, 0.7), (0.5, 0.7), (0.5, 0.2), (0.75, 1.0), (1.0, 0.0), (0.5, 0.7), (0.75, 0.4), (1.0, 0.7)]]
    start = OperatingPoint(0.0, 1.0, b.lambda_th)
    expected = {p: ref(p) for p in [start, *plan]}
    inputs = [images[i : i + 2] for i in range(0, 8, 2)]  # each client its own batch of 2
    records: list[list] = [[] for _ in inputs]
    errors: list[BaseException] = []
    stop = threading.Event()

    with open_rt(bundle, mode=mode, concurrency=concurrency) as model:
        def client(k: int) -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    res = model.run(inputs[k])
                except BaseException as exc:  # noqa: BLE001 - collected and asserted on
                    errors.append(exc)
                    return
                records[k].append((t0, time.perf_counter(), res.point, res.logits))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(len(inputs))]
        for t in threads:
            t.start()
        applied = []
        try:
            while not errors and min(len(r) for r in records) < 3:
                time.sleep(0.01)
            for i, p in enumerate(plan):
                if i % 3 == 2:  # some switches without waiting, the next one queued behind them
                    fut = model.set_operating_point(lambda_n=p.lambda_n, width=p.width, wait=False)
                    applied.append((p, None))
                    assert fut.result(timeout=120) == p
                else:
                    assert model.set_operating_point(lambda_n=p.lambda_n, width=p.width) == p
                applied.append((p, time.perf_counter()))
                wait_each_ran(records, errors, 2)  # a couple of requests at p before the next switch
        finally:
            stop.set()
            for t in threads:
                t.join()

    assert not errors, errors[:3]
    seen = set()
    for k, recs in enumerate(records):
        rows = np.arange(2 * k, 2 * k + 2)
        for _, _, point, logits in recs:
            assert point in expected, point
            np.testing.assert_allclose(logits, expected[point][rows], atol=PARITY_TOL, rtol=0)
            seen.add(point)
    assert seen == set(expected)  # every point was really served
    # once set_operating_point has returned, requests that start later run at that point (or a later one)
    for i, (_, t_done) in enumerate(applied):
        if t_done is None:
            continue
        later = {q for q, _ in applied[i:]}
        for recs in records:
            for t0, _, point, _ in recs:
                if t0 > t_done:
                    assert point in later


def wait_each_ran(records: list[list], errors: list, more: int) -> None:
    """Until every client thread has recorded `more` further requests (or one of them failed)."""
    n = [len(r) for r in records]
    while not errors and any(len(r) < k + more for r, k in zip(records, n, strict=True)):
        time.sleep(0.002)


# ------------------------------------------------------------------------------------------ request gate
def _enter_in_turn(gate: FairGate, n: int) -> list[int]:
    """Threads 0..n-1 queue on `gate` one after another (each is queued before the next starts) while
    the test holds every slot. Then one slot is freed, and each admitted thread stays inside until the
    test has seen it, so admissions happen one at a time. Returns the order in which they got in."""
    admitted: queue.Queue[int] = queue.Queue()
    leave = [threading.Event() for _ in range(n)]

    def worker(i: int) -> None:
        with gate:
            admitted.put(i)
            leave[i].wait(10)

    threads = []
    for i in range(n):
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 10
        while len(gate._waiters) < i + 1:  # queued: its own lock is in the queue
            assert time.monotonic() < deadline, "worker never queued"
            time.sleep(0.001)
    order = []
    gate.release()  # one slot: the head of the queue gets in
    for _ in range(n):
        i = admitted.get(timeout=10)
        order.append(i)
        leave[i].set()  # it leaves, handing its slot to the next in line
    for t in threads:
        t.join(timeout=10)
    for _ in range(gate.slots - 1):
        gate.release()  # the slots the test still holds
    return order


@pytest.mark.parametrize("slots", [1, 2])
def test_gate_serves_first_come_first_served(slots):
    gate = FairGate(slots)
    for _ in range(slots):
        gate.acquire()  # the test holds every slot
    assert _enter_in_turn(gate, 6) == list(range(6))
    assert gate._free == slots and not gate._waiters  # every slot came back


def test_gate_hands_a_released_slot_to_the_waiter_not_back_to_the_releaser():
    """A thread that releases and at once asks again queues behind the thread already waiting
    (threading.Semaphore would let it barge back in)."""
    gate = FairGate(1)
    gate.acquire()
    order: list[str] = []
    waiter = threading.Thread(target=lambda: (gate.acquire(), order.append("waiter"), gate.release()))
    waiter.start()
    while not gate._waiters:
        time.sleep(0.001)
    gate.release()
    gate.acquire()  # the releaser asks again at once
    order.append("releaser")
    gate.release()
    waiter.join(timeout=10)
    assert order == ["waiter", "releaser"]


def test_gate_never_admits_more_than_its_slots():
    gate, inside, peak, lock = FairGate(2), [0], [0], threading.Lock()

    def worker() -> None:
        for _ in range(300):
            with gate:
                with lock:
                    inside[0] += 1
                    peak[0] = max(peak[0], inside[0])
                time.sleep(0)  # let the others run while inside
                with lock:
                    inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2 and inside[0] == 0


def test_runtime_runs_at_most_concurrency_requests_at_once(bundle):
    """Real ORT executables, wrapped to count how many run at once, under 4 client threads."""
    with open_rt(bundle, mode="materialised", concurrency=1) as model:
        assert model.describe()["concurrency"] == 1
        inner = model._active.exe
        state = {"inside": 0, "peak": 0}
        lock = threading.Lock()

        class Counting:
            def run(self, x):
                with lock:
                    state["inside"] += 1
                    state["peak"] = max(state["peak"], state["inside"])
                try:
                    return inner.run(x)
                finally:
                    with lock:
                        state["inside"] -= 1

            def alive(self):
                return True

        model._active = model._active._replace(exe=Counting())
        x = np.zeros((2, 3, 16, 16), np.float32)
        want = inner.run(x)
        outs: list[np.ndarray] = []

        def client() -> None:
            for _ in range(40):
                outs.append(model.infer(x) if len(outs) % 2 else model.run(x).logits)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert state["peak"] == 1 and len(outs) == 160
    for out in outs:
        np.testing.assert_array_equal(out, want)


def test_concurrency_default_and_bad_values(bundle):
    from floatedge.runtime.onnxrt import default_concurrency

    assert default_concurrency(None) == 1  # ORT's default pool already uses every core
    assert default_concurrency(1) == usable_cpus()
    assert default_concurrency(10 * usable_cpus()) == 1
    with open_rt(bundle) as model:
        assert model.concurrency == usable_cpus()  # threads=1
    with rt.open(bundle, concurrency=0) as model:
        assert model.concurrency == 0 and model._gate is None
    with pytest.raises(ValueError, match="concurrency must be ≥ 0"):
        rt.open(bundle, concurrency=-1)
    with pytest.raises(ValueError, match="at least one slot"):
        FairGate(0)


def test_switches_apply_in_order_and_compose(bundle):
    """Partial switches queued without waiting compose in call order: width then λ keeps both."""
    b = open_bundle(bundle)
    with open_rt(bundle, mode="materialised") as model:
        futs = [model.set_operating_point(width=0.5, wait=False),
                model.set_operating_point(lambda_n=0.8, wait=False),
                model.set_operating_point(width=0.75, wait=False)]
        got = [f.result(timeout=120) for f in futs]
        assert got == [OperatingPoint(0.0, 0.5, b.lambda_th), OperatingPoint(0.8, 0.5, b.lambda_th),
                       OperatingPoint(0.8, 0.75, b.lambda_th)]
        assert model.operating_point == got[-1]


# ------------------------------------------------------------------------------------------ bad input
GOOD = np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32)


def _nan():
    x = GOOD.copy()
    x[1, 2, 3, 4] = np.nan
    return x


def _inf():
    x = GOOD.copy()
    x[0, 0, 0, 0] = -np.inf
    return x


BAD_INPUTS = {
    "rank 3": (GOOD[0], r"rank 4 \(N×C×H×W\), got shape \(3, 16, 16\)"),
    "rank 5": (GOOD[None], r"rank 4"),
    "channels": (np.zeros((2, 1, 16, 16), np.float32), r"3 channels .* got 1"),
    "channels last": (np.ascontiguousarray(GOOD.transpose(0, 2, 3, 1)), r"3 channels .* got 16"),
    "size": (np.zeros((2, 3, 32, 32), np.float32), r"16×16 pixels, got 32×32"),
    "empty batch": (np.zeros((0, 3, 16, 16), np.float32), r"empty batch"),
    "float64": (GOOD.astype(np.float64), r"float32 .* got float64"),
    "uint8": ((GOOD * 255).astype(np.uint8), r"float32 .* got uint8"),
    "big-endian": (GOOD.astype(">f4"), r"float32 \(native byte order\), got >f4"),
    "list": (GOOD.tolist(), r"numpy.ndarray, got list"),
    "torch-like object": (object(), r"numpy.ndarray, got object"),
    "NaN": (_nan(), r"NaN or Inf"),
    "Inf": (_inf(), r"NaN or Inf"),
    "non-contiguous": (np.zeros((2, 3, 16, 32), np.float32)[..., ::2], r"C-contiguous"),
    "fortran order": (np.asfortranarray(GOOD), r"C-contiguous"),
}


@pytest.fixture(scope="module")
def shared_rt(bundle):
    with open_rt(bundle, max_batch=4) as model:
        yield model


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_the_runtime_stays_usable(shared_rt, reference, case):
    x, pattern = BAD_INPUTS[case]
    before = shared_rt.operating_point
    with pytest.raises(rt.InputError, match=pattern) as info:
        shared_rt.infer(x)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    _, images, ref = reference
    np.testing.assert_allclose(shared_rt.infer(images[:2]), ref(before, images[:2]), atol=PARITY_TOL, rtol=0)


@pytest.mark.parametrize("mode", ["in-graph", "materialised"])
@pytest.mark.parametrize("case", ["NaN", "Inf"])
def test_nan_and_inf_are_caught_in_both_modes(bundle, reference, mode, case):
    """ONNX Runtime tests finiteness inside the model (ReduceSum(images)); each bad value, anywhere, and
    +Inf and −Inf together (their sum is NaN, not a cancellation)."""
    _, images, ref = reference
    with open_rt(bundle, mode=mode) as model:
        size = images[:3].size
        for i in [*range(0, size, 97), size - 1]:  # a spread of positions, first and last included
            x = images[:3].copy()
            x.reshape(-1)[i] = np.nan if case == "NaN" else (np.inf if i % 2 else -np.inf)
            with pytest.raises(rt.InputError, match="images contain NaN or Inf"):
                model.infer(x)
        both = images[:3].copy()
        both[0, 0, 0, 0], both[2, 2, 3, 3] = np.inf, -np.inf
        with pytest.raises(rt.InputError, match="NaN or Inf"):
            model.infer(both)
        np.testing.assert_allclose(model.infer(images[:3]), ref(model.operating_point, images[:3]),
                                   atol=PARITY_TOL, rtol=0)
        big = images[:3] * np.float32(1e30)  # huge but finite: outside the input range, not "NaN or Inf"
        with pytest.raises(rt.InputError, match="far above this model's input range"):
            model.infer(big)
    with open_rt(bundle, mode=mode, check_range=False) as model:
        assert model.infer(big).shape == images[:3].shape[:1] + ref(model.operating_point, images[:1]).shape[1:]


def test_ndarray_subclass_is_accepted(shared_rt, tmp_path):
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=GOOD.shape)
    mm[:] = GOOD
    np.testing.assert_array_equal(shared_rt.infer(mm), shared_rt.infer(GOOD))


def test_batch_larger_than_the_fixed_maximum(shared_rt):
    with pytest.raises(rt.InputError, match="batch of 5 exceeds this model's maximum batch 4"):
        shared_rt.infer(np.zeros((5, 3, 16, 16), np.float32))
    assert shared_rt.infer(np.zeros((4, 3, 16, 16), np.float32)).shape[0] == 4


def test_fixed_batch_engine_spec():
    """A fixed-batch engine (TensorRT profile min=max, or an ONNX graph with N fixed) refuses other sizes."""
    spec = InputSpec("images", 3, 8, 8, max_batch=4, min_batch=4)
    spec.check(np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(rt.InputError, match="exceeds"):
        spec.check(np.zeros((8, 3, 8, 8), np.float32))
    with pytest.raises(rt.InputError, match="below this model's fixed batch 4"):
        spec.check(np.zeros((1, 3, 8, 8), np.float32))


def test_finite_check_can_be_turned_off(bundle):
    with open_rt(bundle, check_finite=False, mode="materialised") as model:
        out = model.infer(_nan())
        assert np.isnan(out[1]).all() and np.isfinite(out[0]).all()


@pytest.mark.parametrize("kwargs, pattern", [
    ({"width": 0.6}, r"width 0.6 is not in this bundle; it has 1, 0.75, 0.5$"),
    ({"lambda_n": 1.5}, r"lambda_n must be in \[0, 1\]"),
    ({"lambda_n": float("nan")}, r"lambda_n must be in \[0, 1\]"),
    ({"lambda_n": -0.1, "width": 0.5}, r"lambda_n must be in \[0, 1\]"),
    ({"lambda_th": 1.0}, r"lambda_th must be in \[0, 1\)"),
    ({"width": 0.0}, r"width must be in \(0, 1\]"),
])
def test_unknown_operating_point_is_refused_and_nothing_changes(shared_rt, reference, kwargs, pattern):
    before = shared_rt.operating_point
    with pytest.raises(OperatingPointError, match=pattern):
        shared_rt.set_operating_point(**kwargs)
    assert shared_rt.operating_point == before
    _, images, ref = reference
    np.testing.assert_allclose(shared_rt.infer(images[:2]), ref(before, images[:2]), atol=PARITY_TOL, rtol=0)


def test_bad_open_arguments(bundle, tmp_path):
    with pytest.raises(ValueError, match="unknown backend 'onnx'"):
        rt.open(bundle, backend="onnx")
    with pytest.raises(ValueError, match="mode must be 'auto' or one of"):
        rt.open(bundle, mode="fast")
    with pytest.raises(FileNotFoundError, match="no bundle at"):
        rt.open(tmp_path / "missing.febundle")
    with pytest.raises(OperatingPointError, match="width 0.3 is not in this bundle"):
        rt.open(bundle, point=OperatingPoint(0.0, 0.3))


def test_tensorrt_backend_without_tensorrt_says_what_to_do(bundle):
    pytest.importorskip("onnxruntime")
    if "tensorrt" in rt.available_backends():
        pytest.skip("tensorrt is installed here; tests/test_runtime_trt.py covers it")
    with pytest.raises(ImportError, match="use backend='onnxruntime'"):
        rt.open(bundle, backend="tensorrt")


# ------------------------------------------------------------------------------------------ no torch
def test_runtime_imports_and_runs_with_torch_hidden(bundle, reference):
    """A child interpreter where importing torch raises: open the bundle, switch, infer, compare."""
    b, images, ref = reference
    want = ref(OperatingPoint(0.7, 0.5, b.lambda_th), images)
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is hidden in this test")
        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        import floatedge.runtime as rt
        from floatedge.export.verify import parity_images
        from floatedge.bundle import open_bundle
        with rt.open({str(bundle)!r}, threads=1) as model:
            model.set_operating_point(lambda_n=0.7, width=0.5)
            out = model.infer(parity_images(open_bundle({str(bundle)!r})))
            print(model.describe()["mode"])
        np.save(sys.argv[1], out)
        from floatedge.cli import main  # the bench command too
        main(["bench", {str(bundle)!r}, "--batches", "1", "--lambdas", "0", "--widths", "0.5", "--rounds", "10",
              "--budget", "0", "--no-switch"], standalone_mode=False)
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch hidden")
    """)
    out_file = Path(str(bundle) + ".notorch.npy")
    proc = subprocess.run([sys.executable, "-c", code, str(out_file)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2:] == ["torch", "hidden"]
    assert "overhead over bare InferenceSession.run" in proc.stdout
    np.testing.assert_allclose(np.load(out_file), want, atol=PARITY_TOL, rtol=0)


# ------------------------------------------------------------------------------------------ bench CLI
def test_bench_cli_writes_json_and_table(bundle, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", str(bundle), "--batches", "1,4", "--lambdas", "0,0.7",
                                       "--widths", "1,0.5", "--rounds", "10", "--budget", "0", "--clients", "2",
                                       "--concurrency", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["backend"] == "onnxruntime"
    assert {(r["lambda_n"], r["width"], r["batch"]) for r in res["latency"]} == {
        (lam, w, b) for lam in (0.0, 0.7) for w in (1.0, 0.5) for b in (1, 4)}
    assert all(r["ratio"] > 0 for r in res["latency"])
    assert {r["width"] for r in res["overhead"]} == {1.0, 0.5}
    assert {r["batch"] for r in res["width_ratio"]} == {1, 4}
    assert {m for r in res["modes"] for m in rt.MODES if m in r} == set(rt.MODES)
    sw = res["switch"]
    assert sw["failed"] == 0 and len(sw["switches"]) == 4 and sw["requests"] > 0
    assert sw["concurrency"] == 1 and sw["throughput"] > 0
    assert [s["cached"] for s in sw["switches"]] == [False, False, False, True]
    assert "ratio" in result.output and "switching under load" in result.output


def test_bench_cli_bad_bundle_is_one_line(tmp_path):
    (tmp_path / "x.febundle").mkdir()
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "x.febundle")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: ")
