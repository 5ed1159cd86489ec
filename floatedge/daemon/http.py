"""The REST door: Open Inference Protocol v2 over HTTP (Starlette on uvicorn), translating to `core.Core`.

Wire rules relied on (`../shared/reference/daemon.md` §1):
* endpoints and JSON shapes: `kserve/kserve:docs/predict-api/v2/required_api.md`; errors `{"error": "..."}`;
* binary tensors (`triton-inference-server/server:docs/protocol/extension_binary_data.md`): the body is the JSON
  header then each binary input's bytes in input order; `Inference-Header-Content-Length` gives the JSON's size
  and is required whenever a binary part is present; `parameters.binary_data_size` per input; the request
  parameter `binary_data_output` (or an output's `binary_data`) asks for binary outputs, and a binary response
  carries the same header (tritonclient's `http/_utils.py` sends exactly this, and its `_infer_result.py`
  reads the header back);
* tritonclient answers any non-200 by reading the body as JSON with "error" (`http/_utils.py` `_get_error`), so
  every error here, routing errors included, is that JSON.

Inference, decoding and encoding run on a thread pool, never on the event loop; the loop only moves bytes.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import Executor
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .control import Controller
from .core import Core
from .openapi import openapi
from .protocol import (
    InferRequest,
    InferResponse,
    OutputWanted,
    ServeError,
    TensorIn,
    bad,
    bool_param,
    check_datatype,
    check_params,
    check_shape,
    int_param,
    tensor_from_json,
    tensor_from_raw,
)

log = logging.getLogger("floatedge.serve")
HEADER = "inference-header-content-length"
CONTROL_BODY_LIMIT = 1 << 16


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# --------------------------------------------------------------------------------------- decoding
def parse_infer(model: str, version: str, body: bytes, header_len: str | None, received: float) -> InferRequest:
    """An HTTP infer body (JSON, or JSON + binary tensors) as the core's InferRequest; ServeError(400) if bad."""
    if header_len is not None:
        try:
            hl = int(header_len)
        except ValueError:
            raise bad(f"Inference-Header-Content-Length must be an integer, got {header_len!r}") from None
        if not 0 < hl <= len(body):
            raise bad(f"Inference-Header-Content-Length {hl} is outside the body's {len(body)} bytes")
        head, rest = body[:hl], memoryview(body)[hl:]
    else:
        head, rest = body, memoryview(b"")
    try:
        obj = json.loads(head)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and header_len is None:
            raise bad("request body has bytes after its JSON: binary tensors need the Inference-Header-Content-Length "
                      "header") from None
        raise bad(f"request body is not valid JSON ({exc.msg} at byte {exc.pos})") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise bad(f"request body is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise bad("request body must be a JSON object with 'inputs'")
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, str):
        raise bad(f"id must be a string, got {type(rid).__name__}")
    params = check_params(obj.get("parameters"), "parameters")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad("request must have a non-empty list 'inputs'")
    tensors, offset = [], 0
    for i, inp in enumerate(inputs):
        if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
            raise bad(f"inputs[{i}] must be an object with a string 'name'")
        name = inp["name"]
        datatype = check_datatype(inp.get("datatype"), f"input {name!r}")
        shape = check_shape(inp.get("shape"), f"input {name!r}")
        iparams = check_params(inp.get("parameters"), f"input {name!r} parameters")
        if "binary_data_size" in iparams:
            size = int_param(iparams, "binary_data_size", f"input {name!r}")
            if header_len is None:
                raise bad(f"input {name!r} has binary_data_size but the request has no Inference-Header-Content-Length "
                          "header")
            if "data" in inp:
                raise bad(f"input {name!r} has both data and binary_data_size")
            if size < 0 or offset + size > len(rest):
                raise bad(f"input {name!r} declares {size} bytes of binary data but only {len(rest) - offset} follow "
                          "the JSON header")
            array = tensor_from_raw(name, datatype, shape, rest[offset:offset + size])
            offset += size
        elif "data" in inp:
            array = tensor_from_json(name, datatype, shape, inp["data"])
        else:
            raise bad(f"input {name!r} has neither data nor binary_data_size")
        tensors.append(TensorIn(name, datatype, shape, array))
    if offset != len(rest):
        raise bad(f"{len(rest)} bytes of binary data follow the JSON header but the inputs declare {offset}")
    default_binary = bool_param(params, "binary_data_output", "request") or False
    outputs = None
    if "outputs" in obj:
        if not isinstance(obj["outputs"], list):
            raise bad("outputs must be a list")
        outputs = []
        for i, out in enumerate(obj["outputs"]):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise bad(f"outputs[{i}] must be an object with a string 'name'")
            oparams = check_params(out.get("parameters"), f"output {out['name']!r} parameters")
            binary = bool_param(oparams, "binary_data", f"output {out['name']!r}")
            outputs.append(OutputWanted(out["name"], int_param(oparams, "classification", f"output {out['name']!r}"),
                                        default_binary if binary is None else binary))
    return InferRequest(model, version, rid, params, tensors, outputs or None, received)  # []: every output


