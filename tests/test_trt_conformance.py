"""The TensorRT backend against the real TensorRT Python API of every release it targets (edge.md §6).

For each version in `trt_bindings.VERSIONS` (8.6.1, 10.3.0, the newest 10.x and 11.x): the runner's TensorRT code
paths run on the stand-in (`fake_tensorrt.py`, whose surface is that version's), which records every module name,
class, method, property, enum member and argument the runner uses; a subprocess then imports the *real* bindings of
that version on stub libraries and checks each recorded use against them — by name, and for calls by binding the
arguments to the signatures in the bindings' own pybind11 docstrings (positional count, keyword names, argument
types). What is checked is what the code did, so the list cannot drift from the code; a static pass over the
runner's source makes sure no TensorRT name it mentions went unexercised.

The bindings install once into `$FLOATEDGE_TRT_CACHE` (default ~/.cache/floatedge/trt-bindings; `.ci/run` does it
first): later runs take seconds. If they cannot be installed (no network), the live checks skip here, saying why,
and fail where CI is set. The checks of the stand-in against the committed snapshot run regardless.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_tensorrt import FakeCuda, impl_of, make_tensorrt
from onnx import numpy_helper
from trt_bindings import (
    VERSIONS,
    InstallError,
    ensure,
    load_snapshot,
    member_of,
    parse_signature,
    run_live,
    snapshot_of,
    trt_names_in_source,
)

from floatedge.bundle import PARITY_TOL, open_bundle
from floatedge.export.torch_export import export_bundle
from floatedge.export.verify import ort_session, parity_images, run_scalable
from floatedge.runtime.trt.common import EngineKey, TrtApi


def bindings(version: str) -> Path:
    """The installed real bindings of `version`; skip (fail under CI) if they cannot be had here."""
    try:
        return ensure(version)
    except InstallError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the TensorRT {version} bindings could not be installed, and CI is set: {exc}")
        pytest.skip(f"the TensorRT {version} bindings could not be installed here: {exc}")


@pytest.fixture(scope="module")
def bundle(floats_run, tmp_path_factory) -> Path:
    return export_bundle(floats_run, tmp_path_factory.mktemp("conf") / "floats.febundle").path


def exercise(version: str, bundle: Path, tmp: Path) -> list[dict]:
    """Every TensorRT code path of the runner and loader for `version`, on the stand-in; returns what they used.

    Covered: materialised engines (fp16 and fp32; build, timing cache, refit of both instances per width),
    in-graph engines, cached plans (deserialize), stale plans (rebuilt), an ONNX the parser rejects, and refit
    weights TensorRT refuses."""
    import floatedge.runtime as rt
    import floatedge.runtime.trt.runner as runner_mod
    from floatedge.runtime.trt.loader import build_plan

    cuda = FakeCuda()
    trt = make_tensorrt(version, cuda)
    bnd = open_bundle(bundle)
    images = parity_images(bnd)[:2]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "tensorrt", trt)

        def opened(cache: Path, **kw):
            kw = {"mode": "materialised", "precision": "fp32", "max_batch": 4, "opt_batch": 2, **kw}
            return rt.open(bundle, backend="tensorrt", cache_dir=cache, cuda=cuda, **kw)

        for precision in ("fp16", "fp32"):
            with opened(tmp / precision, precision=precision) as model:
                for w in bnd.widths:
                    for lam in (0.0, 0.7, 1.0):
                        model.set_operating_point(lambda_n=lam, width=w)
                        model.run(images)
        with opened(tmp / "fp32", mode="in-graph") as model:
            model.set_operating_point(lambda_n=0.6)
            model.run(images)
        with opened(tmp / "fp32") as model:  # cached plans
            model.run(images)
        for plan in (tmp / "fp32").glob("*.engine"):
            plan.write_bytes(b"an engine of another TensorRT version")
        with opened(tmp / "fp32") as model:  # rebuilt
            model.run(images)
        key = EngineKey(onnx_sha256="0" * 64, kind="materialised", width=1.0, trt_version=version)
        with pytest.raises(RuntimeError, match="could not parse the ONNX model: ModelImporter"):
            build_plan(trt, TrtApi.for_version(version), b"not an onnx model", key, "images", bnd.input_shape,
                       trt.Logger(trt.Logger.WARNING))
        real_freeze = runner_mod.freeze

        def misfit(model, entry, point):  # a static model whose first conv no longer fits the engine
            static = real_freeze(model, entry, point)
            t = next(t for t in static.graph.initializer if t.name.endswith(".weight") and len(t.dims) == 4)
            t.CopyFrom(numpy_helper.from_array(np.zeros((1, *t.dims[1:]), np.float32), t.name))
            return static

        with opened(tmp / "fp32") as model:
            mp.setattr(runner_mod, "freeze", misfit)
            with pytest.raises(RuntimeError, match="refit"):
                model.set_operating_point(lambda_n=0.3)
    return list(trt.api.record.values())


@pytest.fixture(scope="module")
def usage(bundle, tmp_path_factory) -> dict[str, list[dict]]:
    return {v: exercise(v, bundle, tmp_path_factory.mktemp(f"ex{v}")) for v in VERSIONS}


# ------------------------------------------------------------------------------------------ against the real bindings
@pytest.mark.parametrize("version", list(VERSIONS))
def test_every_tensorrt_use_exists_in_the_real_bindings(version, usage):
    """Each name, property access, enum member and call the runner made on this version's code path, checked in a
    process that imports the real bindings of that version: no problem may remain."""
    uses = usage[version]
    assert len(uses) > 40 and any(u["op"] == "call" and u["kwargs"] for u in uses)  # a real run, keywords included
    result = run_live(bindings(version), "check", uses)
    assert result["version"] == version
    assert result["problems"] == [], "\n".join(result["problems"])


@pytest.mark.parametrize("version", list(VERSIONS))
def test_snapshot_is_the_real_surface(version):
    """The stand-in's surface (tests/trt_surface.json) is what the real bindings of that version offer now."""
    live = run_live(bindings(version), "surface")
    assert snapshot_of(live) == load_snapshot()[version], \
        f"tests/trt_surface.json differs from the TensorRT {version} bindings; rerun: python tests/trt_bindings.py snapshot"


