"""`rpg worker`: serve generation jobs (registered by the top-level CLI)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "settings_from_args"]


def register(subparsers: Any) -> None:
    """Add the `worker` subcommand."""
    parser = subparsers.add_parser(
        "worker",
        help="run a generation worker (loads its generators once, serves their job queues)",
        description=(
            "Load the generators once (kept warm), then take generation jobs from Redis, "
            "sample, and upload the weights through the storage backend. Settings not given "
            "here come from RPG_* environment variables (see worker/settings.py). Stop with "
            "Ctrl-C / SIGTERM: the current job finishes first."
        ),
    )
    parser.add_argument(
        "--redis-url",
        help="Redis URL (default: RPG_REDIS_URL, else an embedded Redis under --data-dir)",
    )
    parser.add_argument(
        "--generators",
        nargs="+",
        metavar="PATH",
        help="bundle directories, directories of bundles, or hf://org/repo ids (default: RPG_GENERATORS)",
    )
    parser.add_argument(
        "--device", help="auto | cpu | cuda | cuda:N (default: RPG_WORKER_DEVICE or auto)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="embedded Redis, local files, temp files (default: RPG_DATA_DIR or ./data)",
    )
    parser.add_argument(
        "--burst", action="store_true", help="exit once the queues are empty (batch runs, tests)"
    )
    parser.add_argument("--name", help="worker name (default: host.pid.random)")
    parser.set_defaults(func=_run)


def settings_from_args(args: argparse.Namespace) -> Any:
    """`Settings` from the environment, overridden by the flags that were given."""
    from worker.settings import Settings

    overrides: dict[str, Any] = {}
    if args.redis_url:
        overrides["redis_url"] = args.redis_url
    if args.generators:
        overrides["generators"] = [
            p.strip() for item in args.generators for p in item.split(",") if p.strip()
        ]
    if args.device:
        overrides["worker_device"] = args.device
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    return Settings(**overrides)


def _run(args: argparse.Namespace) -> int:
    from worker.errors import WorkerError
    from worker.runtime import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = settings_from_args(args)
        run_worker(settings, burst=args.burst, name=args.name)
    except WorkerError as exc:
        print(f"rpg worker: {exc}", file=sys.stderr)
        return 2
    return 0
