"""The gRPC door of `floatedge serve` beyond what tritonclient sends (tests/test_serve.py covers that): messages
built by hand with the door's own descriptors (typed `contents`, a wrong number of `raw_input_contents`, a raw
part of the wrong size, an input without data) get INVALID_ARGUMENT with one line, and typed contents infer like
raw ones; under SIGTERM the calls in flight finish, a call after the signal is refused (UNAVAILABLE) while the
server drains, and the process exits 0."""
from __future__ import annotations

import signal
import threading

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")

import grpc  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from _serve import ServerProc, images  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from floatedge.daemon import wire  # noqa: E402
from floatedge.export.torch_export import export_bundle  # noqa: E402

MODEL = "g"


@pytest.fixture(scope="module")
def bundle(floats_run, tmp_path_factory):
    return export_bundle(floats_run, tmp_path_factory.mktemp("servegrpc") / "bundles" / f"{MODEL}.febundle").path


def request(x: np.ndarray, raw: list[bytes] | None = None, contents: bool = False) -> object:
    msg = wire.ModelInferRequest(model_name=MODEL, id="r")
    t = msg.inputs.add(name="images", datatype="FP32", shape=list(x.shape))
    if contents:
        t.contents.fp32_contents.extend(x.ravel().tolist())
    msg.raw_input_contents.extend([x.tobytes()] if raw is None else raw)
    return msg


def infer_one(client: grpcclient.InferenceServerClient, x: np.ndarray) -> np.ndarray:
    inp = grpcclient.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(MODEL, [inp], client_timeout=60).as_numpy("logits")


def test_hand_built_messages(bundle, tmp_path):
    server = ServerProc(tmp_path, bundle).wait_ready()
    channel = grpc.insecure_channel(server.grpc_url)
    try:
        infer = channel.unary_unary(f"/{wire.SERVICE}/ModelInfer", request_serializer=wire.ModelInferRequest.SerializeToString,
                                    response_deserializer=wire.ModelInferResponse.FromString)
        x = images(bundle, 1)
        by_raw = infer(request(x), timeout=60)
        by_contents = infer(request(x, raw=[], contents=True), timeout=60)
        logits = [np.frombuffer(r.raw_output_contents[0], "<f4") for r in (by_raw, by_contents)]
        assert by_raw.id == "r" and list(by_raw.outputs[0].shape) == [1, logits[0].size]
        np.testing.assert_array_equal(logits[0], logits[1])
        for msg, words in ((request(x, raw=[x.tobytes()] * 2), "2 raw_input_contents for 1 inputs"),
                           (request(x, raw=[x.tobytes()[:-4]]), "bytes of data for shape"),
                           (request(x, raw=[]), "has no data")):
            with pytest.raises(grpc.RpcError) as e:
                infer(msg, timeout=60)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details(), e.value.details()
            assert "\n" not in e.value.details()
        assert infer(request(x), timeout=60).raw_output_contents[0] == by_raw.raw_output_contents[0]  # still serving
    finally:
        channel.close()
        assert server.stop() == 0, server.log()


def test_sigterm_drains_grpc_calls_in_flight_and_refuses_new_ones(bundle, tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text("batching = true\nbatch_delay_ms = 3000.0\nbatch_max = 64\n")  # calls wait in the batcher
    server = ServerProc(tmp_path, bundle, config=cfg).wait_ready()
    x = images(bundle, 2)
    results, errors = [], []

    def call(i: int) -> None:
        c = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            results.append(infer_one(c, x[i:i + 1]))
        except Exception as exc:  # noqa: BLE001 - a failed call is the finding
            errors.append(repr(exc))
        finally:
            c.close()

    late = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert late.is_server_live()  # connected before the signal: a refusal below is the server's
        callers = [threading.Thread(target=call, args=(i,)) for i in range(2)]
        for t in callers:
            t.start()
        server.wait_pending(2)  # both calls are in the batcher's window
        server.signal(signal.SIGTERM)
        server.wait_event("stopping")
        with pytest.raises(InferenceServerException) as e:
            infer_one(late, x[:1])
        assert "UNAVAILABLE" in e.value.status() and "server is stopping" in e.value.message(), e.value
        for t in callers:
            t.join(60)
        code = server.proc.wait(60)
    finally:
        late.close()
        server.stop()
    assert code == 0, server.log()
    assert errors == [] and len(results) == 2, errors
    events = [e["event"] for e in server.events() if "event" in e]
    assert events.index("stopping") < events.index("stopped")
