"""The static form: a bundle model frozen at one operating point. Torch-free, generated on demand.

Runtimes that cannot take computed weights (TensorRT before 8.5, DLA) need a plain network whose
weights are constants. This module turns the runtime-scalable model of a bundle into one for a given
`OperatingPoint`, or returns just the weights for a TensorRT refit:

* `static_model(bundle, op)` → an `onnx.ModelProto` with one input, `images`, and output `logits`;
  conv/linear weights are `W + s·α·η` evaluated in float32 (the same ops, in the same order, as the
  scalable graph), every BN holds the parameters of the set `op` selects — or, at a blend (a mixing
  dial, 0 < t < 1), the blended affine `oppoint.mix_affine` with mean 0 and variance 1, the same tensors a
  mixing graph computes in-graph.
* `refit_weights(bundle, op)` → `{initializer name: np.ndarray}` for `op`. The static models of all
  operating points of one width share graph and initializer names, so an engine built from
  `static_model(bundle, a)` refits to point b with `refit_weights(bundle, b)`.
* `plain_model(bundle, width)` → the model at λ_n = 0: no noise, BN_C — a plain network, the same
  size and structure as a plain export of the architecture. Use it as "the same model exported plain"
  when comparing runtimes.

Initializer names are the layer paths of the torch model plus the torch parameter name: `conv1.weight`
(the effective weight at the point), `fc.bias`, `layers.0.0.bn1.running_mean` (the selected set),
`normalize.mean`. In the scalable model the conv/linear names are the stored W (same name), and the BN
names are the outputs of the `Where` that selects the set — see docs/export.md.

The noise scale and BN weight come from the point's dial on λ_n as float32 (`Dial.arrays`: the switch
rule `oppoint.noise_scale_array`, or a mixing dial's `oppoint.pwl`), exactly what the graph computes from its
float32 `lambda_n` input. `op.lambda_th` and `op.dial` are honoured, so the static form can serve a threshold,
or a dial, other than the one baked into the scalable graph (a point naming no dial takes the graph's).
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from floatedge.bundle import LAMBDA, Bundle, iter_layers
from floatedge.oppoint import OperatingPoint, OperatingPointError, mix_affine

from .film import FOLDED, encode_lambda, film_coefficients, fold, selected_name
from .scalable import (
    BN_PARAMS,
    BN_SETS,
    DIAL_PROP,
    bn_epsilons,
    folded_sets,
    graph_dial,
    initializer_arrays,
    noisy_weight_name,
    prune,
)


def point_arrays(model: onnx.ModelProto, entry: Mapping, op: OperatingPoint,
                 inits: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The tensors that depend on the operating point, computed from a scalable model's initializers:
    noisy conv/linear weights (`<layer>.weight`) and the selected BN parameters (`<bn>.<param>`); in an OAT
    model, the FiLM at λ_n folded into its BN's weight and bias (`floatedge.graph.film`). An OAT model
    takes only λ_th = 0 (its BN routing; OperatingPointError otherwise).

    `inits`: `initializer_arrays(model)`, when the caller keeps it across points (a runtime switching
    point: decoding every initializer is ~80% of this function's time)."""
    if inits is None:
        inits = initializer_arrays(model)
    film = any(layer.get("film") for layer in iter_layers(entry, "bn"))
    if film and op.lambda_th != 0:
        raise OperatingPointError(f"an OAT model has no λ_th: its BNs route at λ_th = 0 (BN_A iff λ_n > 0), "
                                  f"got λ_th={op.lambda_th:g}")
    if film and op.rule.mixes:
        raise OperatingPointError(f"an OAT model routes its BNs by λ (FiLM) and takes no mixing dial, got {op.dial.name!r}")
    rule = op.dial or graph_dial(model)
    s, t = (np.float32(v) for v in rule.arrays(np.float32(op.lambda_n), op.lambda_th))
    eps: dict[str, float] | None = None
    cond = encode_lambda(op.lambda_n, inits) if film else None
    out: dict[str, np.ndarray] = {}
    for layer in iter_layers(entry):
        name = layer["name"]
        if layer["kind"] == "bn":
            if layer["dual"] and (t not in (0, 1) or f"{name}.clean.scale" in inits):  # a blend, or a mixing graph
                eps = bn_epsilons(model) if eps is None else eps
                sets = folded_sets(name, inits, eps)
                k, b = mix_affine(*(sets[f"{name}.{st}.{a}"] for st in BN_SETS for a in ("scale", "shift")), t)
                out[f"{name}.weight"], out[f"{name}.bias"] = k, b
                out[f"{name}.running_mean"], out[f"{name}.running_var"] = np.zeros_like(k), np.ones_like(k)
            elif layer["dual"]:
                for p in BN_PARAMS:
                    out[f"{name}.{p}"] = inits[f"{name}.{BN_SETS[int(t)]}.{p}"]
            if layer.get("film"):
                w, b = (out.get(f"{name}.{p}", inits.get(selected_name(name, p))) for p in FOLDED)
                out[f"{name}.weight"], out[f"{name}.bias"] = fold(w, b, *film_coefficients(name, cond, inits))
        elif layer["noisy"]:
            gain = s * inits[f"{name}.alpha"].astype(np.float32)
            noise = (gain * inits[f"{name}.eta"].astype(np.float32)).astype(np.float32)
            out[f"{name}.weight"] = (inits[f"{name}.weight"] + noise).astype(np.float32)
    return out


