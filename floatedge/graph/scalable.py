"""ONNX graph surgery shared by the export (torch side) and the static form (device side). Torch-free.

Both forms of a model start from one *base graph*: the plain network traced from torch, in which every
weight a layer consumes is a graph input named after the layer (`conv1.weight`, `bn1.running_mean`,
`normalize.mean`, ...). From it:

* `make_scalable` attaches the machinery that computes those tensors from `lambda_n` at run time:
  the λ subgraph (built once), `W + s·α·η` per noisy layer, and per dual BN either a `Where` per parameter
  (the switch dial) or the blended affine (a mixing dial, below);
* `floatedge.graph.static` later replaces the same tensors by constants for one operating point.

An OAT model (BN layers marked `"film"`) gets its FiLM MLPs the same way: `floatedge.graph.film` computes
the folded `<bn>.weight` / `<bn>.bias` from `lambda_n` in-graph, so its base-graph inputs are a FLOAT
model's and everything downstream (static form, refit, runtime) treats both alike.

The λ subgraph mirrors `floatedge.oppoint.noise_scale_array` op for op (Greater, Where, Sub, Div),
with λ_th baked in as the initializer `lambda_th` (choice: a constant, not a second input — one
threshold per bundle, recorded in the manifest; a graph for another λ_th is one re-export away, and the
static form takes any λ_th).

Under a mixing dial (`floatedge.oppoint.Dial`, recorded in the model's metadata as `floatedge.dial`) the λ
subgraph computes `noise_scale` and `bn_weight` (t) as piecewise-linear functions of λ_n (`dial_nodes`, op for op
`oppoint.pwl`), and each dual BN stores its two sets folded to per-channel affines (`oppoint.fold_bn`:
`<bn>.clean.scale` / `.shift`, `<bn>.adv.scale` / `.shift`); the BatchNormalization node gets
`<bn>.weight = clean.scale + t·(adv.scale − clean.scale)`, `<bn>.bias` likewise, and constant statistics
`<bn>.running_mean` = 0, `<bn>.running_var` = 1 — so its output is (1 − t)·BN_C(x) + t·BN_A(x). The
subtractions depend on constants only (ONNX Runtime folds them when it loads the graph): per call, a Mul and
an Add per parameter, as many nodes as the switch's four `Where`s.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from floatedge.bundle import BN_WEIGHT, LAMBDA, NOISE_SCALE, USE_ADV
from floatedge.oppoint import Dial, fold_bn, get_dial, pwl_constants

from .film import ENC_GRID, ENC_ROWS, FOLDED, encoder_nodes, film_array_names, film_nodes, selected_name

BN_PARAMS = ("weight", "bias", "running_mean", "running_var")
BN_SETS = ("clean", "adv")  # index = floatedge.oppoint.BN_CLEAN / BN_ADV
AFFINE = ("scale", "shift")  # a mixing graph's folded BN set: `<bn>.<set>.scale` / `.shift`
DIAL_PROP = "floatedge.dial"  # metadata key of a scalable model's dial (JSON of `Dial.to_dict`); absent: switch
ETA_DTYPES = {"float32": np.float32, "float16": np.float16}


def noisy_weight_name(layer: str) -> str:
    """The computed `W + s·α·η` tensor of a noisy layer in the scalable graph."""
    return f"{layer}.noisy_weight"


def point_tensor_names(layers: Iterable[Mapping]) -> list[str]:
    """Names of the tensors the base graph takes per layer, in layer order: the static form's initializers
    and the names a refitter addresses."""
    names = []
    for layer in layers:
        if layer["kind"] == "bn":
            names += [f"{layer['name']}.{p}" for p in BN_PARAMS]
        else:
            names.append(f"{layer['name']}.weight")
            if layer.get("bias"):
                names.append(f"{layer['name']}.bias")
    return names


def lambda_rule_nodes(lambda_th: float) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """`lambda_n` → (`noise_scale`, `use_adv`), written as `oppoint.noise_scale_array` writes it:

        use_adv = λ > th;  low = λ / th (th > 0) else 0;  high = (λ − th) / (1 − th);  s = where(use_adv, high, low)
    """
    th = np.float32(lambda_th)
    inits = [numpy_helper.from_array(np.array(th, np.float32), "lambda_th"),
             numpy_helper.from_array(np.array(1.0, np.float32), "lambda_rule.one")]
    nodes = [
        helper.make_node("Greater", [LAMBDA, "lambda_th"], [USE_ADV], name="lambda_rule/greater"),
        helper.make_node("Sub", [LAMBDA, "lambda_th"], ["lambda_rule.above"], name="lambda_rule/sub"),
        helper.make_node("Sub", ["lambda_rule.one", "lambda_th"], ["lambda_rule.span"], name="lambda_rule/span"),
        helper.make_node("Div", ["lambda_rule.above", "lambda_rule.span"], ["lambda_rule.high"],
                         name="lambda_rule/high"),
    ]
    if th > 0:
        nodes.append(helper.make_node("Div", [LAMBDA, "lambda_th"], ["lambda_rule.low"], name="lambda_rule/low"))
    else:
        inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "lambda_rule.low"))
    nodes.append(helper.make_node("Where", [USE_ADV, "lambda_rule.high", "lambda_rule.low"], [NOISE_SCALE],
                                  name="lambda_rule/where"))
    return nodes, inits


def dial_nodes(d: Dial) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """`lambda_n` → (`noise_scale`, `bn_weight`) under a mixing dial, each as `oppoint.pwl` computes it:
    y0 + ReduceSum(slopes · Min(Max(λ − starts, 0), spans))."""
    nodes, inits = [], [numpy_helper.from_array(np.array(0.0, np.float32), "dial.zero")]
    for key, out in (("s", NOISE_SCALE), ("t", BN_WEIGHT)):
        p = f"dial.{key}"
        for name, value in zip(("starts", "spans", "slopes", "y0"), pwl_constants(getattr(d, key)), strict=True):
            inits.append(numpy_helper.from_array(np.asarray(value, np.float32), f"{p}.{name}"))
        nodes += [
            helper.make_node("Sub", [LAMBDA, f"{p}.starts"], [f"{p}.from_start"], name=f"{p}/sub"),
            helper.make_node("Max", [f"{p}.from_start", "dial.zero"], [f"{p}.above"], name=f"{p}/max"),
            helper.make_node("Min", [f"{p}.above", f"{p}.spans"], [f"{p}.in_segment"], name=f"{p}/min"),
            helper.make_node("Mul", [f"{p}.in_segment", f"{p}.slopes"], [f"{p}.rise"], name=f"{p}/mul"),
            helper.make_node("ReduceSum", [f"{p}.rise"], [f"{p}.total"], keepdims=0, name=f"{p}/sum"),
            helper.make_node("Add", [f"{p}.y0", f"{p}.total"], [out], name=f"{p}/add"),
        ]
    return nodes, inits


def bn_epsilons(model: onnx.ModelProto) -> dict[str, float]:
    """ε of every BatchNormalization node, by the BN layer name its weight input carries (`<bn>.weight`)."""
    out = {}
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and node.input[1].endswith(".weight"):
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            out[node.input[1].removesuffix(".weight")] = float(eps)
    return out


def folded_sets(name: str, arrays: Mapping[str, np.ndarray], eps: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Both BN sets of a dual BN as (scale, shift) affines, `<bn>.<set>.scale` / `.shift`: as a mixing graph
    stores them, or folded from the raw parameters of a switch graph (`oppoint.fold_bn`)."""
    if f"{name}.{BN_SETS[0]}.scale" in arrays:
        return {f"{name}.{s}.{a}": np.asarray(arrays[f"{name}.{s}.{a}"], np.float32) for s in BN_SETS for a in AFFINE}
    out = {}
    for s in BN_SETS:
        scale, shift = fold_bn(*(arrays[f"{name}.{s}.{p}"] for p in BN_PARAMS), eps[name])
        out[f"{name}.{s}.scale"], out[f"{name}.{s}.shift"] = scale, shift
    return out


