"""Export a trained run to a bundle: trace the plain network per width, attach the λ machinery, write.

How one width is exported:

1. The model is copied and its conditional layers are swapped for stand-ins that take every weight from
   a feed (`_Feed`) instead of owning it. Tracing that copy with `torch.onnx.export` (legacy exporter,
   `dynamo=False`: needs only onnx, and it is deterministic — the same run exports to the same bytes)
   gives the *base graph*: the plain network whose weights are graph inputs named `conv1.weight`,
   `bn1.running_mean`, ... . Nothing is folded: BN cannot be fused into a conv whose weight is an input.
2. `floatedge.graph.scalable.make_scalable` turns those inputs into tensors computed from `lambda_n`
   and the stored W, α, η and both BN sets (sliced to the width).

η is the recorded draw (`layer.eta()` after `load_model`), the one evaluation used, sliced to the width
like W. The threshold baked into the graph is the bundle's λ_th (`--lambda-th`, default 0.5).

OAT/OATS runs (`FloatModel.is_oat`): a BN followed by a FiLM (`BNFiLM`) becomes one stand-in BN under the
BNFiLM's path, marked `"film"` in the layer table; its FiLM MLP is stored sliced to the width as
`FiLM.coefficients` slices it, and the λ encoder's grid and rows are stored once. `make_scalable` then
computes the FiLM-folded BN weight and bias from `lambda_n` in-graph (`floatedge.graph.film`). OAT has no
λ_th: its BNs route at λ_th = 0 (`oppoint.bn_set(λ, 0)`, as the trainer), so its bundle bakes 0.

The dial (`--dial`, `floatedge.oppoint.Dial`): `switch` selects a BN set by λ_th (Eq. 5); a mixing dial (`mix`,
...) blends the two sets, the graph storing each set folded to its per-channel affine (`floatedge.graph.scalable`).
The manifest records it (``dial``); a mixing bundle has no λ_th (recorded as 0) and needs schema version 3. The
operating-point table must have been measured under the same dial (`floatedge eval --dial`): what is measured is
what is deployed. OAT runs and runs without a dual BN have nothing to blend and take only `switch`.
"""
from __future__ import annotations

import copy
import importlib.metadata
import io
import json
import math
import platform
import subprocess
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from floatedge import __version__
from floatedge.bundle import (
    ACCEPTANCE_IMAGES,
    ACCEPTANCE_LABELS,
    ACCEPTANCE_PREDICTIONS,
    DIAL_SCHEMA,
    FORMAT,
    INPUT,
    KIND_SCHEMA,
    OUTPUT,
    PARITY_TOL,
    VERIFY_LAMBDAS,
    BundleError,
    acceptance_adv_filename,
    array_bytes,
    model_filename,
    open_bundle,
    sha256_file,
    with_robust,
    write_bundle,
)
from floatedge.graph.film import ENC_GRID, ENC_ROWS, film_array_names
from floatedge.graph.scalable import BN_PARAMS, BN_SETS, DIAL_PROP, ETA_DTYPES, make_scalable, point_tensor_names
from floatedge.graph.static import freeze
from floatedge.oppoint import (
    DEFAULT_DIAL,
    DEFAULT_LAMBDA_TH,
    SWITCH,
    Dial,
    OperatingPoint,
    OperatingPointError,
    check_lambda_th,
    equivalent_lambda,
    get_dial,
    parse_widths,
)
from floatedge.train.attacks import run_attack
from floatedge.train.data import DataError, to_float
from floatedge.train.film import BNFiLM, FiLM, LambdaEncoder
from floatedge.train.layers import DualBatchNorm2d, NoisyConv2d, NoisyLinear, Normalize
from floatedge.train.models import FloatModel
from floatedge.train.trainer import CHECKPOINT, TrainConfig, load_model, load_run_data

DEFAULT_OPSET = 17
OPSETS = range(13, 21)  # what the legacy exporter of torch 2.x writes and every ORT ≥ 1.17 reads
PACKAGES = ("torch", "onnx", "onnxruntime", "numpy", "click")
ACCEPTANCE_ATTACK = "pgd20"


