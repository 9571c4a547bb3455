"""The `rpg` subcommands of the models package: one module per command (argparse and printing;
the work is done by the library modules they call).
"""

from __future__ import annotations

import os

from models.limits import FileLimits

__all__ = ["command_limits"]


def command_limits() -> FileLimits:
    """What a command's user files may hold: the defaults, or `RPG_MAX_*` from the
    environment (read once, where the command starts). `ValueError` names a bad variable."""
    return FileLimits.from_environ(os.environ)