def _mix_nodes(name: str) -> list[onnx.NodeProto]:
    """`<bn>.weight` and `<bn>.bias` = clean + t·(adv − clean) of the folded sets."""
    nodes = []
    for a, target in zip(AFFINE, ("weight", "bias"), strict=True):
        c, d = f"{name}.clean.{a}", f"{name}.mix.{a}"
        nodes += [helper.make_node("Sub", [f"{name}.adv.{a}", c], [f"{d}_delta"], name=f"{name}/mix_{a}_delta"),
                  helper.make_node("Mul", [BN_WEIGHT, f"{d}_delta"], [f"{d}_step"], name=f"{name}/mix_{a}_step"),
                  helper.make_node("Add", [c, f"{d}_step"], [f"{name}.{target}"], name=f"{name}/mix_{a}")]
    return nodes


def make_scalable(base: onnx.ModelProto, layers: Sequence[Mapping], arrays: Mapping[str, np.ndarray],
                  lambda_th: float, eta_dtype: str = "float32", dial: Dial | str | None = None) -> onnx.ModelProto:
    """The runtime-scalable model: `base` with its weight inputs computed from `lambda_n` and `arrays`.

    `arrays` holds the stored tensors under their initializer names: `<layer>.weight`, `.bias`, `.alpha`,
    `.eta` for conv/linear layers; `<bn>.clean.<p>` and `<bn>.adv.<p>` for dual BNs (`<bn>.<p>` for a
    single BN); `normalize.mean` / `normalize.std`. Every other base input except `images` must be in it.
    An OAT model (BN layers with `"film": True`) adds `<bn>.film.fc{1,2}.{weight,bias}` per FiLM and, for an
    encoding of size > 1, `lambda_encoder.grid` / `lambda_encoder.rows` (see `floatedge.graph.film`).
    `dial` (None: switch): a mixing dial blends each dual BN's sets instead of selecting one (module docstring;
    `lambda_th` is then unused).
    """
    if eta_dtype not in ETA_DTYPES:
        raise ValueError(f"eta dtype must be one of {', '.join(ETA_DTYPES)}, got {eta_dtype!r}")
    model = onnx.ModelProto()
    model.CopyFrom(base)
    g = model.graph
    point_inputs = {i.name for i in g.input} - {"images"}
    rule = get_dial(dial)
    nodes, inits = dial_nodes(rule) if rule.mixes else lambda_rule_nodes(lambda_th)
    eps = bn_epsilons(base) if rule.mixes else {}
    renames: dict[str, str] = {}
    stored: dict[str, np.ndarray] = {}
    handled: set[str] = set()
    films = [layer for layer in layers if layer.get("film")]
    if films and lambda_th != 0:
        raise ValueError(f"an OAT model routes its BNs at λ_th = 0 (BN_A iff λ_n > 0); got λ_th = {lambda_th:g}")
    if films and rule.mixes:
        raise ValueError(f"an OAT model routes its BNs by λ (FiLM); it takes no mixing dial (got {rule.name!r})")
    if films:
        interpolated = ENC_ROWS in arrays
        enc_nodes, enc_inits = encoder_nodes(interpolated, len(arrays[ENC_GRID]) if interpolated else 0)
        nodes += enc_nodes
        inits += enc_inits
        for k in (ENC_GRID, ENC_ROWS) if interpolated else ():
            stored[k] = np.asarray(arrays[k], np.float32)
    for layer in layers:
        name = layer["name"]
        if layer["kind"] == "bn":
            film = bool(layer.get("film"))
            if layer["dual"] and rule.mixes:
                handled.update(f"{name}.{p}" for p in BN_PARAMS)
                stored.update(folded_sets(name, arrays, eps))
                c = len(stored[f"{name}.clean.scale"])
                stored[f"{name}.running_mean"] = np.zeros(c, np.float32)
                stored[f"{name}.running_var"] = np.ones(c, np.float32)
                nodes += _mix_nodes(name)
                continue
            for p in BN_PARAMS:
                handled.add(f"{name}.{p}")
                # with a FiLM, the set's weight and bias are an intermediate: FiLM is folded into them below
                target = selected_name(name, p) if film and p in FOLDED else f"{name}.{p}"
                if layer["dual"]:
                    for s in BN_SETS:
                        stored[f"{name}.{s}.{p}"] = arrays[f"{name}.{s}.{p}"]
                    nodes.append(helper.make_node("Where", [USE_ADV, f"{name}.adv.{p}", f"{name}.clean.{p}"],
                                                  [target], name=f"{name}/select_{p}"))
                else:
                    stored[target] = arrays[f"{name}.{p}"]
            if film:
                for k in film_array_names(name):
                    stored[k] = np.asarray(arrays[k], np.float32)
                f_nodes, f_inits = film_nodes(name, int(arrays[film_array_names(name)[0]].shape[0]) // 2)
                nodes += f_nodes
                inits += f_inits
            continue
        w = f"{name}.weight"
        handled.add(w)
        stored[w] = arrays[w]
        if layer.get("bias"):
            handled.add(f"{name}.bias")
            stored[f"{name}.bias"] = arrays[f"{name}.bias"]
        if layer["noisy"]:
            stored[f"{name}.alpha"] = np.asarray(arrays[f"{name}.alpha"], np.float32).reshape(())
            stored[f"{name}.eta"] = np.asarray(arrays[f"{name}.eta"]).astype(ETA_DTYPES[eta_dtype])
            eta = f"{name}.eta"
            if eta_dtype != "float32":
                nodes.append(helper.make_node("Cast", [eta], [f"{name}.eta_float"], to=TensorProto.FLOAT,
                                              name=f"{name}/eta_cast"))
                eta = f"{name}.eta_float"
            nodes += [
                helper.make_node("Mul", [NOISE_SCALE, f"{name}.alpha"], [f"{name}.noise_gain"],
                                 name=f"{name}/noise_gain"),
                helper.make_node("Mul", [f"{name}.noise_gain", eta], [f"{name}.noise"], name=f"{name}/noise"),
                helper.make_node("Add", [w, f"{name}.noise"], [noisy_weight_name(name)], name=f"{name}/noisy_weight"),
            ]
            renames[w] = noisy_weight_name(name)
    for other in sorted(point_inputs - handled):
        if other not in arrays:
            raise ValueError(f"no value for base graph input {other!r}")
        stored[other] = arrays[other]
    missing = handled - point_inputs
    if missing:
        raise ValueError(f"layers name tensors the base graph does not take: {', '.join(sorted(missing))}")

    for node in g.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
    old_nodes = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old_nodes)
    keep = [i for i in g.input if i.name not in point_inputs]
    del g.input[:]
    g.input.extend(keep + [helper.make_tensor_value_info(LAMBDA, TensorProto.FLOAT, [])])
    g.initializer.extend(inits + [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in stored.items()])
    if rule.mixes:
        model.metadata_props.add(key=DIAL_PROP, value=json.dumps(rule.to_dict()))
    return model


def graph_dial(model: onnx.ModelProto) -> Dial:
    """The dial a scalable model computes (its `floatedge.dial` metadata; switch without)."""
    raw = next((p.value for p in model.metadata_props if p.key == DIAL_PROP), None)
    return get_dial(json.loads(raw) if raw else None)


def initializer_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def prune(model: onnx.ModelProto, provided: Iterable[str] = ()) -> onnx.ModelProto:
    """Drop nodes that do not feed an output, initializers nothing reads, and graph inputs nothing reads.

    Names in `provided` count as sources (they are about to be initializers), so the nodes that computed
    them go too. Works in place and returns `model`.
    """
    g = model.graph
    provided = set(provided)
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(g.node):
        outs = [o for o in node.output if o in needed and o not in provided]
        if outs:
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in keep for i in n.input} | {o.name for o in g.output}
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    inputs = [i for i in g.input if i.name in used]
    del g.input[:]
    g.input.extend(inputs)
    vi = [v for v in g.value_info if v.name in used]
    del g.value_info[:]
    g.value_info.extend(vi)
    return model