class ExportError(ValueError):
    """A run that cannot be exported as asked (unfinished, width not trained, mismatched eval file)."""


# ----------------------------------------------------------------------------- tracing stand-ins
class _Feed(dict):
    """Tensors of the traced forward, by base-graph input name; filled by `_BaseGraph.forward`."""


class _ConvIn(nn.Module):
    def __init__(self, name: str, feed: _Feed, layer: NoisyConv2d) -> None:
        super().__init__()
        self.name, self.feed, self.stride, self.padding = name, feed, layer.stride, layer.padding
        self.has_bias = layer.bias is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.feed[f"{self.name}.bias"] if self.has_bias else None
        return F.conv2d(x, self.feed[f"{self.name}.weight"], bias, self.stride, self.padding)


class _LinearIn(nn.Module):
    def __init__(self, name: str, feed: _Feed, layer: NoisyLinear) -> None:
        super().__init__()
        self.name, self.feed, self.has_bias = name, feed, layer.bias is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.feed[f"{self.name}.bias"] if self.has_bias else None
        return F.linear(x, self.feed[f"{self.name}.weight"], bias)


class _BatchNormIn(nn.Module):
    def __init__(self, name: str, feed: _Feed, eps: float) -> None:
        super().__init__()
        self.name, self.feed, self.eps = name, feed, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, n = self.feed, self.name
        return F.batch_norm(x, f[f"{n}.running_mean"], f[f"{n}.running_var"], f[f"{n}.weight"], f[f"{n}.bias"],
                            False, 0.0, self.eps)


class _NormalizeIn(nn.Module):
    def __init__(self, name: str, feed: _Feed) -> None:
        super().__init__()
        self.name, self.feed = name, feed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.feed[f"{self.name}.mean"]) / self.feed[f"{self.name}.std"]


class _BaseGraph(nn.Module):
    def __init__(self, model: nn.Module, feed: _Feed, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.feed, self.names = model, feed, list(names)

    def forward(self, images: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        self.feed.clear()
        self.feed.update(zip(self.names, tensors, strict=True))
        return self.model(images)


def _fmt(widths: Sequence[float]) -> str:
    return ", ".join(f"{w:g}" for w in widths)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def collect(model: FloatModel, width: float) -> tuple[nn.Module, list[dict], dict[str, np.ndarray], list[str], _Feed]:
    """A copy of `model` at `width` with stand-in layers, the layer table, the stored arrays (initializer
    name → value), the base-graph input names (after `images`) and the feed the stand-ins read."""
    k = model.widths.index(width)
    twin = copy.deepcopy(model).eval()
    feed = _Feed()
    layers: list[dict] = []
    arrays: dict[str, np.ndarray] = {}
    extra: list[str] = []
    replaced: list[str] = []
    with torch.no_grad():
        encoder = getattr(twin, "lambda_encoder", None)
        if isinstance(encoder, LambdaEncoder):  # OAT: the encoding is rebuilt in-graph (floatedge.graph.film)
            if encoder.dim > 1:
                arrays[ENC_GRID] = _np(encoder.grid)
                arrays[ENC_ROWS] = _np(encoder.matrix[: len(encoder.grid)])
            del twin.lambda_encoder
        for name, m in list(twin.named_modules()):
            if any(name.startswith(f"{r}.") for r in replaced):
                continue  # inside a module already replaced (BNFiLM's BN and FiLM)
            film = None
            if isinstance(m, BNFiLM):
                m, film = m.bn, m.film
            if isinstance(m, (NoisyConv2d, NoisyLinear)):
                out_c, in_c = m.out_list[k], m.in_list[k]
                kind = "conv" if isinstance(m, NoisyConv2d) else "linear"
                layers.append({"name": name, "kind": kind, "noisy": bool(m.noisy), "bias": m.bias is not None})
                arrays[f"{name}.weight"] = _np(m.weight[:out_c, :in_c])
                if m.bias is not None:
                    arrays[f"{name}.bias"] = _np(m.bias[:out_c])
                if m.noisy:
                    arrays[f"{name}.alpha"] = _np(m.alpha).reshape(())
                    arrays[f"{name}.eta"] = _np(m.eta()[:out_c, :in_c])
                stand_in: nn.Module = _ConvIn(name, feed, m) if kind == "conv" else _LinearIn(name, feed, m)
            elif isinstance(m, DualBatchNorm2d):
                sets = list(m.bns[k])
                eps = {bn.eps for bn in sets}
                if len(eps) != 1 or not all(bn.affine and bn.track_running_stats for bn in sets):
                    raise ExportError(f"{name}: BN sets differ in eps or lack affine/running stats")
                layers.append({"name": name, "kind": "bn", "dual": bool(m.dual)} | ({"film": True} if film else {}))
                for s, bn in zip(BN_SETS if m.dual else ("",), sets, strict=True):
                    for p in BN_PARAMS:
                        arrays[f"{name}.{s}.{p}" if s else f"{name}.{p}"] = _np(getattr(bn, p))
                if film is not None:
                    arrays.update(_film_arrays(name, film, m.num_list[k]))
                stand_in = _BatchNormIn(name, feed, eps.pop())
            elif isinstance(m, Normalize):
                arrays[f"{name}.mean"], arrays[f"{name}.std"] = _np(m.mean), _np(m.std)
                extra += [f"{name}.mean", f"{name}.std"]
                stand_in = _NormalizeIn(name, feed)
            else:
                continue
            parent_name, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent_name), child, stand_in)
            replaced.append(name)
    return twin, layers, arrays, point_tensor_names(layers) + extra, feed


