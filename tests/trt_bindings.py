"""The real TensorRT Python bindings on a machine without a GPU (../shared/reference/edge.md §6).

PyPI holds the real binding wheels (`tensorrt-bindings`, `tensorrt-cu12-bindings`: ~1 MB each); their extension
module links `libnvinfer.so.N` and friends, which are not to be had here. A stand-in library that exports the C
entry points the module imports (all returning NULL) lets it import: every class, method, enum and pybind11
signature (`__doc__`) is then the real one of that version, while constructing a Builder or Runtime fails.

Used by the TensorRT conformance test and by the test stand-in (`fake_tensorrt.py`), and as a script:

    python tests/trt_bindings.py install          # every version below into the cache (idempotent)
    python tests/trt_bindings.py snapshot         # rewrite tests/trt_surface.json from the installed bindings

Each version lives in its own directory, `$FLOATEDGE_TRT_CACHE/<version>` (default
`~/.cache/floatedge/trt-bindings/<version>`): the package (`pip install --target`), `stubs/` (the stand-in
libraries) and `surface.json`; the directory appears only once all three are complete.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# version → pip requirement. 8.6.1: the only 8.x bindings on PyPI (JetPack 6.0); 10.3.0: JetPack 6.1/6.2;
# 10.16.1.11 and 11.4.0.106: the newest 10.x and 11.x on PyPI when this was written (2026-11-29, edge.md §6).
VERSIONS: dict[str, str] = {
    "8.6.1": "tensorrt-bindings==8.6.1",
    "10.3.0": "tensorrt-cu12-bindings==10.3.0",
    "10.16.1.11": "tensorrt-cu12-bindings==10.16.1.11",
    "11.4.0.106": "tensorrt-cu12-bindings==11.4.0.106",
}

HERE = Path(__file__).resolve().parent
SNAPSHOT = HERE / "trt_surface.json"

# Classes whose members the snapshot records in full: the ones the runner touches and the stand-in implements
# (with their bases). Enums are recorded whole; any other class only by name.
DETAILED = ("ILogger", "Logger", "Builder", "IBuilderConfig", "IOptimizationProfile", "ITimingCache", "IHostMemory",
            "OnnxParser", "OnnxParserRefitter", "Runtime", "ICudaEngine", "IExecutionContext", "Refitter")


class InstallError(RuntimeError):
    """A version could not be installed here (no network, no compiler): the reason, in one line."""


def cache_root() -> Path:
    return Path(os.environ.get("FLOATEDGE_TRT_CACHE") or "~/.cache/floatedge/trt-bindings").expanduser()


def version_dir(version: str) -> Path:
    return cache_root() / version


def installed(version: str) -> bool:
    return (version_dir(version) / "surface.json").is_file()


def _run(cmd: list[str], what: str, timeout: float, **kw) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{what}: {exc}") from None
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise InstallError(f"{what} failed (exit {res.returncode}): {' | '.join(tail)}")
    return res


def stub_symbols(extension: Path) -> list[str]:
    """The symbols the extension needs and this process cannot resolve itself: TensorRT's own C entry points
    (createInferBuilder_INTERNAL, createNvOnnxParser_INTERNAL, …; for 8.x also the uff/caffe parsers'). What
    libc, libpython or libstdc++ provide (versioned, or found in this process) is left to them."""
    out = _run(["nm", "-D", "--undefined-only", str(extension)], f"nm on {extension.name}", 60).stdout
    here = ctypes.CDLL(None)
    syms = []
    for line in out.splitlines():
        kind, _, name = line.strip().partition(" ")
        name = name.strip()
        if kind != "U" or "@" in name or not name:
            continue
        if not hasattr(here, name):
            syms.append(name)
    return sorted(syms)


def needed_libraries(extension: Path) -> list[str]:
    out = _run(["readelf", "-d", str(extension)], f"readelf on {extension.name}", 60).stdout
    return sorted(lib for lib in re.findall(r"\[(lib[^\]]+)\]", out) if lib.startswith("libnv"))


def build_stubs(extension: Path, out: Path) -> list[str]:
    """One C file defining every missing symbol as a function returning NULL, compiled once per library name
    the extension links (gcc -shared -fPIC). Returns the library names."""
    out.mkdir(parents=True, exist_ok=True)
    source = out / "stub.c"
    source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in stub_symbols(extension)))
    libs = needed_libraries(extension)
    for lib in libs:
        _run(["gcc", "-shared", "-fPIC", "-o", str(out / lib), f"-Wl,-soname,{lib}", str(source)], f"gcc for {lib}", 120)
    return libs


def live_env(directory: Path) -> dict[str, str]:
    """Environment of a Python that imports the bindings in `directory` (the loader reads LD_LIBRARY_PATH at
    start-up, hence a subprocess per version)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(directory), str(HERE)])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(directory / "stubs"), env.get("LD_LIBRARY_PATH")) if p)
    return env


