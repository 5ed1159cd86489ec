"""The deployable bundle: its schema, its checksums, and how the device opens it. Torch-free.

The bundle is the contract between the workstation and the device: the device never sees torch,
only this. This module is the one place that knows the bundle's layout, so it imports only the
standard library, numpy, `floatedge.oppoint` (the λ rule) and `floatedge.fsutil` (atomic writes) —
never torch, never onnx.

Layout (a directory, or the same files in one uncompressed tar, `--tar`)::

    MODEL.febundle/
        manifest.json        schema, model description, operating-point table, provenance, checksums
        model_w1.onnx        one runtime-scalable ONNX model per width (`model_filename(width)`)
        model_w0.75.onnx

`manifest.json` holds the sha256 of every other file (`files`) and a sha256 of itself
(`manifest_sha256`, over its canonical JSON with that key removed), so a modified, missing or extra
file — the manifest included — is caught and named. The checksums catch accidents (a truncated copy,
an edited file), not an attacker, who could recompute them.

Typical device-side use::

    from floatedge.bundle import open_bundle
    b = open_bundle("model.febundle")          # checks schema version and every checksum
    op = b.operating_point(0.7, width=0.5)     # validated against the bundle (λ in [0,1], width present)
    onnx_bytes = b.model_bytes(op.width)       # feed `images` and `lambda_n` to it
    b.lookup(op)                               # the CA/RA measured at that point, if evaluated

Manifest keys (schema version 1; version 2 adds OAT; version 3 adds mixing dials), all required unless marked
optional:

* ``format`` = "floatedge-bundle", ``schema_version`` = 1 or 2, ``created`` (ISO-8601 UTC)
* ``architecture``, ``method`` ("float", "floats", "pgdat", "standard", "oat", "oats"), ``classes`` (list of names)
* ``kind`` (optional, default "float"): "float" or "oat" (`KINDS`); "oat" needs schema version 2 and
  ``film``: {``dim``, ``encoding`` ("scalar" or "orthogonal"), ``grid``, ``seed``, ``init``, ``layers``}.
  An OAT bundle's ``lambda_th`` is 0: its BNs route as the λ rule at λ_th = 0, and it takes no other.
* ``input``: ``name`` "images", ``shape`` [C, H, W], ``dtype`` "float32", ``range`` [0, 1],
  ``layout`` "NCHW", ``mean`` / ``std`` (normalisation done inside the model)
* ``widths`` (widest first), ``lambda_th`` (the threshold baked into every graph; 0 under a mixing dial)
* ``dial`` (optional; absent = switch, as every bundle written before dials existed): what λ_n does in the
  graphs, `floatedge.oppoint.Dial.to_dict` — {``name``, ``t``, ``s``}: "switch" (Eq. 5, BN_C or BN_A by λ_th;
  no knots) or a mixing dial ("mix", ...: each BN the blend (1 − t)·BN_C + t·BN_A, t and s piecewise-linear in
  λ_n through the knots [[λ_n, value], ...]). Name and knots must be a dial this floatedge knows
  (`oppoint.DIALS`). A mixing dial needs schema version 3 (`DIAL_SCHEMA`: an older floatedge, which would
  read the graph's BN tensors as switch ones, refuses it); switch bundles stay at version 1 (or 2 for OAT).
* ``noise``: ``seed``, ``mode``, ``eta_dtype`` ("float32" or "float16")
* ``alphas``: {layer name: α} (empty for models without noise)
* ``models``: list of {``width``, ``file``, ``opset``, ``layers``}; ``layers`` lists the conditional
  layers of that graph: {``name``, ``kind`` ("conv", "linear", "bn"), ``noisy`` / ``dual``, and for a BN
  followed by a FiLM (OAT) ``film``: true}
* ``operating_points`` (optional, null when exported without ``--eval``): ``source``, ``n_images``,
  ``attacks`` {name: description}, ``epochs``, ``rows`` [{lambda_n, width, lambda_th, noise_scale,
  bn, clean_acc, <attack>_acc, robust_acc, robust_attack}]: every attack measured at that point keeps its
  ``<attack>_acc`` (null where an attack did not run at that point); ``robust_acc`` is the lowest of them and
  ``robust_attack`` names the attack that measured it (`robust_of` is the rule; optional and additive: a
  reader of an older bundle without them gets the same figure from `robust_of`)
* ``provenance``: ``run``, ``checkpoint_sha256``, ``epoch``, ``config``, ``dataset``,
  ``floatedge_version``, ``git_commit`` (null outside a checkout), ``packages`` {name: version}
* ``acceptance`` (optional, null or absent when exported with ``--acceptance 0`` or by an older floatedge;
  additive, so the schema version does not change): the set `floatedge build` proves engines with on the
  device — ``n_images``, ``seed``, ``dataset``, ``split``; ``images`` {``file``, ``dtype`` ("uint8": pixels·255,
  or "float16"/"float32": pixels in [0, 1])}; ``labels`` (file, int64 N); ``predictions`` (file, int32
  P×2×N: the exported fp32 model's argmax per point on the clean and the adversarial images, −1 where a point
  has none); ``attack`` {``name``, ``eps``, ``steps``, ``step``, ``seed``, ``stored_as``}; ``points``
  [{``width``, ``lambda_n``, ``lambda_th``, ``clean_acc``, ``adv_acc`` (null without adversarial images),
  ``adversarial`` (file of float16 N×C×H×W PGD images crafted against the exported fp32 model at that point,
  or null)}], in the order of ``predictions``. Every file is a NumPy ``.npy`` (no pickle: read with
  `Bundle.read_array`, ``allow_pickle=False``) and has its sha256 in ``files`` like the models.
* ``files``: {file name: {``sha256``, ``bytes``}}; ``manifest_sha256``

Beside a bundle, `floatedge build` on the device writes its build report, `<bundle>.build.json`
(`build_report_path`; content owned by floatedge/devices/engines.py); `floatedge inspect` shows it
(`read_build_report`, `build_report_lines`).

Graph conventions (what `floatedge.export` writes; see docs/export.md for the full story):
inputs ``images`` (N×C×H×W float32, dynamic N, pixels in [0, 1]) and ``lambda_n`` (float32 scalar),
output ``logits`` (N×classes).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from floatedge.fsutil import atomic_write, current_umask
from floatedge.oppoint import Dial, OperatingPoint, OperatingPointError, check_width, check_width_in, get_dial

SCHEMA_VERSION = 3  # the newest this code reads and writes; see KIND_SCHEMA and DIAL_SCHEMA
FORMAT = "floatedge-bundle"
MANIFEST = "manifest.json"
# The Ed25519 signature over manifest.json (floatedge.signing). Not in the manifest's file table — it signs the
# manifest, so the manifest cannot list it — and so not an "extra" file to the checksum check either.
SIGNATURE = "manifest.sig"
SUFFIX = ".febundle"

INPUT = "images"
LAMBDA = "lambda_n"
OUTPUT = "logits"
NOISE_SCALE = "noise_scale"  # tensor names of the λ subgraph's two outputs in every scalable graph
USE_ADV = "use_adv"  # (switch dial: the BN set); a mixing dial's graph computes BN_WEIGHT (t) instead
BN_WEIGHT = "bn_weight"

# What carries λ in a bundle's graphs: "float" — W + s·α·η and dual BN (also PGD-AT and standard runs, which
# have neither noise nor a second BN); "oat" — FiLM MLPs on λ_n after the BNs, dual BN routed at λ_th = 0.
KINDS = ("float", "oat")
# A bundle is written at the lowest schema that describes it: FLOAT bundles stay version 1 (the `kind` key is
# additive), so a floatedge that reads only version 1 still opens them; OAT needs version 2.
KIND_SCHEMA = {"float": 1, "oat": 2}
# ... and a mixing dial (`Dial.mixes`) needs version 3; a switch bundle carries the additive `dial` key at its kind's
DIAL_SCHEMA = {False: 1, True: 3}

VERIFY_LAMBDAS = (0.0, 0.2, 0.37, 0.5, 0.51, 0.7, 1.0)
PARITY_TOL = 1e-4

# The acceptance set (`acceptance` in the manifest): file names, and the build report that sits beside a bundle
ACCEPTANCE_IMAGES = "acceptance_images.npy"
ACCEPTANCE_LABELS = "acceptance_labels.npy"
ACCEPTANCE_PREDICTIONS = "acceptance_predictions.npy"
ACCEPTANCE_DTYPES = ("uint8", "float16", "float32")
BUILD_REPORT_SUFFIX = ".build.json"

REQUIRED_KEYS = ("format", "schema_version", "architecture", "method", "classes", "input", "widths", "lambda_th",
                 "noise", "alphas", "models", "provenance", "files", "manifest_sha256")
_CHUNK = 1 << 20


class BundleError(ValueError):
    """A bundle that cannot be used as it is: unreadable, tampered with, or from a newer floatedge."""


def model_filename(width: float) -> str:
    """The ONNX file of one width: `model_w1.onnx`, `model_w0.75.onnx`."""
    return f"model_w{check_width(width):g}.onnx"


def acceptance_adv_filename(width: float, lambda_n: float) -> str:
    """The adversarial images of one acceptance point: `acceptance_adv_w0.5_l0.7.npy`."""
    return f"acceptance_adv_w{check_width(width):g}_l{float(lambda_n):g}.npy"


def array_bytes(arr: np.ndarray) -> bytes:
    """A NumPy array as `.npy` bytes, never pickled (object arrays are refused)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def build_report_path(bundle_path: str | Path) -> Path:
    """Where `floatedge build` puts its report: beside the bundle, `model.febundle.build.json`."""
    p = Path(bundle_path)
    return p.with_name(p.name + BUILD_REPORT_SUFFIX)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (checkpoints and models can be large)."""
    with open(path, "rb") as f:
        return _sha256_stream(f)[0]


def _sha256_stream(f: IO[bytes]) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    while chunk := f.read(_CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def _canonical(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own checksum: edits to the manifest show."""
    return sha256_bytes(_canonical(manifest))


