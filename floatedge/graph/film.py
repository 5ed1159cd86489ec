"""OAT's λ machinery in ONNX and in numpy, torch-free: the λ encoding, the FiLM MLPs, and their fold into BN.

An OAT model (`floatedge.train.film`) puts a FiLM after most of its BNs: `out = γ(λ)·BN(x) + β(λ)`, γ and β
from a two-layer MLP on an encoding of λ. In eval mode BN is `x ↦ a·x̂ + b` (x̂ normalised by the running
statistics), so FiLM∘BN is one BN with weight `a·γ` and bias `b·γ + β` over the same statistics
(`train.film.fold_film` does the same in torch). Both forms of an exported OAT model use that fold, so an OAT
graph has exactly the base-graph inputs of a FLOAT one (`<bn>.weight`, `<bn>.bias`, `<bn>.running_mean`, ...):

* the runtime-scalable graph computes the folded weight and bias from `lambda_n` in-graph (`film_nodes`):
  the encoding once, then per FiLM layer the MLP, then `Mul`/`Add` on the BN set the λ rule selected;
* the static form (`floatedge.graph.static.point_arrays`) computes the same tensors in numpy
  (`film_point_arrays`), so at one operating point an OAT model is a plain network: no MLP, no encoder,
  BN fused into the conv by ONNX Runtime like any other.

The encoding is reproduced in-graph, op for op (choice: not precomputed per λ, so the in-graph model takes
every λ in [0, 1], as the torch model does). `dim` = 1: the scalar λ. `dim` > 1: linear interpolation between
the rows of the orthogonal matrix at the two training λs around λ (`LambdaEncoder.forward`):
`hi = clamp(#{grid < λ}, 1, n−1)` (torch.searchsorted, left), `t = clamp((λ − grid[lo]) / (grid[hi] − grid[lo]),
0, 1)`, `enc = (1 − t)·rows[lo] + t·rows[hi]`. Only the n rows the grid uses are stored (`lambda_encoder.rows`,
n×dim), not the dim×dim matrix.

Names: `lambda_encoder.grid`, `lambda_encoder.rows` (stored), `film.cond` (the encoding, 1×dim);
per FiLM'd BN `B`: `B.film.fc1.weight` / `.bias`, `B.film.fc2.weight` / `.bias` (stored, sliced to the width),
`B.film.gamma`, `B.film.beta`, `B.selected.weight`, `B.selected.bias` (computed). OAT's BN routing is the λ rule
at λ_th = 0 (`oppoint.bn_set(λ, 0)`: BN_A iff λ > 0), so an OAT bundle's graph bakes λ_th = 0.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from floatedge.bundle import LAMBDA

ENC_GRID = "lambda_encoder.grid"
ENC_ROWS = "lambda_encoder.rows"
COND = "film.cond"
FC = ("fc1", "fc2")
LEAKY_SLOPE = 0.01  # torch.nn.functional.leaky_relu's default, ONNX LeakyRelu's default alpha
FOLDED = ("weight", "bias")  # the BN parameters FiLM changes; the running statistics are untouched


def film_array_names(bn: str) -> list[str]:
    """The stored tensors of the FiLM after BN layer `bn`."""
    return [f"{bn}.film.{fc}.{p}" for fc in FC for p in ("weight", "bias")]


def selected_name(bn: str, p: str) -> str:
    """The BN parameter of the selected set, before FiLM is folded into it."""
    return f"{bn}.selected.{p}"


# ----------------------------------------------------------------------------------------------- numpy
def encode_lambda(lam: float | np.floating, inits: Mapping[str, np.ndarray]) -> np.ndarray:
    """The λ encoding (1×dim float32) exactly as the graph computes it: scalar λ, or the interpolated rows."""
    lam32 = np.float32(lam)
    if ENC_ROWS not in inits:
        return np.full((1, 1), lam32, np.float32)
    grid, rows = inits[ENC_GRID].astype(np.float32), inits[ENC_ROWS].astype(np.float32)
    n = len(grid)
    hi = int(min(max(int((grid < np.clip(lam32, np.float32(0), np.float32(1))).sum()), 1), n - 1))
    lo = hi - 1
    t = np.clip((lam32 - grid[lo]) / (grid[hi] - grid[lo]), np.float32(0), np.float32(1)).astype(np.float32)
    return ((np.float32(1) - t) * rows[lo] + t * rows[hi]).astype(np.float32)[None, :]


def _leaky(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x, np.float32(LEAKY_SLOPE) * x).astype(np.float32)


def film_coefficients(bn: str, cond: np.ndarray, inits: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(γ, β) of the FiLM after `bn`, each of the width's C channels, for the encoding `cond`."""
    w1, b1, w2, b2 = (inits[n].astype(np.float32) for n in film_array_names(bn))
    out = _leaky(_leaky(cond @ w1.T + b1) @ w2.T + b2)[0]
    c = out.shape[0] // 2
    return out[:c], out[c:]