def encode_infer(resp: InferResponse, default_binary: bool) -> tuple[bytes, dict[str, str]]:
    outs, blobs = [], []
    for o in resp.outputs:
        d: dict[str, Any] = {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
        if o.binary or default_binary:
            raw = o.raw()
            d["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            d["data"] = o.json_data()
        outs.append(d)
    top: dict[str, Any] = {"model_name": resp.model, "model_version": resp.version}
    if resp.id is not None:
        top["id"] = resp.id
    top["parameters"] = resp.parameters
    top["outputs"] = outs
    head = json.dumps(top, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                    "Inference-Header-Content-Length": str(len(head))}


# --------------------------------------------------------------------------------------- the app
class Rest:
    """The handlers, bound to one core, controller and thread pool."""

    def __init__(self, core: Core, control: Controller, pool: Executor) -> None:
        self.core, self.control, self.pool = core, control, pool
        self.spec = json.dumps(openapi(core.cfg.name)).encode()

    async def body(self, request: Request, limit: int) -> bytes:
        enc = request.headers.get("content-encoding", "identity").strip().lower()
        if enc not in ("", "identity"):
            raise ServeError(415, f"Content-Encoding {enc!r} is not supported; send the body uncompressed")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ServeError(413, f"request body of {declared} bytes is over the limit of {limit}")
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise ServeError(413, f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _off_loop(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # -- health and metadata
    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ok = self.core.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(self.core.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        p = request.path_params
        return JSONResponse(self.core.model_metadata(p["model"], p.get("version", "")))

    async def model_ready(self, request: Request) -> Response:
        p = request.path_params
        self.core.current(p["model"], p.get("version", ""))
        ok = self.core.ready()
        return JSONResponse({"name": p["model"], "ready": ok}, status_code=200 if ok else 503)

    async def model_config(self, request: Request) -> Response:
        p = request.path_params
        return JSONResponse(self.core.model_config(p["model"], p.get("version", "")))

    async def openapi(self, request: Request) -> Response:
        return Response(self.spec, media_type="application/json")

    # -- inference
    async def infer(self, request: Request) -> Response:
        p = request.path_params
        limit = self.core.cfg.max_body_bytes
        body = await self.body(request, limit)
        received = time.perf_counter()
        status, payload, headers = await self._off_loop(self._infer, p["model"], p.get("version", ""), body,
                                                        request.headers.get(HEADER), received)
        return Response(payload, status_code=status, headers=headers)

    def _infer(self, model: str, version: str, body: bytes, header_len: str | None,
               received: float) -> tuple[int, bytes, dict[str, str]]:
        started = time.perf_counter()
        try:
            req = parse_infer(model, version, body, header_len, received)
            req.started = started
        except ServeError:
            self.core.metrics.failure("REJECTED")
            raise
        resp = self.core.infer(req)
        payload, headers = encode_infer(resp, bool(req.parameters.get("binary_data_output") is True
                                                   and req.outputs is None))
        return 200, payload, headers

    # -- repository and control (token)
    async def _json(self, request: Request) -> dict[str, Any]:
        raw = await self.body(request, CONTROL_BODY_LIMIT)
        if not raw.strip():
            return {}
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            raise bad("request body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise bad("request body must be a JSON object")
        return obj

    async def _controlled(self, request: Request, fn: Any, *args: Any, body: bool = True) -> Response:
        self.control.authorize(request.headers.get("authorization"))
        payload = await self._json(request) if body else None
        result = await self._off_loop(fn, *args, *(() if payload is None else (payload,)))
        return JSONResponse(result)

    async def repository_index(self, request: Request) -> Response:
        self.control.authorize(request.headers.get("authorization"))
        slot = self.core.slot
        return JSONResponse([{"name": self.core.cfg.name, "version": "1", "state": "READY" if slot else "UNAVAILABLE",
                              "reason": "" if slot else "loading"}])

    async def repository_load(self, request: Request) -> Response:
        return await self._controlled(request, self.control.load, request.path_params["model"])

    async def repository_unload(self, request: Request) -> Response:
        self.control.authorize(request.headers.get("authorization"))
        raise bad("unload is refused: floatedge serve always serves one model; load another bundle to replace it")

    async def state(self, request: Request) -> Response:
        return await self._controlled(request, self.control.state_view, body=False)

    async def point(self, request: Request) -> Response:
        return await self._controlled(request, self.control.set_point)

    async def pin(self, request: Request) -> Response:
        return await self._controlled(request, self.control.pin)

    async def unpin(self, request: Request) -> Response:
        return await self._controlled(request, self.control.unpin, body=False)

    async def policy_get(self, request: Request) -> Response:
        self.control.authorize(request.headers.get("authorization"))
        return JSONResponse({"name": self.control.policy.name, "params": self.control.policy.params()})

    async def policy_set(self, request: Request) -> Response:
        return await self._controlled(request, self.control.set_policy)


def build_app(core: Core, control: Controller, pool: Executor) -> Starlette:
    r = Rest(core, control, pool)
    m, mv = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    routes = [
        Route("/v2/health/live", r.live), Route("/v2/health/ready", r.ready), Route("/v2", r.server_metadata),
        Route("/v2/openapi.json", r.openapi),
        Route(m, r.model_metadata), Route(mv, r.model_metadata),
        Route(m + "/ready", r.model_ready), Route(mv + "/ready", r.model_ready),
        Route(m + "/config", r.model_config), Route(mv + "/config", r.model_config),
        Route(m + "/infer", r.infer, methods=["POST"]), Route(mv + "/infer", r.infer, methods=["POST"]),
        Route("/v2/repository/index", r.repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", r.repository_load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", r.repository_unload, methods=["POST"]),
        Route("/v2/floatedge/state", r.state), Route("/v2/floatedge/point", r.point, methods=["POST"]),
        Route("/v2/floatedge/pin", r.pin, methods=["POST"]), Route("/v2/floatedge/unpin", r.unpin, methods=["POST"]),
        Route("/v2/floatedge/policy", r.policy_get, methods=["GET"]),
        Route("/v2/floatedge/policy", r.policy_set, methods=["POST"]),
    ]

    async def serve_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServeError)
        return error(exc.status, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("internal error", extra={"event": "internal_error", "path": request.url.path})
        return error(500, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    return Starlette(routes=routes, exception_handlers={ServeError: serve_error, HTTPException: http_error,
                                                        Exception: internal})
