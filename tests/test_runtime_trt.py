"""The TensorRT backend. Its pure-Python parts (version table, engine cache keys, the identity it is given, the
weights to refit for an operating point, BN folding) run everywhere against real bundles and real ONNX
Runtime; the engine tests need TensorRT and a GPU and skip with the reason otherwise."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from fake_tensorrt import impl_of
from onnx import TensorProto, helper, numpy_helper
from trt_bindings import VERSIONS

from floatedge.bundle import PARITY_TOL, open_bundle
from floatedge.export.torch_export import export_bundle
from floatedge.export.verify import ort_session, parity_images, run_scalable
from floatedge.graph.static import refit_weights, static_model
from floatedge.oppoint import OperatingPoint
from floatedge.runtime.trt.common import (
    EngineKey,
    TrtApi,
    bn_layers,
    bn_scale_shift,
    complete_refit,
    parse_version,
    refit_plan,
)


@pytest.fixture(scope="module")
def bundle(floats_run, tmp_path_factory) -> Path:
    return export_bundle(floats_run, tmp_path_factory.mktemp("trtb") / "floats.febundle", dial="switch").path


# ------------------------------------------------------------------------------------------ version table
@pytest.mark.parametrize("version, expect", [
    ("8.2.1.8", {"supported": False, "tensor_weights_conv": False}),
    ("8.5.2.2", {"supported": True, "explicit_batch_flag": True, "user_managed_context": "without_device_memory",
                 "device_memory_size_attr": "device_memory_size", "set_device_memory": "device_memory",
                 "refit_async": False, "cuda_modules": ("pycuda", "cuda.bindings", "cuda")}),
    ("8.6.2.3", {"supported": True, "refit_async": False, "cuda_modules": ("cuda", "cuda.bindings", "pycuda")}),
    ("10.0.1", {"explicit_batch_flag": False, "user_managed_context": "strategy",
                "device_memory_size_attr": "device_memory_size", "refit_async": True}),
    ("10.3.0", {"device_memory_size_attr": "device_memory_size_v2", "set_device_memory": "set_device_memory",
                "weights_validation": True, "cuda_modules": ("cuda", "cuda.bindings", "pycuda")}),
    ("10.13.3.9", {"cuda_modules": ("cuda.bindings", "cuda", "pycuda"), "strongly_typed": False}),
    ("8.6.1", {"parser_refitter": False, "strongly_typed": False}),
    ("11.4.0.106", {"parser_refitter": True, "strongly_typed": True, "explicit_batch_flag": False,
                    "user_managed_context": "strategy", "device_memory_size_attr": "device_memory_size_v2"}),
])
def test_trt_api_table(version, expect):
    api = TrtApi.for_version(version)
    for attr, value in expect.items():
        assert getattr(api, attr) == value, attr


def test_parse_version():
    assert parse_version("10.3.0.30") == (10, 3, 0)
    assert parse_version("8.5") == (8, 5, 0)
    with pytest.raises(ValueError, match="not a TensorRT version"):
        parse_version("none")


# ------------------------------------------------------------------------------------------ cache keys
BASE = dict(onnx_sha256="ab" * 32, kind="materialised", width=0.5, trt_version="10.3.0", precision="fp16",
            flags=("refit",), batch=(1, 8, 32), device="p3767-0000", l4t="36.4.3", workspace_mb=256)


def test_engine_key_names_what_matters():
    key = EngineKey(**BASE)
    name = key.filename()
    for part in ("w0.5", "materialised", "fp16", "trt10.3.0", "p3767-0000", "l4t36.4.3", ".engine"):
        assert part in name
    assert EngineKey(**{**BASE, "flags": ("refit", "refit")}).filename() == name  # flags are a set
    changed = [("onnx_sha256", "cd" * 32), ("kind", "in-graph"), ("width", 1.0), ("trt_version", "10.3.1"),
               ("precision", "fp32"), ("flags", ()), ("batch", (1, 8, 64)), ("device", "p3767-0001"),
               ("l4t", "36.4.4"), ("workspace_mb", 512)]
    names = {EngineKey(**{**BASE, k: v}).filename() for k, v in changed}
    assert name not in names and len(names) == len(changed)


def test_engine_key_is_safe_as_a_file_name():
    name = EngineKey(**{**BASE, "device": "Orin (NX) / 16GB", "l4t": ""}).filename()
    assert "/" not in name and " " not in name and "l4tnone" in name


# ------------------------------------------------------------------------------------------ refit weights
def _changing(entry: dict, bn_changes: bool) -> set[str]:
    names = set()
    for layer in entry["layers"]:
        if layer["kind"] == "bn":
            if bn_changes and layer["dual"]:
                names |= {f"{layer['name']}.{p}" for p in ("weight", "bias", "running_mean", "running_var")}
        elif layer["noisy"]:
            names.add(f"{layer['name']}.weight")
    return names


@pytest.mark.parametrize("a, b, bn_changes", [(0.0, 0.7, True), (0.7, 1.0, False), (0.2, 0.4, False)])
def test_refit_plan_sends_exactly_what_changes(bundle, a, b, bn_changes):
    """From point a to point b at one width: the noisy conv/linear weights always, the BN parameters only
    when the BN set changes — and the refitted values are b's static weights."""
    bnd = open_bundle(bundle)
    for w in bnd.widths:
        pa, pb = OperatingPoint(a, w, bnd.lambda_th), OperatingPoint(b, w, bnd.lambda_th)
        wa, wb = refit_weights(bnd, pa), refit_weights(bnd, pb)
        assert set(wa) == set(wb)
        plan = refit_plan(wb, set(wb), wa)
        assert set(plan) == _changing(bnd.model_entry(w), bn_changes)
        for name, arr in plan.items():
            assert arr.dtype == np.float32 and arr.flags.c_contiguous
            np.testing.assert_array_equal(arr, wb[name])
        assert set(refit_plan(wb, set(wb))) == set(wb)  # a fresh engine gets everything