def freeze(model: onnx.ModelProto, entry: Mapping, op: OperatingPoint) -> onnx.ModelProto:
    """`model` (runtime-scalable, described by manifest `entry`) frozen at `op`. The lower-level form of
    `static_model`, for callers that hold the ModelProto rather than a bundle."""
    values = point_arrays(model, entry, op)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    renames = {noisy_weight_name(layer["name"]): f"{layer['name']}.weight"
               for layer in iter_layers(entry) if layer["kind"] != "bn" and layer["noisy"]}
    for node in g.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
    kept = [t for t in g.initializer if t.name not in values]
    del g.initializer[:]
    g.initializer.extend(kept + [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in values.items()])
    prune(out, provided=values)
    if any(i.name == LAMBDA for i in g.input):  # pragma: no cover - prune drops it; a guard against drift
        raise RuntimeError("static model still reads lambda_n")
    _order_initializers(out)
    del out.metadata_props[:]
    onnx.helper.set_model_props(out, {"floatedge.form": "static",
                                      "floatedge.operating_point": json.dumps(op.to_dict()),
                                      "floatedge.width": f"{op.width:g}",
                                      DIAL_PROP: json.dumps((op.dial or graph_dial(model)).to_dict())})
    return out


def _order_initializers(model: onnx.ModelProto) -> None:
    """Initializers in the order nodes first read them: the same order at every operating point."""
    order = {}
    for node in model.graph.node:
        for i in node.input:
            order.setdefault(i, len(order))
    inits = sorted(model.graph.initializer, key=lambda t: order.get(t.name, len(order)))
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)


def load_scalable(bundle: Bundle, width: float) -> tuple[onnx.ModelProto, dict]:
    """The runtime-scalable model of one width, parsed, and its manifest entry."""
    entry = bundle.model_entry(width)
    return onnx.load_from_string(bundle.read(entry["file"])), entry


def static_model(bundle: Bundle, op: OperatingPoint) -> onnx.ModelProto:
    """A plain ONNX model with constant weights for `op` (input `images`, output `logits`)."""
    return freeze(*load_scalable(bundle, op.width), op)


def refit_weights(bundle: Bundle, op: OperatingPoint, changing_only: bool = False) -> dict[str, np.ndarray]:
    """The weights of `static_model(bundle, op)` by initializer name, for `trt.Refitter.set_named_weights`.

    All of them by default (TensorRT fuses conv and BN and then asks for the whole group); with
    `changing_only`, just the ones that differ between operating points (noisy weights, dual-BN params).
    """
    model, entry = load_scalable(bundle, op.width)
    if changing_only:
        return point_arrays(model, entry, op)
    return initializer_arrays(freeze(model, entry, op))


def plain_model(bundle: Bundle, width: float | None = None) -> onnx.ModelProto:
    """The bundle's network at λ_n = 0 (no noise, BN_C): the same model exported plain."""
    return static_model(bundle, bundle.operating_point(0.0, width))