# ------------------------------------------------------------------------------------ the RA of a point
ROBUST = "robust"  # robust_acc / robust_attack: the strongest measured figure of a table row


def robust_of(row: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """The robust accuracy a calibration-table row reports, and the attack that measured it: the LOWEST of
    every measured ``<attack>_acc`` of the row (and of its ``robust_acc``, named by ``robust_attack``), so a
    point is never credited with more robustness than its strongest measured attack leaves it. (None, None)
    when no attack was measured there. The one rule every reader of a table uses (server, governor, policies,
    metrics, device profile, benchmarks); rows written before ``robust_acc`` existed get the same answer."""
    best: tuple[float, str] | None = None
    for key, value in row.items():
        if not key.endswith("_acc") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = key[: -len("_acc")]
        if name == "clean":
            continue
        if name == ROBUST:
            name = str(row.get("robust_attack") or ROBUST)
        if best is None or float(value) < best[0]:
            best = (float(value), name)
    return best if best else (None, None)


def with_robust(row: Mapping[str, Any]) -> dict:
    """A copy of a table row with ``robust_acc`` and ``robust_attack`` set by `robust_of` (None, None without
    any measured attack)."""
    acc, attack = robust_of(row)
    return {**row, "robust_acc": acc, "robust_attack": attack}


# ------------------------------------------------------------------------------------------ writing
def write_bundle(out: str | Path, manifest: Mapping[str, Any], files: Mapping[str, bytes], tar: bool = False,
                 force: bool = False) -> Path:
    """Write `files` plus the completed manifest to `out`, all at once or not at all.

    The manifest's `files` table and `manifest_sha256` are filled in here, so they always describe what
    was written. Everything goes to a temporary sibling of `out` first and is renamed into place; a
    crash leaves at most a `.name.*.tmp` sibling, never a half-written bundle. An existing `out` is
    refused unless `force`.
    """
    out = Path(out)
    for name in files:
        if name in (MANIFEST, SIGNATURE) or "/" in name or "\\" in name or name.startswith("."):
            raise BundleError(f"bad bundle file name {name!r}")
    if out.exists() and not force:
        raise BundleError(f"{out} already exists; pass --force to replace it")
    if out.exists() and tar != out.is_file():
        raise BundleError(f"{out} exists and is a {'directory' if out.is_dir() else 'file'}; remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    m = dict(manifest)
    m["files"] = {name: {"sha256": sha256_bytes(data), "bytes": len(data)} for name, data in sorted(files.items())}
    m["manifest_sha256"] = manifest_checksum(m)
    manifest_bytes = (json.dumps(m, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
    everything = {MANIFEST: manifest_bytes, **files}
    if tar:
        _write_tar(out, everything)
    else:
        _write_dir(out, everything)
    return out


def _write_dir(out: Path, files: Mapping[str, bytes]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; a bundle is shared like any directory
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if out.exists():  # force: move the old bundle aside, then swap; never a moment with a mixed bundle
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.rename(out, old / "bundle")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_tar(out: Path, files: Mapping[str, bytes]) -> None:
    def write(f: IO[bytes]) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for name, data in files.items():  # manifest first: a reader finds it without a scan
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tf.addfile(info, io.BytesIO(data))

    atomic_write(out, write)


# ------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class FileStatus:
    """One file's checksum status: "ok", "modified", "missing" or "extra"."""

    name: str
    status: str
    expected: str | None = None
    actual: str | None = None
    size: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def message(self) -> str:
        if self.status == "modified":
            return f"{self.name} failed its checksum: manifest says sha256 {self.expected}, file has {self.actual}"
        if self.status == "missing":
            return f"{self.name} is missing (manifest expects sha256 {self.expected})"
        if self.status == "extra":
            return f"{self.name} is not listed in the manifest (sha256 {self.actual})"
        return f"{self.name}: ok"


def unreadable_bundle(path: Path, exc: Exception) -> BundleError:
    """The one line for a bundle file that cannot be read as a tar (tarfile's own message lists every
    compression it tried, over several lines)."""
    if isinstance(exc, tarfile.TarError):
        return BundleError(f"{path}: not a floatedge bundle (neither a bundle directory nor a tar file)")
    return BundleError(f"{path}: cannot read the bundle ({getattr(exc, 'strerror', None) or exc})")


class _Source:
    """Read files from a bundle directory or a bundle tar, with the same three calls."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tar = path.is_file()
        self._members: dict[str, tarfile.TarInfo] = {}
        self._odd: list[str] = []
        if self.tar:
            try:
                with tarfile.open(path, mode="r:*") as tf:
                    for info in tf.getmembers():
                        if info.isfile() and "/" not in info.name and not info.name.startswith("."):
                            self._members[info.name] = info
                        else:
                            self._odd.append(info.name)
            except (tarfile.TarError, OSError) as exc:
                raise unreadable_bundle(path, exc) from None
        elif not path.is_dir():
            raise BundleError(f"{path}: no such bundle")

    def names(self) -> list[str]:
        if self.tar:
            return sorted(self._members) + sorted(self._odd)
        return sorted(p.name for p in self.path.iterdir())

    def exists(self, name: str) -> bool:
        return name in self._members if self.tar else (self.path / name).is_file()

    def open(self, name: str) -> IO[bytes]:
        if self.tar:
            tf = tarfile.open(self.path, mode="r:*")
            f = tf.extractfile(self._members[name])
            assert f is not None
            return _TarMember(tf, f)
        return open(self.path / name, "rb")


class _TarMember(io.RawIOBase):
    """A member's file object that closes its tar file with it."""

    def __init__(self, tf: tarfile.TarFile, f: IO[bytes]) -> None:
        self._tf, self._f = tf, f

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def close(self) -> None:
        self._tf.close()
        super().close()


class Bundle:
    """An opened bundle: the manifest plus access to its files. Build it with `open_bundle`."""

    def __init__(self, path: Path, source: _Source, manifest: dict) -> None:
        self.path, self._source, self.manifest = path, source, manifest

    # -- description
    @property
    def schema_version(self) -> int:
        return int(self.manifest["schema_version"])

    @property
    def architecture(self) -> str:
        return self.manifest["architecture"]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["input"]["shape"])

    @property
    def widths(self) -> tuple[float, ...]:
        return tuple(float(w) for w in self.manifest["widths"])

    @property
    def lambda_th(self) -> float:
        return float(self.manifest["lambda_th"])

    @property
    def dial(self) -> Dial:
        """What λ_n does in this bundle's graphs (the manifest's ``dial``; switch when absent)."""
        return get_dial(self.manifest.get("dial"))

    @property
    def kind(self) -> str:
        """"float" or "oat" (`KINDS`): which λ machinery the graphs carry. Version-1 bundles are "float"."""
        return self.manifest.get("kind", "float")

    @property
    def film(self) -> dict | None:
        """OAT bundles: the FiLM description (`dim`, `encoding`, `grid`, `seed`, `init`, `layers`); else None."""
        return self.manifest.get("film")

    @property
    def is_tar(self) -> bool:
        return self._source.tar

    # -- files
    def read(self, name: str) -> bytes:
        if name != MANIFEST and name not in self.manifest["files"]:
            raise BundleError(f"{self.path}: no file {name!r} in this bundle")
        if not self._source.exists(name):
            raise BundleError(f"{self.path}: {name} is missing")
        with self._source.open(name) as f:
            return f.read()

    def read_array(self, name: str) -> np.ndarray:
        """A `.npy` file of the bundle (the acceptance set), loaded without pickle; BundleError if it is not one."""
        try:
            return np.load(io.BytesIO(self.read(name)), allow_pickle=False)
        except ValueError as exc:  # also what np.load raises for an object (pickled) array
            raise BundleError(f"{self.path}: {name} is not a plain .npy array ({exc})") from None

    @property
    def acceptance(self) -> dict | None:
        """The manifest's acceptance-set description (see the module docstring), None if it carries none."""
        return self.manifest.get("acceptance") or None

    def model_entry(self, width: float) -> dict:
        """The manifest entry of the model for `width`; OperatingPointError if the bundle lacks it."""
        w = check_width_in(width, [float(entry["width"]) for entry in self.manifest["models"]])
        return next(entry for entry in self.manifest["models"] if float(entry["width"]) == w)

    def model_bytes(self, width: float) -> bytes:
        """The runtime-scalable ONNX model of one width, as bytes (what an ORT session or TRT parser takes)."""
        return self.read(self.model_entry(width)["file"])

    def check_files(self) -> list[FileStatus]:
        """Every file's status against the manifest, without raising (what `floatedge inspect` shows)."""
        listed: dict = self.manifest["files"]
        out = []
        for name, meta in sorted(listed.items()):
            if not self._source.exists(name):
                out.append(FileStatus(name, "missing", expected=meta["sha256"]))
                continue
            with self._source.open(name) as f:
                digest, size = _sha256_stream(f)
            status = "ok" if digest == meta["sha256"] else "modified"
            out.append(FileStatus(name, status, expected=meta["sha256"], actual=digest, size=size))
        for name in self._source.names():
            if name not in (MANIFEST, SIGNATURE) and name not in listed:
                actual = None
                if self._source.exists(name):
                    with self._source.open(name) as f:
                        actual, _ = _sha256_stream(f)
                out.append(FileStatus(name, "extra", actual=actual))
        return out

    def verify_files(self) -> None:
        """Raise BundleError naming the first file that is modified, missing or extra."""
        for st in self.check_files():
            if not st.ok:
                raise BundleError(f"{self.path}: {st.message()}")

    # -- operating points
    def operating_point(self, lambda_n: float, width: float | None = None) -> OperatingPoint:
        """An OperatingPoint this bundle can run: λ_n checked in [0, 1], width present, the bundle's λ_th."""
        w = self.widths[0] if width is None else width
        return self.check_point(OperatingPoint(lambda_n, w, self.lambda_th))

    def check_point(self, op: OperatingPoint) -> OperatingPoint:
        """`op` under this bundle's dial if this bundle can run it: its width is here, it names no other dial,
        and, for an OAT bundle, λ_th is 0 — OAT has no threshold, its BNs route as the λ rule does at λ_th = 0
        (BN_A iff λ_n > 0); OperatingPointError else. Under a mixing dial the point's λ_th becomes 0 (it has none)."""
        self.model_entry(op.width)
        if self.kind == "oat" and op.lambda_th != 0.0:
            raise OperatingPointError(f"an OAT bundle has no λ_th: its BNs route at λ_th = 0 (BN_A iff λ_n > 0), "
                                      f"got λ_th={op.lambda_th:g}")
        return op.with_dial(self.dial)  # the bundle's dial filled in; a point naming another is refused

    def table(self) -> list[dict]:
        """The operating-point table (CA/RA per λ_n × width), empty if exported without `--eval`. Every row carries
        `robust_acc` / `robust_attack` as `robust_of` reads it (also a row of a bundle written before those fields)."""
        ops = self.manifest.get("operating_points")
        return [with_robust(r) for r in ops["rows"]] if ops else []

    def lookup(self, op: OperatingPoint) -> dict | None:
        """The table row measured for `op`, matched on what it computes (noise scale, BN set, width), so
        λ_n = 1 under λ_th = 0 answers for λ_n = 1 under λ_th = 0.5; None if not evaluated."""
        try:
            key = op.with_dial(self.dial).effective()
        except OperatingPointError:  # a point under another dial: this bundle measured none of those
            return None
        for row in self.table():
            if OperatingPoint(row["lambda_n"], row["width"], row["lambda_th"], row.get("dial")).effective() == key:
                return row
        return None


def open_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open a bundle directory or tar. Checks the format and schema version always, and with `verify`
    (the default) every checksum; raises BundleError with one line naming what is wrong."""
    path = Path(path)
    source = _Source(path)
    if not source.exists(MANIFEST):
        raise BundleError(f"{path}: not a floatedge bundle (no {MANIFEST})")
    with source.open(MANIFEST) as f:
        raw = f.read()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: {MANIFEST} is not valid JSON ({exc})") from None
    check_manifest(manifest, path)
    actual = manifest_checksum(manifest)
    if verify and actual != manifest["manifest_sha256"]:
        raise BundleError(f"{path}: {MANIFEST} failed its checksum: it records sha256 {manifest['manifest_sha256']}, "
                          f"its content has {actual}")
    bundle = Bundle(path, source, manifest)
    if verify:
        bundle.verify_files()
    return bundle


def check_manifest(manifest: Any, path: str | Path = "bundle") -> None:
    """Format, schema version (newer than this code → a clear refusal), then the required keys."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: {MANIFEST} is not a floatedge bundle manifest")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"{path}: {MANIFEST} has no valid schema_version ({version!r})")
    if version > SCHEMA_VERSION:
        raise BundleError(f"{path}: bundle schema version {version} is newer than this floatedge supports "
                          f"({SCHEMA_VERSION}); upgrade floatedge to read it")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{path}: {MANIFEST} lacks {', '.join(missing)}")
    kind = manifest.get("kind", "float")
    if kind not in KINDS:
        raise BundleError(f"{path}: {MANIFEST} has an unknown model kind {kind!r} (known: {', '.join(KINDS)})")
    if version < KIND_SCHEMA[kind] or (kind == "oat" and not isinstance(manifest.get("film"), dict)):
        raise BundleError(f"{path}: {MANIFEST} of kind {kind!r} needs schema version ≥ {KIND_SCHEMA[kind]} "
                          f"and a film description (it has version {version})")
    try:
        mixes = get_dial(manifest.get("dial")).mixes
    except OperatingPointError as exc:
        raise BundleError(f"{path}: {MANIFEST}: {exc}") from None
    if version < DIAL_SCHEMA[mixes]:
        raise BundleError(f"{path}: {MANIFEST} with a mixing dial needs schema version ≥ {DIAL_SCHEMA[mixes]} "
                          f"(it has version {version})")
    _check_acceptance(manifest, path)


def _check_acceptance(manifest: dict, path: str | Path) -> None:
    """The `acceptance` section, when present, is well formed. Its files are checked when read (`read` names a file
    the bundle lacks), so a bundle whose acceptance files are gone still opens for everything else."""
    acc = manifest.get("acceptance")
    if not acc:
        return
    bad = f"{path}: {MANIFEST} has a malformed acceptance set"
    if not isinstance(acc, dict) or not isinstance(acc.get("points"), list) or not isinstance(acc.get("images"), dict):
        raise BundleError(bad)
    if acc["images"].get("dtype") not in ACCEPTANCE_DTYPES:
        raise BundleError(f"{bad}: image dtype {acc['images'].get('dtype')!r} (known: {', '.join(ACCEPTANCE_DTYPES)})")
    for p in acc["points"]:
        if not isinstance(p, dict) or not {"width", "lambda_n", "lambda_th", "clean_acc"} <= set(p):
            raise BundleError(f"{bad}: a point lacks width, lambda_n, lambda_th or clean_acc")


def read_build_report(bundle: Bundle) -> dict | None:
    """The build report beside `bundle` (`build_report_path`), None if there is none; BundleError if unreadable."""
    path = build_report_path(bundle.path)
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not a readable build report ({exc})") from None
    if not isinstance(report, dict) or report.get("format") != "floatedge-build-report":
        raise BundleError(f"{path}: not a floatedge build report")
    return report


def build_report_lines(report: dict, bundle: Bundle) -> list[str]:
    """What `floatedge build` and `floatedge inspect` print of a build report: the device, then per width the
    precision kept and why, then per operating point the acceptance figures against the bundle's own."""
    dev = report.get("device", {})
    stale = report.get("bundle_manifest_sha256") != bundle.manifest.get("manifest_sha256")
    lines = [f"built    {report.get('created', '?')} on {dev.get('name') or dev.get('part_number') or '?'} "
             f"({report.get('backend', '?')} {report.get('backend_version', '')}), cache {report.get('cache', '?')}"
             + ("  STALE: built from another version of this bundle" if stale else "")]
    for e in report.get("engines", []):
        lines.append(f"  width {e['width']:g}: {e['precision']} ({e.get('why', '')}); {e.get('cache', '?')}, "
                     f"{e.get('build_seconds', 0):.2f} s, {e.get('bytes', 0) / 1e6:.2f} MB")
    acc = report.get("acceptance") or {}
    if not acc.get("checked"):
        lines.append(f"  acceptance: not checked ({acc.get('note', 'no acceptance set in the bundle')})")
        return lines
    lines.append(f"  acceptance on {acc.get('n_images')} images, tolerance {acc.get('tolerance_points'):g} points, "
                 f"agreement ≥ {100 * acc.get('min_agreement', 0):g}%:")
    head = ["width", "λ_n", "prec", "CA %", "bundle", "RA %", "bundle", "agree %", ""]
    rows = [head]
    for r in acc.get("points", []):
        ra = "—" if r.get("adv_acc") is None else f"{100 * r['adv_acc']:.2f}"
        ra_ref = "—" if r.get("ref_adv_acc") is None else f"{100 * r['ref_adv_acc']:.2f}"
        rows.append([f"{r['width']:g}", f"{r['lambda_n']:g}", r["precision"], f"{100 * r['clean_acc']:.2f}",
                     f"{100 * r['ref_clean_acc']:.2f}", ra, ra_ref, f"{100 * r['agreement']:.2f}",
                     "ok" if r["passed"] else "FAIL: " + "; ".join(r.get("failures", []))])
    widths = [max(len(x[i]) for x in rows) for i in range(len(head) - 1)]
    lines += ["    " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows]
    return lines


def iter_layers(entry: Mapping[str, Any], kind: str | None = None) -> Iterator[dict]:
    """The conditional layers of one model entry, optionally of one kind ("conv", "linear", "bn")."""
    for layer in entry["layers"]:
        if kind is None or layer["kind"] == kind:
            yield layer


__all__ = [
    "SCHEMA_VERSION", "KINDS", "KIND_SCHEMA", "FORMAT", "MANIFEST", "SUFFIX", "INPUT", "LAMBDA", "OUTPUT", "NOISE_SCALE", "USE_ADV",
    "BN_WEIGHT", "DIAL_SCHEMA",
    "SIGNATURE", "VERIFY_LAMBDAS", "PARITY_TOL", "BundleError", "Bundle", "FileStatus", "open_bundle", "write_bundle",
    "check_manifest", "manifest_checksum", "model_filename", "sha256_bytes", "sha256_file", "iter_layers",
    "ACCEPTANCE_IMAGES", "ACCEPTANCE_LABELS", "ACCEPTANCE_PREDICTIONS", "ACCEPTANCE_DTYPES", "BUILD_REPORT_SUFFIX",
    "acceptance_adv_filename", "array_bytes", "build_report_path", "read_build_report", "build_report_lines",
]
