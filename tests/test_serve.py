"""`floatedge serve` against real clients: one server process on loopback, driven by `tritonclient.http` and
`tritonclient.grpc` (and raw HTTP for what no client would send). Metadata, config, JSON and binary tensors,
classification, id echo, per-request points, every bad input of the issue, control with its token, switching
and a hot swap under concurrent load with every response checked against the bundle's parity reference,
metrics, SIGHUP, the OpenAPI description under schemathesis. No timing limits: those are in
benchmarks/serve_bench.py."""
from __future__ import annotations

import http.client as http_client
import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("tritonclient.http")
pytest.importorskip("tritonclient.grpc")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from _serve import Reference, ServerProc, copy_bundle, images, make_key, sign, write_token  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import floatedge.runtime as rt  # noqa: E402
from floatedge.bundle import PARITY_TOL, open_bundle  # noqa: E402
from floatedge.daemon.core import accepts  # noqa: E402
from floatedge.export.torch_export import export_bundle  # noqa: E402

PER_REQUEST = accepts(rt.Backend.run, "point")
MODEL = "floats"


@pytest.fixture(scope="module")
def site(floats_run, float_run, tmp_path_factory):
    """A bundle directory (A: FLOATS 1/0.75/0.5 signed; B: FLOAT, another model, signed; an unsigned copy of A;
    a tampered copy of B with B's signature: `floatedge.signing`), trusted keys, a token, a config file."""
    d = tmp_path_factory.mktemp("serve")
    bundles = d / "bundles"
    a = export_bundle(floats_run, bundles / "floats.febundle").path
    b = export_bundle(float_run, bundles / "float.febundle").path
    key = make_key(d / "keys")
    sign(a, key)
    sign(b, key)
    (copy_bundle(a, bundles / "unsigned.febundle") / "manifest.sig").unlink()
    t = copy_bundle(b, bundles / "tampered.febundle")  # B's valid signature, then a model file changed
    onnx_file = next(t.glob("*.onnx"))
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    (d / "outside.febundle").mkdir()
    token = d / "token"
    write_token(token)
    config = d / "serve.toml"
    config.write_text(f'max_body_mb = 1.0\nslo_ms = 50.0\ntrusted_keys = "{d / "keys"}"\n'
                      f'state_dir = "{d / "state"}"\nworkers = 8\n')
    return {"dir": d, "a": a, "b": b, "token": token, "config": config, "ref": Reference(a, b)}


@pytest.fixture(scope="module")
def server(site):
    s = ServerProc(site["dir"], site["a"], config=site["config"], token_file=site["token"]).wait_ready()
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture
def http(server):
    c = httpclient.InferenceServerClient(server.url, concurrency=1)
    yield c
    c.close()