def _film_arrays(bn: str, film: FiLM, cw: int) -> dict[str, np.ndarray]:
    """The FiLM MLP of one BN sliced to a width of `cw` channels, as `FiLM.coefficients` slices it: fc1's
    first 2·cw rows; fc2's γ rows [0, cw) and β rows [C, C + cw), its first 2·cw columns."""
    c = max(film.num_list)
    rows = torch.cat([torch.arange(cw), c + torch.arange(cw)])
    w1, b1, w2, b2 = film_array_names(bn)
    return {w1: _np(film.fc1.weight[: 2 * cw]), b1: _np(film.fc1.bias[: 2 * cw]),
            w2: _np(film.fc2.weight[rows][:, : 2 * cw]), b2: _np(film.fc2.bias[rows])}


def _trace_values(model: FloatModel, width: float, names: Sequence[str], arrays: dict[str, np.ndarray],
                  layers: Sequence[dict]) -> list[torch.Tensor]:
    """Example values for the base-graph inputs (the clean set at s = 0; tracing only needs the shapes)."""
    dual = {layer["name"] for layer in layers if layer["kind"] == "bn" and layer.get("dual")}
    out = []
    for n in names:
        layer, _, p = n.rpartition(".")
        key = f"{layer}.clean.{p}" if layer in dual else n
        out.append(torch.from_numpy(arrays[key]))
    return out


@dataclass
class Traced:
    """One width traced to its base graph, with what `make_scalable` needs to finish it."""

    width: float
    base: onnx.ModelProto
    layers: list[dict]
    arrays: dict[str, np.ndarray]
    graph_name: str

    @property
    def oat(self) -> bool:
        """An OAT model: some BN is followed by a FiLM (`floatedge.graph.film`)."""
        return any(layer.get("film") for layer in self.layers)


