"""`rpg serve` (the HTTP gateway) and `rpg keys create NAME` (a new API key)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``serve`` and ``keys`` to the `rpg` command."""
    serve = subparsers.add_parser(
        "serve",
        help="run the HTTP gateway",
        description="Run the HTTP gateway (FastAPI + uvicorn). Flags override RPG_* environment "
        "variables; everything else (API keys, limits, storage) comes from the environment. "
        "Behind a proxy or on 0.0.0.0, set RPG_PUBLIC_BASE_URL to the address clients use.",
    )
    serve.add_argument("--host", help="address to bind (default RPG_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default RPG_PORT or 8000)")
    serve.add_argument(
        "--redis-url", help="Redis URL (default RPG_REDIS_URL, else an embedded Redis)"
    )
    serve.add_argument(
        "--generators",
        nargs="+",
        metavar="PATH",
        help="generator bundles: a directory of bundles, bundle directories, or hf://org/repo",
    )
    serve.add_argument(
        "--data-dir", type=Path, help="data directory (default RPG_DATA_DIR or ./data)"
    )
    serve.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    serve.set_defaults(func=_serve)

    keys = subparsers.add_parser("keys", help="manage API keys", description="Manage API keys.")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="make a new random API key",
        description="Print a new random API key (once: it is not stored anywhere) and the "
        "'name:sha256' entry to add to RPG_API_KEY_HASHES on every gateway.",
    )
    create.add_argument("name", help="the key's name; it owns the jobs made with the key")
    create.set_defaults(func=_keys_create)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.server import server_config
    from service.settings import GatewaySettings

    overrides = {
        "host": args.host,
        "port": args.port,
        "redis_url": args.redis_url,
        "generators": args.generators,
        "data_dir": args.data_dir,
    }
    settings = GatewaySettings(
        **{name: value for name, value in overrides.items() if value is not None}
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s")
    app = create_app(settings)
    gateway = app.state.gateway
    names = gateway.catalog.names()
    print(
        f"rpg gateway on http://{settings.host}:{settings.port} (docs at /docs); "
        f"generators: {', '.join(names) or 'none (pass --generators)'}; "
        f"API keys: {'required' if gateway.keyring.enabled else 'off'}; "
        f"redis: {settings.redis_url or 'embedded under ' + str(settings.data_dir)}",
        flush=True,
    )
    uvicorn.Server(server_config(app, settings, log_level=args.log_level)).run()
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from service.auth import KeyringError, new_key

    try:
        key, entry = new_key(args.name)
    except KeyringError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"API key for {args.name!r} (shown only now; give it to its user):")
    print(key)
    print("Add this entry to RPG_API_KEY_HASHES (comma-separated) on every gateway:")
    print(entry)
    return 0
