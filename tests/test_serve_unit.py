"""The server's parts on their own, in-process and fast: the committed gRPC descriptor against its .proto, the
dynamic batcher (merging, one point per batch, arrival order), the config file, the state record, signatures,
the tensor decoding rules."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from floatedge.daemon import protocol
from floatedge.daemon.batching import DynamicBatcher
from floatedge.daemon.config import ConfigError, load_config
from floatedge.daemon.state import StateStore
from floatedge.oppoint import OperatingPoint

ROOT = Path(__file__).resolve().parents[1]


def test_committed_descriptor_is_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    from google.protobuf import descriptor_pb2

    out = tmp_path / "d.desc"
    proc = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", ".", f"--descriptor_set_out={out}",
                           "floatedge/daemon/grpc_inference.proto"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    committed = descriptor_pb2.FileDescriptorSet.FromString((ROOT / "floatedge/daemon/grpc_inference.desc").read_bytes())
    assert fresh == committed, "regenerate grpc_inference.desc (command in grpc_inference.proto)"


def test_wire_messages_coexist_with_tritonclients():
    """Both define `inference.*`; the server's private pool lets them share a process."""
    pytest.importorskip("tritonclient.grpc")
    code = ("import tritonclient.grpc.service_pb2 as t\nfrom floatedge.daemon import wire\n"
            "m = wire.ModelInferRequest(model_name='x', raw_input_contents=[b'ab'])\n"
            "r = t.ModelInferRequest.FromString(m.SerializeToString())\nassert r.raw_input_contents == [b'ab']\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------------ batcher
class Recorder:
    """A model stand-in that records each batch it runs: logits = the mean pixel of each image, + λ_n."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[tuple[int, OperatingPoint | None]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray, point: OperatingPoint | None) -> tuple[np.ndarray, OperatingPoint]:
        with self.lock:
            self.batches.append((x.shape[0], point))
        time.sleep(self.delay)
        p = point or OperatingPoint(0.0, 1.0)
        return x.reshape(x.shape[0], -1).mean(axis=1, keepdims=True) + p.lambda_n, p


def test_batcher_merges_concurrent_requests_and_splits_them_back():
    rec = Recorder()
    b = DynamicBatcher(rec, max_batch=16, delay_s=0.5, workers=1)
    try:
        xs = [np.full((n, 1, 2, 2), float(i), np.float32) for i, n in enumerate([1, 2, 3, 1])]
        futs = [b.submit(x, None) for x in xs]
        results = [f.result(10) for f in futs]
    finally:
        b.close()
    assert rec.batches == [(7, None)]
    for i, (x, r) in enumerate(zip(xs, results, strict=True)):
        assert r.logits.shape == (x.shape[0], 1) and np.all(r.logits == i) and r.batch == 7


def test_batcher_never_mixes_points_and_keeps_order():
    rec = Recorder()
    b = DynamicBatcher(rec, max_batch=4, delay_s=0.5, workers=1)
    p1, p2 = OperatingPoint(0.25, 1.0), OperatingPoint(0.75, 1.0)
    try:
        plan = [None, None, p1, p1, p1, p2, None, None, None, None, None]
        futs = [b.submit(np.ones((1, 1, 2, 2), np.float32), p) for p in plan]
        results = [f.result(10) for f in futs]
    finally:
        b.close()
    assert [(n, p) for n, p in rec.batches] == [(2, None), (3, p1), (1, p2), (4, None), (1, None)]
    for p, r in zip(plan, results, strict=True):
        assert r.point == (p or OperatingPoint(0.0, 1.0)) and float(r.logits[0, 0]) == 1.0 + r.point.lambda_n


def test_batcher_delivers_a_batch_error_to_each_request():
    def broken(x, point):
        raise ValueError("model failed")

    b = DynamicBatcher(broken, max_batch=8, delay_s=0.05)
    futs = [b.submit(np.ones((1, 1, 1, 1), np.float32), None) for _ in range(3)]
    for f in futs:
        with pytest.raises(ValueError, match="model failed"):
            f.result(10)
    b.close()


# ------------------------------------------------------------------------------------------ config, state
def test_config_file_then_flags(tmp_path):
    cfg_file = tmp_path / "serve.toml"
    cfg_file.write_text('[serve]\nhttp_port = 9000\nslo_ms = 20\nbatching = true\n[serve.policy_params]\n')
    cfg = load_config(cfg_file, {"bundle": str(tmp_path / "m.febundle"), "http_port": 9100, "grpc_port": None})
    assert (cfg.http_port, cfg.grpc_port, cfg.slo_ms, cfg.batching) == (9100, 8001, 20.0, True)
    assert cfg.name == "m" and cfg.bundles == tmp_path and cfg.host == "127.0.0.1"
    for text, words in (("http_port = 'x'\n", "http_port must be int"), ("nope = 1\n", "unknown setting 'nope'"),
                        ("batch_max = 0\n", "batch_max must be"), ("grpc_port = 8000\n", "must differ"),
                        ("slo_ms = -1\n", "slo_ms must be"), ("http_port = \n", "not valid TOML")):
        cfg_file.write_text(text)
        with pytest.raises(ConfigError, match=words):
            load_config(cfg_file, {"bundle": "m.febundle"})
    with pytest.raises(ConfigError, match="model name"):
        load_config(None, {"bundle": "m.febundle", "model_name": "../x"})


def test_state_record_is_atomic_and_a_bad_one_is_ignored(tmp_path):
    s = StateStore(tmp_path)
    assert s.read() is None
    s.write(bundle="a.febundle", sha256="x")
    s.update(point={"lambda_n": 0.5})
    rec = s.read()
    assert rec["bundle"] == "a.febundle" and rec["point"] == {"lambda_n": 0.5} and rec["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["serve-state.json"]  # no temp files left
    (tmp_path / "serve-state.json").write_text("{half")
    assert s.read() is None and "unreadable" in s.problem


# ------------------------------------------------------------------------------------------ protocol
def test_tensor_decoding_rules():
    x = np.arange(6, dtype="<f4").reshape(1, 6)
    np.testing.assert_array_equal(protocol.tensor_from_raw("i", "FP32", (1, 6), x.tobytes()), x)
    np.testing.assert_array_equal(protocol.tensor_from_json("i", "FP32", (1, 6), [[0, 1, 2], [3, 4, 5]]), x)
    for fn, args, words in (
        (protocol.tensor_from_raw, ("FP32", (1, 6), x.tobytes()[:-1]), "23 bytes"),
        (protocol.tensor_from_json, ("FP32", (1, 6), [[0, 1], [2]]), "not a regular array"),
        (protocol.tensor_from_json, ("FP32", (1, 6), ["a"] * 6), "not a regular array"),
        (protocol.tensor_from_json, ("FP32", (2, 6), list(range(6))), "6 elements"),
        (protocol.tensor_from_json, ("FP32", (1, 6), "abc"), "must be a list"),
    ):
        with pytest.raises(protocol.ServeError, match=words):
            fn("i", *args)
    with pytest.raises(protocol.ServeError, match="non-negative integers"):
        protocol.check_shape([1, -2], "input")
    with pytest.raises(protocol.ServeError, match="more than"):
        protocol.check_shape([1 << 20, 1 << 20], "input")
    with pytest.raises(protocol.ServeError, match="must be a string, number or boolean"):
        protocol.check_params({"a": {"b": 1}}, "parameters")


def test_classification_strings_and_bytes_serialisation():
    logits = np.array([[0.1, 2.0, -1.0]], np.float32)
    items = protocol.classify(logits, 2, ["cat", "dog", "emu"])
    assert items == [b"2.000000:1:dog", b"0.100000:0:cat"]
    t = protocol.TensorOut("logits", "BYTES", (1, 2), items=items)
    raw = t.raw()
    assert raw[:4] == len(items[0]).to_bytes(4, "little") and raw[4:4 + len(items[0])] == items[0]
    assert json.dumps(t.json_data()) == '["2.000000:1:dog", "0.100000:0:cat"]'


# ------------------------------------------------------------------------------------------ signatures
def test_signatures(tmp_path, floats_run):
    """The server's check is floatedge.signing's, each refusal a BundleError naming its reason."""
    from _serve import make_key, sign

    from floatedge.bundle import BundleError, open_bundle
    from floatedge.daemon.trust import check_signature, load_keys
    from floatedge.export.torch_export import export_bundle

    bundle = export_bundle(floats_run, tmp_path / "m.febundle").path
    trusted = make_key(tmp_path / "keys", "ops")
    stranger = make_key(tmp_path / "other", "ops")
    keys = load_keys(tmp_path / "keys")
    with pytest.raises(BundleError, match="signature missing: .*unsigned"):
        check_signature(open_bundle(bundle), keys)
    kid = sign(bundle, trusted)
    assert check_signature(open_bundle(bundle), keys) == kid
    sign(bundle, stranger)
    with pytest.raises(BundleError, match="signature untrusted: .*not a trusted key"):
        check_signature(open_bundle(bundle), keys)
    sig = json.loads((bundle / "manifest.sig").read_text())
    sign(bundle, trusted)
    good = json.loads((bundle / "manifest.sig").read_text())
    (bundle / "manifest.sig").write_text(json.dumps({**good, "signature": sig["signature"]}))
    with pytest.raises(BundleError, match="signature wrong: .*does not match"):
        check_signature(open_bundle(bundle), keys)
    with pytest.raises(BundleError, match="no trusted keys"):
        load_keys(tmp_path)