def test_refit_plan_only_touches_refittable_names_and_completes_groups(bundle):
    bnd = open_bundle(bundle)
    wa = refit_weights(bnd, OperatingPoint(0.0, 1.0, bnd.lambda_th))
    wb = refit_weights(bnd, OperatingPoint(1.0, 1.0, bnd.lambda_th))
    conv = next(n for n in wb if n.endswith(".weight") and wb[n].ndim == 4)
    refittable = {conv, "not.in.the.bundle"}
    plan = refit_plan(wb, refittable, wa)
    assert set(plan) == {conv}
    # TensorRT then asks for the rest of a fused group (get_missing_weights)
    bn = next(n for n in wb if n.endswith(".running_var"))
    extra = complete_refit([conv, bn], wb, plan)
    assert set(extra) == {bn}
    with pytest.raises(ValueError, match="needs weight 'fused.scale'"):
        complete_refit(["fused.scale"], wb, plan)


def test_refitted_weights_reproduce_the_point(bundle):
    """The static model of a, with b's refit weights put in, computes b (what a refit must achieve)."""
    bnd = open_bundle(bundle)
    images = parity_images(bnd)
    for w in bnd.widths:
        pa, pb = OperatingPoint(0.0, w, bnd.lambda_th), OperatingPoint(0.9, w, bnd.lambda_th)
        model = static_model(bnd, pa)
        plan = refit_plan(refit_weights(bnd, pb), {t.name for t in model.graph.initializer}, refit_weights(bnd, pa))
        for t in model.graph.initializer:
            if t.name in plan:
                t.CopyFrom(numpy_helper.from_array(plan[t.name], t.name))
        got = ort_session(model).run(["logits"], {"images": images})[0]
        want = run_scalable(ort_session(bnd.model_bytes(w)), images, 0.9)
        np.testing.assert_allclose(got, want, atol=PARITY_TOL, rtol=0)


def test_bn_folding_matches_onnx_batchnormalization(bundle):
    """TensorRT 8.x refits BN as the parser folds it (a Scale layer); the fold must equal ONNX's BN."""
    bnd = open_bundle(bundle)
    point = OperatingPoint(0.8, 0.75, bnd.lambda_th)
    model = static_model(bnd, point)
    weights = refit_weights(bnd, point)
    layers = bn_layers(model)
    assert layers and all(all(n in weights for n in names) for _, names, _ in layers)
    node, (g, b, m, v), eps = layers[0]
    c = weights[g].shape[0]
    x = np.random.default_rng(0).normal(size=(2, c, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=eps)], "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weights[n], k) for n, k in ((g, "g"), (b, "b"), (m, "m"), (v, "v"))])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    want = ort_session(onnx_model).run(["y"], {"x": x})[0]
    scale, shift = bn_scale_shift(weights[g], weights[b], weights[m], weights[v], eps)
    np.testing.assert_allclose(x * scale[:, None, None] + shift[:, None, None], want, atol=1e-5, rtol=1e-5)
    assert isinstance(node, str) and node