def run_live(directory: Path, command: str, payload: object = None, timeout: float = 120) -> object:
    """Run `command` of this file (`surface`, `check`) in a Python that imports the bindings in `directory`;
    `payload` goes in as JSON on stdin, the JSON answer comes back."""
    res = _run([sys.executable, str(Path(__file__)), "_live", command], f"importing the bindings in {directory}",
               timeout, input=json.dumps(payload), env=live_env(directory))
    return json.loads(res.stdout)


def ensure(version: str) -> Path:
    """The directory of `version`, installed, stubbed and described; installs on first use (network)."""
    target = version_dir(version)
    if installed(version):
        return target
    cache_root().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=cache_root()))
    try:
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
              "--no-deps", "--only-binary", ":all:", "--target", str(tmp), VERSIONS[version]],
             f"pip install {VERSIONS[version]}", 600)
        extension = next(tmp.glob("tensorrt_bindings/tensorrt*.so"), None)
        if extension is None:
            raise InstallError(f"{VERSIONS[version]} installed no tensorrt_bindings extension module")
        build_stubs(extension, tmp / "stubs")
        surface = run_live(tmp, "surface")
        if surface["version"] != version:
            raise InstallError(f"{VERSIONS[version]} reports version {surface['version']}")
        (tmp / "surface.json").write_text(json.dumps(surface))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its copy
            if not installed(version):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------------ signatures
PREFIXES = ("tensorrt_bindings.tensorrt.", "tensorrt.tensorrt.", "tensorrt_bindings.", "tensorrt.")


def short_type(text: str) -> str:
    for p in PREFIXES:
        text = text.replace(p, "")
    return text.strip()


