"""`floatedge build`: engines for *this* device, cached by what they depend on, proven before they are kept.

Engines are not portable (edge.md §1.4: "Serialized engines are not portable across platforms or TensorRT
versions"; Nano↔Nano only), so fleets ship ONNX and build on the device, with a cache keyed by what the engine
depends on (edge.md §3: jetson-inference's `<model>.<maxBatch>.<gpuFallback>.<NV_TENSORRT_VERSION>.<device>.
<precision>.engine`, Frigate's `/config/model_cache/tensorrt/<TRT_VER>/`). Nothing invalidates a stale cache for
you (microsoft/onnxruntime#22244), so the key here is the whole of it:

    EngineKey(part_number, l4t, trt_version, sm, precision, flags, onnx_sha256)

`flags` carries every build setting that changes the artefact (refit, the batch profile, the workspace, the DLA
core; on ONNX Runtime its version, the provider and the host CPU, because a saved optimised model "may contain
hardware specific optimizations" — ORT's own warning). The cache is a directory of entries, one per key::

    CACHE/<digest[:24]>/entry.json     the key, the artefact's sha256 and size, build time, the bundle it came from
    CACHE/<digest[:24]>/engine.plan    TensorRT: the serialized engine   (or model.onnx: ONNX Runtime's optimised model)
    CACHE/timing/<…>.cache             TensorRT's timing cache, persisted across builds
    CACHE/profiles/<…>.json            `floatedge profile` (profile.py), keyed like the engines

An entry is used only if its `entry.json` holds exactly the requested key and the artefact still has the recorded
sha256; otherwise it is rebuilt (and the report says why: tampered, another key). An engine of another TensorRT
version has another key, hence another entry: it is never loaded (the report names it as stale).

Backends. With TensorRT importable, one refittable engine per width is built from the static form at λ_n = 0
(`runtime/trt/loader.build_plan`), λ_n applied later by refit — chosen over the in-graph engine (TensorRT ≥ 8.5
can take computed conv weights) because constant weights keep conv+BN fusion and pre-transformed weights, where
computed ones pay `padFilterWeights` before every conv at every inference (NVIDIA/TensorRT#3740); that choice is
not measured here (no TensorRT on this machine). The runtime's TensorRT backend opens these engines
(`engines=`), it does not build them. Without TensorRT, `build` prepares ONNX Runtime: the provider the runtime
would pick, and per width the runtime-scalable model at the chosen precision passed once through ORT's optimiser
and saved (`SessionOptions.optimized_model_filepath`), which the runtime then serves in-graph (λ_n an input).

Precision. "fp16" on ONNX Runtime is the model converted to float16 (`onnxruntime.transformers.float16`, the
onnxconverter-common converter shipped with ORT; inputs and outputs stay float32) — the CPU provider runs the ops
it has no float16 kernel for through inserted casts, so the rounding of weights and activations is real and the
acceptance check (acceptance.py) compares real precisions. `--precision auto` keeps fp16 per width only where the
bundle's acceptance set passes, else fp32, and says which point failed by how much. On TensorRT 8.x/10.x fp16 is
`BuilderFlag.FP16`; TensorRT 11 has none (edge.md §6), so there the network itself is made float16
(`runtime.trt.common.fp16_model`, a strongly typed build). int8 needs a calibration set, which bundles do not
carry: refused with that reason.

The build report (JSON, `bundle.build_report_path`: beside the bundle, so `floatedge inspect BUNDLE` shows it)
lists per engine its key, digest, path, size, build time, cache outcome and precision with the reason, and the
acceptance figures of every operating point. `open_built` opens what the report describes on the runtime.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from floatedge import __version__
from floatedge.bundle import INPUT, Bundle, build_report_path, open_bundle, read_build_report, sha256_file
from floatedge.fsutil import atomic_write, atomic_write_json, current_umask
from floatedge.oppoint import OperatingPoint

from . import acceptance as accept
from .identity import Identity, read_identity

PRECISIONS = ("auto", "fp32", "fp16", "int8")
BACKENDS = ("auto", "tensorrt", "onnxruntime")
REPORT_FORMAT = "floatedge-build-report"
ENTRY = "entry.json"
DEFAULT_MAX_BATCH = 32
WORKSPACE_FLOOR_MB, WORKSPACE_CAP_MB = 256, 2048


class BuildError(ValueError):
    """A build that cannot give engines the device may serve: one line naming why (user_errors prints it)."""


def default_cache_dir() -> Path:
    """`FLOATEDGE_ENGINE_CACHE`, else ~/.cache/floatedge/engines (the TensorRT runner's default too)."""
    return Path(os.environ.get("FLOATEDGE_ENGINE_CACHE", "~/.cache/floatedge/engines")).expanduser()


# ------------------------------------------------------------------------------------------ the key
@dataclass(frozen=True)
class EngineKey:
    """Everything a built engine depends on; equal keys ⇔ the cached engine may be reused.

    part_number: the Jetson module (p3767-0000), or `host:<machine>` off a Jetson; l4t: '36.4.3' or '';
    trt_version: TensorRT's version, 'none' when the artefact is ONNX Runtime's; sm: the GPU's compute capability
    ('87'), '' when unknown; precision: fp32/fp16/int8; flags: the other build settings, as 'name' or 'name=value'
    (a set: order and repeats do not matter); onnx_sha256: the bundle's model of that width."""

    part_number: str
    l4t: str
    trt_version: str
    sm: str
    precision: str
    flags: tuple[str, ...]
    onnx_sha256: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", tuple(sorted(set(self.flags))))
        object.__setattr__(self, "sm", str(self.sm))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flags"] = list(self.flags)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineKey:
        return cls(**{**d, "flags": tuple(d["flags"])})

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def flag(self, name: str) -> str | None:
        """The value of flag `name` ('' for a bare flag), None if absent."""
        for f in self.flags:
            k, _, v = f.partition("=")
            if k == name:
                return v
        return None


# ------------------------------------------------------------------------------------------ the device
@dataclass
class Target:
    """The device and backend engines are built for."""

    backend: str  # "tensorrt" or "onnxruntime"
    backend_version: str
    identity: Identity
    provider: str = ""  # ONNX Runtime's execution provider
    trt: Any = None  # the tensorrt module
    notes: list[str] = field(default_factory=list)

    @property
    def part_number(self) -> str:
        return self.identity.part_number or f"host:{platform.machine()}"

    @property
    def sm(self) -> str:
        return str(self.identity.sm or "")

    @property
    def name(self) -> str:
        return self.identity.name or (f"{self.identity.cpu or platform.machine()} (not a Jetson)"
                                      if not self.identity.is_jetson else self.part_number)

    def describe(self) -> dict:
        i = self.identity
        return {"name": self.name, "part_number": self.part_number, "is_jetson": i.is_jetson, "module": i.module,
                "l4t": i.l4t, "jetpack": i.jetpack, "sm": self.sm, "ram_mb": i.ram_mb, "cpu": i.cpu,
                "cpu_count": i.cpu_count, "dla": i.dla, "backend": self.backend,
                "backend_version": self.backend_version, "provider": self.provider}

    def key(self, precision: str, flags: Sequence[str], onnx_sha256: str) -> EngineKey:
        base = [] if self.backend == "tensorrt" else [f"onnxruntime={self.backend_version}", f"provider={self.provider}",
                                                      f"host={platform.machine()} {self.identity.cpu}".strip()]
        return EngineKey(self.part_number, self.identity.l4t, self.backend_version if self.backend == "tensorrt"
                         else "none", self.sm, precision, (*base, *flags), onnx_sha256)


def detect_target(backend: str = "auto", root: str | Path = "/", providers: Sequence[str] | None = None) -> Target:
    """This device (identity under `root`) and the backend to build for: TensorRT when it imports (and `backend`
    allows), else ONNX Runtime with the provider the runtime would choose."""
    if backend not in BACKENDS:
        raise BuildError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    ident = read_identity(root)
    if backend in ("auto", "tensorrt"):
        try:
            import tensorrt as trt
        except ImportError as exc:
            if backend == "tensorrt":
                raise BuildError(f"--backend tensorrt: TensorRT does not import here ({exc})") from None
        else:
            return Target("tensorrt", str(trt.__version__), ident, trt=trt)
    import onnxruntime as ort

    from floatedge.runtime.onnxrt import default_providers

    chosen = list(providers or default_providers())
    return Target("onnxruntime", ort.__version__, ident, provider=chosen[0],
                  notes=[f"TensorRT is not installed here: prepared ONNX Runtime ({chosen[0]}) instead of engines"]
                  if backend == "auto" else [])


def workspace_limits(ram_mb: int | None) -> tuple[int, int]:
    """(default, maximum) builder workspace in MB for a module with `ram_mb` of (GPU-shared) RAM: RAM/16 within
    [256, 2048] by default — 256 MB on a Nano, where 1 GB runs out of memory (jkjung-avt/tensorrt_demos#293,
    edge.md §3) — and at most a quarter of RAM. Unknown RAM: 256 / 1024."""
    if not ram_mb:
        return WORKSPACE_FLOOR_MB, 4 * WORKSPACE_FLOOR_MB
    default = min(WORKSPACE_CAP_MB, max(WORKSPACE_FLOOR_MB, ram_mb // 16 // 64 * 64))
    return default, max(default, ram_mb // 4)


# ------------------------------------------------------------------------------------------ the cache
@dataclass
class Entry:
    """A cache entry that matched its key and checksum."""

    path: Path  # the artefact
    meta: dict


class EngineCache:
    """Engines on disk, one directory per key (see the module docstring)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = (Path(root).expanduser() if root else default_cache_dir()).absolute()  # reports outlive the cwd

    def dir_for(self, key: EngineKey) -> Path:
        return self.root / key.digest()[:24]

    def lookup(self, key: EngineKey) -> tuple[Entry | None, str]:
        """(entry, "hit") if a usable entry holds `key`; else (None, why): "miss", or "rebuilt: <reason>" when an
        entry was there but is not trusted (its key differs, its artefact is gone or fails its sha256)."""
        d = self.dir_for(key)
        if not d.exists():
            stale = self.stale_for(key)
            return None, "miss" + (f" (stale: {stale[0]} ignored)" if stale else "")
        try:
            meta = json.loads((d / ENTRY).read_text())
            stored = EngineKey.from_dict(meta["key"])
            artefact = d / meta["artefact"]
            want_sha = meta["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"rebuilt: unreadable {ENTRY} ({type(exc).__name__})"
        if stored != key:
            return None, "rebuilt: the entry holds another key"
        if "/" in meta["artefact"] or not artefact.is_file():
            return None, "rebuilt: its artefact is missing"
        actual = sha256_file(artefact)
        if actual != want_sha:
            return None, f"rebuilt: tampered (artefact sha256 {actual[:12]}…, entry says {want_sha[:12]}…)"
        return Entry(artefact, meta), "hit"

    def stale_for(self, key: EngineKey) -> list[str]:
        """Entries of the same model, precision and flags built for another TensorRT/ONNX Runtime version, L4T or
        module: what a version upgrade leaves behind. Never loaded; named in the report."""
        out = []
        for meta in self.entries():
            try:
                other = EngineKey.from_dict(meta["key"])
            except (KeyError, TypeError):
                continue
            if other != key and other.onnx_sha256 == key.onnx_sha256 and other.precision == key.precision:
                what = [f"{k} {getattr(other, k) or '-'}" for k in ("trt_version", "l4t", "part_number", "sm")
                        if getattr(other, k) != getattr(key, k)]
                what += [f for f in other.flags if f not in key.flags and f.startswith(("onnxruntime=", "provider="))]
                if what:
                    out.append(f"entry {meta.get('digest', '?')[:12]} for {', '.join(what)}")
        return out

    def entries(self) -> list[dict]:
        out = []
        for p in sorted(self.root.glob(f"*/{ENTRY}")) if self.root.is_dir() else []:
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def store(self, key: EngineKey, artefact: str, data: bytes, meta: Mapping[str, Any]) -> Entry:
        """Write an entry all at once: a temporary sibling directory renamed into place; an untrusted entry of the
        same key is moved aside first and removed, so no reader ever sees half of one."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.dir_for(key)
        tmp = Path(tempfile.mkdtemp(prefix=".entry.", suffix=".tmp", dir=self.root))
        try:
            os.chmod(tmp, 0o777 & ~current_umask())
            atomic_write(tmp / artefact, lambda f: f.write(data))
            full = {"format": "floatedge-engine", "key": key.to_dict(), "digest": key.digest(), "artefact": artefact,
                    "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **meta}
            atomic_write_json(tmp / ENTRY, full)
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=".entry.", suffix=".old", dir=self.root))
                os.rename(final, old / "entry")
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Entry(final / artefact, full)

    def timing_cache(self, target: Target) -> Path:
        safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in f"{target.part_number}.{target.backend_version}")
        return self.root / "timing" / f"timing.{safe}.cache"


# ------------------------------------------------------------------------------------------ building one engine
def to_fp16(model):
    """The model in float16, inputs and outputs kept float32 (`images`, `lambda_n` in; `logits` out)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


def prepare_ort(bundle: Bundle, width: float, precision: str, target: Target) -> bytes:
    """ONNX Runtime's optimised form of one width's runtime-scalable model at `precision`: the session options the
    runtime uses, passed once through the optimiser and saved (`optimized_model_filepath`)."""
    import onnx
    import onnxruntime as ort

    from floatedge.runtime.onnxrt import session_options

    model = onnx.load_from_string(bundle.model_bytes(width))
    if precision == "fp16":
        model = to_fp16(model)
    with tempfile.TemporaryDirectory(prefix="floatedge-ort-") as tmp:
        so = session_options(None)
        so.optimized_model_filepath = str(Path(tmp) / "model.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=[target.provider])
        return (Path(tmp) / "model.onnx").read_bytes()


@dataclass(frozen=True)
class TrtSettings:
    workspace_mb: int
    max_batch: int
    dla: int | None = None

    @property
    def batch(self) -> tuple[int, int, int]:
        # DLA takes no dynamic dimensions (min = opt = max; edge.md §1.5)
        return (self.max_batch,) * 3 if self.dla is not None else (1, min(8, self.max_batch), self.max_batch)

    def flags(self) -> list[str]:
        out = ["kind=materialised", "refit", f"batch={','.join(map(str, self.batch))}", f"workspace_mb={self.workspace_mb}"]
        return out + ([f"dla={self.dla}", "gpu_fallback"] if self.dla is not None else [])


def build_trt(bundle: Bundle, width: float, precision: str, target: Target, settings: TrtSettings,
              timing_cache: Path) -> bytes:
    """One refittable TensorRT engine for a width, built from its static form at λ_n = 0 (refit moves it to any
    point), through the runtime's loader."""
    from floatedge.graph.static import freeze, load_scalable
    from floatedge.runtime.trt.common import EngineKey as PlanKey
    from floatedge.runtime.trt.common import TrtApi, fp16_model
    from floatedge.runtime.trt.loader import build_plan

    trt = target.trt
    api = TrtApi.for_version(target.backend_version)
    model, entry = load_scalable(bundle, width)
    static = freeze(model, entry, OperatingPoint(0.0, width, bundle.lambda_th))
    if precision == "fp16" and api.strongly_typed:  # TensorRT 11: the network's types carry the precision
        static = fp16_model(static)
    plan_key = PlanKey(onnx_sha256="", kind="materialised", width=width, trt_version=target.backend_version,
                       precision=precision, flags=("refit",), batch=settings.batch, workspace_mb=settings.workspace_mb)

    def on_dla(config: Any) -> None:  # IBuilderConfig.default_device_type / DLA_core / BuilderFlag.GPU_FALLBACK
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(settings.dla)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    logger = trt.Logger(trt.Logger.WARNING)
    chw = tuple(int(v) for v in bundle.input_shape)
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    extra = {"configure": on_dla} if settings.dla is not None else {}
    try:
        return build_plan(trt, api, static.SerializeToString(), plan_key, INPUT, chw, logger, timing_cache, **extra)
    except RuntimeError as exc:
        _, most = workspace_limits(target.identity.ram_mb)
        raise BuildError(f"TensorRT {target.backend_version} could not build the {precision} engine of width {width:g} "
                         f"within a {settings.workspace_mb} MB workspace ({str(exc).splitlines()[0]}); try "
                         f"--workspace-mb up to {most} on this module, or --precision fp32") from None


# ------------------------------------------------------------------------------------------ opening what was built
class PreparedBundle(Bundle):
    """A bundle whose models are the ones `build` prepared for ONNX Runtime (one file per width, optimised, at the
    chosen precision); everything else — manifest, table, acceptance set — is the bundle's own. The runtime serves
    it in-graph (λ_n an input): the prepared graphs are not the bundle's and cannot be frozen."""

    def __init__(self, bundle: Bundle, models: Mapping[float, Path]) -> None:
        super().__init__(bundle.path, bundle._source, bundle.manifest)
        self.prepared = {float(w): Path(p) for w, p in models.items()}

    def model_bytes(self, width: float) -> bytes:
        w = float(self.model_entry(width)["width"])
        return self.prepared[w].read_bytes() if w in self.prepared else super().model_bytes(w)


def open_engines(bundle: Bundle, target_backend: str, engines: Mapping[float, Path], *, provider: str = "",
                 point: OperatingPoint | None = None, **options: Any):
    """The runtime serving `engines` ({width: artefact path}): TensorRT opens the plans (never builds), ONNX Runtime
    serves the prepared models in-graph on `provider`."""
    import floatedge.runtime as rt

    if target_backend == "tensorrt":
        plans = {f"{w:g}/materialised": p for w, p in engines.items()}
        return rt.open(bundle, backend="tensorrt", engines=plans, mode="materialised", point=point, **options)
    return rt.open(PreparedBundle(bundle, engines), backend="onnxruntime", mode="in-graph", point=point,
                   providers=[provider] if provider else None, **options)


def load_report(bundle: Bundle) -> dict:
    """The build report beside `bundle`, checked to be for this very bundle; BuildError otherwise."""
    report = read_build_report(bundle)
    if report is None:
        raise BuildError(f"{bundle.path}: not built on this device yet (no {build_report_path(bundle.path).name}); "
                         f"run floatedge build {bundle.path}")
    if report.get("bundle_manifest_sha256") != bundle.manifest["manifest_sha256"]:
        raise BuildError(f"{build_report_path(bundle.path)} was built from another version of this bundle; "
                         f"run floatedge build {bundle.path} again")
    return report


def report_engines(report: Mapping[str, Any], cache: EngineCache | None = None) -> dict[float, Path]:
    """{width: artefact} of a build report, each entry re-checked against its key and sha256 in the cache."""
    cache = cache or EngineCache(report["cache"])
    out = {}
    for e in report["engines"]:
        entry, status = cache.lookup(EngineKey.from_dict(e["key"]))
        if entry is None:
            raise BuildError(f"the engine of width {e['width']:g} in {report['cache']} cannot be used ({status}); "
                             f"run floatedge build again")
        out[float(e["width"])] = entry.path
    return out


def open_built(bundle: str | Path | Bundle, **options: Any):
    """Open on the runtime exactly what `floatedge build` made for `bundle` (its report, its checked engines).
    What the server and `floatedge profile` serve."""
    b = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
    report = load_report(b)
    engines = report_engines(report)
    if report["backend"] == "tensorrt":
        options.setdefault("max_batch", report["settings"]["max_batch"])
        options.setdefault("opt_batch", min(8, report["settings"]["max_batch"]))
        options.setdefault("identity", {"device": report["device"]["part_number"], "l4t": report["device"]["l4t"]})
    return open_engines(b, report["backend"], engines, provider=report.get("provider", ""), **options)


# ------------------------------------------------------------------------------------------ build
@dataclass
class Built:
    """One engine (width × precision) obtained for this build."""

    width: float
    precision: str
    key: EngineKey
    entry: Entry
    cache: str  # "hit", "miss …", "rebuilt: …"
    seconds: float
    why: str = ""  # why this precision was kept

    def record(self) -> dict:
        return {"width": self.width, "kind": "materialised" if self.key.flag("refit") is not None else "in-graph",
                "precision": self.precision, "key": self.key.to_dict(), "digest": self.key.digest(),
                "path": str(self.entry.path), "bytes": int(self.entry.meta["bytes"]),
                "build_seconds": round(self.seconds, 4) if self.cache != "hit" else 0.0,
                "original_build_seconds": self.entry.meta.get("build_seconds"), "cache": self.cache, "why": self.why}


def _candidates(precision: str, target: Target, has_acceptance: bool) -> tuple[list[str], list[str]]:
    """(precisions to try per width, in order; notes). Refusals are BuildErrors."""
    notes = []
    fp16_missing = None
    if target.identity.precisions and "fp16" not in target.identity.precisions:
        fp16_missing = f"{target.name} has no fp16"
    if precision == "int8":
        raise BuildError("--precision int8 needs a calibration set, which bundles do not carry yet; "
                         "use auto, fp16 or fp32")
    if precision == "fp16" and fp16_missing:
        raise BuildError(f"--precision fp16: {fp16_missing}")
    if precision != "auto":
        return [precision], notes
    notes.append("auto: int8 not tried (no calibration set in the bundle)")
    if fp16_missing:
        notes.append(f"auto: fp16 not tried: {fp16_missing}")
        return ["fp32"], notes
    if not has_acceptance:
        notes.append("auto: fp32 kept — the bundle has no acceptance set to prove fp16 with (export --acceptance N)")
        return ["fp32"], notes
    return ["fp16", "fp32"], notes


def _check_settings(target: Target, dla: int | None, workspace_mb: int | None, max_batch: int | None,
                    notes: list[str]) -> TrtSettings:
    default_ws, most = workspace_limits(target.identity.ram_mb)
    if max_batch is not None and max_batch < 1:
        raise BuildError(f"--max-batch must be ≥ 1, got {max_batch}")
    if workspace_mb is not None and not 1 <= workspace_mb <= most:
        raise BuildError(f"--workspace-mb {workspace_mb}: this device allows 1 to {most} MB "
                         f"(a quarter of its {target.identity.ram_mb or '?'} MB RAM; default {default_ws})")
    if target.backend != "tensorrt":
        if dla is not None:
            raise BuildError("--dla needs TensorRT (DLA cores are reached through TensorRT only)")
        if workspace_mb is not None:
            notes.append("--workspace-mb ignored: ONNX Runtime has no builder workspace")
        return TrtSettings(workspace_mb or default_ws, max_batch or DEFAULT_MAX_BATCH)
    if dla is not None:
        cores = target.identity.dla
        if not cores or not 0 <= dla < cores:
            raise BuildError(f"--dla {dla}: {target.name} has {cores or 0} DLA core(s)")
        if target.trt is not None and not hasattr(target.trt, "DeviceType"):
            raise BuildError(f"--dla: TensorRT {target.backend_version} has no DLA support (10.7 was the last with it)")
        if max_batch is None:
            max_batch = 1  # DLA engines take exactly max_batch images per call
    return TrtSettings(workspace_mb or default_ws, max_batch or DEFAULT_MAX_BATCH, dla)


def _get(cache: EngineCache, bundle: Bundle, width: float, precision: str, target: Target,
         settings: TrtSettings) -> Built:
    sha = bundle.manifest["files"][bundle.model_entry(width)["file"]]["sha256"]
    flags = settings.flags() if target.backend == "tensorrt" else ["form=in-graph", "opt=all"]
    key = target.key(precision, flags, sha)
    t0 = time.perf_counter()
    entry, status = cache.lookup(key)
    if entry is None:
        if target.backend == "tensorrt":
            data, artefact = build_trt(bundle, width, precision, target, settings, cache.timing_cache(target)), "engine.plan"
        else:
            data, artefact = prepare_ort(bundle, width, precision, target), "model.onnx"
        seconds = time.perf_counter() - t0
        entry = cache.store(key, artefact, data, {"width": width, "build_seconds": round(seconds, 4),
                                                  "bundle": {"path": str(bundle.path),
                                                             "manifest_sha256": bundle.manifest["manifest_sha256"]},
                                                  "floatedge_version": __version__})
    return Built(width, precision, key, entry, status, time.perf_counter() - t0)


def build(bundle_path: str | Path, precision: str = "auto", *, dla: int | None = None, workspace_mb: int | None = None,
          max_batch: int | None = None, cache: str | Path | None = None, backend: str = "auto",
          tolerance: float = accept.TOLERANCE_POINTS, min_agreement: float = accept.MIN_AGREEMENT,
          root: str | Path = "/", providers: Sequence[str] | None = None, report_path: str | Path | None = None,
          echo: Callable[[str], None] = lambda s: None, **open_options: Any) -> dict:
    """Build (or find in the cache) one engine per width, prove it on the bundle's acceptance set, write the report.

    Per width the precisions of `_candidates` are tried in order; the first whose every calibrated point passes
    (acceptance.py) is kept. A width where even the last fails is a BuildError naming the point and the gap, and
    no report is written (a previous one stays). Returns the report."""
    t_start = time.perf_counter()
    if precision not in PRECISIONS:
        raise BuildError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if not 0 <= tolerance <= 100 or not 0 <= min_agreement <= 1:
        raise BuildError(f"tolerance must be in [0, 100] points and agreement in [0, 1], got {tolerance}, {min_agreement}")
    b = open_bundle(bundle_path)
    out = Path(report_path) if report_path else build_report_path(b.path)
    target = detect_target(backend, root, providers)
    notes = list(target.notes)
    settings = _check_settings(target, dla, workspace_mb, max_batch, notes)
    aset = accept.AcceptanceSet.load(b) if b.acceptance else None
    order, more = _candidates(precision, target, aset is not None)
    notes += more
    store = EngineCache(cache)
    for n in notes:
        echo(n)
    kept: list[Built] = []
    tried: list[Built] = []
    checked: list[dict] = []
    rejected: list[dict] = []
    for width in b.widths:
        last_fail = None
        for i, prec in enumerate(order):
            got = _get(store, b, width, prec, target, settings)
            tried.append(got)
            echo(f"width {width:g} {prec}: {got.cache} ({got.seconds:.2f} s, {got.entry.meta['bytes'] / 1e6:.2f} MB)")
            if aset is None:
                kept.append(got)
                why = "as asked; not proven: the bundle has no acceptance set" if precision != "auto" else "no acceptance set"
                got.why = why
                break
            with open_engines(b, target.backend, {width: got.entry.path}, provider=target.provider,
                              point=aset.first_point(width), **_open_options(target, settings, open_options)) as model:
                results = accept.check(model, aset, width, prec, tolerance, min_agreement)
            failed = [r for r in results if not r["passed"]]
            for r in failed:
                echo("  " + accept.describe(r))
            if not failed:
                kept.append(got)
                checked += results
                got.why = "passes acceptance" if precision != "auto" or i == 0 else f"fallback: {last_fail}"
                break
            rejected += results
            last_fail = f"{prec} failed at λ_n {failed[0]['lambda_n']:g}: {failed[0]['failures'][0]}"
            echo(f"  width {width:g}: {last_fail}" + ("; falling back to " + order[i + 1] if i + 1 < len(order) else ""))
        else:
            raise BuildError(f"width {width:g} fails acceptance at every precision tried ({', '.join(order)}): "
                             f"{last_fail}; nothing installed")
    engines = [g.record() for g in kept]
    report = {
        "format": REPORT_FORMAT, "schema_version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "floatedge_version": __version__,
        "bundle": str(b.path), "bundle_manifest_sha256": b.manifest["manifest_sha256"],
        "backend": target.backend, "backend_version": target.backend_version, "provider": target.provider,
        "device": target.describe(), "cache": str(store.root),
        "settings": {"precision": precision, "dla": settings.dla, "workspace_mb": settings.workspace_mb
                     if target.backend == "tensorrt" else None, "max_batch": settings.max_batch,
                     "batch_profile": list(settings.batch) if target.backend == "tensorrt" else None,
                     "tolerance_points": tolerance, "min_agreement": min_agreement},
        "notes": notes,
        "engines": engines,
        "tried": [g.record() for g in tried],
        "cache_hits": sum(g.cache == "hit" for g in tried), "cache_lookups": len(tried),
        "acceptance": {"checked": aset is not None, "n_images": aset.n if aset else 0,
                       "tolerance_points": tolerance, "min_agreement": min_agreement, "points": checked,
                       "rejected": rejected,
                       "note": "" if aset else "the bundle has no acceptance set (export --acceptance N)"},
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    atomic_write_json(out, report)
    return report


def _open_options(target: Target, settings: TrtSettings, extra: Mapping[str, Any]) -> dict:
    opts = dict(extra)
    if target.backend == "tensorrt":
        opts.setdefault("max_batch", settings.max_batch)
        opts.setdefault("opt_batch", settings.batch[1])
        opts.setdefault("identity", {"device": target.part_number, "l4t": target.identity.l4t})
    return opts


__all__ = ["EngineKey", "EngineCache", "Entry", "Target", "BuildError", "PreparedBundle", "build", "detect_target",
           "default_cache_dir", "workspace_limits", "open_built", "open_engines", "load_report", "report_engines",
           "prepare_ort", "to_fp16", "PRECISIONS", "BACKENDS"]
