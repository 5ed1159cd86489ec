"""A stand-in for the `tensorrt` module and a CUDA binding, for exercising the TensorRT *runner's* own logic
(engine cache files, two refittable engines per width, refit of the standby engine, generation checks, one
shared activation buffer, buffers and addresses) where no GPU exists.

It is not TensorRT: an "engine" is an ONNX Runtime session of the network as TensorRT's ONNX parser imports it,
"device memory" is a dict of byte arrays, and a refit swaps initializers. What it is *allowed* to offer comes from
the real bindings of the version asked for (`trt_surface.json`, read from their pybind11 docstrings by
`trt_bindings.py`; the conformance test checks that snapshot against the live bindings): a name that version
lacks raises AttributeError, a call that binds to none of its real signatures (positional count, keyword names,
argument types) raises TypeError, a read-only property cannot be assigned. Every use is recorded, so the
conformance test can replay exactly what the runner did against the real module.

Its behaviour follows what TensorRT documents and the runner must honour:
* the parser folds a BatchNormalization whose parameters are initializers into a Scale layer (onnx-tensorrt
  `builtin_op_importers.cpp`: combinedScale = scale / sqrt(var + eps), combinedBias = bias − mean·combinedScale,
  weights named like `tmp_weight_N`, the layer named after the node); the BN initializers are gone from the
  engine, so a refit must hand the folded values (by layer and role SCALE/SHIFT, or through the 10.x parser
  refitter, which redoes the import);
* a convolution and the Scale layer it feeds are one fused group: setting part of it leaves the rest in
  `get_missing_weights()`, and `refit_cuda_engine()` fails until it is supplied (NvInferRuntime.h, getMissing);
* refit weights must have the engine's count and type ("same count and type", edge.md §1.1); a setter returns
  False for a name it does not know or weights that do not fit, as TensorRT does;
* a context created without device memory must be given enough before it executes; tensor addresses and input
  shapes must be set; IO buffers are read and written in the engine's own IO types; nothing runs on an engine
  while it is being refitted.
"""
from __future__ import annotations

import base64
import itertools
import json
import threading
import types
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from trt_bindings import load_snapshot, member_of, use_problem

_SNAPSHOT: dict[str, dict] | None = None


def surface_of(version: str) -> dict:
    global _SNAPSHOT
    if _SNAPSHOT is None:
        _SNAPSHOT = load_snapshot()
    if version not in _SNAPSHOT:
        raise KeyError(f"no real surface of TensorRT {version} in trt_surface.json (have {', '.join(_SNAPSHOT)})")
    return _SNAPSHOT[version]


class FakeCuda:
    """The `floatedge.runtime.trt.cuda` interface over host memory."""

    name = "fake-cuda"

    def __init__(self) -> None:
        self.mem: dict[int, bytearray] = {}
        self._next = itertools.count(0x1000, 0x100000)
        self.streams = itertools.count(1)

    def malloc(self, nbytes: int) -> int:
        ptr = next(self._next)
        self.mem[ptr] = bytearray(max(1, int(nbytes)))
        return ptr

    def free(self, ptr: int) -> None:
        del self.mem[ptr]

    def host_empty(self, count: int, dtype) -> tuple[np.ndarray, int]:
        arr = np.zeros(count, dtype)
        return arr, arr.ctypes.data

    def free_host(self, ptr: int) -> None:
        pass

    def stream(self) -> int:
        return next(self.streams)

    def destroy_stream(self, stream: int) -> None:
        pass

    def h2d(self, dst: int, src: np.ndarray, nbytes: int, stream: int) -> None:
        self.mem[dst][:nbytes] = src.reshape(-1).view(np.uint8)[:nbytes].tobytes()

    def d2h(self, dst: np.ndarray, src: int, nbytes: int, stream: int) -> None:
        dst.reshape(-1).view(np.uint8)[:nbytes] = np.frombuffer(bytes(self.mem[src][:nbytes]), np.uint8)

    def sync(self, stream: int) -> None:
        pass

    def push(self) -> None:
        pass

    def pop(self) -> None:
        pass


# ------------------------------------------------------------------------------------------ conformance layer
class FakeEnumMember:
    """A member of a real enum (its name and value from the bindings); str() as pybind11 prints it."""

    __slots__ = ("enum", "name", "value")

    def __init__(self, enum: str, name: str, value: int) -> None:
        self.enum, self.name, self.value = enum, name, value

    def __index__(self) -> int:
        return self.value

    __int__ = __index__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeEnumMember) and (other.enum, other.name) == (self.enum, self.name)

    def __hash__(self) -> int:
        return hash((self.enum, self.name))

    def __str__(self) -> str:
        return f"{self.enum.rsplit('.', 1)[-1]}.{self.name}"

    __repr__ = __str__


