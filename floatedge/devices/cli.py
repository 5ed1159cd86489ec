"""`floatedge device …`: thin commands over floatedge.devices — parse, call, print. No torch.

    device info        which Jetson (or not), what it can do          --root DIR --json
    device catalogue   the modules `simulate` takes                    --json
    device mode        the power mode; --set ID switches (root)       --root DIR --json
    device tegrastats  parse a log, stdin or a live tegrastats        --json
    device watch       live snapshots: a table, or JSON lines         --root DIR --json --interval S
    device simulate    write a simulated Jetson, play a scenario      --root DIR --scenario FILE
"""
from __future__ import annotations

import json
import sys
import time

import click

from floatedge.errors import user_errors

ROOT = click.option("--root", default="/", show_default=True, help="Read the device's files under this directory.")
JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _root(root: str) -> str:
    from .sysfs import check_root

    return str(check_root(root))


@click.group("device")
def device() -> None:
    """Know the Jetson: identity, capabilities, live telemetry, simulated devices."""


@device.command("info")
@ROOT
@JSON
@user_errors
def info_cmd(root: str, as_json: bool) -> None:
    """Module, SoC, sm, RAM, L4T/JetPack, CUDA, TensorRT, DLA, precisions, power modes."""
    from .identity import read_identity

    ident = read_identity(_root(root))
    if as_json:
        click.echo(json.dumps(ident.to_dict(), indent=1))
        return
    if not ident.is_jetson:
        click.echo(f"{ident.note}; this machine: {ident.cpu or 'unknown CPU'} × {ident.cpu_count or '?'} cores, "
                   f"{ident.ram_mb or '?'} MB RAM, ONNX Runtime providers: {', '.join(ident.ort_providers) or 'none'}")
        return
    rows = [("module", f"{ident.name or '?'} ({ident.part_number or '?'})"), ("board", ident.model), ("SoC", ident.soc),
            ("GPU", f"sm_{ident.sm}" if ident.sm else "?"), ("RAM", f"{ident.ram_mb} MB (shared with the GPU)"),
            ("L4T / JetPack", f"{ident.l4t or '?'} / {ident.jetpack or '?'}"), ("CUDA", ident.cuda or "?"),
            ("TensorRT", f"{ident.tensorrt} (from {ident.tensorrt_from})" if ident.tensorrt else "not found"),
            ("DLA cores", str(ident.dla) if ident.dla is not None else "?"), ("precisions", ", ".join(ident.precisions) or "?"),
            ("power modes", ", ".join(f"{m['id']} {m['name']}{'*' if m['id'] == ident.default_mode else ''}" for m in ident.modes) or "?"),
            ("ONNX Runtime", ", ".join(ident.ort_providers) or "not installed")]
    if ident.note:
        rows.append(("note", ident.note))
    for k, v in rows:
        click.echo(f"{k:14s} {v}")


@device.command("catalogue")
@JSON
@user_errors
def catalogue_cmd(as_json: bool) -> None:
    """The catalogued modules (the names `device simulate` takes) with their JetPack lines."""
    from . import catalogue

    mods = [catalogue.module(n) for n in catalogue.names()]
    if as_json:
        click.echo(json.dumps({m.key: {k: v for k, v in m.raw.items() if k != "src"} for m in mods}, indent=1))
        return
    click.echo(f"{'name':15s} {'module':22s} {'parts':24s} {'SoC':9s} {'sm':>4s} {'DLA':>3s} {'RAM MB':>7s}  JetPack")
    for m in mods:
        click.echo(f"{m.key:15s} {m.name:22s} {','.join(m.part_numbers)[:24]:24s} {m.soc:9s} {m.sm:4d} {m.dla:3d} "
                   f"{m.ram_mb:7d}  {', '.join(m.jetpacks)}")
    click.echo(f"aliases: {', '.join(f'{a} → {k}' for a, k in catalogue.data()['aliases'].items())}")


@device.command("mode")
@ROOT
@JSON
@click.option("--set", "set_id", type=int, default=None, help="Switch to this nvpmodel mode ID (needs root; refuses "
              "modes that change the CPU core count).")
