"""The pure-Python half of the TensorRT backend: no tensorrt, no CUDA, tested on any machine.

* `TrtApi.for_version` — which documented Python call each TensorRT release offers, in one table, so the
  runner never guesses from attribute names scattered through the code;
* `EngineKey` — what a cached engine depends on (fleet practice, ../shared/reference/edge.md §3: "cache
  keyed by TRT version/precision/device"; serialized engines are not portable across platforms or TRT
  versions, edge.md §1.4);
* `refit_plan` / `complete_refit` — which named weights to hand the Refitter for a new operating point.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np


def parse_version(text: str) -> tuple[int, int, int]:
    """'8.5.2.2' → (8, 5, 2); '10.3.0' → (10, 3, 0)."""
    nums = [int(n) for n in re.findall(r"\d+", str(text))[:3]]
    if not nums:
        raise ValueError(f"not a TensorRT version: {text!r}")
    return tuple((nums + [0, 0])[:3])  # type: ignore[return-value]


@dataclass(frozen=True)
class TrtApi:
    """The Python calls of one TensorRT release the runner relies on.

    Sources (TRT = NVIDIA/TensorRT): `python/src/infer/pyCore.cpp` of release/8.5, 8.6, 10.3 and main;
    `include/NvInfer.h`, `NvInferRuntime.h` of the same branches; `samples/python/common_runtime.py`.
    """

    version: tuple[int, int, int]

    @property
    def supported(self) -> bool:
        # set_tensor_address + execute_async_v3 exist from 8.5 (edge.md §1.7); 8.2 (JetPack 4.6) has
        # only execute_async_v2 with bindings and no tensor-weight convolutions.
        return self.version >= (8, 5, 0)

    @property
    def explicit_batch_flag(self) -> bool:
        # TRT 10 networks are always explicit-batch; 8.x needs NetworkDefinitionCreationFlag.EXPLICIT_BATCH.
        return self.version < (10, 0, 0)

    @property
    def user_managed_context(self) -> str:
        # 10.0 adds create_execution_context(ExecutionContextAllocationStrategy.USER_MANAGED) and
        # deprecates create_execution_context_without_device_memory (pyCore.cpp, main).
        return "strategy" if self.version >= (10, 0, 0) else "without_device_memory"

    @property
    def device_memory_size_attr(self) -> str:
        # "Deprecated in TensorRT 10.1. Superseded by get_device_memory_size_v2" (pyCore.cpp, main).
        return "device_memory_size_v2" if self.version >= (10, 1, 0) else "device_memory_size"

    @property
    def set_device_memory(self) -> str:
        # 10.1: context.set_device_memory(memory, size); before: the write-only `device_memory` property.
        return "set_device_memory" if self.version >= (10, 1, 0) else "device_memory"

    @property
    def refit_async(self) -> bool:
        # refit_cuda_engine_async(stream), weights_validation: 10.x only (edge.md §1.1 table).
        return self.version >= (10, 0, 0)

    @property
    def weights_validation(self) -> bool:
        return self.version >= (10, 0, 0)

    @property
    def parser_refitter(self) -> bool:
        """`trt.OnnxParserRefitter` (IParserRefitter, 10.0.0 EA, CHANGELOG.md): refit from the ONNX model itself,
        the parser's own weight transforms (BN folded into a Scale layer) redone. Absent from the 8.6.1 bindings,
        present in 10.3 (tests/test_trt_conformance.py reads them)."""
        return self.version >= (10, 0, 0)

    @property
    def strongly_typed(self) -> bool:
        """TensorRT 11: "Strongly typed mode is always enabled" (NetworkDefinitionCreationFlag.STRONGLY_TYPED in
        the 11.4 bindings) and `BuilderFlag` has no FP16, INT8 or BF16 (edge.md §6): reduced precision is asked
        for through the network's own tensor types (`fp16_model`), not a builder flag."""
        return self.version >= (11, 0, 0)

    @property
    def tensor_weights_conv(self) -> bool:
        """Conv weights computed in the graph (the in-graph λ mode): 8.5+ (NvInfer.h, "Input 1 is the
        kernel tensor"); 8.4 and older demand an initializer (onnx-tensorrt operators.md)."""
        return self.version >= (8, 5, 0)

    @property
    def cuda_modules(self) -> tuple[str, ...]:
        """Buffer libraries to try, in the order NVIDIA's own samples of that release use them
        (`samples/python/common_runtime.py`): 8.5 pycuda; 8.6–10.13 `from cuda import cudart`;
        10.13.3+ `from cuda.bindings import runtime` (cuda-python 12.9)."""
        if self.version >= (10, 13, 3):
            return ("cuda.bindings", "cuda", "pycuda")
        if self.version >= (8, 6, 0):
            return ("cuda", "cuda.bindings", "pycuda")
        return ("pycuda", "cuda.bindings", "cuda")

    @classmethod
    def for_version(cls, text: str) -> TrtApi:
        return cls(parse_version(text))


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine plan depends on. Two keys equal ⇔ the cached plan may be reused."""

    onnx_sha256: str
    kind: str  # "materialised" (refittable, constant weights) or "in-graph" (λ input)
    width: float
    trt_version: str
    precision: str = "fp32"
    flags: tuple[str, ...] = ()
    batch: tuple[int, int, int] = (1, 8, 32)  # optimization profile min, opt, max
    device: str = "unknown"  # Jetson part number (p3767-0000) or GPU name elsewhere
    l4t: str = ""
    workspace_mb: int = 256
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", tuple(sorted(set(self.flags))))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def filename(self) -> str:
        """Readable and unique: what a person scanning the cache directory needs to see, then the
        digest so that any field (flags, profile, workspace) change gives a new file."""
        safe = lambda s: re.sub(r"[^A-Za-z0-9.+-]", "_", str(s)) or "none"
        return (f"w{self.width:g}.{self.kind}.{self.precision}.trt{safe(self.trt_version)}."
                f"{safe(self.device)}.l4t{safe(self.l4t)}.{self.digest()[:16]}.engine")


def refit_plan(target: Mapping[str, np.ndarray], refittable: set[str] | frozenset[str],
               current: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The named weights to set to move an engine from `current` weights to `target` ones.

    Only names the engine can refit are sent (the parser keeps ONNX initializer names, edge.md §1.1), and
    only those that changed (`current` None: all of them). A refittable name absent from `target` is a
    constant the operating point does not touch (normalisation, shapes): left as built. Names in
    `target` the engine cannot refit were folded at build time; for a refittable engine built from the
    static form they are the point-independent ones, so they are skipped too.
    """
    plan: dict[str, np.ndarray] = {}
    for name in sorted(set(refittable) & set(target)):
        new = np.ascontiguousarray(target[name], dtype=np.float32)
        old = None if current is None else current.get(name)
        if old is None or old.shape != new.shape or not np.array_equal(old, new):
            plan[name] = new
    return plan


