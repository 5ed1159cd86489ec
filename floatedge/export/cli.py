"""`floatedge export | inspect | verify | static`: thin commands over floatedge.export and floatedge.bundle.

`inspect` and `static` need no torch (they run on the device); `export` and `verify --run` import it
when called.
"""
from __future__ import annotations

from pathlib import Path

import click

from floatedge.errors import user_errors
from floatedge.oppoint import DEFAULT_DIAL, DIALS


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)  # pragma: no cover


def _widths(ws) -> str:
    return ", ".join(f"{w:g}" for w in ws)


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def table_lines(ops: dict | None) -> list[str]:
    """A bundle's operating-point table as `export` and `inspect` print it: CA, every measured attack's RA (— where
    an attack did not run at a point), and the RA the bundle reports — the lowest, with its attack
    (`floatedge.bundle.robust_of`; also for a bundle written before `robust_acc`)."""
    from floatedge.bundle import robust_of

    if not ops:
        return ["operating points: none recorded (export with --eval FILE)"]
    attacks = list(ops["attacks"])
    described = "; ".join(f"{a}: {d}" for a, d in ops["attacks"].items())
    head = ["width", "λ_th", "λ_n", "s", "BN", "CA %"] + [f"{a} RA %" for a in attacks] + ["RA % reported", "by"]
    rows = []
    for r in ops["rows"]:
        robust, attack = robust_of(r)
        rows.append([f"{r['width']:g}", f"{r['lambda_th']:g}", f"{r['lambda_n']:g}", f"{r['noise_scale']:.2f}", str(r["bn"]),
                     _pct(r["clean_acc"])] + [_pct(r.get(a + "_acc")) for a in attacks] + [_pct(robust), attack or "—"])
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    return [f"operating points ({ops['n_images']} images; {described})"] + [
        "  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *rows]]


@click.command("export")
@click.argument("run_dir", type=click.Path())
@click.option("--out", "out", type=click.Path(), required=True, help="Bundle to write (MODEL.febundle).")
@click.option("--widths", default=None, help="Widths to export, e.g. 1.0,0.5 (default: all trained).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (13–20).")
@click.option("--eval", "eval_file", type=click.Path(), default=None,
              help="`floatedge eval` result of this run: becomes the operating-point table.")
@click.option("--lambda-th", type=float, default=None,
              help="λ_th baked into every graph (default 0.5; OAT/OATS runs have none and take only 0).")
@click.option("--dial", type=click.Choice(list(DIALS)), default=None,
              help="What λ_n does in the graphs: switch = Eq. 5 by λ_th; mix... = BN sets blended, no λ_th "
                   f"(docs/export.md). --eval must be measured under it. [default: {DEFAULT_DIAL}]")
@click.option("--eta-dtype", type=click.Choice(["auto", "float16", "float32"]), default="auto", show_default=True,
              help="Storage type of η; auto = float16 if ONNX Runtime still matches PyTorch within 1e-4, else float32.")
@click.option("--acceptance", "acceptance", type=click.IntRange(min=0), default=512, show_default=True,
              help="Test images in the acceptance set `floatedge build` proves engines with (PGD-20 images per "
                   "robust point added); 0 for none.")
@click.option("--data", type=click.Path(), default=None,
              help="Read the acceptance set's test data from here, not the run's recorded path (a run trained on "
                   "another machine).")
@click.option("--tar", is_flag=True, help="Write one tar file instead of a directory.")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--sign", "sign_key", type=click.Path(), default=None,
              help="Sign the bundle with this Ed25519 private key (floatedge keygen).")
