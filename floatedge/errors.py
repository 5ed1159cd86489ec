"""User-facing errors: one place that turns what a user can get wrong into one clear line.

Every command is wrapped in `user_errors`; the library raises ValueError/OSError/KeyError subclasses with a
message that names the problem, and this turns them into a `click.ClickException` (exit 1), never a traceback.
It lives on its own so the command modules of every stage (train, export, runtime, devices, daemon) can use it
without importing each other.
"""
from __future__ import annotations

import functools
import os
import sys

import click


def user_errors(fn):
    """Turn the library's user-facing errors (ValueError/OSError/KeyError subclasses) into one clear line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except BrokenPipeError:  # `floatedge … | head`: the reader left; not an error of the command
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
            raise SystemExit(0) from None
        except (ValueError, OSError, KeyError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise click.ClickException(str(msg).splitlines()[0] if str(msg) else type(exc).__name__) from None

    return wrapper