def complete_refit(missing: list[str] | tuple[str, ...], target: Mapping[str, np.ndarray],
                   already: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weights TensorRT still asks for after `refit_plan` (fused groups, e.g. a conv and its bias:
    `get_missing_weights()`, NvInferRuntime.h). They come from the same target set."""
    extra = {}
    for name in missing:
        if name in already:
            continue
        if name not in target:
            raise ValueError(f"TensorRT needs weight {name!r} to refit, and the bundle has no such initializer")
        extra[name] = np.ascontiguousarray(target[name], dtype=np.float32)
    return extra


def bn_scale_shift(gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                   eps: float) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization folded the way the ONNX parser folds it into a Scale layer (onnx-tensorrt
    `onnxOpImporters.cpp` BatchNormalization: combinedScale = scale / sqrt(var + eps), combinedBias =
    bias − mean · combinedScale). TensorRT 8.5/8.6 have no parser refitter, so these are the values a
    refit must hand the Scale layer (roles SCALE and SHIFT) when the BN set or statistics change."""
    g, b, m, v = (np.asarray(a, dtype=np.float32) for a in (gamma, beta, mean, var))
    scale = (g / np.sqrt(v + np.float32(eps))).astype(np.float32)
    return scale, (b - m * scale).astype(np.float32)


def fp16_model(model):
    """The same network computing in float16, its inputs and outputs still float32 (a Cast after each input,
    one before each output): what a strongly typed TensorRT builds as an fp16 engine. Float initializers and
    Constant values become float16, a Cast to float becomes a Cast to float16; the runner's float32 buffers
    and refit arrays keep their meaning (a refit of this network hands float16 weights, as TensorRT requires
    the engine's own type). Returns a new model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16

    def half(t):
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)

    for t in g.initializer:
        if t.data_type == f32:
            t.CopyFrom(half(t))
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == f32:
                a.i = f16
            elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type == f32:
                a.t.CopyFrom(half(a.t))
    rename: dict[str, str] = {}
    initializers = {t.name for t in g.initializer}
    casts_in = []
    for i in g.input:
        if i.name not in initializers and i.type.tensor_type.elem_type == f32:
            rename[i.name] = f"{i.name}__fp16"
            casts_in.append(helper.make_node("Cast", [i.name], [rename[i.name]], to=f16, name=f"{i.name}/to_fp16"))
    casts_out = []
    for o in g.output:
        if o.type.tensor_type.elem_type == f32:
            rename[o.name] = f"{o.name}__fp16"
            casts_out.append(helper.make_node("Cast", [rename[o.name]], [o.name], to=f32, name=f"{o.name}/to_fp32"))
    for node in g.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    nodes = [*casts_in, *g.node, *casts_out]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return out


def bn_layers(model) -> list[tuple[str, tuple[str, str, str, str], float]]:
    """(node name, (scale, bias, mean, var) initializer names, epsilon) of every BatchNormalization in an
    ONNX model, in graph order: what `bn_scale_shift` folds for a TensorRT 8.x refit."""
    out = []
    for i, node in enumerate(model.graph.node):
        if node.op_type != "BatchNormalization":
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        out.append((node.name or f"BatchNormalization_{i}", tuple(node.input[1:5]), float(eps)))
    return out