def _split(text: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside brackets ((), [], <> of pybind default reprs such as `<Severity.WARNING: 2>`)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([<":
            depth += 1
        elif ch in ")]>":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]


def signature_lines(doc: str | None, name: str) -> list[str]:
    """pybind11 signature lines of a docstring: the first line, or for an overloaded function the numbered
    lines (`1. name(self: …, …) -> …`), with module prefixes removed."""
    lines = [ln.strip() for ln in (doc or "").splitlines()]
    numbered = [re.sub(r"^\d+\. ", "", ln) for ln in lines if re.match(rf"^\d+\. {re.escape(name)}\(", ln)]
    if numbered:
        return [short_type(ln) for ln in numbered]
    first = next((ln for ln in lines if ln), "")
    return [short_type(first)] if first.startswith(f"{name}(") else []


def parse_signature(line: str) -> dict:
    """'f(self: X, a: int, b: str = None) -> bool' → {'params': [{'name','type','default'}], 'returns'}."""
    start = line.index("(")
    depth = 0
    for i in range(start, len(line)):
        depth += line[i] in "([<"
        depth -= line[i] in ")]>"
        if depth == 0:
            break
    inner, rest = line[start + 1:i], line[i + 1:].strip()
    params = []
    for part in _split(inner):
        head, _, default = part.partition(" = ")
        pname, _, ptype = head.partition(":")
        params.append({"name": pname.strip(), "type": ptype.strip(), "default": bool(default)})
    return {"params": params, "returns": rest[2:].strip() if rest.startswith("->") else ""}


def _accepts(ptype: str, value: str, surface: dict) -> bool:
    """Whether pybind11 converts an argument described by `value` (see fake_tensorrt.describe) to `ptype`.
    Implicit conversions TensorRT declares (python/src/infer/pyFoundationalTypes.cpp): numpy arrays to Weights,
    tuples/lists to Dims ("Make it possible to use tuples/lists in Python in place of Dims")."""
    t = ptype.replace("typing.", "")
    if not t or t in ("object", "Any", "capsule") or t.startswith(("Callable", "Union", "Optional")) or "|" in t:
        return True
    kind, _, cls = value.partition(":")
    if t in ("int", "SupportsInt", "SupportsIndex"):
        return kind in ("int", "bool", "enum")  # pybind enums have __index__
    if t in ("float", "SupportsFloat"):
        return kind in ("int", "bool", "float")
    if t == "bool":
        return kind in ("bool", "int", "None")
    if t == "str":
        return kind in ("str", "bytes")
    if t in ("buffer", "typing_extensions.Buffer", "collections.abc.Buffer", "Buffer", "bytes"):
        return kind in ("bytes", "ndarray") or value == "obj:IHostMemory"
    if t in ("Dims", "Dims2", "Dims3", "Dims4", "DimsHW", "tuple", "list") or t.startswith(("tuple[", "list[", "Tuple[", "List[")):
        return kind in ("tuple", "list") or value == f"obj:{t}"
    if t == "Weights":
        return kind == "ndarray" or value == "obj:Weights"
    enums = surface.get("enums", {})
    if t in enums:
        return value == f"enum:{t}"
    if kind == "obj":
        return is_subclass(cls, t, surface)
    return t not in surface.get("module", {}) and "." not in t  # a type this check does not know: no verdict


def is_subclass(cls: str, base: str, surface: dict) -> bool:
    seen, todo = set(), [cls]
    while todo:
        c = todo.pop()
        if c == base:
            return True
        if c not in seen:
            seen.add(c)
            todo.extend(surface.get("classes", {}).get(c, {}).get("bases", []))
    return False


def bind(sig: dict, args: list[str], kwargs: dict[str, str], surface: dict, method: bool = True) -> str | None:
    """None if a call with positional `args` and keyword `kwargs` (described as by fake_tensorrt.describe) binds
    to `sig` as pybind11 binds it; else why not. Unnamed parameters (pybind's argN) take no keyword."""
    params = sig["params"][1:] if method and sig["params"] and sig["params"][0]["name"] == "self" else sig["params"]
    if any(p["name"].startswith("*") for p in params):
        return None
    if len(args) > len(params):
        return f"takes {len(params)} positional arguments, {len(args)} given"
    names = [p["name"] for p in params]
    for p, a in zip(params, args, strict=False):
        if not _accepts(p["type"], a, surface):
            return f"argument {p['name']!r} is {p['type']}, got {a}"
    for k, v in kwargs.items():
        if k not in names or re.fullmatch(r"arg\d+", k):
            return f"has no keyword argument {k!r} (parameters: {', '.join(names) or 'none'})"
        i = names.index(k)
        if i < len(args):
            return f"got {k!r} both by position and by keyword"
        if not _accepts(params[i]["type"], v, surface):
            return f"argument {k!r} is {params[i]['type']}, got {v}"
    missing = [p["name"] for i, p in enumerate(params) if i >= len(args) and p["name"] not in kwargs and not p["default"]]
    return f"missing argument(s) {', '.join(missing)}" if missing else None


def bind_any(lines: list[str], args: list[str], kwargs: dict[str, str], surface: dict) -> str | None:
    """None if some overload accepts the call; else every overload's reason."""
    if not lines:
        return "no signature in its docstring"
    reasons = []
    for line in lines:
        why = bind(parse_signature(line), args, kwargs, surface)
        if why is None:
            return None
        reasons.append(f"{line}: {why}")
    return "; ".join(reasons)


# ------------------------------------------------------------------------------------------ surface
def member_of(surface: dict, cls: str, name: str) -> dict | None:
    """A class member as the surface records it (walking the bases), or None."""
    seen, todo = set(), [cls]
    while todo:
        c = todo.pop(0)
        if c in seen:
            continue
        seen.add(c)
        info = surface["classes"].get(c)
        if info is None:
            continue
        if info["members"] is None:
            raise KeyError(f"the snapshot records no members of {c}; add it to trt_bindings.DETAILED")
        if name in info["members"]:
            return info["members"][name]
        todo.extend(info["bases"])
    return None


def describe_surface(trt, detailed: tuple[str, ...] | None = None) -> dict:
    """What the imported bindings offer: module names with their kind, every enum with its members, and for
    each class (those in `detailed` if given) its bases and members — methods with their signature lines,
    properties with whether they read and write, class-level values with their type."""
    import inspect

    module, enums, classes = {}, {}, {}
    todo = []
    for name in sorted(dir(trt)):
        if name.startswith("_"):
            continue
        obj = getattr(trt, name)
        if isinstance(obj, type):
            todo.append((name, obj))
            module[name] = "enum" if hasattr(obj, "__members__") else "class"
        else:
            module[name] = "function" if callable(obj) else f"value:{short_type(type(obj).__qualname__)}"
    while todo:
        qual, cls = todo.pop()
        if hasattr(cls, "__members__"):
            enums[qual] = {k: int(v) for k, v in cls.__members__.items()}
            continue
        bases = [short_type(b.__qualname__) for b in cls.__bases__ if b.__module__.startswith("tensorrt")]
        info = {"bases": bases, "members": {}}
        for m, raw in cls.__dict__.items():
            if isinstance(raw, type):
                if raw.__module__.startswith("tensorrt") and raw.__qualname__ != qual:
                    todo.append((short_type(raw.__qualname__), raw))
                    info["members"][m] = {"kind": "class", "type": short_type(raw.__qualname__)}
                continue
            if m.startswith("_") and m != "__init__":
                continue
            if isinstance(raw, property):
                info["members"][m] = {"kind": "property", "get": raw.fget is not None, "set": raw.fset is not None}
            elif isinstance(raw, staticmethod) or callable(raw):
                fn = raw.__func__ if isinstance(raw, staticmethod) else raw
                info["members"][m] = {"kind": "static" if isinstance(raw, staticmethod) else "method",
                                      "sigs": signature_lines(getattr(fn, "__doc__", None), m)}
            else:
                info["members"][m] = {"kind": "value", "type": short_type(type(raw).__qualname__)}
        if detailed is None or qual in detailed:
            classes[qual] = info
        elif inspect.isclass(cls):
            classes[qual] = {"bases": bases, "members": None}
    return {"version": trt.__version__, "module": module, "enums": enums, "classes": classes}


def snapshot_of(surface: dict) -> dict:
    """The part of a full surface kept in tests/trt_surface.json: module names, enums, DETAILED classes."""
    classes = {c: (info if c in DETAILED else {"bases": info["bases"], "members": None})
               for c, info in surface["classes"].items()}
    return {**surface, "classes": classes}


def _dump(data: dict) -> str:
    """JSON with one line per module name, enum and class: small diffs when a version is added."""
    def section(d: dict, indent: str) -> str:
        return ",\n".join(f"{indent}{json.dumps(k)}: {json.dumps(d[k], sort_keys=True)}" for k in sorted(d))

    versions = []
    for v in data:
        body = ",\n".join(f'  "{k}": {{\n{section(data[v][k], "   ")}\n  }}' for k in ("classes", "enums", "module"))
        versions.append(f'"{v}": {{\n  "version": {json.dumps(data[v]["version"])},\n{body}\n }}')
    return "{\n " + ",\n ".join(versions) + "\n}\n"


def load_snapshot() -> dict[str, dict]:
    return json.loads(SNAPSHOT.read_text())


def use_problem(surface: dict, use: dict) -> tuple[str, str] | None:
    """Whether one use of TensorRT (fake_tensorrt's record: owner class or "" for the module, member, op
    get/set/call, argument descriptions) is possible on `surface`: None, or (kind, message) with kind
    "missing" (no such name), "call" (no overload binds) or "access" (a property read or written wrongly)."""
    owner, member, op = use["owner"], use["member"], use["op"]
    where = f"tensorrt {surface['version']}: {owner + '.' if owner else ''}{member}"
    if owner == "":
        kind = surface["module"].get(member)
        if kind is None:
            return "missing", f"{where}: no such name in the module"
        if op == "call":
            init = member_of(surface, member, "__init__") if kind == "class" else None
            if init is None:
                return "call", f"{where}: not a constructible class"
            why = bind_any(init["sigs"], use["args"], use["kwargs"], surface)
            return ("call", f"{where}(...): {why}") if why else None
        return None
    if owner in surface["enums"]:
        names = surface["enums"][owner]
        return None if member in names else ("missing", f"{where}: no such member (has {', '.join(names)})")
    info = member_of(surface, owner, member)
    if info is None:
        return "missing", f"{where}: no such attribute"
    if op == "call":
        if info["kind"] not in ("method", "static"):
            return "call", f"{where}: is a {info['kind']}, called as a method"
        why = bind_any(info["sigs"], use["args"], use["kwargs"], surface)
        return ("call", f"{where}(...): {why}") if why else None
    if op == "set" and not (info["kind"] == "property" and info["set"]):
        return "access", f"{where}: cannot be assigned"
    if op == "get" and info["kind"] == "property" and not info["get"]:
        return "access", f"{where}: is write-only"
    return None


def check_usage(trt, usage: list[dict]) -> list[str]:
    """Every recorded use against the imported bindings' own docstrings: the problems, one line each."""
    surface = describe_surface(trt)
    return [p[1] for p in (use_problem(surface, u) for u in usage) if p]


# The modules that touch tensorrt, and where they read attributes of their own objects (self.logger, np.float32).
TRT_SOURCES = [HERE.parent / "floatedge" / "runtime" / "trt" / f for f in ("loader.py", "runner.py")]
PYTHON_BASES = {"self", "super()", "np", "path", "key", "d", "images", "slot", "self.api", "self.cuda"}


def trt_names_in_source() -> set[str]:
    """Attribute names in the runner and loader that TensorRT's module, classes or enums define in some version
    (the snapshot's union), read from their AST, except those read from the runner's own Python objects."""
    import ast

    real: set[str] = set()
    for surface in load_snapshot().values():
        real |= set(surface["module"])
        for info in surface["classes"].values():
            real |= set(info["members"] or ())
        for members in surface["enums"].values():
            real |= set(members)
    used = {node.attr for path in TRT_SOURCES for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) not in PYTHON_BASES}
    return used & real


def _live(command: str) -> None:
    """Inside the subprocess that imports the bindings."""
    import tensorrt_bindings as trt

    payload = json.loads(sys.stdin.read() or "null")
    if command == "surface":
        print(json.dumps(describe_surface(trt)))
    elif command == "check":
        print(json.dumps({"version": trt.__version__, "problems": check_usage(trt, payload)}))
    else:
        raise SystemExit(f"unknown command {command!r}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["_live"]:
        _live(argv[1])
        return 0
    if argv[:1] == ["install"]:
        for v in argv[1:] or VERSIONS:
            try:
                print(f"TensorRT {v} bindings: {ensure(v)}")
            except InstallError as exc:
                print(f"TensorRT {v} bindings: {exc}", file=sys.stderr)
                return 1
        return 0
    if argv[:1] == ["snapshot"]:
        data = {v: snapshot_of(json.loads((ensure(v) / "surface.json").read_text())) for v in VERSIONS}
        SNAPSHOT.write_text(_dump(data))
        print(f"wrote {SNAPSHOT} ({SNAPSHOT.stat().st_size} bytes)")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