@pytest.mark.parametrize("mode", ["materialised", "in-graph"])
def test_fp16_model_is_float16_inside_float32_outside(bundle, mode):
    """What a strongly typed TensorRT (11.x, no BuilderFlag.FP16) builds for precision fp16: float16 weights and
    arithmetic, float32 inputs and outputs (the runner's buffers), results within fp16 rounding of fp32."""
    from onnx import TensorProto

    from floatedge.graph.static import load_scalable
    from floatedge.runtime.trt.common import fp16_model

    bnd = open_bundle(bundle)
    images = parity_images(bnd)
    point = OperatingPoint(0.8, 0.5, bnd.lambda_th)
    if mode == "materialised":
        model = static_model(bnd, point)
        run = lambda m: ort_session(m).run(["logits"], {"images": images})[0]
    else:
        model = load_scalable(bnd, 0.5)[0]
        run = lambda m: run_scalable(ort_session(m), images, 0.8)
    half = fp16_model(model)
    assert {t.data_type for t in half.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)} \
        == {TensorProto.FLOAT16}
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in (*half.graph.input, *half.graph.output))
    assert model.graph.initializer[0].data_type == TensorProto.FLOAT  # the input model is left as it was
    want, got = run(model), run(half)
    assert got.dtype == np.float32
    assert np.abs(got - want).max() <= 0.05 * max(1.0, np.abs(want).max())
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_runner_refit_weights_tensorrt_refuses_are_an_error(bundle, tmp_path, version, monkeypatch):
    """A refitter setter that returns False (weights of another count or type) stops the refit with the weight
    named — before, 8.x went on and kept the old values there; 10.x reports the parser refitter's errors."""
    from fake_tensorrt import FakeCuda, make_tensorrt

    import floatedge.runtime.trt.runner as runner_mod

    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(version, cuda))
    real = runner_mod.freeze

    def misfit(model, entry, point):
        static = real(model, entry, point)
        t = next(t for t in static.graph.initializer if t.name == "conv1.weight")
        t.CopyFrom(numpy_helper.from_array(np.zeros((1, *t.dims[1:]), np.float32), t.name))  # another count
        return static

    with open_fake(bundle, (None, cuda), tmp_path) as model:
        monkeypatch.setattr(runner_mod, "freeze", misfit)
        with pytest.raises(RuntimeError, match="conv1.weight"):
            model.set_operating_point(lambda_n=0.4)