@user_errors
def mode_cmd(root: str, as_json: bool, set_id: int | None) -> None:
    """The power mode (nvpmodel) and jetson_clocks; --set ID switches."""
    from . import gpu, nvpmodel

    root = _root(root)
    mode = nvpmodel.set_mode(set_id, root) if set_id is not None else nvpmodel.current_mode(root)
    table, default = nvpmodel.modes(root)
    src = gpu.find_gpu(root)
    clocks = nvpmodel.jetson_clocks(root, src.devfreq if src else None)
    if as_json:
        click.echo(json.dumps({"id": mode.id, "name": mode.name, "source": mode.source, "jetson_clocks": clocks,
                               "modes": [m.__dict__ for m in table], "default": default}))
        return
    click.echo(f"power mode: {mode.name}{f' ({mode.id})' if mode.known else ''}  [{mode.source or 'no source'}]")
    click.echo(f"jetson_clocks: {clocks}")
    for m in table:
        mark = "  (default)" if m.id == default else ""
        click.echo(f"  {m.id} {m.name:16s} cores {m.cores or '?'}  GPU ≤ {m.gpu_max_mhz or '—'} MHz{mark}")


def _stats_line(s) -> str:
    cores = ",".join("off" if c is None else f"{c['load']:.0f}%" for c in s.cpu)
    temps = " ".join(f"{k}={v:g}" for k, v in s.temps_c.items())
    gpu = "?" if s.gpu_load is None else f"{s.gpu_load:.0f}%"
    return (f"RAM {s.ram_used_mb or 0:.0f}/{s.ram_total_mb or 0:.0f} MB  CPU [{cores}]  GPU {gpu}@{s.gpu_mhz or 0:.0f} MHz  "
            f"{temps}  P {s.power_total_mw or 0:.0f} mW" + (f"  unparsed: {' '.join(s.unparsed)}" if s.unparsed else ""))