def trace_width(model: FloatModel, width: float, input_shape: Sequence[int], opset: int = DEFAULT_OPSET) -> Traced:
    """Trace the plain network of one width: weights as named graph inputs (see the module docstring)."""
    if width not in model.widths:
        raise ExportError(f"width {width:g} not trained; the run has widths {_fmt(model.widths)}")
    if opset not in OPSETS:
        raise ExportError(f"opset must be between {OPSETS.start} and {OPSETS.stop - 1}, got {opset}")
    twin, layers, arrays, names, feed = collect(model, width)
    left = [n for n, _ in [*twin.named_parameters(), *twin.named_buffers()]]
    if left:
        raise ExportError(f"cannot export {type(model).__name__}: {left[0]} belongs to a layer export does not know")
    wrapper = _BaseGraph(twin, feed, names).eval()
    example = (torch.rand(2, *input_shape), *_trace_values(model, width, names, arrays, layers))
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning
        torch.onnx.export(wrapper, example, buf, dynamo=False, export_params=False, opset_version=opset,
                          input_names=[INPUT, *names], output_names=[OUTPUT], do_constant_folding=True,
                          dynamic_axes={INPUT: {0: "N"}, OUTPUT: {0: "N"}})
    return Traced(width, onnx.load_from_string(buf.getvalue()), layers, arrays,
                  f"{type(model).__name__.lower()}_w{width:g}")


def resolve_lambda_th(oat: bool, lambda_th: float | None, dial: Dial | str | None = None) -> float:
    """The λ_th a graph bakes in: the one given (default 0.5) for FLOAT-kind models under the switch dial; 0 for
    OAT, whose BN routing is the λ rule at λ_th = 0 and which has no threshold to choose, and 0 under a mixing
    dial, which has none either (another value is an ExportError)."""
    mixes = get_dial(dial).mixes
    if not oat and not mixes:
        return check_lambda_th(DEFAULT_LAMBDA_TH if lambda_th is None else lambda_th)
    if lambda_th is not None and float(lambda_th) != 0.0:
        who = f"the {get_dial(dial).name} dial has" if mixes else "OAT/OATS have"
        raise ExportError(f"{who} no λ_th (recorded as 0); export without --lambda-th (got {lambda_th:g})")
    return 0.0


def resolve_dial(model: FloatModel, dial: Dial | str | None) -> Dial:
    """The dial to export `model` with: `dial` (None: DEFAULT_DIAL). A model with nothing to blend (OAT, or no
    dual BN: PGD-AT, standard) takes `switch` when none was asked for, and refuses a mixing dial asked for."""
    asked = dial is not None
    try:
        d = get_dial(DEFAULT_DIAL if dial is None else dial)
    except OperatingPointError as exc:
        raise ExportError(str(exc)) from None
    dual = any(isinstance(m, DualBatchNorm2d) and m.dual for m in model.modules())
    if d.mixes and (model.is_oat or not dual):
        if asked:
            why = "an OAT model routes its BNs by λ (FiLM)" if model.is_oat else "the model has one BN set"
            raise ExportError(f"--dial {d.name}: {why}; it takes only --dial {SWITCH}")
        return get_dial(SWITCH)
    return d


def finish(traced: Traced, lambda_th: float | None = None, eta_dtype: str = "float32",
           dial: Dial | str | None = None) -> onnx.ModelProto:
    """The runtime-scalable model of a traced width, η stored as `eta_dtype`, computing `dial` (None: switch);
    `lambda_th` as `resolve_lambda_th` (None: 0.5, or 0 for an OAT model or a mixing dial)."""
    if eta_dtype not in ETA_DTYPES:
        raise ExportError(f"eta dtype must be one of {', '.join(ETA_DTYPES)}, got {eta_dtype!r}")
    d = get_dial(dial)
    lambda_th = resolve_lambda_th(traced.oat, lambda_th, d)
    w = traced.width
    scalable = make_scalable(traced.base, traced.layers, traced.arrays, lambda_th, eta_dtype, d)
    scalable.producer_name, scalable.producer_version = "floatedge", __version__
    scalable.graph.name = traced.graph_name
    scalable.doc_string = (f"floatedge runtime-scalable model, width {w:g}: inputs images (N×C×H×W float32 in "
                           f"[0,1]) and lambda_n (float32 scalar in [0,1]); output logits. λ_th = {lambda_th:g}; "
                           f"dial {d.describe()}.")
    onnx.helper.set_model_props(scalable, {"floatedge.form": "scalable", "floatedge.width": f"{w:g}",
                                           "floatedge.lambda_th": f"{lambda_th:g}", DIAL_PROP: json.dumps(d.to_dict())})
    onnx.checker.check_model(scalable)
    return scalable


