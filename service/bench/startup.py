"""How fast client commands start: ``python -m service.bench.startup [--repeat N]``.

Runs each command in a fresh interpreter ``--repeat`` times and prints the median and the
slowest wall time, and whether torch was imported (it must not be, for these commands).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CHECK = "import sys; {code}; print('torch' in sys.modules)"

COMMANDS: dict[str, list[str]] = {
    "import service.client": [sys.executable, "-c", CHECK.format(code="import service.client")],
    "rpg --help": [
        sys.executable,
        "-c",
        CHECK.format(
            code="from service.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass"
        ),
    ],
    "rpg submit --help": [
        sys.executable,
        "-c",
        CHECK.format(
            code="from service.cli import main\ntry: main(['submit', '--help'])\nexcept SystemExit: pass"
        ),
    ],
}


def measure(command: list[str], repeat: int) -> tuple[list[float], bool]:
    """Wall times of ``repeat`` runs, and whether the last run imported torch."""
    times: list[float] = []
    torch_loaded = False
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - start)
        torch_loaded = done.stdout.strip().splitlines()[-1] == "True"
    return times, torch_loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"{'command':<24} {'median s':>9} {'max s':>7}  torch imported")
    for name, command in COMMANDS.items():
        times, torch_loaded = measure(command, args.repeat)
        print(
            f"{name:<24} {statistics.median(times):9.3f} {max(times):7.3f}  "
            f"{'yes' if torch_loaded else 'no'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
