"""Open Inference Protocol v2, transport-independent: the one request and response both doors translate to.

As in Triton (`triton-inference-server/server:src/http_server.cc`, `src/grpc/`), the HTTP and gRPC front ends
only translate their wire format into an `InferRequest` and an `InferResponse` back; everything else — checking
the tensor against the model, the operating point, batching, metrics — happens once, in `core.py`, so a request
takes the same path whichever door it came in by.

Wire facts relied on (`../shared/reference/daemon.md` §1):
* datatypes and their byte layout: `kserve/kserve:docs/predict-api/v2/required_api.md` ("Tensor Data Types");
  raw tensors are little-endian, row-major, without padding (`grpc_predict_v2.proto`, raw_input_contents);
* BYTES elements in binary form are a 4-byte little-endian length then the bytes
  (`triton-inference-server/server:docs/protocol/extension_binary_data.md`; tritonclient `utils.serialize_byte_tensor`);
* classification: an output's `classification = N` returns a BYTES tensor [batch, N] of "value:index[:label]",
  best first (`docs/protocol/extension_classification.md`);
* errors: `{"error": "<message>"}` with Triton's status mapping (`docs/protocol/README.md`): INVALID_ARG 400,
  NOT_FOUND 404, UNAVAILABLE 503, UNSUPPORTED 501, INTERNAL 500.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# protocol datatype → numpy dtype (little-endian, as on the wire); BYTES handled apart
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
DATATYPES = (*DTYPES, "BYTES")
MAX_RANK = 8
MAX_ELEMENTS = 1 << 28
POINT_PARAMS = ("lambda_n", "width")
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository",
              "floatedge_operating_point"]


class ServeError(Exception):
    """A request the server refuses: an HTTP status and one line for `{"error": ...}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = " ".join(str(message).split()) or "error"


def bad(message: str) -> ServeError:
    return ServeError(400, message)


# gRPC status of each HTTP status (Triton's mapping, reversed; `grpc.StatusCode` names)
GRPC_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              409: "FAILED_PRECONDITION", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 501: "UNIMPLEMENTED",
              503: "UNAVAILABLE"}


@dataclass
class TensorIn:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


@dataclass
class OutputWanted:
    name: str
    classification: int = 0  # top-N, 0: the raw tensor
    binary: bool | None = None  # None: the request's default


@dataclass
class InferRequest:
    model: str
    version: str = ""
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[TensorIn] = field(default_factory=list)
    outputs: list[OutputWanted] | None = None  # None: every output
    received: float = 0.0  # perf_counter() when the transport had the whole request
    started: float = 0.0  # perf_counter() when a worker thread started decoding it (queue = started - received)


@dataclass
class TensorOut:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None  # numeric outputs
    items: list[bytes] | None = None  # BYTES outputs, row-major
    binary: bool = False

    def raw(self) -> bytes:
        """The tensor's bytes as the binary extension and gRPC's raw_output_contents carry them."""
        if self.items is not None:
            return b"".join(struct.pack("<I", len(b)) + b for b in self.items)
        assert self.array is not None
        return np.ascontiguousarray(self.array, dtype=DTYPES[self.datatype]).tobytes()

    def json_data(self) -> list:
        if self.items is not None:
            return [b.decode("utf-8", "replace") for b in self.items]
        assert self.array is not None
        return self.array.ravel().tolist()


@dataclass
class InferResponse:
    model: str
    version: str
    id: str | None
    parameters: dict[str, Any]
    outputs: list[TensorOut]


# --------------------------------------------------------------------------------------- parameters
def scalar_param(value: Any, where: str) -> Any:
    """A parameter value must be a string, number or bool (required_api.md "Parameters")."""
    if isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise bad(f"{where} must be a string, number or boolean, got {type(value).__name__}")


def check_params(params: Any, where: str) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise bad(f"{where} must be an object of parameters, got {type(params).__name__}")
    return {str(k): scalar_param(v, f"{where}.{k}") for k, v in params.items()}


def number_param(params: dict[str, Any], key: str) -> float | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"parameter {key} must be a number, got {value!r}")
    return float(value)


def int_param(params: dict[str, Any], key: str, where: str) -> int:
    value = params.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{where} parameter {key} must be an integer, got {value!r}")
    return value


def bool_param(params: dict[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise bad(f"{where} parameter {key} must be true or false, got {value!r}")


# --------------------------------------------------------------------------------------- tensors
def check_shape(shape: Any, where: str) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_RANK:
        raise bad(f"{where} shape must be a list of at most {MAX_RANK} dimensions, got {shape!r}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in shape):
        raise bad(f"{where} shape must hold non-negative integers, got {list(shape)!r}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise bad(f"{where} shape {list(shape)} has more than {MAX_ELEMENTS} elements")
    return tuple(int(d) for d in shape)


def check_datatype(datatype: Any, where: str) -> str:
    if datatype not in DATATYPES:
        raise bad(f"{where} has unknown datatype {datatype!r}; the protocol's are {', '.join(DATATYPES)}")
    return datatype


def tensor_from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview) -> np.ndarray:
    """A numeric tensor from its raw little-endian bytes; the byte count must match the shape exactly."""
    where = f"input {name!r}"
    if datatype == "BYTES":
        raise bad(f"{where}: BYTES inputs are not accepted by this model")
    dtype = DTYPES[datatype]
    want = math.prod(shape) * dtype.itemsize
    if len(raw) != want:
        raise bad(f"{where}: {len(raw)} bytes of data for shape {list(shape)} {datatype}, which needs {want}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def tensor_from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """A numeric tensor from JSON `data` (flat or nested, row-major); the element count must match."""
    where = f"input {name!r}"
    if datatype == "BYTES":
        raise bad(f"{where}: BYTES inputs are not accepted by this model")
    if not isinstance(data, list):
        raise bad(f"{where} data must be a list, got {type(data).__name__}")
    try:
        arr = np.array(data, dtype=DTYPES[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise bad(f"{where} data is not a regular array of {datatype} ({str(exc).splitlines()[0]})") from None
    if arr.size != math.prod(shape):
        raise bad(f"{where} has {arr.size} elements of data for shape {list(shape)}, which needs {math.prod(shape)}")
    return arr.reshape(shape)


def classify(logits: np.ndarray, k: int, labels: list[str]) -> list[bytes]:
    """Top-k of each row as "value:index:label", best first (Triton's classification extension)."""
    k = min(k, logits.shape[1])
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    out = []
    for row, cols in zip(logits, idx, strict=True):
        for j in cols:
            label = labels[j] if j < len(labels) else ""
            out.append(f"{float(row[j]):f}:{int(j)}{':' + label if label else ''}".encode())
    return out
