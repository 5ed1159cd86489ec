"""The OpenAPI 3 description of the REST API, served at `GET /v2/openapi.json`.

Written from the protocol's REST description (`kserve/open-inference-protocol:specification/protocol/inference_rest.md`,
which KServe also publishes as an OpenAPI document) plus floatedge's control extension; tests run schemathesis
against it to show that no request, however malformed, gets a server error.
"""
from __future__ import annotations

from typing import Any

from floatedge import __version__

SCALAR = {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}
PARAMS = {"type": "object", "additionalProperties": SCALAR}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
TENSOR_META = {"type": "object", "required": ["name", "datatype", "shape"],
               "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                              "shape": {"type": "array", "items": {"type": "integer"}}}}
DATATYPE = {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                                       "FP16", "FP32", "FP64", "BYTES"]}
INFER_REQUEST = {
    "type": "object", "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "additionalProperties": SCALAR, "properties": {
            "lambda_n": {"type": "number", "minimum": 0, "maximum": 1,
                         "description": "serve this request at this λ_n (floatedge)"},
            "width": {"type": "number", "description": "serve this request at this width (floatedge)"},
            "binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype"],
            "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer",
                                                                                           "minimum": 0}},
                           "datatype": DATATYPE, "parameters": PARAMS,
                           "data": {"type": "array", "items": {}}}}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object", "additionalProperties": SCALAR, "properties": {
                "classification": {"type": "integer", "minimum": 0}, "binary_data": {"type": "boolean"}}}}}},
    },
}
INFER_RESPONSE = {
    "type": "object", "required": ["model_name", "outputs"],
    "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
                   "parameters": PARAMS,
                   "outputs": {"type": "array", "items": {**TENSOR_META, "properties": {
                       **TENSOR_META["properties"], "parameters": PARAMS, "data": {"type": "array", "items": {}}}}}},
}
POINT = {"type": "object", "additionalProperties": False,
         "properties": {"lambda_n": {"type": "number"}, "width": {"type": "number"}}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad request", 401: "missing or wrong bearer token", 403: "control disabled (no token file)",
            404: "unknown model or version", 409: "another load in progress", 413: "body over the limit",
            415: "unsupported Content-Encoding", 503: "not ready"}
    return {str(c): _json(ERROR, text[c]) for c in codes}


def openapi(model: str) -> dict[str, Any]:
    """The document; `model` is the served model's name (the example value of the path parameters)."""
    m = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}, "example": model}
    v = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}, "example": "1"}
    auth = [{"bearer": []}]
    control_errors = _errors(400, 401, 403)

    def get(summary: str, schema: dict[str, Any], params: list | None = None, errors: tuple = (404,),
            security: list | None = None) -> dict[str, Any]:
        op = {"summary": summary, "parameters": params or [], "responses": {"200": _json(schema), **_errors(*errors)}}
        if security:
            op["security"] = security
        return {"get": op}

    def post(summary: str, body: dict[str, Any] | None, schema: dict[str, Any], params: list | None = None,
             errors: dict | None = None, security: list | None = None) -> dict[str, Any]:
        op: dict[str, Any] = {"summary": summary, "parameters": params or [],
                              "responses": {"200": _json(schema), **(errors or {})}}
        if body is not None:
            op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
        if security:
            op["security"] = security
        return {"post": op}

    obj = {"type": "object"}
    metadata = {"type": "object", "required": ["name", "platform", "inputs", "outputs"],
                "properties": {"name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
                               "platform": {"type": "string"}, "inputs": {"type": "array", "items": TENSOR_META},
                               "outputs": {"type": "array", "items": TENSOR_META}}}
    infer = post("Infer (JSON or binary tensors; classification; per-request lambda_n/width)", INFER_REQUEST,
                 INFER_RESPONSE, errors=_errors(400, 404, 413, 415, 503))
    paths = {
        "/v2/health/live": get("Server live", obj, errors=()),
        "/v2/health/ready": get("Server ready", obj, errors=(503,)),
        "/v2": get("Server metadata", {"type": "object", "required": ["name", "version", "extensions"]}, errors=()),
        "/v2/models/{model}": get("Model metadata", metadata, [m]),
        "/v2/models/{model}/versions/{version}": get("Model metadata", metadata, [m, v]),
        "/v2/models/{model}/ready": get("Model ready", obj, [m], (404, 503)),
        "/v2/models/{model}/versions/{version}/ready": get("Model ready", obj, [m, v], (404, 503)),
        "/v2/models/{model}/config": get("Model configuration (Triton ModelConfig)", obj, [m]),
        "/v2/models/{model}/versions/{version}/config": get("Model configuration", obj, [m, v]),
        "/v2/models/{model}/infer": {"post": {**infer["post"], "parameters": [m]}},
        "/v2/models/{model}/versions/{version}/infer": {"post": {**infer["post"], "parameters": [m, v]}},
        "/v2/repository/index": post("Repository index", None, {"type": "array"}, errors=control_errors,
                                     security=auth),
        "/v2/repository/models/{model}/load": post(
            "Hot swap: load a bundle of the bundle directory", {"type": "object", "properties": {"parameters": {
                "type": "object", "properties": {"bundle": {"type": "string"}}}}}, obj, [m],
            {**control_errors, **_errors(404, 409)}, auth),
        "/v2/repository/models/{model}/unload": post("Refused (one model is always served)", None, obj, [m],
                                                     control_errors, auth),
        "/v2/floatedge/state": get("Operating point, policy, last switch and swap, telemetry", obj, errors=(401, 403),
                                   security=auth),
        "/v2/floatedge/point": post("Switch the operating point", POINT, obj, errors=control_errors, security=auth),
        "/v2/floatedge/pin": post("Pin the point (optionally setting it)", POINT, obj, errors=control_errors,
                                  security=auth),
        "/v2/floatedge/unpin": post("Unpin the point", None, obj, errors=control_errors, security=auth),
        "/v2/floatedge/policy": {**get("The policy and its parameters", obj, errors=(401, 403), security=auth),
                                 **post("Set the policy's parameters", {"type": "object", "properties": {
                                     "params": {"type": "object"}}}, obj, errors=control_errors, security=auth)},
        "/v2/openapi.json": get("This document", obj, errors=()),
    }
    return {"openapi": "3.0.3",
            "info": {"title": "floatedge serve — Open Inference Protocol v2", "version": __version__},
            "paths": paths,
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}
