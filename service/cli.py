"""The `rpg` command: one entry point for training, sampling, zoos, the worker and the gateway.

Subcommands are registered by the package that owns them, so this module only assembles.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The full `rpg` argument parser."""
    from models.cli import register as register_models

    parser = argparse.ArgumentParser(
        prog="rpg",
        description="RPG: generate neural-network weights with recurrent diffusion. "
        "Build a zoo, train a generator, sample, evaluate, and serve it over HTTP.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_models(subparsers)
    for module_name in (
        "models.zoo.cli",
        "models.evaluation_cli",
        "models.bench",
        "worker.cli",
        "service.commands",
        "service.client_cli",
        "service.demo",
    ):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `rpg ARGS...` and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