def export_model(model: FloatModel, width: float, input_shape: Sequence[int], lambda_th: float | None = None,
                 opset: int = DEFAULT_OPSET, eta_dtype: str = "float32",
                 dial: Dial | str | None = None) -> tuple[onnx.ModelProto, list[dict]]:
    """The runtime-scalable ONNX model of one width and its layer table (for the manifest)."""
    traced = trace_width(model, width, input_shape, opset)
    return finish(traced, lambda_th, eta_dtype, dial), traced.layers


Reference = dict[tuple[float, float], np.ndarray]  # (width, λ_n) → logits


def torch_reference(model: FloatModel, widths: Sequence[float], lambda_th: float, input_shape: Sequence[int],
                    lambdas: Sequence[float] = VERIFY_LAMBDAS, dial: Dial | str | None = None) -> tuple[np.ndarray, Reference]:
    """PyTorch logits at `lambdas` × `widths` on the images `floatedge verify` uses: (images, {(w, λ): logits})."""
    from .verify import images_for

    x = images_for(input_shape)
    out = {}
    with torch.no_grad():
        for w in widths:
            for lam in lambdas:
                model.set_operating_point(OperatingPoint(lam, w, lambda_th, dial))
                out[(w, lam)] = model(torch.from_numpy(x)).numpy()
    return x, out


def ort_parity(scalable: dict[float, onnx.ModelProto], images: np.ndarray, reference: Reference) -> float:
    """max |Δlogits| of ONNX Runtime on the scalable models against `reference` (from `torch_reference`)."""
    from .verify import ort_session, run_scalable

    worst = 0.0
    for w, proto in scalable.items():
        sess = ort_session(proto)
        for (rw, lam), want in reference.items():
            if rw == w:
                worst = max(worst, float(np.abs(run_scalable(sess, images, lam) - want).max()))
    return worst


# ----------------------------------------------------------------------------- the bundle
@dataclass
class ExportResult:
    """What `export_bundle` wrote and what it cost."""

    path: Path
    seconds: float
    bundle_bytes: int
    plain_bytes: int
    model_bytes: dict[float, int] = field(default_factory=dict)
    plain_model_bytes: dict[float, int] = field(default_factory=dict)
    eta_dtype: str = "float32"
    parity: float = 0.0  # max |Δlogits|, ONNX Runtime vs PyTorch, measured before writing

    @property
    def size_ratio(self) -> float:
        return self.bundle_bytes / self.plain_bytes


def film_description(model: FloatModel, layers: Sequence[dict], seed: int) -> dict:
    """The manifest's `film` entry of an OAT model: what the encoding is and how many FiLMs the graph has."""
    enc = model.lambda_encoder
    return {"dim": int(enc.dim), "encoding": "orthogonal" if enc.dim > 1 else "scalar",
            "grid": [round(float(g), 7) for g in enc.grid], "seed": int(seed), "init": model.spec.film_init,
            "layers": sum(bool(layer.get("film")) for layer in layers)}