def test_no_tensorrt_name_in_the_source_goes_unexercised(usage):
    """Every TensorRT name the runner's source mentions was used by `exercise` on at least one version, so the
    live check above saw it: a new call in an untested branch fails here until a path reaches it."""
    recorded = {u["member"] for uses in usage.values() for u in uses}
    names = trt_names_in_source()
    assert {"set_memory_pool_limit", "refit_from_bytes", "set_weights", "WORKSPACE"} <= names  # the scan sees the calls
    missing = names - recorded
    assert not missing, f"TensorRT names in floatedge/runtime/trt that no exercised path used: {sorted(missing)}"


# ------------------------------------------------------------------------------------------ the stand-in itself
def test_stand_in_offers_nothing_tensorrt_lacks():
    """Each behaviour of the stand-in is a real member of its class in some version, with the real parameter
    names wherever the member exists; and what a version lacks, its stand-in lacks too."""
    snap = load_snapshot()
    import inspect

    trt = make_tensorrt("10.3.0", FakeCuda())
    for impl in trt.behaviours:
        for name, member in vars(impl).items():
            constructible = name == "__init__" and impl in trt.impls.values()  # others come from factory methods
            if name.startswith("_") and not constructible or name == "REAL":
                continue
            where = [v for v, s in snap.items() if member_of(s, impl.REAL, name) is not None]
            assert where, f"the stand-in's {impl.REAL}.{name} exists in no TensorRT version"
            if not callable(member):
                continue
            mine = [p for p in inspect.signature(member).parameters][1:]
            for v in where:
                sigs = member_of(snap[v], impl.REAL, name).get("sigs", [])
                real = [[p["name"] for p in parse_signature(s)["params"][1:]] for s in sigs]
                assert any(r[:len(mine)] == mine or mine[:len(r)] == r for r in real), \
                    f"{impl.REAL}.{name}{tuple(mine)} vs TensorRT {v}: {sigs}"
    gone = [("8.6.1", lambda t: t.ExecutionContextAllocationStrategy), ("8.6.1", lambda t: t.OnnxParserRefitter),
            ("11.4.0.106", lambda t: t.BuilderFlag.FP16), ("11.4.0.106", lambda t: t.NetworkDefinitionCreationFlag.EXPLICIT_BATCH),
            ("8.6.1", lambda t: t.BuilderFlag.STRIP_PLAN)]
    for version, get in gone:
        with pytest.raises(AttributeError, match=f"tensorrt {version}"):
            get(make_tensorrt(version, FakeCuda()))


