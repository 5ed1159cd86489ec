"""benchmarks/robustness.py and benchmarks/dial_vs_oat.py end to end on tiny runs: real evaluations (PGD-20 and
APGD-CE+T through pyautoattack), the cache, the tables, and table 4's verdict on a real exported bundle."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_set(tmp_path_factory, float_run, oat_run, synthetic):
    from conftest import _train_tiny

    d = tmp_path_factory.mktemp("set")
    shutil.copytree(float_run, d / "float_s0")
    shutil.copytree(oat_run, d / "oat_s0")
    shutil.copytree(_train_tiny(tmp_path_factory, "float", (1.0,), synthetic, train_dial="mix"), d / "floatmix_s0")
    shutil.copytree(_train_tiny(tmp_path_factory, "pgdat", (1.0,), synthetic), d / "pgdat_s0")
    return d


def bench(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_robustness_tables_and_a_bundle_with_apgd_in_every_row(run_set, tmp_path):
    ev = tmp_path / "eval.json"
    r = bench("-m", "floatedge", "eval", str(run_set / "float_s0"), "--lambdas", "0,0.7,1", "--attacks",
              "pgd20,apgd-ce-t", "--limit", "8", "--out", str(ev), "--quiet")
    assert r.returncode == 0, r.stderr
    r = bench("-m", "floatedge", "export", str(run_set / "float_s0"), "--eval", str(ev), "--out",
              str(tmp_path / "m.febundle"), "--acceptance", "8")
    assert r.returncode == 0, r.stderr
    cache = tmp_path / "cache.json"
    r = bench("benchmarks/robustness.py", "--float", str(run_set / "float_s0"), "--pgdat", str(run_set / "pgdat_s0"),
              "--oat", str(run_set / "oat_s0"), "--limit", "8", "--only", "pgd20,apgd-ce-t", "--lambdas", "0,0.7,1",
              "--cache", str(cache), "--bundle", str(tmp_path / "m.febundle"))
    assert r.returncode == 0, r.stderr
    assert "Every one of the 3 rows carries an APGD-based figure" in r.stdout
    pieces = json.loads(cache.read_text())
    # FLOAT at 0, 0.7, 1 (0.7 under the mix dial's name), OAT at the same three, PGD-AT's one point; two attacks each
    assert len(pieces) == 2 * 7 and sum("|dial mix|" in k for k in pieces) == 2
    assert all(v["device"] == "cpu" and v["n_images"] == 8 for v in pieces.values())
    again = bench("benchmarks/robustness.py", "--float", str(run_set / "float_s0"), "--pgdat", str(run_set / "pgdat_s0"),
                  "--oat", str(run_set / "oat_s0"), "--limit", "8", "--only", "pgd20,apgd-ce-t", "--lambdas", "0,0.7,1",
                  "--cache", str(cache))
    assert again.returncode == 0 and "0 pieces to compute" in again.stdout  # all cached


def test_dial_vs_oat_curves_from_one_run_set(run_set, tmp_path):
    cache = tmp_path / "dvo.json"
    r = bench("benchmarks/dial_vs_oat.py", "--set", f"{run_set}:0", "--limit", "8", "--cache", str(cache),
              "--no-write", "--threads", "1")
    assert r.returncode == 0, r.stderr
    head = next(line for line in r.stdout.splitlines() if line.startswith("| λ_n |"))
    assert [c.strip() for c in head.split("|")[2:-1]] == [
        f"{c} · {run_set.name} s0" for c in ("FLOAT switch@0", "FLOAT switch@0.5", "FLOAT mix", "FLOAT-mix mix", "OAT")]
    assert cache.with_suffix(".png").stat().st_size > 10_000
    rows = [line for line in r.stdout.splitlines() if line.startswith("| 0.7 |")]
    assert rows and rows[0].count("(") == 5  # APGD-CE+T beside PGD-20 at λ_n = 0.7 on every curve
    picked = bench("benchmarks/dial_vs_oat.py", "--set", f"{run_set}:0", "--limit", "8", "--cache", str(cache),
                   "--no-write", "--threads", "1", "--curves", "FLOAT mix,OAT", "--beside", "dial-vs-oat",
                   "--apgd-in", f"{run_set.name}:1")  # APGD for a seed not in this call: PGD-20 only
    assert picked.returncode == 0, picked.stderr  # every piece cached by the first call
    head = next(line for line in picked.stdout.splitlines() if line.startswith("| λ_n |"))
    assert [c.strip() for c in head.split("|")[2:-1]] == [f"{c} · {run_set.name} s0" for c in ("FLOAT mix", "OAT")]
    rows = [line for line in picked.stdout.splitlines() if line.startswith("| 0.7 |")]
    assert rows and "(" not in rows[0]
    # the paper's claim, tested against OAT; the earlier section's figures beside these, at the 3 APGD points
    assert sum(line.startswith("- FLOAT mix vs OAT: ") and "**The claim " in line for line in picked.stdout.splitlines()) == 1
    beside = [line for line in picked.stdout.split("Next to section `dial-vs-oat`")[1].splitlines()
              if line.startswith(("| FLOAT", "| OAT"))]
    assert [row.split("|")[1:3] for row in beside] == [[f" {c} ", f" {lam} "] for c in ("FLOAT mix", "OAT")
                                                       for lam in ("0", "0.7", "1")]
    bad = bench("benchmarks/dial_vs_oat.py", "--set", f"{run_set}:0", "--beside", "no-such", "--no-write")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("--beside: no section no-such")
    bad = bench("benchmarks/dial_vs_oat.py", "--set", f"{run_set}:0", "--curves", "FLOAT mix,PNI", "--no-write")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1] == "--curves: no curve named PNI"


def test_lambda_dial_counts_each_width_of_a_floats_run(floats_run, tmp_path):
    cache = tmp_path / "ld.json"
    args = ("benchmarks/lambda_dial.py", "--run", str(floats_run), "--widths", "1,0.5", "--dials", "mix,switch@0",
            "--lambdas", "0,0.5,1", "--alt-lambdas", "0,1", "--limit", "8", "--cache", str(cache), "--no-write",
            "--threads", "1", "--section", "lambda-dial-widths")
    r = bench(*args)
    assert r.returncode == 0, r.stderr
    head = next(line for line in r.stdout.splitlines() if line.startswith("| λ_n |"))
    assert [c.strip() for c in head.split("|")[2:-1]] == [
        "switch λ_th=0 · w 1", "mix (t = s = λ) · w 1", "switch λ_th=0 · w 0.5", "mix (t = s = λ) · w 0.5"]
    counted = [line for line in r.stdout.splitlines() if line.startswith("- ")]
    assert len(counted) == 4 and all("Pareto-useful at λ_n" in line for line in counted)
    # the ends are shared by both dials: 2 widths × (2 ends + mix 0.5 + switch 0.5) = 8 points, each measured once
    assert len([k for k in json.loads(cache.read_text()) if k != "_meta"]) == 8
    assert "FLOATS" in r.stdout and "at widths 1, 0.5 (a dial per width)" in r.stdout
    bad = bench(*args[:3], "--widths", "1,half", "--no-write")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("--widths: '1,half' is not")