def _git_commit() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": head, "git_dirty": dirty}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def operating_point_table(eval_file: str | Path, cfg: TrainConfig, ckpt: dict, widths: Sequence[float],
                          dial: Dial | str | None = None, checkpoint_sha256: str | None = None) -> dict:
    """The manifest's operating-point table from a `floatedge eval` result of this very run, measured under the
    dial the bundle deploys (`dial`, None: switch; a result without a dial was measured under switch). A result
    that records its checkpoint's sha256 must name this checkpoint (the weights and noise draw exported). Each row
    gets `robust_acc` / `robust_attack`, its lowest measured attack (`floatedge.bundle.robust_of`)."""
    path = Path(eval_file)
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: not a readable floatedge eval result ({exc})") from None
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list) or "attacks" not in result:
        raise ExportError(f"{path}: not a floatedge eval result (no rows/attacks)")
    for key, want in (("method", cfg.method), ("arch", cfg.arch), ("noise_seed", cfg.noise_seed),
                      ("epochs", int(ckpt["epoch"])), ("checkpoint_sha256", checkpoint_sha256)):
        if key in result and want is not None and result[key] != want:
            raise ExportError(f"{path}: evaluates a different run ({key} {result[key]!r}, this run has {want!r})")
    measured, deployed = (result.get("dial") or {}).get("name", SWITCH), get_dial(dial).name
    if measured != deployed:
        raise ExportError(f"{path}: measured under the {measured} dial, the bundle deploys {deployed}; "
                          f"evaluate with --dial {deployed} or export with --dial {measured}")
    keep = ("lambda_n", "width", "lambda_th", "dial", "noise_scale", "bn", "clean_acc",
            *(f"{a}_acc" for a in result["attacks"]))
    rows = [with_robust({k: r[k] for k in keep if k in r}) for r in result["rows"]
            if any(math.isclose(float(r["width"]), w) for w in widths)]
    if not rows:
        raise ExportError(f"{path}: no rows for the exported widths {_fmt(widths)}")
    return {"source": path.name, "n_images": result.get("n_images"), "subset_seed": result.get("subset_seed"),
            "attacks": result["attacks"], "epochs": result.get("epochs"), "rows": rows}


def acceptance_points(table: dict | None, widths: Sequence[float], lambda_th: float, conditional: bool,
                      dial: Dial | str | None = None) -> list[OperatingPoint]:
    """The operating points an acceptance set covers: the calibrated ones (the table's rows at the bundle's λ_th,
    one per (width, λ_n)), or without a table λ_n 0 and 1 per width (0 only for a model without λ)."""
    rows = [r for r in (table or {}).get("rows", []) if math.isclose(float(r["lambda_th"]), lambda_th)]
    pairs = sorted({(float(r["width"]), float(r["lambda_n"])) for r in rows}, key=lambda p: (-p[0], p[1]))
    if not pairs:
        pairs = [(w, lam) for w in widths for lam in ((0.0, 1.0) if conditional else (0.0,))]
    return [OperatingPoint(lam, w, lambda_th, dial) for w, lam in pairs]


def _argmax(session, images: np.ndarray, lam: float, batch: int = 256) -> np.ndarray:
    from .verify import run_scalable

    return np.concatenate([run_scalable(session, images[i:i + batch], lam).argmax(1)
                           for i in range(0, len(images), batch)]).astype(np.int32)