@pytest.mark.parametrize("version", list(VERSIONS))
def test_version_table_matches_the_bindings(version):
    """What TrtApi says a release offers is what that release's bindings offer (the snapshot, itself checked
    against the live bindings above)."""
    s, api = load_snapshot()[version], TrtApi.for_version(version)
    has = lambda cls, m: member_of(s, cls, m) is not None
    assert ("ExecutionContextAllocationStrategy" in s["module"]) == (api.user_managed_context == "strategy")
    assert has("ICudaEngine", api.device_memory_size_attr)
    assert has("ICudaEngine", "create_execution_context_without_device_memory") or api.user_managed_context == "strategy"
    if api.set_device_memory == "set_device_memory":
        assert has("IExecutionContext", "set_device_memory")
    else:
        assert member_of(s, "IExecutionContext", "device_memory")["set"]
    assert has("Refitter", "refit_cuda_engine_async") == api.refit_async
    assert has("Refitter", "weights_validation") == api.weights_validation
    assert ("OnnxParserRefitter" in s["module"]) == api.parser_refitter
    assert ("FP16" not in s["enums"]["BuilderFlag"]) == api.strongly_typed
    if api.explicit_batch_flag:
        assert "EXPLICIT_BATCH" in s["enums"]["NetworkDefinitionCreationFlag"]


def test_stand_in_refit_needs_the_folded_batchnorm(bundle):
    """TensorRT 8.x: the parser folded each BN into a Scale layer (named tmp weights); the BN initializers are
    not in the engine, and a refit that sets a conv without its fused Scale stays incomplete — the stand-in no
    longer lets the 8.x refit path pass by construction."""
    from floatedge.graph.static import static_model
    from floatedge.oppoint import OperatingPoint

    bnd = open_bundle(bundle)
    trt = make_tensorrt("8.6.1", FakeCuda())
    static = static_model(bnd, OperatingPoint(0.0, 1.0, bnd.lambda_th))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    assert trt.OnnxParser(network, logger).parse(static.SerializeToString())
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.REFIT)
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, *bnd.input_shape), (1, *bnd.input_shape), (2, *bnd.input_shape))
    config.add_optimization_profile(profile)
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(builder.build_serialized_network(network, config)))
    refitter = trt.Refitter(engine, logger)
    names = set(refitter.get_all_weights())
    folded = {n for n in names if n.startswith("tmp_weight_")}
    assert folded and not any("running" in n for n in names)
    assert not refitter.set_named_weights("bn1.running_mean", np.zeros(1, np.float32))  # folded away
    conv = next(t for t in static.graph.initializer if t.name.endswith(".weight") and len(t.dims) == 4)
    assert not refitter.set_named_weights(conv.name, numpy_helper.to_array(conv).astype(np.float16))  # wrong type
    assert refitter.set_named_weights(conv.name, numpy_helper.to_array(conv))
    missing = set(refitter.get_missing_weights())  # the Scale fused with that conv: its SCALE and SHIFT
    assert len(missing) == 2 and missing <= folded
    assert sorted(map(str, refitter.get_missing()[1])) == ["WeightsRole.SCALE", "WeightsRole.SHIFT"]
    assert not refitter.refit_cuda_engine()
    with pytest.raises(TypeError, match="no keyword argument 'size'"):  # keyword names are the real ones
        trt.Builder(logger).create_builder_config().set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size=1)
    assert impl_of(engine).refittable


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0.106"])
def test_fp16_engine_per_version(bundle, tmp_path, version, monkeypatch):
    """fp16 is a builder flag up to 10.x; 11.x has none (strongly typed only), so the runner builds an fp16
    network (float16 weights and compute, float32 IO) and refits it with float16 weights — close to fp32."""
    import floatedge.runtime as rt

    cuda = FakeCuda()
    trt = make_tensorrt(version, cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    bnd = open_bundle(bundle)
    images = parity_images(bnd)
    with rt.open(bundle, backend="tensorrt", mode="materialised", precision="fp16", max_batch=8, cache_dir=tmp_path,
                 cuda=cuda) as model:
        for lam in (0.0, 0.8):
            model.set_operating_point(lambda_n=lam, width=1.0)
            got = model.run(images).logits
            want = run_scalable(ort_session(bnd.model_bytes(1.0)), images, lam)
            assert np.abs(got - want).max() <= max(0.05, 100 * PARITY_TOL) * max(1.0, np.abs(want).max())
        weights = impl_of(model._slots[(1.0, "materialised")][0].engine).weights
    typed = TrtApi.for_version(version).strongly_typed
    assert all(("FP16" in flags) != typed for flags in trt.built)
    assert {str(w.dtype) for w in weights.values()} == {"float16" if typed else "float32"}


def test_bindings_that_cannot_be_installed_skip_here_and_fail_under_ci(monkeypatch, tmp_path):
    """No network: the live checks skip with the reason on a workstation, and fail where CI is set."""
    import test_trt_conformance as me

    def offline(version):
        raise InstallError(f"pip install {VERSIONS[version]} failed (exit 1): no network")

    monkeypatch.setattr(me, "ensure", offline)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="8.6.1 bindings could not be installed here: .*no network"):
        bindings("8.6.1")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set: .*no network"):
        bindings("8.6.1")