@pytest.fixture
def grpc(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def current(server) -> dict:
    status, state = server.json("GET", "/v2/floatedge/state")
    assert status == 200, state
    return state


def set_point(server, **point) -> dict:
    status, out = server.json("POST", "/v2/floatedge/point", point)
    assert status == 200, out
    return out


def http_infer(client, x, binary=True, **kw):
    inp = httpclient.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return client.infer(MODEL, [inp], **kw)


def grpc_infer(client, x, **kw):
    inp = grpcclient.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(MODEL, [inp], **kw)


def check_logits(site, params: dict, x: np.ndarray, logits: np.ndarray) -> None:
    """The response's logits are what its bundle gives at the point the response names."""
    want = site["ref"].logits(params["bundle_sha256"], params["lambda_n"], params["width"], x)
    np.testing.assert_allclose(logits, want, atol=PARITY_TOL, rtol=0)


# ------------------------------------------------------------------------------------------ metadata
def test_health_metadata_config_over_http(http):
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready(MODEL)
    meta = http.get_server_metadata()
    assert meta["name"] == "floatedge"
    assert {"binary_tensor_data", "classification", "model_configuration", "model_repository"} <= set(meta["extensions"])
    md = http.get_model_metadata(MODEL)
    assert md["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert md["outputs"][0]["name"] == "logits" and md["outputs"][0]["datatype"] == "FP32"
    cfg = http.get_model_config(MODEL)
    assert cfg["max_batch_size"] == 64 and cfg["input"][0]["format"] == "FORMAT_NCHW"
    assert cfg["input"][0]["dims"] == [3, 16, 16]
    assert not http.is_model_ready("nope")


def test_health_metadata_config_over_grpc(grpc):
    assert grpc.is_server_live() and grpc.is_server_ready() and grpc.is_model_ready(MODEL)
    assert "binary_tensor_data" in grpc.get_server_metadata().extensions
    md = grpc.get_model_metadata(MODEL)
    assert md.inputs[0].name == "images" and list(md.inputs[0].shape) == [-1, 3, 16, 16]
    cfg = grpc.get_model_config(MODEL).config
    assert cfg.max_batch_size == 64 and cfg.input[0].format == 2 and list(cfg.input[0].dims) == [3, 16, 16]
    with pytest.raises(InferenceServerException, match="unknown model"):
        grpc.get_model_metadata("nope")


# ------------------------------------------------------------------------------------------ inference
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_infer_matches_the_bundle(site, server, http, binary):
    x = images(site["a"], 3, seed=1)
    res = http_infer(http, x, binary=binary, request_id="req-7")
    body = res.get_response()
    assert body["id"] == "req-7" and body["model_name"] == MODEL
    params = body["parameters"]
    assert params["bundle_sha256"] == open_bundle(site["a"]).manifest["manifest_sha256"]
    check_logits(site, params, x, res.as_numpy("logits"))


def test_grpc_infer_matches_the_bundle_and_classifies(site, grpc):
    x = images(site["a"], 2, seed=2)
    res = grpc_infer(grpc, x, request_id="g-1")
    resp = res.get_response()
    assert resp.id == "g-1"
    params = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in resp.parameters.items()}
    check_logits(site, params, x, res.as_numpy("logits"))
    out = grpcclient.InferRequestedOutput("logits", class_count=2)
    cls = grpc_infer(grpc, x, outputs=[out]).as_numpy("logits")
    assert cls.shape == (2, 2)


def test_classification_names_the_bundles_classes(site, http):
    x = images(site["a"], 2, seed=3)
    logits = http_infer(http, x).as_numpy("logits")
    out = httpclient.InferRequestedOutput("logits", binary_data=True, class_count=3)
    inp = httpclient.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    top = http.infer(MODEL, [inp], outputs=[out]).as_numpy("logits")
    classes = open_bundle(site["a"]).classes
    assert top.shape == (2, 3)
    for row, got in zip(logits, top, strict=True):
        order = np.argsort(-row)[:3]
        parts = [s.decode().split(":") for s in got]
        assert [int(p[1]) for p in parts] == list(order)
        assert [p[2] for p in parts] == [classes[i] for i in order]
        np.testing.assert_allclose([float(p[0]) for p in parts], row[order], atol=1e-5)


def test_per_request_point(site, server, http):
    x = images(site["a"], 2, seed=4)
    before = current(server)["operating_point"]
    inp = httpclient.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    if not PER_REQUEST:
        with pytest.raises(InferenceServerException, match="per-request operating points"):
            http.infer(MODEL, [inp], parameters={"lambda_n": 1.0, "width": 0.5})
        return
    res = http.infer(MODEL, [inp], parameters={"lambda_n": 1.0, "width": 0.5})
    params = res.get_response()["parameters"]
    assert (params["lambda_n"], params["width"]) == (1.0, 0.5)
    check_logits(site, params, x, res.as_numpy("logits"))
    assert current(server)["operating_point"] == before  # the serving point did not move


# ------------------------------------------------------------------------------------------ bad input
X = np.full((1, 3, 16, 16), 0.5, dtype=np.float32)


def infer_body(x=X, binary=False, datatype="FP32", shape=None, name="images", **extra) -> dict:
    inp = {"name": name, "datatype": datatype, "shape": list(shape or x.shape)}
    if binary:
        inp["parameters"] = {"binary_data_size": x.nbytes}
    else:
        inp["data"] = x.ravel().tolist()
    return {"inputs": [inp], **extra}


def framed(head: dict, raw: bytes, header: bool = True) -> tuple[bytes, dict]:
    js = json.dumps(head).encode()
    return js + raw, ({"Inference-Header-Content-Length": str(len(js))} if header else {})


NAN = X.copy()
NAN[0, 0, 0, 0] = np.nan
BAD = {
    "malformed JSON": (f"/v2/models/{MODEL}/infer", b'{"inputs": [', {}, 400, "not valid JSON"),
    "wrong datatype": (f"/v2/models/{MODEL}/infer", infer_body(datatype="INT32"), {}, 400, "must be FP32"),
    "unknown datatype": (f"/v2/models/{MODEL}/infer", infer_body(datatype="FLOAT"), {}, 400, "unknown datatype"),
    "wrong shape": (f"/v2/models/{MODEL}/infer", infer_body(np.zeros((1, 3, 8, 8), np.float32)), {}, 400,
                    "must have shape"),
    "wrong element count": (f"/v2/models/{MODEL}/infer", infer_body(shape=[2, 3, 16, 16]), {}, 400,
                            "elements of data"),
    "binary part shorter": (f"/v2/models/{MODEL}/infer", *framed(infer_body(binary=True), X.tobytes()[:-4]), 400,
                            "only"),
    "binary part longer": (f"/v2/models/{MODEL}/infer", *framed(infer_body(binary=True), X.tobytes() + b"\0" * 4),
                           400, "follow the JSON header"),
    "no header length": (f"/v2/models/{MODEL}/infer", *framed(infer_body(binary=True), X.tobytes(), header=False),
                         400, "Inference-Header-Content-Length"),
    "NaN pixels": (f"/v2/models/{MODEL}/infer", *framed(infer_body(NAN, binary=True), NAN.tobytes()), 400, "NaN"),
    "unknown model": ("/v2/models/nope/infer", infer_body(), {}, 404, "unknown model"),
    "unknown version": (f"/v2/models/{MODEL}/versions/7/infer", infer_body(), {}, 404, "unknown version"),
    "unknown input": (f"/v2/models/{MODEL}/infer", infer_body(name="pixels"), {}, 400, "unknown input"),
    "unknown output": (f"/v2/models/{MODEL}/infer", infer_body(outputs=[{"name": "probs"}]), {}, 400, "unknown output"),
    "impossible λ": (f"/v2/models/{MODEL}/infer", infer_body(parameters={"lambda_n": 1.5}), {}, 400, "lambda_n"),
    "impossible width": (f"/v2/models/{MODEL}/infer", infer_body(parameters={"width": 0.3}), {}, 400, "width"),
    "body over the limit": (f"/v2/models/{MODEL}/infer", b"[" * (1 << 20) + b"]" * 10, {}, 413, "over the limit"),
    "batch over the limit": (f"/v2/models/{MODEL}/infer", *framed(infer_body(np.zeros((65, 3, 16, 16), np.float32),
                                                                              binary=True),
                                                                   np.zeros((65, 3, 16, 16), np.float32).tobytes()),
                             400, "max_batch_size"),
    "deep JSON": (f"/v2/models/{MODEL}/infer", b'{"inputs": ' + b"[" * 100000 + b"]" * 100000 + b"}", {}, 400, "JSON"),
    "compressed body": (f"/v2/models/{MODEL}/infer", b"\x1f\x8b", {"Content-Encoding": "gzip"}, 415, "Content-Encoding"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_the_protocols_error_and_the_server_keeps_serving(site, server, http, case):
    path, body, headers, status, words = BAD[case]
    if case in ("impossible λ", "impossible width") and not PER_REQUEST:
        words = "per-request operating points"
    if case == "body over the limit":  # refused on its Content-Length, before the body is read
        conn = http_client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        conn.putrequest("POST", path)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        r = conn.getresponse()
        got, raw = r.status, r.read()
        conn.close()
    else:
        got, _, raw = server.request("POST", path, body if isinstance(body, bytes) else json.dumps(body).encode(),
                                     headers)
    assert got == status, raw
    err = json.loads(raw)
    assert list(err) == ["error"] and "\n" not in err["error"] and words in err["error"], err
    check_logits(site, http_infer(http, X).get_response()["parameters"], X, http_infer(http, X).as_numpy("logits"))


def test_bad_input_over_grpc(grpc):
    inp = grpcclient.InferInput("images", [1, 3, 8, 8], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(InferenceServerException, match="must have shape") as e:
        grpc.infer(MODEL, [inp])
    assert "INVALID_ARGUMENT" in e.value.status()
    with pytest.raises(InferenceServerException, match="unknown model") as e:
        grpc.infer("nope", [inp])
    assert "NOT_FOUND" in e.value.status()
    assert grpc.is_server_ready()


@pytest.mark.parametrize("token,status", [(None, 401), ("wrong-token-0123456789", 401)], ids=["missing", "wrong"])
def test_control_needs_the_token(server, token, status):
    for method, path in (("GET", "/v2/floatedge/state"), ("POST", "/v2/floatedge/point"),
                         ("POST", f"/v2/repository/models/{MODEL}/load"), ("POST", "/v2/floatedge/policy")):
        got, body = server.json(method, path, {"lambda_n": 0.5} if method == "POST" else None, token=token)
        assert got == status and "token" in body["error"], (path, body)


@pytest.mark.parametrize("bundle,status,words", [
    ("tampered.febundle", 400, "checksum"),
    ("unsigned.febundle", 400, "unsigned"),
    ("../outside.febundle", 400, "no paths"),
    ("missing.febundle", 404, "no bundle"),
    ("/etc/passwd", 400, "no paths"),
])
def test_refused_loads_leave_the_old_bundle_serving(site, server, http, bundle, status, words):
    before = current(server)["bundle"]["sha256"]
    got, body = server.json("POST", f"/v2/repository/models/{MODEL}/load", {"parameters": {"bundle": bundle}})
    assert got == status and words in body["error"], body
    if status == 400 and "/" not in bundle:
        assert "keeps serving" in body["error"]
    assert current(server)["bundle"]["sha256"] == before
    assert http_infer(http, X).get_response()["parameters"]["bundle_sha256"] == before


def test_impossible_point_changes_nothing(server):
    before = current(server)["operating_point"]
    for body in ({"lambda_n": 2}, {"width": 0.3}, {"lambda_n": "x"}, {"depth": 1}):
        got, out = server.json("POST", "/v2/floatedge/point", body)
        assert got == 400 and out["error"], out
    assert current(server)["operating_point"] == before


# ------------------------------------------------------------------------------------------ under load
def test_switches_and_a_hot_swap_under_concurrent_load(site, server):
    """Clients over HTTP (binary and JSON) and gRPC run while the point changes 4 times and the bundle is swapped
    (A → B) and back: no request fails, and every response's logits are its bundle's at the point it names."""
    stop = threading.Event()
    seen: list[tuple[dict, np.ndarray, np.ndarray]] = []
    failures: list[str] = []

    def client(kind: str, seed: int) -> None:
        c = httpclient.InferenceServerClient(server.url) if kind != "grpc" else grpcclient.InferenceServerClient(
            server.grpc_url)
        x = images(site["a"], 1 + seed % 3, seed=10 + seed)
        try:
            while not stop.is_set():
                try:
                    if kind == "grpc":
                        res = grpc_infer(c, x)
                        r = res.get_response()
                        params = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in r.parameters.items()}
                    else:
                        res = http_infer(c, x, binary=kind == "binary")
                        params = res.get_response()["parameters"]
                    seen.append((params, x, res.as_numpy("logits")))
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    failures.append(f"{kind}: {exc}")
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(k, i)) for i, k in enumerate(["binary", "json", "grpc", "binary"])]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        for point in ({"lambda_n": 0.7}, {"width": 0.5}, {"lambda_n": 1.0, "width": 0.75}, {"lambda_n": 0.2}):
            out = set_point(server, **point)
            assert out["switch"]["reason"] == "manual"
            time.sleep(0.2)
        got, body = server.json("POST", f"/v2/repository/models/{MODEL}/load", {"parameters": {"bundle": "float.febundle"}})
        assert got == 200, body
        time.sleep(0.4)
        got, body = server.json("POST", f"/v2/repository/models/{MODEL}/load", {"parameters": {"bundle": "floats.febundle"}})
        assert got == 200, body
        deadline = time.monotonic() + 30  # the clients see the last bundle (a loaded machine answers late)
        while not any(p["bundle_sha256"] == body["sha256"] for p, _, _ in seen[-4:]) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    shas = {p["bundle_sha256"] for p, _, _ in seen}
    assert len(shas) == 2, "the swap was not seen by the clients"
    points = {(p["lambda_n"], p["width"]) for p, _, _ in seen}
    assert len(points) >= 3
    for params, x, logits in seen:
        check_logits(site, params, x, logits)
    state = current(server)
    assert state["last_swap"]["ok"] and state["last_swap"]["bundle"] == "floats.febundle"
    # the float bundle has width 1 only: the swap to it moved width 0.75 to 1, back keeps λ_n
    assert state["operating_point"]["lambda_n"] == 0.2


def test_pin_unpin_and_policy(server):
    out = server.json("POST", "/v2/floatedge/pin", {"lambda_n": 0.5})[1]
    assert out["pinned"] and out["operating_point"]["lambda_n"] == 0.5
    assert server.json("POST", "/v2/floatedge/unpin")[1]["pinned"] is False
    got, out = server.json("GET", "/v2/floatedge/policy")
    assert got == 200 and out == {"name": "manual", "params": {}}
    got, out = server.json("POST", "/v2/floatedge/policy", {"params": {"step": 1}})
    assert got == 400 and "takes no parameters" in out["error"]


def test_metrics_use_tritons_names(server, http):
    http_infer(http, X)
    set_point(server, lambda_n=0.3)
    text = server.metrics()
    line = next(ln for ln in text.splitlines() if ln.startswith("nv_inference_request_success{"))
    assert f'model="{MODEL}"' in line and 'version="1"' in line and float(line.split()[-1]) >= 1
    for name in ("nv_inference_request_failure{", "nv_inference_count{", "nv_inference_exec_count{",
                 "nv_inference_request_duration_us{", "nv_inference_queue_duration_us{",
                 "nv_inference_compute_infer_duration_us{", "nv_inference_pending_request_count{",
                 "floatedge_operating_point_lambda_n 0.3", "floatedge_switches_total{reason=\"manual\"}",
                 "floatedge_slo_latency_seconds 0.05", "floatedge_request_latency_seconds_bucket",
                 "floatedge_recent_latency_seconds{quantile=\"0.99\"}"):
        assert name in text, name


def test_sighup_rereads_the_config(site, server):
    cfg = site["config"]
    before = cfg.read_text()
    for text, slo in ((before.replace("slo_ms = 50.0", "slo_ms = 25.0"), 25.0), (before, 50.0)):  # and back
        cfg.write_text(text)
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while current(server)["latency"]["slo_ms"] != slo and time.monotonic() < deadline:
            time.sleep(0.05)
        assert current(server)["latency"]["slo_ms"] == slo
    assert sum(e.get("event") == "reload" for e in server.events()) >= 2


def test_switches_and_swaps_are_logged_with_their_reason(server):
    set_point(server, lambda_n=0.1)
    got, _ = server.json("POST", f"/v2/repository/models/{MODEL}/load", {"parameters": {"bundle": "tampered.febundle"}})
    assert got == 400
    events = server.events()
    switch = [e for e in events if e.get("event") == "switch"][-1]
    assert switch["reason"] == "manual" and switch["to"]["lambda_n"] == 0.1 and "time_to_effect_ms" in switch
    assert any(e.get("event") == "swap_failed" and "checksum" in e["error"] for e in events)


# ------------------------------------------------------------------------------------------ OpenAPI
def test_openapi_and_schemathesis_finds_no_server_error(server, tmp_path):
    got, spec = server.json("GET", "/v2/openapi.json", token=None)
    assert got == 200 and spec["openapi"].startswith("3.") and "/v2/models/{model}/infer" in spec["paths"]
    st = shutil.which("st") or shutil.which("schemathesis")
    if st is None:
        pytest.skip("schemathesis is not installed")
    proc = subprocess.run([st, "run", f"http://{server.url}/v2/openapi.json", "--checks", "not_a_server_error",
                           "--max-examples", "12", "--seed", "1", "--no-color", "--phases", "examples,fuzzing",
                           "--request-timeout", "20", "-H", f"Authorization: Bearer {server.token}"],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout.split("Seed:")[0].lower(), proc.stdout[-3000:]
    assert server.proc.poll() is None and not [e for e in server.events() if e.get("event") == "internal_error"]


def test_cli_refuses_bad_settings_in_one_line(tmp_path, site):
    bad_token = tmp_path / "token"
    bad_token.write_text("0123456789abcdef0123")
    bad_token.chmod(0o644)
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("htp_port = 1\n")
    for args, words in (([str(tmp_path / "nope.febundle")], "no bundle"),
                        ([str(site["a"]), "--token-file", str(bad_token)], "readable by others"),
                        ([str(site["a"]), "--config", str(bad_cfg)], "unknown setting 'htp_port'"),
                        ([str(site["a"]), "--http-port", "70000"], "http_port must be")):
        proc = subprocess.run([sys.executable, "-m", "floatedge", "serve", *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 1 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_unit_file_passes_systemd_analyze(site, tmp_path):
    import os

    proc = subprocess.run([sys.executable, "-m", "floatedge", "serve", str(site["a"]), "--print-systemd-unit"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    unit = proc.stdout
    for line in ("Type=notify", "WatchdogSec=", "StateDirectory=floatedge", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "SupplementaryGroups=video", "PrivateDevices=no"):
        assert line in unit
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing on CI: .ci/run installs the systemd package")
        pytest.skip("systemd-analyze is not installed")
    path = tmp_path / "floatedge-test.service"
    path.write_text(unit)
    res = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "floatedge-test.service" not in res.stderr, res.stderr  # no warning about our unit