def test_no_cuda_binding_is_a_clear_error():
    from floatedge.runtime.trt.cuda import load_cuda

    try:
        import cuda  # noqa: F401

        pytest.skip("a CUDA binding is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="cuda-python"):
        load_cuda(("cuda.bindings", "cuda", "pycuda"))


def test_trt_package_imports_without_tensorrt():
    import floatedge.runtime.trt as trt_pkg

    assert trt_pkg.__doc__
    with pytest.raises(AttributeError):
        trt_pkg.NotAThing  # noqa: B018


# ------------------------------------------------------------------------------------------ real engines
@pytest.fixture(scope="module")
def trt_runtime(bundle, tmp_path_factory):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (needs a Jetson or NVIDIA GPU)")
    import floatedge.runtime as rt

    try:
        model = rt.open(bundle, backend="tensorrt", mode="materialised", precision="fp32", max_batch=8,
                        cache_dir=tmp_path_factory.mktemp("engines"))
    except ImportError as exc:
        pytest.skip(f"TensorRT present but no CUDA binding: {exc}")
    yield model
    model.close()


def test_trt_parity_and_refit(trt_runtime, bundle):
    bnd = open_bundle(bundle)
    images = parity_images(bnd)
    for w in bnd.widths:
        ref = ort_session(bnd.model_bytes(w))
        for lam in (0.0, 0.7, 1.0):
            point = trt_runtime.set_operating_point(lambda_n=lam, width=w)
            res = trt_runtime.run(images)
            assert res.point == point
            np.testing.assert_allclose(res.logits, run_scalable(ref, images, lam), atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="exceeds"):
        trt_runtime.infer(np.zeros((9, *bnd.input_shape), np.float32))


# ------------------------------------------------------------------------------------------ runner logic
# The runner's own bookkeeping, against a stand-in TensorRT (tests/fake_tensorrt.py: engines are ONNX Runtime
# sessions, device memory is host memory). What TensorRT itself does is for the test above, on a device.
@pytest.fixture(params=list(VERSIONS))
def fake(request, monkeypatch):
    from fake_tensorrt import FakeCuda, make_tensorrt

    cuda = FakeCuda()
    trt = make_tensorrt(request.param, cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt, cuda


def open_fake(bundle, fake, cache_dir, **kw):
    import floatedge.runtime as rt

    trt, cuda = fake
    kw = {"mode": "materialised", "precision": "fp32", "max_batch": 8, "opt_batch": 4, **kw}
    return rt.open(bundle, backend="tensorrt", cache_dir=cache_dir, cuda=cuda, **kw)


@pytest.mark.parametrize("mode", ["materialised", "in-graph"])
def test_runner_parity_refit_engine_cache(bundle, fake, tmp_path, mode):
    trt, cuda = fake
    bnd = open_bundle(bundle)
    images = parity_images(bnd)
    with open_fake(bundle, fake, tmp_path, mode=mode) as model:
        for w in bnd.widths:
            ref = ort_session(bnd.model_bytes(w))
            for lam in (0.0, 0.7, 1.0, 0.7):
                point = model.set_operating_point(lambda_n=lam, width=w)
                res = model.run(images)
                assert res.point == point
                np.testing.assert_allclose(res.logits, run_scalable(ref, images, lam), atol=PARITY_TOL, rtol=0)
        d = model.describe()
        assert d["mode"] == mode and d["tensorrt"] == trt.__version__ and d["cuda_binding"] == "fake-cuda"
        instances = 2 if mode == "materialised" else 1
        assert d["engine_instances"] == {f"{w:g}/{mode}": instances for w in bnd.widths}
        # one activation buffer, as large as the largest engine, shared by every context
        contexts = [impl_of(s.context) for slots in model._slots.values() for s in slots]
        assert {c.memory[0] for c in contexts} == {model._scratch}
        assert model._scratch_size == max(impl_of(s.engine).device_memory_size for v in model._slots.values() for s in v)
    assert len(trt.built) == len(bnd.widths)  # one plan per width, both instances from it
    assert all(("REFIT" in flags) == (mode == "materialised") for flags in trt.built)
    if mode == "materialised":
        assert trt.refits  # λ changes went through the refitter
    else:
        assert not trt.refits
    plans = sorted(p.name for p in tmp_path.glob("*.engine"))
    assert len(plans) == len(bnd.widths) and all(f".{mode}.fp32.trt{trt.__version__}." in p for p in plans)
    with open_fake(bundle, fake, tmp_path, mode=mode) as model:  # cached plans: nothing is built again
        model.set_operating_point(width=bnd.widths[-1])
        assert model.describe()["engines_built"] == []
    assert len(trt.built) == len(bnd.widths)


def test_runner_keys_engines_by_the_identity_it_is_given(bundle, fake, tmp_path):
    """The device identity comes in as an argument (floatedge.devices reads it; the runtime never imports
    devices/): it names the plans in the cache and shows in describe()."""
    ident = {"device": "p3767-0000", "l4t": "36.4.3"}
    with open_fake(bundle, fake, tmp_path, identity=ident) as model:
        assert model.describe()["device"] == ident
    plans = [p.name for p in tmp_path.glob("*.engine")]
    assert plans and all(".p3767-0000.l4t36.4.3." in p for p in plans)


def test_runner_refits_only_what_changes(bundle, fake, tmp_path):
    """8.x sends the changed conv/linear weights by name and every BatchNormalization as the parser folded it
    (Scale layer, roles SCALE/SHIFT: the BN initializers themselves are not in the engine); 10.x+ hands the
    whole static model to the parser refitter, which sets every weight of the engine, folded ones included."""
    trt, _ = fake
    bnd = open_bundle(bundle)
    noisy = {f"{layer['name']}.weight" for layer in bnd.model_entry(1.0)["layers"] if layer["kind"] != "bn" and layer["noisy"]}
    with open_fake(bundle, fake, tmp_path) as model:
        engine = impl_of(model._slots[(1.0, "materialised")][0].engine)
        folded = {n for n in engine.weights if n.startswith("tmp_weight_")}
        assert folded and not any(".running_" in n for n in engine.weights)  # BN lives only as its fold
        trt.refits.clear()
        model.set_operating_point(lambda_n=0.7)
        model.set_operating_point(lambda_n=0.9)  # same BN set (adv): only the noisy weights change…
        if trt.__version__.startswith("8"):
            named = lambda refit: set(refit) - folded
            # …but this refit lands on the other engine instance, last refitted for λ=0: the BN set changed too
            assert named(trt.refits[-1]) >= noisy and set(trt.refits[-1]) >= folded
            model.set_operating_point(lambda_n=0.95)  # back on the 0.7 instance: noisy weights by name only
            assert named(trt.refits[-1]) == noisy and set(trt.refits[-1]) >= folded
        else:
            assert set(trt.refits[-1]) == set(engine.weights)


def test_runner_switch_under_concurrent_inference(bundle, fake, tmp_path):
    """Threads infer while the standby engines are refitted and swapped: nothing fails, nothing mixes."""
    import threading
    import time

    bnd = open_bundle(bundle)
    images = parity_images(bnd)[:4]
    plan = [OperatingPoint(lam, w, bnd.lambda_th) for w, lam in [(1.0, 0.7), (0.5, 0.7), (0.5, 0.2), (1.0, 0.0),
                                                                 (0.75, 1.0), (1.0, 0.9)]]
    refs = {w: ort_session(bnd.model_bytes(w)) for w in bnd.widths}
    start = OperatingPoint(0, 1.0, bnd.lambda_th)
    expected = {p: run_scalable(refs[p.width], images, p.lambda_n) for p in [start, *plan]}
    records, errors, stop = [], [], threading.Event()
    with open_fake(bundle, fake, tmp_path) as model:
        def client() -> None:
            while not stop.is_set():
                try:
                    res = model.run(images)
                    records.append((res.point, res.logits))
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for p in plan:
                assert model.set_operating_point(lambda_n=p.lambda_n, width=p.width) == p
                n = len(records)
                while not errors and len(records) < n + 6:  # requests at p before the next switch
                    time.sleep(0.001)
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert not errors, errors[:3]
    for point, logits in records:
        np.testing.assert_allclose(logits, expected[point], atol=PARITY_TOL, rtol=0)
    assert {p for p, _ in records} == set(expected)


def test_runner_bad_input_and_stale_plan(bundle, fake, tmp_path):
    import floatedge.runtime as rt

    trt, _ = fake
    bnd = open_bundle(bundle)
    with open_fake(bundle, fake, tmp_path) as model:
        for bad, pattern in [(np.zeros((9, *bnd.input_shape), np.float32), "exceeds this model's maximum batch 8"),
                             (np.full((1, *bnd.input_shape), np.nan, np.float32), "NaN or Inf"),
                             (np.zeros((1, *bnd.input_shape), np.float64), "float32")]:
            with pytest.raises(rt.InputError, match=pattern):
                model.infer(bad)
        assert model.infer(np.zeros((8, *bnd.input_shape), np.float32)).shape[0] == 8
    built = len(trt.built)
    for plan in tmp_path.glob("*.engine"):
        plan.write_bytes(b"an engine from another TensorRT version")
    with open_fake(bundle, fake, tmp_path) as model:  # unreadable plans are rebuilt, not trusted
        model.set_operating_point(width=0.5)
        assert len(model.describe()["engines_built"]) == 2
    assert len(trt.built) == built + 2


def test_runner_auto_mode_and_old_tensorrt(bundle, fake, tmp_path, monkeypatch):
    from fake_tensorrt import FakeCuda

    with open_fake(bundle, fake, tmp_path, mode="auto") as model:
        assert model.mode_choice["how"] == "measured"
        assert set(model.mode_choice["median_ms"]) == {"in-graph", "materialised"}
    old = types.ModuleType("tensorrt")  # 8.2 (JetPack 4.6): no bindings of it on PyPI; only its version matters
    old.__version__ = "8.2.1"
    monkeypatch.setitem(sys.modules, "tensorrt", old)
    with pytest.raises(RuntimeError, match="older than 8.5"):
        open_fake(bundle, (None, FakeCuda()), tmp_path)