def describe(value: Any) -> str:
    """How a recorded argument is described to `trt_bindings.bind` (kind, and class for objects and enums)."""
    if isinstance(value, _Proxy):
        return f"obj:{object.__getattribute__(value, '_cls')}"
    if isinstance(value, FakeEnumMember):
        return f"enum:{value.enum}"
    for kind, types_ in (("bool", (bool, np.bool_)), ("int", (int, np.integer)), ("float", (float, np.floating)),
                         ("str", (str,)), ("bytes", (bytes, bytearray, memoryview)), ("ndarray", (np.ndarray,)),
                         ("tuple", (tuple,)), ("list", (list,))):
        if isinstance(value, types_):
            return kind
    return "None" if value is None else f"other:{type(value).__name__}"


class _Api:
    """One fake module's checks and record."""

    def __init__(self, version: str, surface: dict) -> None:
        self.version, self.surface = version, surface
        self.record: dict[str, dict] = {}

    def use(self, owner: str, member: str, op: str, args: tuple = (), kwargs: dict | None = None) -> None:
        use = {"owner": owner, "member": member, "op": op, "args": [describe(a) for a in args],
               "kwargs": {k: describe(v) for k, v in (kwargs or {}).items()}}
        self.record.setdefault(json.dumps(use, sort_keys=True), use)
        problem = use_problem(self.surface, use)
        if problem:
            kind, message = problem
            raise {"missing": AttributeError, "call": TypeError}.get(kind, AttributeError)(message)

    def wrap(self, value: Any) -> Any:
        if isinstance(value, _Impl):
            return _Proxy(self, value.REAL, value)
        if isinstance(value, (list, tuple)):
            return type(value)(self.wrap(v) for v in value)
        return value


def _unwrap(value: Any) -> Any:
    if isinstance(value, _Proxy):
        return object.__getattribute__(value, "_impl")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    return value


def impl_of(value: Any) -> Any:
    """The behaviour behind an object the runner holds, for a test to inspect without it being recorded."""
    return _unwrap(value)


def _behaviour(impl: Any, cls: str, name: str) -> Any:
    try:
        return getattr(impl, name)
    except AttributeError:
        raise NotImplementedError(f"fake_tensorrt implements no behaviour for {cls}.{name}") from None


