"""A stand-in for the `tensorrt` module and a CUDA binding, for exercising the TensorRT *runner's* own logic
(engine cache files, two refittable engines per width, refit of the standby engine, generation checks,
one shared activation buffer, buffers and addresses) where no GPU exists.

It is not TensorRT: an "engine" is an ONNX Runtime session of the ONNX it was built from, "device memory"
is a dict of byte arrays, and a refit swaps initializers. It implements only the calls the runner makes,
with the names and signatures of TensorRT's Python API (`python/src/infer/pyCore.cpp`), and it checks
the preconditions TensorRT documents and the runner must honour: a context created without device memory
must be given enough before it executes; tensor addresses and input shapes must be set; a refitter needs
a refittable engine; nothing runs on an engine while it is being refitted.
"""
from __future__ import annotations

import itertools
import pickle
import threading
import types

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


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


def make_tensorrt(version: str, cuda: FakeCuda) -> types.ModuleType:
    """A module object named `tensorrt` of the given version, whose engines run on `cuda`'s memory."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    v10 = int(version.split(".")[0]) >= 10
    v101 = tuple(int(x) for x in version.split(".")[:2]) >= (10, 1)
    trt.built = []  # (kind flags) of every engine built, for the tests
    trt.refits = []

    class Logger:
        WARNING = 2

        def __init__(self, level=None) -> None:
            self.level = level

    trt.Logger = Logger
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", REFIT="REFIT")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.WeightsRole = types.SimpleNamespace(SCALE="SCALE", SHIFT="SHIFT", KERNEL="KERNEL")
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(STATIC=0, USER_MANAGED=2)

    class Network:
        onnx: bytes = b""

    class Parser:
        num_errors = 0

        def __init__(self, network, logger) -> None:
            self.network = network

        def parse(self, data: bytes) -> bool:
            onnx.load_from_string(data)
            self.network.onnx = data
            return True

    class TimingCache:
        def serialize(self) -> bytes:
            return b"timing"

    class Config:
        def __init__(self) -> None:
            self.flags, self.profiles, self.cache = set(), [], None

        def set_memory_pool_limit(self, pool, size) -> None:
            assert pool == "WORKSPACE" and size > 0

        def set_flag(self, flag) -> None:
            self.flags.add(flag)

        def add_optimization_profile(self, profile) -> None:
            assert not self.profiles or "REFIT" not in self.flags, "refittable engines allow one profile"
            self.profiles.append(profile)

        def create_timing_cache(self, data: bytes):
            return TimingCache()

        def set_timing_cache(self, cache, ignore_mismatch) -> None:
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def set_shape(self, name, lo, opt, hi) -> None:
            assert lo[0] <= opt[0] <= hi[0]
            self.shape = (name, lo, opt, hi)

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags=0):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config) -> bytes:
            assert config.profiles, "no optimization profile"
            trt.built.append(sorted(config.flags))
            return pickle.dumps({"onnx": network.onnx, "refit": "REFIT" in config.flags,
                                 "max_batch": config.profiles[0].shape[3][0]})

    class Engine:
        def __init__(self, plan: bytes) -> None:
            d = pickle.loads(plan)
            self.model = onnx.load_from_string(d["onnx"])
            self.refittable, self.max_batch = d["refit"], d["max_batch"]
            self.weights = {t.name: numpy_helper.to_array(t) for t in self.model.graph.initializer}
            self.lock = threading.Lock()  # held while refitting and while executing
            self._session()

        def _session(self) -> None:
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            for t in model.graph.initializer:
                t.CopyFrom(numpy_helper.from_array(self.weights[t.name], t.name))
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            self.session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in self.session.get_inputs()]

        @property
        def device_memory_size(self) -> int:
            return 1000 + len(self.weights) * 10

        device_memory_size_v2 = device_memory_size

        def create_execution_context(self, strategy=0):
            assert v10, "create_execution_context(strategy) is TensorRT 10"
            return Context(self, with_memory=strategy != trt.ExecutionContextAllocationStrategy.USER_MANAGED)

        def create_execution_context_without_device_memory(self):
            return Context(self, with_memory=False)

    if not v101:
        del Engine.device_memory_size_v2

    class Context:
        def __init__(self, engine: Engine, with_memory: bool) -> None:
            self.engine, self.addresses, self.shapes = engine, {}, {}
            self.memory = (None, 10**12) if with_memory else None

        def _set_memory(self, ptr: int, size: int) -> None:
            assert ptr in cuda.mem and len(cuda.mem[ptr]) >= size
            self.memory = (ptr, size)

        if v101:
            def set_device_memory(self, memory: int, size: int) -> None:
                self._set_memory(memory, size)
        else:
            device_memory = property(None, lambda self, ptr: self._set_memory(ptr, len(cuda.mem[ptr])))

        def set_tensor_address(self, name: str, ptr: int) -> None:
            self.addresses[name] = ptr

        def set_input_shape(self, name: str, shape) -> bool:
            self.shapes[name] = tuple(shape)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            e = self.engine
            assert self.memory is not None, "context has no device memory"
            ptr, size = self.memory
            assert size >= e.device_memory_size and (ptr is None or len(cuda.mem[ptr]) >= e.device_memory_size)
            assert e.lock.acquire(blocking=False), "engine used while it is being refitted"
            try:
                shape = self.shapes["images"]
                assert shape[0] <= e.max_batch
                n = int(np.prod(shape))
                images = np.frombuffer(bytes(cuda.mem[self.addresses["images"]][: 4 * n]), np.float32).reshape(shape)
                feed = {"images": images}
                if "lambda_n" in e.inputs:
                    feed["lambda_n"] = np.frombuffer(bytes(cuda.mem[self.addresses["lambda_n"]][:4]), np.float32)[0]
                    feed["lambda_n"] = np.array(feed["lambda_n"], np.float32)
                out = e.session.run(["logits"], feed)[0].astype(np.float32)
                cuda.mem[self.addresses["logits"]][: out.nbytes] = out.tobytes()
            finally:
                e.lock.release()
            return True

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes):
            try:
                return Engine(plan)
            except Exception:  # noqa: BLE001 - TensorRT returns None for a plan it cannot read
                return None

    class Refitter:
        def __init__(self, engine: Engine, logger) -> None:
            assert engine.refittable, "engine was not built refittable"
            self.engine, self.staged = engine, {}

        def get_all_weights(self) -> list[str]:
            return sorted(self.engine.weights)

        def get_all(self):
            return [], []

        def get_missing(self):
            return [], []

        def get_missing_weights(self) -> list[str]:
            return []

        def set_named_weights(self, name: str, weights) -> bool:
            assert name in self.engine.weights, name
            w = np.asarray(weights)
            assert w.shape == self.engine.weights[name].shape, name
            self.staged[name] = w.copy()
            return True

        def set_weights(self, layer, role, weights) -> bool:
            raise AssertionError("no layer weights in this stand-in")

        def _refit(self) -> bool:
            with self.engine.lock:
                self.engine.weights.update(self.staged)
                self.engine._session()
            trt.refits.append(sorted(self.staged))
            return True

        def refit_cuda_engine(self) -> bool:
            return self._refit()

        if v10:
            def refit_cuda_engine_async(self, stream: int) -> bool:
                return self._refit()

    class OnnxParserRefitter:
        num_errors = 0

        def __init__(self, refitter: Refitter, logger) -> None:
            self.refitter = refitter

        def refit_from_bytes(self, data: bytes) -> bool:
            for t in onnx.load_from_string(data).graph.initializer:
                if t.name in self.refitter.engine.weights:
                    self.refitter.set_named_weights(t.name, numpy_helper.to_array(t))
            return True

    trt.Builder, trt.OnnxParser, trt.Runtime, trt.Refitter = Builder, Parser, Runtime, Refitter
    if v10:
        trt.OnnxParserRefitter = OnnxParserRefitter
    return trt