@device.command("tegrastats")
@click.argument("source", required=False)
@JSON
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between lines of a live tegrastats.")
@click.option("--count", type=int, default=0, help="Stop after this many lines (0: all).")
@ROOT
@user_errors
def tegrastats_cmd(source: str | None, as_json: bool, interval: float, count: int, root: str) -> None:
    """Parse tegrastats lines from FILE, '-' (stdin), or a live `tegrastats --interval` (no argument)."""
    from . import tegrastats

    proc = None
    if source == "-":
        stream = sys.stdin
    elif source:
        try:
            stream = open(source, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise OSError(f"{source}: {exc.strerror or exc}") from None
    else:
        proc = tegrastats.spawn(interval, _root(root))
        stream = proc.stdout
    n = 0
    try:
        for s in tegrastats.parse_lines(stream):
            click.echo(json.dumps(s.to_json()) if as_json else _stats_line(s))
            n += 1
            if count and n >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        if proc is not None:
            proc.terminate()
        elif stream is not sys.stdin:
            stream.close()
    if n == 0:
        raise click.ClickException(f"{source}: no tegrastats lines" if source else "tegrastats printed nothing")


def _table(s) -> str:
    lines = [f"floatedge device watch — {s.source}, mode {s.mode}, jetson_clocks {s.jetson_clocks}"
             + ("   THROTTLED" if s.throttled else "")]
    lines.append(f"RAM  {s.ram_used_mb or 0:8.0f} / {s.ram_total_mb or 0:.0f} MB   swap {s.swap_used_mb or 0:.0f} MB")
    lines.append("CPU  " + " ".join("  off" if c is None else ("   ? " if c["load"] is None else f"{c['load']:4.0f}%") for c in s.cpu))
    gpu = "?" if s.gpu_load is None else f"{s.gpu_load:.0f}%"
    lines.append(f"GPU  {gpu:>5s} @ {s.gpu_mhz or 0:.0f} MHz (mode allows {s.gpu_max_mhz or 0:.0f})")
    lines.append("temp " + "  ".join(f"{k} {v:.1f}" for k, v in s.temps_c.items()))
    lines.append("power " + "  ".join(f"{k} {v:.0f}" for k, v in s.power_mw.items()) + f"   total {s.power_total_mw or 0:.0f} mW")
    lines += [f"  ! {r}" for r in s.throttle_reasons] + [f"  · {e}" for e in s.errors]
    return "\n".join(lines)


@device.command("watch")
@ROOT
@JSON
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between snapshots.")
@click.option("--source", type=click.Choice(["auto", "sysfs", "tegrastats", "jtop", "none"]), default="auto", show_default=True)
@click.option("--count", type=int, default=0, help="Stop after this many snapshots (0: until Ctrl-C).")
@user_errors
def watch_cmd(root: str, as_json: bool, interval: float, source: str, count: int) -> None:
    """Live snapshots from the sampler: a refreshing table for a person, JSON lines for a program (--json)."""
    from .sampler import Sampler

    tty = sys.stdout.isatty() and not as_json
    shown = 0
    seen = None
    with Sampler(source, interval, _root(root)) as s:
        try:
            while not count or shown < count:
                wait = max(10.0, 3 * interval)
                snap = s.wait_for(lambda x: True, timeout=wait)
                if snap is None:
                    raise click.ClickException(f"no snapshot from the {s.source} source within {wait:g} s")
                if snap is seen:
                    continue
                seen = snap
                if as_json:
                    click.echo(json.dumps(snap.to_json()))
                else:
                    click.echo(("\x1b[H\x1b[2J" if tty else "") + _table(snap))
                shown += 1
        except KeyboardInterrupt:
            pass


@device.command("simulate")
@click.argument("module")
@click.option("--root", required=True, help="Directory to write the simulated device into (created if needed).")
@click.option("--jetpack", default=None, help="JetPack line (default: the module's latest).")
@click.option("--scenario", default=None, help="A scenario file (JSON/TOML) or a shipped scenario's name to play.")
@click.option("--time-scale", type=float, default=1.0, show_default=True, help="Play the scenario this many times faster.")
@user_errors
def simulate_cmd(module: str, root: str, jetpack: str | None, scenario: str | None, time_scale: float) -> None:
    """Write a simulated Jetson MODULE under --root; with --scenario, play it (rewriting the files over time)."""
    from . import simulate

    sc = simulate.load_scenario(simulate.resolve_scenario(scenario)) if scenario else None
    if sc is not None and sc.module != simulate.catalogue.module(module).key:
        raise click.ClickException(f"scenario {scenario} is for {sc.module}, not {module}")
    sim = simulate.SimJetson(root, module, jetpack or (sc.jetpack if sc else None)).build()
    sim.advance(1.0)
    if sc is not None:
        simulate.set_start(sim, sc)
    click.echo(f"simulated {sim.mod.name} ({sim.mod.part_numbers[0]}), JetPack {sim.jetpack} (L4T {sim.line['l4t']}) at {sim.root}")
    click.echo(f"  read it:  floatedge device info --root {sim.root}   |   floatedge device watch --root {sim.root}")
    click.echo(f"  stand-ins: PATH={sim.root}/usr/sbin:{sim.root}/usr/bin:$PATH nvpmodel -q")
    if sc is None:
        return
    t0 = time.monotonic()

    last = [-1e9]

    def show(t: float, diff: dict) -> None:  # every discrete change; ramps at most every 2 s
        if any(not k.startswith("temp.") for k in diff) or t - last[0] >= 2.0:
            last[0] = t
            rounded = {k: round(v, 2) if isinstance(v, float) else v for k, v in diff.items()}
            click.echo(f"  t={t:6.2f} s  {json.dumps(rounded)}")

    click.echo(f"playing {sc.name or scenario} ({sc.end_s:g} s at ×{time_scale:g})")
    try:
        simulate.play(sim, sc, time_scale=time_scale, on_change=show)
    except KeyboardInterrupt:
        pass
    click.echo(f"done in {time.monotonic() - t0:.1f} s")


COMMANDS = [device]