@user_errors
def export_cmd(run_dir, out, widths, opset, eval_file, lambda_th, dial, eta_dtype, acceptance, data, tar, force,
               sign_key) -> None:
    """Export a finished run to a deployable bundle: one runtime-scalable ONNX model per width + manifest."""
    from floatedge.bundle import open_bundle
    from floatedge.export.torch_export import export_bundle
    from floatedge.fsutil import check_destination
    from floatedge.signing import load_private_key, sign_bundle

    key = load_private_key(sign_key) if sign_key else None  # a bad key fails here, not after the export
    check_destination(out)  # before the minutes of work, not at the rename
    r = export_bundle(run_dir, out, widths, opset, eval_file, tar, lambda_th, eta_dtype, force, acceptance=acceptance,
                      dial=dial, data=data)
    click.echo(f"wrote {r.path} ({'tar' if tar else 'directory'}): widths {_widths(r.model_bytes)}, "
               f"{_size(r.bundle_bytes)} ({r.size_ratio:.2f}× a plain export of the same widths, "
               f"{_size(r.plain_bytes)}); η {r.eta_dtype}, max |Δlogits| vs PyTorch {r.parity:.1e}; {r.seconds:.1f} s")
    if key is not None:
        click.echo(f"signed {r.path} with key {sign_bundle(r.path, key)}")
    for line in table_lines(open_bundle(r.path, verify=False).manifest.get("operating_points")) if eval_file else ():
        click.echo(line)


@click.command("inspect")
@click.argument("bundle", type=click.Path())
@user_errors
def inspect_cmd(bundle) -> None:
    """Summarise a bundle: model, widths, operating-point table, files and their checksum status."""
    from floatedge.bundle import MANIFEST, build_report_lines, manifest_checksum, open_bundle, read_build_report

    b = open_bundle(bundle, verify=False)
    m = b.manifest
    prov = m["provenance"]
    click.echo(f"bundle   {b.path} ({'tar' if b.is_tar else 'directory'}), schema {b.schema_version}, "
               f"created {m.get('created', '?')}")
    shape = "×".join(str(d) for d in m["input"]["shape"])
    click.echo(f"model    {m['method']} {m['architecture']} (kind {b.kind}), {len(m['classes'])} classes, input {shape} "
               f"{m['input']['dtype']} in [{m['input']['range'][0]:g}, {m['input']['range'][1]:g}]")
    noise, film = m["noise"], b.film
    if film:
        click.echo(f"λ        FiLM on λ_n in-graph: {film['layers']} FiLM layers, {film['encoding']} encoding of size "
                   f"{film['dim']}; BN_A iff λ_n > 0 (λ_th {b.lambda_th:g}, OAT has no other)")
    else:
        click.echo(f"λ        λ_th {b.lambda_th:g}; noise seed {noise['seed']} ({noise['mode']}), η stored as "
                   f"{noise['eta_dtype']}; {len(m['alphas'])} noisy layers")
        click.echo(f"dial     {b.dial.describe()}")
    click.echo(f"widths   {_widths(b.widths)}")
    git = (prov.get("git_commit") or "?")[:10] + (" dirty" if prov.get("git_dirty") else "")
    pk = prov.get("packages", {})
    click.echo(f"source   {prov.get('run')} epoch {prov.get('epoch')}; floatedge {prov.get('floatedge_version')} "
               f"({git}); torch {pk.get('torch')}, onnx {pk.get('onnx')}")
    click.echo("files")
    bad = 0
    self_ok = manifest_checksum(m) == m["manifest_sha256"]
    bad += not self_ok
    click.echo(f"  {MANIFEST:24s} {'':>10s}  {'ok' if self_ok else 'MODIFIED (self-checksum fails)'}")
    for st in b.check_files():
        bad += not st.ok
        click.echo(f"  {st.name:24s} {_size(st.size):>10s}  {'ok' if st.ok else st.status.upper()}")
    for line in table_lines(m.get("operating_points")):
        click.echo(line)
    acc = b.acceptance
    if acc:
        robust = sum(1 for p in acc["points"] if p.get("adversarial"))
        click.echo(f"acceptance set: {acc['n_images']} {acc['dataset']} test images, {len(acc['points'])} points, "
                   f"{acc['attack']['name']} images for {robust} of them (ε {acc['attack']['eps'] * 255:.3g}/255)")
    else:
        click.echo("acceptance set: none (export with --acceptance N; floatedge build cannot prove engines without it)")
    report = read_build_report(b)
    for line in build_report_lines(report, b) if report else []:
        click.echo(line)
    if bad:
        raise click.ClickException(f"{bad} file(s) fail their checksums; the bundle must not be used")