class _Proxy:
    """An object of a real TensorRT class: only what that class offers in this version, calls checked."""

    __slots__ = ("_api", "_cls", "_impl")

    def __init__(self, api: _Api, cls: str, impl: Any) -> None:
        object.__setattr__(self, "_api", api)
        object.__setattr__(self, "_cls", cls)
        object.__setattr__(self, "_impl", impl)

    def __getattr__(self, name: str) -> Any:
        api, cls, impl = (object.__getattribute__(self, a) for a in ("_api", "_cls", "_impl"))
        info = member_of(api.surface, cls, name)
        if info is None or info["kind"] not in ("method", "static"):
            api.use(cls, name, "get")
            return api.wrap(_behaviour(impl, cls, name))
        method = _behaviour(impl, cls, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            api.use(cls, name, "call", args, kwargs)
            return api.wrap(method(*_unwrap(args), **_unwrap(kwargs)))

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        api, cls, impl = (object.__getattribute__(self, a) for a in ("_api", "_cls", "_impl"))
        api.use(cls, name, "set", (value,))
        setattr(impl, name, _unwrap(value))

    def __bytes__(self) -> bytes:  # IHostMemory is a buffer (pyCore.cpp, py::buffer_protocol)
        return bytes(object.__getattribute__(self, "_impl"))


class _Enum:
    def __init__(self, api: _Api, qual: str) -> None:
        self._api, self._qual = api, qual

    def __getattr__(self, name: str) -> FakeEnumMember:
        if name.startswith("__"):
            raise AttributeError(name)
        self._api.use(self._qual, name, "get")
        return FakeEnumMember(self._qual, name, self._api.surface["enums"][self._qual][name])

    @property
    def __members__(self) -> dict[str, FakeEnumMember]:
        return {n: FakeEnumMember(self._qual, n, v) for n, v in self._api.surface["enums"][self._qual].items()}


class _Class:
    """A real class as the module offers it: construct it (checked against its __init__), read its class-level
    values (Logger.WARNING) and nested enums."""

    def __init__(self, api: _Api, name: str, impl: type | None) -> None:
        self._api, self._name, self._impl = api, name, impl

    def __call__(self, *args: Any, **kwargs: Any) -> _Proxy:
        self._api.use("", self._name, "call", args, kwargs)
        if self._impl is None:
            raise NotImplementedError(f"fake_tensorrt implements no behaviour for tensorrt.{self._name}")
        return self._api.wrap(self._impl(*_unwrap(args), **_unwrap(kwargs)))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self._api.use(self._name, name, "get")
        info = member_of(self._api.surface, self._name, name)
        enums = self._api.surface["enums"]
        if info["kind"] == "value" and info["type"] in enums:
            return FakeEnumMember(info["type"], name, enums[info["type"]][name])
        if info["kind"] == "class" and info["type"] in enums:
            return _Enum(self._api, info["type"])
        raise NotImplementedError(f"fake_tensorrt implements no behaviour for tensorrt.{self._name}.{name}")


class _Module(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        api: _Api = self.__dict__["api"]
        api.use("", name, "get")
        kind = api.surface["module"][name]
        if kind == "enum":
            return _Enum(api, name)
        if kind == "class":
            return _Class(api, name, self.__dict__["impls"].get(name))
        raise NotImplementedError(f"fake_tensorrt implements no behaviour for tensorrt.{name}")


# ------------------------------------------------------------------------------------------ the parser's import
class _Imported:
    """A network as TensorRT's ONNX parser builds it from a model: the graph ONNX Runtime runs, the named
    weights in TensorRT's own shapes, (layer, role) → weight name, and the fused groups."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        consumers: dict[str, int] = {}
        for node in g.node:
            for i in node.input:
                consumers[i] = consumers.get(i, 0) + 1
        producer = {o: node for node in g.node for o in node.output}
        self.layers: dict[tuple[str, str], str] = {}
        self.groups: list[set[str]] = []
        self.graph_shape: dict[str, tuple[int, ...]] = {}
        nodes, weights, tmp = [], {}, itertools.count()
        for node in g.node:
            params = list(node.input[1:5])
            if node.op_type == "BatchNormalization" and len(params) == 4 and all(p in inits for p in params):
                gamma, beta, mean, var = (inits[p].astype(np.float32) for p in params)
                eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
                scale = gamma / np.sqrt(var + np.float32(eps))
                shift = beta - mean * scale
                dtype = inits[params[0]].dtype
                s_name, b_name = f"tmp_weight_{next(tmp)}", f"tmp_weight_{next(tmp)}"
                weights[s_name], weights[b_name] = scale.astype(dtype), shift.astype(dtype)
                self.graph_shape[s_name] = self.graph_shape[b_name] = (-1, 1, 1)
                self.layers[(node.name, "SCALE")], self.layers[(node.name, "SHIFT")] = s_name, b_name
                mid = f"{node.output[0]}__scaled"
                nodes += [helper.make_node("Mul", [node.input[0], s_name], [mid], name=f"{node.name}/scale"),
                          helper.make_node("Add", [mid, b_name], [node.output[0]], name=f"{node.name}/shift")]
                group = {s_name, b_name}
                conv = producer.get(node.input[0])
                if conv is not None and conv.op_type == "Conv" and consumers.get(node.input[0]) == 1:
                    group |= {n for n in conv.input[1:] if n in inits}
                self.groups.append(group)
                for p in params:
                    consumers[p] -= 1
                continue
            if node.op_type == "Conv":
                for name, role in zip(node.input[1:], ("KERNEL", "BIAS"), strict=False):
                    if name in inits:
                        self.layers[(node.name, role)] = name
            nodes.append(node)
        for name, arr in inits.items():
            if consumers.get(name, 0) > 0:
                weights[name] = arr
        self.weights = weights
        self.model = helper.make_model(
            helper.make_graph(nodes, g.name, list(g.input), list(g.output)),
            opset_imports=list(model.opset_import), ir_version=model.ir_version)

    def session(self, weights: dict[str, np.ndarray]) -> ort.InferenceSession:
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        model.graph.initializer.extend(numpy_helper.from_array(w.reshape(self.graph_shape.get(n, w.shape)), n)
                                       for n, w in weights.items())
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------ behaviours
class _Impl:
    REAL = ""


def make_tensorrt(version: str, cuda: FakeCuda) -> types.ModuleType:
    """A module object named `tensorrt` with the surface of the real bindings of `version` (one of
    trt_bindings.VERSIONS), whose engines run on `cuda`'s memory. `module.api.record` holds every use."""
    surface = surface_of(version)
    trt = _Module("tensorrt")
    trt.__version__ = version
    trt.built = []  # sorted flags of every engine built, for the tests
    trt.refits = []  # sorted names of the weights of every refit
    api = _Api(version, surface)
    trt.api = api

    class Logger(_Impl):
        REAL = "Logger"

        def __init__(self, min_severity=None) -> None:
            self.min_severity = min_severity

    class HostMemory(_Impl):
        REAL = "IHostMemory"

        def __init__(self, data: bytes) -> None:
            self.data = data

        def __bytes__(self) -> bytes:
            return self.data

        @property
        def nbytes(self) -> int:
            return len(self.data)

    class Network(_Impl):
        REAL = "INetworkDefinition"

        def __init__(self, flags: int) -> None:
            self.flags, self.onnx = flags, b""

    class OnnxParser(_Impl):
        REAL = "OnnxParser"

        def __init__(self, network, logger) -> None:
            self.network, self.errors = network, []

        def parse(self, model, path=None) -> bool:
            try:
                onnx.load_from_string(bytes(model))
            except Exception as exc:  # noqa: BLE001 - the parser reports, it does not raise
                self.errors.append(f"ModelImporter: failed to parse the ONNX model ({type(exc).__name__})")
                return False
            self.network.onnx = bytes(model)
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index):
            return self.errors[index]

    class TimingCache(_Impl):
        REAL = "ITimingCache"

        def __init__(self, data: bytes) -> None:
            self.data = bytes(data) or b"timing"

        def serialize(self):
            return HostMemory(self.data)

    class Config(_Impl):
        REAL = "IBuilderConfig"

        def __init__(self) -> None:
            self.flags, self.profiles, self.cache, self.pools = set(), [], None, {}

        def set_memory_pool_limit(self, pool, pool_size) -> None:
            self.pools[pool.name] = int(pool_size)

        def set_flag(self, flag) -> None:
            self.flags.add(flag.name)

        def add_optimization_profile(self, profile) -> int:
            assert not self.profiles or "REFIT" not in self.flags, "refittable engines allow one profile"
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache):
            return TimingCache(serialized_timing_cache)

        def set_timing_cache(self, cache, ignore_mismatch) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Profile(_Impl):
        REAL = "IOptimizationProfile"

        def set_shape(self, input, min, opt, max) -> None:  # noqa: A002 - TensorRT's keyword names
            assert len(min) == len(opt) == len(max) and min[0] <= opt[0] <= max[0]
            self.shape = (input, tuple(min), tuple(opt), tuple(max))

    class Builder(_Impl):
        REAL = "Builder"

        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags=0):
            return Network(int(flags))

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            assert config.profiles, "no optimization profile"
            assert config.pools.get("WORKSPACE", 1) > 0
            trt.built.append(sorted(config.flags))
            plan = {"onnx": base64.b64encode(network.onnx).decode(), "refit": "REFIT" in config.flags,
                    "max_batch": config.profiles[0].shape[3][0]}
            return HostMemory(b"FAKEPLAN" + json.dumps(plan).encode())

    class Engine(_Impl):
        REAL = "ICudaEngine"

        def __init__(self, plan: bytes) -> None:
            if not plan.startswith(b"FAKEPLAN"):
                raise ValueError("not a plan of this stand-in")
            d = json.loads(plan[len(b"FAKEPLAN"):])
            self.net = _Imported(onnx.load_from_string(base64.b64decode(d["onnx"])))
            self.refittable, self.max_batch = d["refit"], d["max_batch"]
            self.weights = dict(self.net.weights)
            self.lock = threading.Lock()  # held while refitting and while executing
            self._session()

        def _session(self) -> None:
            self.session = self.net.session(self.weights)
            self.io = {t.name: t.type for t in (*self.session.get_inputs(), *self.session.get_outputs())}

        @property
        def device_memory_size(self) -> int:
            return 1000 + len(self.weights) * 10

        device_memory_size_v2 = device_memory_size

        def create_execution_context(self, strategy=None):
            user = strategy is not None and strategy.name == "USER_MANAGED"
            return Context(self, with_memory=not user)

        def create_execution_context_without_device_memory(self):
            return Context(self, with_memory=False)

    class Context(_Impl):
        REAL = "IExecutionContext"

        def __init__(self, engine: Engine, with_memory: bool) -> None:
            self.engine, self.addresses, self.shapes = engine, {}, {}
            self.memory = (None, 10**12) if with_memory else None

        def _set_memory(self, ptr: int, size: int) -> None:
            assert ptr in cuda.mem and len(cuda.mem[ptr]) >= size
            self.memory = (ptr, size)

        def set_device_memory(self, memory, size) -> None:
            self._set_memory(memory, size)

        device_memory = property(None, lambda self, ptr: self._set_memory(ptr, len(cuda.mem[ptr])))

        def set_tensor_address(self, name, memory) -> bool:
            self.addresses[name] = memory
            return True

        def set_input_shape(self, name, shape) -> bool:
            self.shapes[name] = tuple(shape)
            return True

        def _read(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
            dtype = np.float16 if self.engine.io[name] == "tensor(float16)" else np.float32
            n = int(np.prod(shape)) * np.dtype(dtype).itemsize
            return np.frombuffer(bytes(cuda.mem[self.addresses[name]][:n]), dtype).reshape(shape)

        def execute_async_v3(self, stream_handle) -> bool:
            e = self.engine
            assert self.memory is not None, "context has no device memory"
            ptr, size = self.memory
            assert size >= e.device_memory_size and (ptr is None or len(cuda.mem[ptr]) >= e.device_memory_size)
            assert e.lock.acquire(blocking=False), "engine used while it is being refitted"
            try:
                shape = self.shapes["images"]
                assert shape[0] <= e.max_batch
                feed = {"images": self._read("images", shape)}
                if "lambda_n" in e.io:
                    feed["lambda_n"] = self._read("lambda_n", ())
                out = e.session.run(["logits"], feed)[0]
                cuda.mem[self.addresses["logits"]][: out.nbytes] = out.tobytes()  # in the engine's output type
            finally:
                e.lock.release()
            return True

    class Runtime(_Impl):
        REAL = "Runtime"

        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, serialized_engine):
            try:
                return Engine(bytes(serialized_engine))
            except Exception:  # noqa: BLE001 - TensorRT returns None for a plan it cannot read
                return None

    class Refitter(_Impl):
        REAL = "Refitter"

        def __init__(self, engine, logger) -> None:
            if not engine.refittable:
                raise RuntimeError("engine was not built refittable")  # IRefitter: createInferRefitter fails
            self.engine, self.staged = engine, {}
            self.by_layer = engine.net.layers

        def get_all_weights(self) -> list[str]:
            return sorted(self.engine.weights)

        def _roles(self, pairs) -> tuple[list[str], list[FakeEnumMember]]:
            roles = surface["enums"]["WeightsRole"]
            return [layer for layer, _ in pairs], [FakeEnumMember("WeightsRole", r, roles[r]) for _, r in pairs]

        def get_all(self):
            return self._roles(sorted(self.by_layer))

        def get_missing_weights(self) -> list[str]:
            missing = set()
            for group in self.engine.net.groups:
                if group & set(self.staged):
                    missing |= group - set(self.staged)
            return sorted(missing)

        def get_missing(self):
            missing = set(self.get_missing_weights())
            return self._roles(sorted(k for k, n in self.by_layer.items() if n in missing))

        def set_named_weights(self, name, weights, location=None) -> bool:
            old = self.engine.weights.get(name)
            w = np.asarray(weights)
            if old is None or w.size != old.size or w.dtype != old.dtype:  # TensorRT logs an error, returns false
                return False
            self.staged[name] = w.reshape(old.shape).copy()
            return True

        def set_weights(self, layer_name, role, weights) -> bool:
            name = self.by_layer.get((layer_name, role.name))
            return name is not None and self.set_named_weights(name, weights)

        def refit_cuda_engine(self) -> bool:
            if self.get_missing_weights():
                return False
            with self.engine.lock:
                self.engine.weights.update(self.staged)
                self.engine._session()
            trt.refits.append(sorted(self.staged))
            return True

        def refit_cuda_engine_async(self, stream_handle) -> bool:
            return self.refit_cuda_engine()

    class OnnxParserRefitter(_Impl):
        REAL = "OnnxParserRefitter"

        def __init__(self, refitter, logger) -> None:
            self.refitter, self.errors = refitter, []

        def refit_from_bytes(self, model, path=None) -> bool:
            net = _Imported(onnx.load_from_string(bytes(model)))  # the parser redoes its import, folds included
            for name, arr in net.weights.items():
                if name in self.refitter.engine.weights and not self.refitter.set_named_weights(name, arr):
                    self.errors.append(f"weights {name!r} do not match the engine's")
            return not self.errors

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index):
            return self.errors[index]

    trt.impls = {c.REAL: c for c in (Logger, Builder, OnnxParser, Runtime, Refitter, OnnxParserRefitter)}
    trt.behaviours = [Logger, HostMemory, Network, OnnxParser, TimingCache, Config, Profile, Builder, Engine, Context,
                      Runtime, Refitter, OnnxParserRefitter]
    return trt
