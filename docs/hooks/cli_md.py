"""The `rpg` command line as Markdown, read from its argparse parsers (service.cli.build_parser).

One section per command (and per sub-command, e.g. `rpg zoo build`): its description, its
usage line and a table of its arguments with their defaults and help, exactly as `--help`
would say them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            # choices holds aliases too; each parser once, under its first name
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield name, sub


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _names(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    metavar = ""
    if action.nargs != 0:
        if action.metavar is not None:
            metavar = f" {action.metavar}"
        elif action.choices is not None:
            metavar = " {" + ",".join(map(str, action.choices)) + "}"
        else:
            metavar = f" {action.dest.upper()}"
    return ", ".join(f"`{flag}{metavar}`" for flag in action.option_strings)


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
        return ""
    if action.required:
        return "required"
    return f"`{action.default}`"


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = parser._get_formatter()._expand_help(action) if action.help else ""
    if action.choices is not None and not action.option_strings:
        text = f"one of {', '.join(map(str, action.choices))}" + (f": {text}" if text else "")
    return _cell(text)


def _arguments_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = [
        action
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        and not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
    ]
    if not rows:
        return []
    lines = ["| argument | default | meaning |", "|---|---|---|"]
    for action in rows:
        required = action.required and bool(action.option_strings)
        default = "required" if required else _default(action)
        lines.append(f"| {_names(action)} | {default} | {_help(parser, action)} |")
    return lines


def _section(path: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    anchor = path.replace(" ", "-")
    lines = [f"{'#' * level} `{path}` {{#{anchor}}}", ""]
    if parser.description:
        lines += [_cell(parser.description), ""]
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    table = _arguments_table(parser)
    if table:
        lines += [*table, ""]
    for name, sub in _subcommands(parser):
        lines += _section(f"{path} {name}", sub, min(level + 1, 4))
    return lines


def render() -> str:
    """Markdown for `rpg` and every sub-command."""
    from service.cli import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal's width
    try:
        parser = build_parser()
        lines = ["```text", parser.format_usage().strip(), "```", ""]
        if parser.description:
            lines += [_cell(parser.description), ""]
        lines += ["| command | does |", "|---|---|"]
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for choice in subparsers._choices_actions:
            lines.append(
                f"| [`rpg {choice.dest}`](#rpg-{choice.dest}) | {_cell(choice.help or '')} |"
            )
        lines.append("")
        for name, sub in _subcommands(parser):
            lines += _section(f"rpg {name}", sub, 2)
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(lines)
