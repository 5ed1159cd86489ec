"""The gRPC door: `inference.GRPCInferenceService` (grpcio), translating to the same `core.Core` as REST.

Messages: `wire.py` (floatedge's own .proto, wire-compatible with `kserve/kserve:docs/predict-api/v2/grpc_predict_v2.proto`
and Triton's `grpc_service.proto`, so `tritonclient.grpc` works). Tensors arrive in `raw_input_contents` (one
entry per input, in order) or typed `contents`; outputs always leave in `raw_output_contents`, as Triton sends
them (tritonclient's `grpc/_infer_result.py` reads raw contents first). Errors: a ServeError's HTTP status
becomes the gRPC status Triton uses for it (`protocol.GRPC_CODES`), with the same one-line message.
gRPC's own thread pool runs each call, so inference never blocks a transport loop.

Why grpcio's synchronous server and not `grpc.aio` (measured side by side with KServe, docs/serve.md "Measured"):
an aio door running inference off the event loop, as the REST door does, crosses four threads per call
(grpc.aio's poller, the loop, a worker, the loop again) where this one crosses two (the polling thread hands the
call to a worker, which runs it and sends the reply itself); at batch 1 it added 0.06–0.17 ms more p50 and
0.04–0.24 ms more CPU per call. Tensors are not copied on the way in (`protocol.tensor_from_raw` is a
`np.frombuffer` view of the message's bytes) and the reply's logits are one small `tobytes`; the door's own Python
(decode, the core's checks, encode) is about 0.03 ms of CPU per call.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from . import wire
from .core import VERSION, Core
from .protocol import (
    GRPC_CODES,
    InferRequest,
    OutputWanted,
    ServeError,
    TensorIn,
    bad,
    check_datatype,
    check_shape,
    tensor_from_json,
    tensor_from_raw,
)

log = logging.getLogger("floatedge.serve")
M = wire.MESSAGES
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def param_value(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def set_param(p: Any, value: Any) -> None:
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = str(value)


def to_request(msg: Any, received: float) -> InferRequest:
    params = {k: param_value(v) for k, v in msg.parameters.items()}
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise bad(f"{len(raw)} raw_input_contents for {len(msg.inputs)} inputs; give one per input, in order")
    tensors = []
    for i, t in enumerate(msg.inputs):
        datatype = check_datatype(t.datatype, f"input {t.name!r}")
        shape = check_shape(list(t.shape), f"input {t.name!r}")
        if raw:
            array = tensor_from_raw(t.name, datatype, shape, raw[i])
        elif t.HasField("contents") and datatype in CONTENTS and datatype != "FP16":
            array = tensor_from_json(t.name, datatype, shape, list(getattr(t.contents, CONTENTS[datatype])))
        else:
            raise bad(f"input {t.name!r} has no data: send raw_input_contents or contents")
        tensors.append(TensorIn(t.name, datatype, shape, array))
    outputs = []
    for o in msg.outputs:
        k = param_value(o.parameters["classification"]) if "classification" in o.parameters else 0
        if isinstance(k, bool) or not isinstance(k, int):
            raise bad(f"output {o.name!r} parameter classification must be an integer, got {k!r}")
        outputs.append(OutputWanted(o.name, k, True))
    return InferRequest(msg.model_name, msg.model_version, msg.id or None, params, tensors, outputs or None, received)


class Servicer:
    def __init__(self, core: Core) -> None:
        self.core = core

    def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 - the protocol's method names
        return M["ServerLiveResponse"](live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return M["ServerReadyResponse"](ready=self.core.ready())

    def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.core.current(request.name, request.version)
        return M["ModelReadyResponse"](ready=self.core.ready())

    def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return M["ServerMetadataResponse"](**self.core.server_metadata())

    def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        md = self.core.model_metadata(request.name, request.version)
        tensor = M["ModelMetadataResponse"].TensorMetadata
        return M["ModelMetadataResponse"](name=md["name"], versions=md["versions"], platform=md["platform"],
                                          inputs=[tensor(**t) for t in md["inputs"]],
                                          outputs=[tensor(**t) for t in md["outputs"]])

    def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        c = self.core.model_config(request.name, request.version)
        i, o = c["input"][0], c["output"][0]
        config = wire.ModelConfig(
            name=c["name"], platform=c["platform"], backend=c["backend"], max_batch_size=c["max_batch_size"],
            input=[M["ModelInput"](name=i["name"], data_type=wire.TYPE_FP32, format=wire.FORMAT_NCHW, dims=i["dims"])],
            output=[M["ModelOutput"](name=o["name"], data_type=wire.TYPE_FP32, dims=o["dims"])])
        return M["ModelConfigResponse"](config=config)

    def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        received = time.perf_counter()
        try:
            req = to_request(request, received)
        except ServeError:
            self.core.metrics.failure("REJECTED")
            raise
        resp = self.core.infer(req)
        out = wire.ModelInferResponse(model_name=resp.model, model_version=resp.version or VERSION, id=resp.id or "")
        for k, v in resp.parameters.items():
            set_param(out.parameters[k], v)
        for o in resp.outputs:
            out.outputs.add(name=o.name, datatype=o.datatype, shape=list(o.shape))  # data: raw_output_contents
            out.raw_output_contents.append(o.raw())
        return out


def _wrap(fn: Any) -> Any:
    """Turn ServeError into the matching gRPC status; anything else is INTERNAL with one line."""

    def handler(request: Any, context: Any) -> Any:
        try:
            return fn(request, context)
        except ServeError as exc:
            context.abort(getattr(grpc.StatusCode, GRPC_CODES.get(exc.status, "INTERNAL")), exc.message)
        except Exception as exc:  # noqa: BLE001 - reported to the client as INTERNAL, logged in full
            log.exception("internal error", extra={"event": "internal_error", "rpc": fn.__name__})
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}".splitlines()[0])

    return handler


def start_grpc(core: Core, host: str, port: int, workers: int, max_message: int) -> grpc.Server:
    servicer = Servicer(core)
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(_wrap(getattr(servicer, name)),
                                                  request_deserializer=M[req].FromString,
                                                  response_serializer=M[resp].SerializeToString)
        for name, (req, resp) in wire.METHODS.items()
    }
    server = grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="floatedge-grpc"),
                         options=[("grpc.max_receive_message_length", max_message),
                                  ("grpc.max_send_message_length", max_message),
                                  ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(wire.SERVICE, handlers),))
    bound = server.add_insecure_port(f"{'[' + host + ']' if ':' in host else host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port} (in use?)")
    server.start()
    return server

