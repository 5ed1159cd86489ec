"""The gRPC messages of `inference.GRPCInferenceService`, built from the committed descriptor set.

`grpc_inference.proto` (beside this file) is floatedge's own description of the protocol's messages;
`grpc_inference.desc` is what `protoc --descriptor_set_out` makes of it (regeneration command in the .proto,
checked by tests/test_serve_unit.py). The messages are loaded into a *private* descriptor pool rather than
through generated `_pb2` modules: tritonclient's generated code puts the same `inference.*` names into
protobuf's default pool, and two files defining one name cannot share that pool ("duplicate symbol"), so a
process that uses both — a benchmark, a test, an application embedding the server — would fail to import.
The service itself is registered with `grpc.method_handlers_generic_handler` (grpc_server.py), which needs
only each method's (de)serialiser, not generated stubs.
"""
from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DESCRIPTOR_SET = Path(__file__).with_name("grpc_inference.desc")
PACKAGE = "inference"
SERVICE = "inference.GRPCInferenceService"

# method → (request message, response message), in the order of the .proto
METHODS = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
    "ModelConfig": ("ModelConfigRequest", "ModelConfigResponse"),
}


def _load() -> dict[str, type]:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    names = {n for pair in METHODS.values() for n in pair} | {"InferParameter", "ModelConfig", "ModelInput",
                                                              "ModelOutput"}
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{n}")) for n in names}


MESSAGES = _load()
ModelInferRequest = MESSAGES["ModelInferRequest"]
ModelInferResponse = MESSAGES["ModelInferResponse"]
ModelConfig = MESSAGES["ModelConfig"]

# enum values of the .proto (Triton's model_config.proto numbers)
TYPE_FP32, TYPE_STRING, FORMAT_NCHW = 11, 13, 2