def make_acceptance(model: FloatModel, cfg: TrainConfig, scalable: dict[float, onnx.ModelProto],
                    points: Sequence[OperatingPoint], lambda_th: float, n: int, seed: int = 0,
                    batch_size: int = 250, data: str | Path | None = None) -> tuple[dict, dict[str, bytes]]:
    """The acceptance set: `n` test images of the run's data set (seeded subset, uint8) with labels, and for each
    robust point (λ_n > 0, or every point of a PGD-AT run) its PGD-20 images, crafted in torch against the model
    at that point (the exported fp32 function: parity ≤ PARITY_TOL) and stored as float16. The reference figures
    and predictions come from ONNX Runtime on the exported models themselves, on the images as stored (the
    float16 rounding included), so the device compares like with like. Returns (manifest section, files)."""
    from .verify import ort_session

    try:
        ds = load_run_data(cfg.dataset, data or cfg.data, recorded=data is None)
    except (DataError, ValueError) as exc:
        raise ExportError(f"the acceptance set needs the run's test data: {exc}; or pass --acceptance 0") from None
    ds = ds.limit(test=n, seed=seed)
    x8 = ds.x_test.numpy().astype(np.uint8)
    y = ds.y_test.numpy().astype(np.int64)
    x = to_float(ds.x_test)
    images = x.numpy()
    files = {ACCEPTANCE_IMAGES: array_bytes(x8), ACCEPTANCE_LABELS: array_bytes(y)}
    sessions = {w: ort_session(proto) for w, proto in scalable.items()}
    preds = np.full((len(points), 2, len(y)), -1, dtype=np.int32)
    rows = []
    for i, op in enumerate(points):
        lam = equivalent_lambda(op, lambda_th)
        preds[i, 0] = _argmax(sessions[op.width], images, lam)
        row = {"width": op.width, "lambda_n": op.lambda_n, "lambda_th": op.lambda_th,
               "clean_acc": float((preds[i, 0] == y).mean()), "adv_acc": None, "adversarial": None}
        if op.lambda_n > 0 or cfg.method == "pgdat":
            model.set_operating_point(op)
            adv = torch.cat([run_attack(ACCEPTANCE_ATTACK, model, x[j:j + batch_size], ds.y_test[j:j + batch_size],
                                        seed=seed + j, eps=cfg.eps) for j in range(0, len(x), batch_size)])
            stored = adv.numpy().astype(np.float16)
            preds[i, 1] = _argmax(sessions[op.width], stored.astype(np.float32), lam)
            name = acceptance_adv_filename(op.width, op.lambda_n)
            files[name] = array_bytes(stored)
            row.update(adv_acc=float((preds[i, 1] == y).mean()), adversarial=name)
        rows.append(row)
    files[ACCEPTANCE_PREDICTIONS] = array_bytes(preds)
    section = {"n_images": len(y), "seed": seed, "dataset": cfg.dataset, "split": "test",
               "images": {"file": ACCEPTANCE_IMAGES, "dtype": "uint8"}, "labels": ACCEPTANCE_LABELS,
               "predictions": ACCEPTANCE_PREDICTIONS,
               "attack": {"name": ACCEPTANCE_ATTACK, "eps": cfg.eps, "steps": 20, "step": cfg.eps / 4, "seed": seed,
                          "stored_as": "float16", "against": "the exported fp32 model at each point"},
               "points": rows}
    return section, files