@click.command("verify")
@click.argument("bundle", type=click.Path())
@click.option("--run", "run_dir", type=click.Path(), default=None,
              help="Run directory the bundle came from: adds parity of ONNX Runtime against PyTorch.")
@click.option("--images", "n_images", type=int, default=8, show_default=True)
@click.option("--trust", type=click.Path(), default=None,
              help="Directory of trusted *.pub keys: refuse a bundle that is unsigned, tampered or signed by another key.")
@user_errors
def verify_cmd(bundle, run_dir, n_images, trust) -> None:
    """Checksums, onnx.checker, and parity (static vs scalable; ONNX Runtime vs PyTorch with --run)."""
    from floatedge.export.verify import verify_bundle
    from floatedge.signing import signature_status, verify_signature

    signature = f"signed by trusted key {verify_signature(bundle, trust)}" if trust else signature_status(bundle)
    r = verify_bundle(bundle, run_dir, n_images=n_images)
    click.echo(f"checksums     {sum(st.ok for st in r.files)}/{len(r.files)} files ok (and the manifest)")
    click.echo(f"signature     {signature}")
    click.echo("onnx.checker  " + "; ".join(f"width {w:g}: {err or 'ok'}" for w, err in r.checker.items()))
    click.echo(f"parity        max |Δlogits| over {r.n_images} images, tolerance {r.tol:g}")
    click.echo(f"  {'width':>5s} {'λ_n':>5s} {'ORT vs torch':>13s} {'static vs ORT':>14s}")
    for p in r.parity:
        td = f"{p.torch_delta:.2e}" if p.torch_delta is not None else "-"
        click.echo(f"  {p.width:5g} {p.lambda_n:5g} {td:>13s} {p.static_delta:14.2e}")
    if not r.torch_checked:
        click.echo("  (ONNX Runtime vs PyTorch not checked: pass --run RUN_DIR)")
    fails = r.failures()
    if fails:
        more = f" (+{len(fails) - 1} more)" if len(fails) > 1 else ""
        raise click.ClickException(f"verify failed: {fails[0]}{more}")
    click.echo(f"OK: {r.path}")


@click.command("static")
@click.argument("bundle", type=click.Path())
@click.option("--lambda-n", type=float, required=True, help="Trade-off λ_n in [0, 1].")
@click.option("--width", type=float, default=None, help="Width (default: the widest in the bundle).")
@click.option("--lambda-th", type=float, default=None, help="λ_th (default: the bundle's).")
@click.option("--out", "out", type=click.Path(), default=None, help="Static ONNX model to write.")
@click.option("--refit", "refit", type=click.Path(), default=None,
              help="Write the refit weights ({initializer name: array}) as .npz instead of / besides a model.")
@user_errors
def static_cmd(bundle, lambda_n, width, lambda_th, out, refit) -> None:
    """Freeze a bundle model at one operating point: a plain ONNX model (TensorRT < 8.5, DLA) or refit weights."""
    import io

    import numpy as np

    from floatedge.bundle import open_bundle
    from floatedge.fsutil import atomic_write
    from floatedge.graph.static import refit_weights, static_model
    from floatedge.oppoint import OperatingPoint

    if not out and not refit:
        raise click.UsageError("give --out FILE.onnx, --refit FILE.npz, or both")
    b = open_bundle(bundle)
    op = b.operating_point(lambda_n, width)
    if lambda_th is not None:
        op = OperatingPoint(op.lambda_n, op.width, lambda_th)
    if out:
        data = static_model(b, op).SerializeToString()
        atomic_write(Path(out), lambda f: f.write(data))
        click.echo(f"wrote {out}: static model at {op} ({_size(len(data))})")
    if refit:
        buf = io.BytesIO()
        weights = refit_weights(b, op)
        np.savez(buf, **weights)
        atomic_write(Path(refit), lambda f: f.write(buf.getvalue()))
        click.echo(f"wrote {refit}: {len(weights)} refit weights at {op}")


COMMANDS = (export_cmd, inspect_cmd, verify_cmd, static_cmd)
