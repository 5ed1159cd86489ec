"""ONNX graph surgery shared by the export (torch side) and the static form (device side). Torch-free.

Both forms of a model start from one *base graph*: the plain network traced from torch, in which every
weight a layer consumes is a graph input named after the layer (`conv1.weight`, `bn1.running_mean`,
`normalize.mean`, ...). From it:

* `make_scalable` attaches the machinery that computes those tensors from `lambda_n` at run time:
  the λ subgraph (built once), `W + s·α·η` per noisy layer, and a `Where` per dual-BN parameter;
* `floatedge.graph.static` later replaces the same tensors by constants for one operating point.

An OAT model (BN layers marked `"film"`) gets its FiLM MLPs the same way: `floatedge.graph.film` computes
the folded `<bn>.weight` / `<bn>.bias` from `lambda_n` in-graph, so its base-graph inputs are a FLOAT
model's and everything downstream (static form, refit, runtime) treats both alike.

The λ subgraph mirrors `floatedge.oppoint.noise_scale_array` op for op (Greater, Where, Sub, Div),
with λ_th baked in as the initializer `lambda_th` (choice: a constant, not a second input — one
threshold per bundle, recorded in the manifest; a graph for another λ_th is one re-export away, and the
static form takes any λ_th).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from floatedge.bundle import LAMBDA, NOISE_SCALE, USE_ADV

from .film import ENC_GRID, ENC_ROWS, FOLDED, encoder_nodes, film_array_names, film_nodes, selected_name

BN_PARAMS = ("weight", "bias", "running_mean", "running_var")
BN_SETS = ("clean", "adv")  # index = floatedge.oppoint.BN_CLEAN / BN_ADV
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


def make_scalable(base: onnx.ModelProto, layers: Sequence[Mapping], arrays: Mapping[str, np.ndarray],
                  lambda_th: float, eta_dtype: str = "float32") -> onnx.ModelProto:
    """The runtime-scalable model: `base` with its weight inputs computed from `lambda_n` and `arrays`.

    `arrays` holds the stored tensors under their initializer names: `<layer>.weight`, `.bias`, `.alpha`,
    `.eta` for conv/linear layers; `<bn>.clean.<p>` and `<bn>.adv.<p>` for dual BNs (`<bn>.<p>` for a
    single BN); `normalize.mean` / `normalize.std`. Every other base input except `images` must be in it.
    An OAT model (BN layers with `"film": True`) adds `<bn>.film.fc{1,2}.{weight,bias}` per FiLM and, for an
    encoding of size > 1, `lambda_encoder.grid` / `lambda_encoder.rows` (see `floatedge.graph.film`).
    """
    if eta_dtype not in ETA_DTYPES:
        raise ValueError(f"eta dtype must be one of {', '.join(ETA_DTYPES)}, got {eta_dtype!r}")
    model = onnx.ModelProto()
    model.CopyFrom(base)
    g = model.graph
    point_inputs = {i.name for i in g.input} - {"images"}
    nodes, inits = lambda_rule_nodes(lambda_th)
    renames: dict[str, str] = {}
    stored: dict[str, np.ndarray] = {}
    handled: set[str] = set()
    films = [layer for layer in layers if layer.get("film")]
    if films and lambda_th != 0:
        raise ValueError(f"an OAT model routes its BNs at λ_th = 0 (BN_A iff λ_n > 0); got λ_th = {lambda_th:g}")
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
    return model


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