def export_bundle(run_dir: str | Path, out: str | Path, widths: Sequence[float] | str | None = None,
                  opset: int = DEFAULT_OPSET, eval_file: str | Path | None = None, tar: bool = False,
                  lambda_th: float | None = None, eta_dtype: str = "auto",
                  force: bool = False, acceptance: int = 0, dial: Dial | str | None = None,
                  data: str | Path | None = None) -> ExportResult:
    """Export the finished run in `run_dir` to the bundle `out` (a directory, or one tar file with `tar`).

    `eta_dtype` "auto" stores η as float16 when ONNX Runtime still matches PyTorch within PARITY_TOL at
    every λ_n of VERIFY_LAMBDAS and every width (measured here, before writing), else as float32; an
    explicit dtype that breaks parity is an ExportError. So `floatedge verify --run` passes on any bundle
    this writes.

    `lambda_th` None: 0.5 for FLOAT-kind runs; OAT/OATS runs take only 0 (`resolve_lambda_th`). An OAT run
    gives a bundle of kind "oat" (schema version 2): FiLM MLPs in the graph, the same inputs.

    `acceptance` N > 0 adds the acceptance set (`make_acceptance`: N test images, PGD-20 images per robust point)
    that `floatedge build` proves the device's engines with; 0 (the default here; the command's is 512) none.

    `dial` (None: DEFAULT_DIAL; `resolve_dial`) is what λ_n does in the graphs; `eval_file` must have been
    measured under it.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out} already exists; pass --force to replace it")
    model, cfg, ckpt = load_model(run_dir)
    dial = resolve_dial(model, dial)
    lambda_th = resolve_lambda_th(model.is_oat, lambda_th, dial)
    if not ckpt.get("finished"):
        raise ExportError(f"{run_dir}: training is not finished (epoch {ckpt.get('epoch')} of {cfg.epochs}); "
                          "export a finished run")
    chosen = parse_widths(widths) if widths is not None else model.widths
    for w in chosen:
        if w not in model.widths:
            raise ExportError(f"width {w:g} not trained; {run_dir} has widths {_fmt(model.widths)}")
    table = operating_point_table(eval_file, cfg, ckpt, chosen, dial, sha256_file(run_dir / CHECKPOINT)) if eval_file else None
    if acceptance < 0:
        raise ExportError(f"--acceptance must be ≥ 0 images (0: none), got {acceptance}")
    ds = ckpt["dataset"]
    traced = {w: trace_width(model, w, ds["input_shape"], opset) for w in chosen}
    noisy = any(layer.get("noisy") for t in traced.values() for layer in t.layers)
    candidates = ["float16", "float32"] if eta_dtype == "auto" else [eta_dtype]
    images, reference = torch_reference(model, chosen, lambda_th, ds["input_shape"], dial=dial)
    for dtype in candidates if noisy else ["float32"]:
        scalable = {w: finish(t, lambda_th, dtype, dial) for w, t in traced.items()}
        parity = ort_parity(scalable, images, reference)
        if parity <= PARITY_TOL:
            break
    else:
        raise ExportError(f"η as {dtype} breaks parity with PyTorch (max |Δlogits| {parity:.3g} > {PARITY_TOL:g})"
                          + ("; use --eta-dtype float32 or auto" if dtype == "float16" else ""))
    files: dict[str, bytes] = {}
    entries, plain_sizes = [], {}
    for w, proto in scalable.items():
        name = model_filename(w)
        files[name] = proto.SerializeToString()
        entry = {"width": w, "file": name, "opset": opset, "layers": traced[w].layers}
        entries.append(entry)
        plain_sizes[w] = len(freeze(proto, entry, OperatingPoint(0.0, w, lambda_th)).SerializeToString())
    accept = None
    if acceptance:
        points = acceptance_points(table, chosen, lambda_th, cfg.noisy or model.is_oat, dial)
        accept, accept_files = make_acceptance(model, cfg, scalable, points, lambda_th, acceptance, data=data)
        files.update(accept_files)
    kind = "oat" if model.is_oat else "float"
    manifest = {
        "format": FORMAT,
        "schema_version": max(KIND_SCHEMA[kind], DIAL_SCHEMA[dial.mixes]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "architecture": cfg.arch,
        "method": cfg.method,
        "kind": kind,
        "film": film_description(model, traced[chosen[0]].layers, cfg.seed) if model.is_oat else None,
        "classes": list(ds["classes"]),
        "input": {"name": INPUT, "shape": list(ds["input_shape"]), "dtype": "float32", "range": [0.0, 1.0],
                  "layout": "NCHW", "mean": list(ds["mean"]), "std": list(ds["std"])},
        "widths": list(chosen),
        "lambda_th": lambda_th,
        "dial": dial.to_dict(),
        "noise": {"seed": cfg.noise_seed, "mode": cfg.noise_mode, "eta_dtype": dtype},
        "alphas": model.alphas(),
        "models": entries,
        "operating_points": table,
        "acceptance": accept,
        "provenance": {
            "run": str(run_dir.resolve()),
            "checkpoint_sha256": sha256_file(run_dir / CHECKPOINT),
            "epoch": int(ckpt["epoch"]),
            "config": cfg.to_dict(),
            "dataset": ds,
            "floatedge_version": __version__,
            **_git_commit(),
            "packages": package_versions(),
            # checked before writing: ONNX Runtime vs PyTorch, the images and λ_n `floatedge verify` uses
            "export_parity": {"max_abs_delta_logits": parity, "tolerance": PARITY_TOL, "lambdas": list(VERIFY_LAMBDAS),
                              "widths": list(chosen)},
        },
    }
    path = write_bundle(out, manifest, files, tar=tar, force=force)
    bundle = open_bundle(path)  # read back what was written: checksums and schema, before anyone relies on it
    total = path.stat().st_size if tar else sum(f.stat().st_size for f in path.iterdir())
    return ExportResult(bundle.path, time.perf_counter() - t0, total, sum(plain_sizes.values()),
                        {w: len(files[model_filename(w)]) for w in chosen}, plain_sizes, dtype, parity)

