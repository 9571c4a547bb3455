"""The `rpg` command: one entry point for training, sampling, zoos, the worker and the gateway.

Each package registers its own subcommands (`register(subparsers)`), so this module only
assembles them. Command modules import heavy libraries inside their handlers where they can.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from models import bench as bench_cli
from models import cli as models_cli
from models import evaluation_cli, plan_cli
from models.zoo import cli as zoo_cli
from service import client_cli, commands, demo
from worker import cli as worker_cli

REGISTRARS = (
    zoo_cli.register,  # rpg zoo build|import|show
    models_cli.register,  # rpg train, rpg sample
    evaluation_cli.register,  # rpg evaluate
    plan_cli.register,  # rpg plan
    bench_cli.register,  # rpg bench quality|speed
    worker_cli.register,  # rpg worker
    commands.register,  # rpg serve, rpg keys
    client_cli.register,  # rpg submit
    demo.register,  # rpg demo
)


def build_parser() -> argparse.ArgumentParser:
    """The full `rpg` argument parser."""
    parser = argparse.ArgumentParser(
        prog="rpg",
        description="RPG: generate neural-network weights with recurrent diffusion. "
        "Build a zoo, train a generator, sample, evaluate, and serve it over HTTP.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in REGISTRARS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `rpg ARGS...` and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
