"""`floatedge build | profile`: thin commands over floatedge.devices.engines and .profile — parse, call, print.

    build BUNDLE     engines for this device (or ONNX Runtime prepared), cached, proven on the acceptance set
    profile BUNDLE   latency, throughput, power, memory, switch cost per operating point of what build made
"""
from __future__ import annotations

import click

from floatedge.errors import user_errors

CACHE = click.option("--cache", type=click.Path(), default=None,
                     help="Engine cache directory (default $FLOATEDGE_ENGINE_CACHE or ~/.cache/floatedge/engines).")
ROOT = click.option("--root", default="/", show_default=True,
                    help="Read the device's identity and telemetry under this directory (a simulated Jetson).")


@click.command("build")
@click.argument("bundle", type=click.Path())
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default="auto", show_default=True,
              help="auto: fp16 per width where the acceptance set passes, else fp32.")
@click.option("--dla", type=int, default=None, help="Build for this DLA core (TensorRT, modules with DLA).")
@click.option("--workspace-mb", type=int, default=None,
              help="Builder workspace (default from the module's memory: 256 MB on a Nano).")
@click.option("--max-batch", type=int, default=None, help="Largest batch the engines take (default 32; 1 with --dla).")
@CACHE
@click.option("--tolerance", type=float, default=1.0, show_default=True,
              help="Accuracy points an engine may differ from the bundle's figures on the acceptance set.")
@click.option("--min-agreement", type=float, default=0.99, show_default=True,
              help="Share of images whose argmax must match the exported fp32 model's.")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime"]), default="auto", show_default=True,
              help="auto: TensorRT where it is installed, else ONNX Runtime.")
@ROOT
@user_errors
def build_cmd(bundle, precision, dla, workspace_mb, max_batch, cache, tolerance, min_agreement, backend, root) -> None:
    """Build (or reuse from the cache) one engine per width for this device, prove it, write the build report.

    Without TensorRT (any machine but a Jetson) it prepares ONNX Runtime instead and says so. The report goes
    beside the bundle (BUNDLE.build.json); `floatedge inspect BUNDLE` shows it.

    \b
    Example:
      floatedge build model.febundle && floatedge profile model.febundle
    """
    from floatedge.bundle import build_report_lines, build_report_path, open_bundle

    from .engines import build

    report = build(bundle, precision, dla=dla, workspace_mb=workspace_mb, max_batch=max_batch, cache=cache,
                   backend=backend, tolerance=tolerance, min_agreement=min_agreement, root=root, echo=click.echo)
    for line in build_report_lines(report, open_bundle(bundle, verify=False)):
        click.echo(line)
    click.echo(f"cache hits {report['cache_hits']}/{report['cache_lookups']}; {report['seconds']:.2f} s; "
               f"report {build_report_path(bundle)}")


@click.command("profile")
@click.argument("bundle", type=click.Path())
@click.option("--batches", default=None, help="Batch sizes, e.g. 1,8,32 (default 1, 8 and the build's max batch).")
@click.option("--rounds", type=int, default=50, show_default=True, help="Timed calls per point and batch.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed calls before them.")
@click.option("--passes", type=int, default=3, show_default=True,
              help="Passes through all points the rounds are spread over (load bursts then hit every point alike).")
@click.option("--switch-rounds", type=int, default=3, show_default=True, help="Warm switches timed per neighbour pair.")
@click.option("--telemetry", type=click.Choice(["auto", "sysfs", "tegrastats", "jtop", "none"]), default="auto",
              show_default=True, help="Where power comes from (auto: the device's files on a Jetson, none elsewhere).")
@ROOT
@user_errors
def profile_cmd(bundle, batches, rounds, warmup, passes, switch_rounds, telemetry, root) -> None:
    """Measure every calibrated operating point of what `floatedge build` made, on this device.

    Per point × batch: p50/p99 latency, throughput, mean power and energy per image (where telemetry has power),
    peak memory; cold and warm switch cost between neighbouring points. Written next to the engines as the device
    profile (floatedge.devices.profile.load_profile reads it).
    """
    from .profile import run_profile

    sizes = None
    if batches:
        try:
            sizes = [int(b) for b in batches.split(",") if b.strip()]
        except ValueError:
            raise click.BadParameter(f"not a list of integers: {batches!r}", param_hint="--batches") from None
    prof = run_profile(bundle, batches=sizes, rounds=rounds, warmup=warmup, switch_rounds=switch_rounds, passes=passes,
                       telemetry=telemetry, root=root, echo=click.echo)
    power = "with power" if prof["settings"]["power"] else "no power telemetry here"
    click.echo(f"device profile {prof['path']} ({len(prof['points'])} points × batches "
               f"{', '.join(map(str, prof['settings']['batches']))}, {power}; {prof['seconds']:.1f} s)")


COMMANDS = [build_cmd, profile_cmd]
