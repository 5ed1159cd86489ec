"""`floatedge bench` as a user meets it: flags checked before any work (naming the flag), the TensorRT backend
refused in one line where TensorRT is missing, no duplicated rows, and no width switch timed on a one-width
bundle. Real bundles, real ONNX Runtime, the real command in a subprocess."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from floatedge.export.torch_export import export_bundle
from floatedge.oppoint import OperatingPoint
from floatedge.runtime.bench import switch_plan, switch_under_load

CHEAP = ["--rounds", "10", "--budget", "0", "--no-switch"]


def floatedge(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "floatedge", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def one_width(float_run, tmp_path_factory) -> Path:
    """A tiny FLOAT bundle with the one width 1.0."""
    return export_bundle(float_run, tmp_path_factory.mktemp("bench1") / "one.febundle").path


def test_tensorrt_missing_is_one_line(one_width):
    if importlib.util.find_spec("tensorrt"):
        pytest.skip("TensorRT is installed here")
    proc = floatedge("bench", one_width, "--backend", "tensorrt")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --backend tensorrt is not available here"), proc.stderr
    assert "TensorRT 8.5+" in lines[0] and proc.stdout == ""


@pytest.mark.parametrize(("args", "flag", "why"), [
    (["--batches", "0"], "--batches", "batch sizes must be 1 or more"),
    (["--batches", "1,x"], "--batches", "whole numbers"),
    (["--rounds", "1"], "--rounds", "x>=10"),
    (["--lambdas", "0,1.5"], "--lambdas", "must be in [0, 1]"),
    (["--widths", "0"], "--widths", "width must be in (0, 1]"),
    (["--clients", "0"], "--clients", "x>=1"),
])
def test_bad_flags_are_named(one_width, args, flag, why):
    proc = floatedge("bench", one_width, *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: Invalid value for '{flag}'") and why in last, last


def test_width_not_in_bundle(one_width):
    proc = floatedge("bench", one_width, "--widths", "0.5", *CHEAP)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == ["Error: width 0.5 is not in this bundle; it has 1"]


def test_one_batch_prints_each_row_once(one_width, tmp_path):
    out = tmp_path / "b.json"
    proc = floatedge("bench", one_width, "--batches", "1,1", "--lambdas", "0", *CHEAP, "--json", out)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert [(r["width"], r["batch"]) for r in res["modes"]] == [(1.0, 1)]
    assert [(r["lambda_n"], r["batch"]) for r in res["latency"]] == [(0.0, 1)]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("  width 1 batch 1:")]
    assert len(rows) == 1, proc.stdout
    assert "width 0" not in proc.stdout  # no width ratio with one width


def test_switch_plan_leaves_out_switches_that_change_nothing():
    start = OperatingPoint(0.0, 1.0, 0.5)
    assert switch_plan(start, narrow=0.5) == [
        ("λ change (cold)", {"lambda_n": 0.7}), ("width change (cold)", {"width": 0.5}),
        ("λ change (cold)", {"lambda_n": 0.2}), ("width+λ back (cached)", {"lambda_n": 0.0, "width": 1.0})]
    assert switch_plan(start, narrow=1.0) == [
        ("λ change (cold)", {"lambda_n": 0.7}), ("λ change (cold)", {"lambda_n": 0.2}),
        ("λ back (cached)", {"lambda_n": 0.0})]


def test_one_width_bundle_times_no_width_switch(one_width):
    res = switch_under_load(str(one_width), clients=2, settle_s=0.3, concurrency=1)
    assert [s["label"] for s in res["switches"]] == ["λ change (cold)", "λ change (cold)", "λ back (cached)"]
    assert all(s["from"] != s["to"] for s in res["switches"])
    assert [s["cached"] for s in res["switches"]] == [False, False, True]
    assert res["failed"] == 0
