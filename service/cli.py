"""The `rpg` command: one entry point for training, sampling, zoos, the worker and the gateway.

Each package registers its own subcommands (`register(subparsers)`). This module imports
only the package that owns the command being run: `rpg --help` and `rpg submit` never load
torch (the models package imports it), so client commands start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command -> (module whose `register` adds it, one-line help for `rpg --help`).
# tests/service/test_cli_startup.py checks these help lines against the modules' own.
COMMANDS: dict[str, tuple[str, str]] = {
    "zoo": (
        "models.cli.zoo",
        "build, import and inspect model zoos (the training data of generators)",
    ),
    "train": ("models.cli.train", "train an RPG generator on a zoo of checkpoints"),
    "sample": ("models.cli.sample", "generate weights with a trained generator"),
    "evaluate": (
        "models.cli.evaluate",
        "accuracy and novelty of generated models against their zoo",
    ),
    "plan": (
        "models.cli.plan",
        "size a generator for a zoo before training: parameters, memory, time, FLOPs",
    ),
    "bench": (
        "models.bench.cli",
        "benchmarks: generated-model quality, training and sampling speed",
    ),
    "worker": (
        "worker.cli",
        "run a generation worker (loads its generators once, serves their job queues)",
    ),
    "webhooks": (
        "worker.webhooks_cli",
        "deliver webhooks (signed, retried with backoff) from the webhook queue",
    ),
    "serve": ("service.commands", "run the HTTP gateway"),
    "keys": ("service.commands", "manage API keys"),
    "submit": ("service.client_cli", "submit a generation request to a running gateway"),
    "demo": ("service.demo", "run the whole service locally and generate a few digit classifiers"),
}


def _new_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="rpg",
        description="RPG: generate neural-network weights with recurrent diffusion. "
        "Build a zoo, train a generator, sample, evaluate, and serve it over HTTP.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser, subparsers


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `rpg` argument parser: every command's full options, or only ``command``'s.

    With ``command`` (a known name), only its module is imported; the other commands appear
    as one-line entries so that ``rpg --help`` still lists them all.
    """
    parser, subparsers = _new_parser()
    if command is None:
        modules = dict.fromkeys(module for module, _ in COMMANDS.values())
    else:
        modules = dict.fromkeys([COMMANDS[command][0]] if command in COMMANDS else [])
    registered: set[str] = set()
    for module_name in modules:
        before = set(subparsers.choices)
        importlib.import_module(module_name).register(subparsers)
        registered |= set(subparsers.choices) - before
    for name, (_, help_text) in COMMANDS.items():
        if name not in registered:
            subparsers.add_parser(name, help=help_text)
    # argparse lists commands in the order they were added; keep the table's order.
    subparsers._choices_actions.sort(key=lambda action: list(COMMANDS).index(action.dest))
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
        if arg == "--":
            break
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run `rpg ARGS...` and return the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(arguments)
    parser = build_parser(command if command in COMMANDS else "")
    args = parser.parse_args(arguments)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
