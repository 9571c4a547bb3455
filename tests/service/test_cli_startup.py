"""Client commands start without torch: `import service.client`, `rpg --help`, `rpg submit`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.cli import COMMANDS, build_parser

NO_TORCH = "import sys; {code}; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith(('torch', 'models', 'worker')))"


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH.format(code=code)], capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "code",
    [
        "import service.client; from service.client import Client",
        "from service.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass",
        "from service.cli import main\ntry: main(['submit', '--help'])\nexcept SystemExit: pass",
        # a real submit that fails to connect: the whole command path, still without torch
        "from service.cli import main\n"
        "assert main(['submit', '--url', 'http://127.0.0.1:9', '--architecture', 'x']) == 2",
    ],
    ids=["import-client", "rpg-help", "rpg-submit-help", "rpg-submit"],
)
def test_client_paths_do_not_import_torch(code: str) -> None:
    done = _run(code)
    assert done.returncode == 0, done.stderr


def test_the_control_does_import_torch() -> None:
    # The check above can fail: a command that needs torch is seen loading it.
    done = _run(
        "from service.cli import main\ntry: main(['zoo', '--help'])\nexcept SystemExit: pass"
    )
    assert done.returncode != 0
    assert "AssertionError" in done.stderr


def test_help_table_matches_the_commands_own_help() -> None:
    parser = build_parser()  # every module registered
    subparsers = next(a for a in parser._actions if a.dest == "command")
    real = {action.dest: action.help for action in subparsers._choices_actions}
    assert real == {name: help_text for name, (_, help_text) in COMMANDS.items()}


def test_lazy_parser_lists_every_command() -> None:
    parser = build_parser("submit")
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert [a.dest for a in subparsers._choices_actions] == list(COMMANDS)
    args = parser.parse_args(["submit", "--url", "http://x", "--architecture", "a"])
    assert args.architecture == "a"
