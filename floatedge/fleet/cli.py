"""`floatedge keygen | sign | deploy`: thin commands over floatedge.signing and floatedge.fleet. No torch.

    keygen   an Ed25519 key pair for signing bundles        --out DIR [--name NAME]
    sign     sign an existing bundle in place                BUNDLE --key KEY
    deploy   a bundle to a fleet with Ansible, or roll back  BUNDLE -i INVENTORY [--limit] [--serial] [--rollback]
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from floatedge.errors import user_errors


@click.command("keygen")
@click.option("--out", "out", type=click.Path(), required=True, help="Directory for NAME.key and NAME.pub.")
@click.option("--name", default="floatedge", show_default=True, help="File name of the pair (without extension).")
@user_errors
def keygen_cmd(out: str, name: str) -> None:
    """Make an Ed25519 key pair for signing bundles: NAME.key (private, mode 0600) and NAME.pub.

    \b
    Example:
      floatedge keygen --out keys && floatedge sign model.febundle --key keys/floatedge.key
    """
    from floatedge.signing import generate_key

    kp = generate_key(out, name)
    click.echo(f"key {kp.key_id}: private {kp.private} (mode 0600: keep it on the workstation), public {kp.public} "
               "(copy it into each device's trusted keys)")


@click.command("sign")
@click.argument("bundle", type=click.Path())
@click.option("--key", "key", type=click.Path(), required=True, help="Ed25519 private key (floatedge keygen).")
@user_errors
def sign_cmd(bundle: str, key: str) -> None:
    """Sign BUNDLE (directory or tar) in place: manifest.sig, Ed25519 over manifest.json. Refuses a bundle that
    fails its checksums; replaces an earlier signature."""
    from floatedge.signing import sign_bundle

    click.echo(f"signed {bundle} with key {sign_bundle(bundle, key)}")


@click.command("deploy")
@click.argument("bundle", type=click.Path(), required=False)
@click.option("-i", "--inventory", type=click.Path(), required=True, help="Ansible inventory of the devices.")
@click.option("--limit", default=None, help="Only these hosts (an Ansible pattern: host, group, 'a:b', '!c').")
@click.option("--serial", type=int, default=None, help="Hosts per batch (default: all at once).")
@click.option("--max-fail-percentage", type=float, default=None,
              help="Stop starting batches once more than this % of a batch failed (default: never stop).")
@click.option("--rollback", is_flag=True, help="Swap each device back to its previous release (no BUNDLE).")
@click.option("--trust", type=click.Path(), default=None,
              help="Check the signature against these *.pub keys here, and install them as the devices' trusted keys.")
@click.option("--report", type=click.Path(), default=None, help="Also write the per-host summary as JSON here.")
@click.option("--quiet", is_flag=True, help="Only the summary, not Ansible's output.")
@user_errors
def deploy_cmd(bundle, inventory, limit, serial, max_fail_percentage, rollback, trust, report, quiet) -> None:
    """Deploy BUNDLE to the devices of an Ansible inventory (or --rollback): per device, check the signature, copy
    the bundle (checksummed, atomic), install or upgrade floatedge, build and profile there (when this floatedge has
    `build`/`profile`), install the server's unit and config, restart it and wait until ready (where systemd runs),
    keep the previous release for --rollback. A summary per host at the end; exit 1 if any host failed.
    docs/deploy.md.

    \b
    Example:
      floatedge deploy model.febundle -i fleet.ini --trust keys --serial 2 --max-fail-percentage 0
    """
    from floatedge.fsutil import atomic_write_text, check_destination

    from .deploy import deploy, failure_line, format_summary

    if report:
        check_destination(report)
    result = deploy(bundle, inventory, limit=limit, serial=serial, max_fail_percentage=max_fail_percentage,
                    trust=trust, rollback=rollback, quiet=quiet)
    click.echo(format_summary(result))
    if report:
        atomic_write_text(Path(report), json.dumps(result.to_dict(), indent=1) + "\n")
    bad = failure_line(result)
    if bad:
        raise click.ClickException(bad)


COMMANDS = (keygen_cmd, sign_cmd, deploy_cmd)
