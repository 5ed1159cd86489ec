"""`floatedge serve`: thin — parse, build the config, hand it to `floatedge.daemon.server.serve`. No torch."""
from __future__ import annotations

import sys

import click

from floatedge.errors import user_errors


@click.command("serve")
@click.argument("bundle", type=click.Path(), required=False)
@click.option("--config", "config_path", type=click.Path(), default=None, help="TOML file with any setting (flags win).")
@click.option("--model-name", default=None, help="The model's protocol name (default: the bundle's file name "
                                                  "without .febundle).")
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1, loopback only).")
@click.option("--http-port", type=int, default=None, help="REST port (default 8000).")
@click.option("--grpc-port", type=int, default=None, help="gRPC port (default 8001; 0: no gRPC).")
@click.option("--metrics-port", type=int, default=None, help="Prometheus /metrics port (default 8002; 0: none).")
@click.option("--token-file", default=None, help="Bearer token for control/repository endpoints (mode 0600).")
@click.option("--bundle-dir", default=None, help="Hot swaps load bundles from here only (default: BUNDLE's directory).")
@click.option("--state-dir", default=None, help="Where the last good bundle is recorded (default $STATE_DIRECTORY).")
@click.option("--batching/--no-batching", default=None, help="Dynamic batching (default off; see docs/serve.md).")
@click.option("--policy", type=click.Choice(["manual", "static", "ladder", "governor"]), default=None,
              help="Who moves the operating point (default manual; governor: docs/governor.md, settings in [governor]).")
@click.option("--print-systemd-unit", is_flag=True, help="Print a systemd unit for this command and exit.")
@user_errors
def serve_cmd(bundle, config_path, model_name, host, http_port, grpc_port, metrics_port, token_file, bundle_dir,
              state_dir, batching, policy, print_systemd_unit) -> None:
    """Serve BUNDLE over the Open Inference Protocol v2 (REST and gRPC, as Triton and KServe clients speak it),
    with operating-point control, hot swap, dynamic batching and Prometheus metrics. docs/serve.md."""
    from floatedge.daemon.config import load_config

    overrides = {"bundle": bundle, "model_name": model_name, "host": host, "http_port": http_port,
                 "grpc_port": grpc_port, "metrics_port": metrics_port, "token_file": token_file,
                 "bundle_dir": bundle_dir, "state_dir": state_dir, "batching": batching, "policy": policy}
    cfg = load_config(config_path, overrides)
    if print_systemd_unit:
        from floatedge.daemon.systemd import unit

        click.echo(unit(cfg.bundle, config_path), nl=False)
        return
    if not cfg.bundle_path.exists():
        raise click.ClickException(f"no bundle at {cfg.bundle}")
    from floatedge.daemon.server import serve

    sys.exit(serve(cfg, config_path, {k: v for k, v in overrides.items() if v is not None}))


COMMANDS = [serve_cmd]
