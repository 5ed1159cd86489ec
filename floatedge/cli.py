"""The `floatedge` command: one group; each stage's commands live beside its code (`train/cli.py`,
`export/cli.py`, `runtime/cli.py`, ...) and are registered here. This module is the only one that imports every
stage, and only to collect commands; no stage imports it."""
from __future__ import annotations

import sys

import click

from floatedge import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="floatedge")
def main() -> None:
    """floatedge: train once-for-all robust classifiers (FLOAT/FLOATS), export them, run them on Jetsons."""


def _register() -> None:
    from floatedge.daemon.cli import COMMANDS as daemon_commands
    from floatedge.devices.cli import COMMANDS as device_commands
    from floatedge.export.cli import COMMANDS as export_commands
    from floatedge.runtime.cli import COMMANDS as runtime_commands
    from floatedge.train.cli import COMMANDS as train_commands

    for cmd in (*train_commands, *export_commands, *runtime_commands, *device_commands, *daemon_commands):
        main.add_command(cmd)


_register()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