def fold(weight: np.ndarray, bias: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FiLM(γ, β) ∘ BN(weight, bias) as one BN: (weight·γ, bias·γ + β), in the graph's op order."""
    return (weight * gamma).astype(np.float32), (bias * gamma + beta).astype(np.float32)


# ----------------------------------------------------------------------------------------------- ONNX
def _const(name: str, value, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def encoder_nodes(interpolated: bool, n_grid: int = 0) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """`lambda_n` → `film.cond` (1×dim), mirroring `encode_lambda` op for op. The stored grid and rows are
    the caller's (`make_scalable` stores every array it is given)."""
    e = "lambda_encoder"
    if not interpolated:
        return ([helper.make_node("Reshape", [LAMBDA, f"{e}.shape"], [COND], name=f"{e}/reshape")],
                [_const(f"{e}.shape", [1, 1], np.int64)])
    inits = [_const(f"{e}.zero", 0.0, np.float32), _const(f"{e}.one", 1.0, np.float32),
             _const(f"{e}.first", 1, np.int64), _const(f"{e}.last", n_grid - 1, np.int64),
             _const(f"{e}.axis0", [0], np.int64)]
    n = lambda op, ins, out, **kw: helper.make_node(op, ins, [out], name=f"{e}/{out.rsplit('.', 1)[-1]}", **kw)
    nodes = [
        n("Clip", [LAMBDA, f"{e}.zero", f"{e}.one"], f"{e}.clamped"),
        n("Less", [ENC_GRID, f"{e}.clamped"], f"{e}.below"),
        n("Cast", [f"{e}.below"], f"{e}.below_i", to=TensorProto.INT64),
        n("ReduceSum", [f"{e}.below_i"], f"{e}.count", keepdims=0),  # no axes input: over all (opset ≥ 13)
        n("Max", [f"{e}.count", f"{e}.first"], f"{e}.hi_low"),
        n("Min", [f"{e}.hi_low", f"{e}.last"], f"{e}.hi"),
        n("Sub", [f"{e}.hi", f"{e}.first"], f"{e}.lo"),
        n("Gather", [ENC_GRID, f"{e}.lo"], f"{e}.grid_lo", axis=0),
        n("Gather", [ENC_GRID, f"{e}.hi"], f"{e}.grid_hi", axis=0),
        n("Sub", [LAMBDA, f"{e}.grid_lo"], f"{e}.offset"),
        n("Sub", [f"{e}.grid_hi", f"{e}.grid_lo"], f"{e}.span"),
        n("Div", [f"{e}.offset", f"{e}.span"], f"{e}.t_raw"),
        n("Clip", [f"{e}.t_raw", f"{e}.zero", f"{e}.one"], f"{e}.t"),
        n("Sub", [f"{e}.one", f"{e}.t"], f"{e}.one_minus_t"),
        n("Gather", [ENC_ROWS, f"{e}.lo"], f"{e}.row_lo", axis=0),
        n("Gather", [ENC_ROWS, f"{e}.hi"], f"{e}.row_hi", axis=0),
        n("Mul", [f"{e}.one_minus_t", f"{e}.row_lo"], f"{e}.part_lo"),
        n("Mul", [f"{e}.t", f"{e}.row_hi"], f"{e}.part_hi"),
        n("Add", [f"{e}.part_lo", f"{e}.part_hi"], f"{e}.enc"),
        n("Unsqueeze", [f"{e}.enc", f"{e}.axis0"], COND),
    ]
    return nodes, inits


def film_nodes(bn: str, channels: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """`film.cond` and the selected set's weight/bias of `bn` → the folded `bn.weight`, `bn.bias`, as
    `film_coefficients` and `fold` compute them (Gemm, LeakyRelu, Slice; Mul, Add)."""
    f = f"{bn}.film"
    n = lambda op, ins, out, **kw: helper.make_node(op, ins, [out], name=f"{bn}/film_{out.rsplit('.', 1)[-1]}", **kw)
    inits = [_const(f"{f}.shape", [2 * channels], np.int64)]
    for k, name in enumerate(("gamma", "beta")):
        inits += [_const(f"{f}.{name}_start", [k * channels], np.int64),
                  _const(f"{f}.{name}_end", [(k + 1) * channels], np.int64)]
    nodes = [
        n("Gemm", [COND, f"{f}.fc1.weight", f"{f}.fc1.bias"], f"{f}.fc1_out", transB=1),
        n("LeakyRelu", [f"{f}.fc1_out"], f"{f}.hidden", alpha=LEAKY_SLOPE),
        n("Gemm", [f"{f}.hidden", f"{f}.fc2.weight", f"{f}.fc2.bias"], f"{f}.fc2_out", transB=1),
        n("LeakyRelu", [f"{f}.fc2_out"], f"{f}.out2d", alpha=LEAKY_SLOPE),
        n("Reshape", [f"{f}.out2d", f"{f}.shape"], f"{f}.out"),
        n("Slice", [f"{f}.out", f"{f}.gamma_start", f"{f}.gamma_end"], f"{f}.gamma"),
        n("Slice", [f"{f}.out", f"{f}.beta_start", f"{f}.beta_end"], f"{f}.beta"),
        n("Mul", [selected_name(bn, "weight"), f"{f}.gamma"], f"{bn}.weight"),
        n("Mul", [selected_name(bn, "bias"), f"{f}.gamma"], f"{f}.scaled_bias"),
        n("Add", [f"{f}.scaled_bias", f"{f}.beta"], f"{bn}.bias"),
    ]
    return nodes, inits


__all__ = ["ENC_GRID", "ENC_ROWS", "COND", "FOLDED", "film_array_names", "selected_name", "encode_lambda",
           "film_coefficients", "fold", "encoder_nodes", "film_nodes"]
