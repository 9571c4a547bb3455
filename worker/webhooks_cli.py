"""`rpg webhooks`: the process that delivers webhooks (registered by the top-level CLI).

An RQ worker on the `rpg-webhooks` queue only, with RQ's scheduler for the retries' backoff.
It is separate from `rpg worker` so that no receiver, however slow, ever delays a
generation job, a cancel or a health check; it needs no generators and no torch.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis as redis_lib

    from worker.settings import Settings
    from worker.webhooks import WebhookConfig

__all__ = ["register", "run_webhook_sender", "webhook_config"]


def register(subparsers: Any) -> None:
    """Add the `webhooks` subcommand."""
    parser = subparsers.add_parser(
        "webhooks",
        help="deliver webhooks (signed, retried with backoff) from the webhook queue",
        description="Deliver the webhooks that jobs queue (POST /generate with 'webhook'): "
        "Standard Webhooks signatures with RPG_WEBHOOK_SECRET, retries with exponential "
        "backoff. Run one or more next to the gateway and workers.",
    )
    parser.add_argument("--redis-url", help="Redis URL (default: RPG_REDIS_URL, else embedded)")
    parser.add_argument("--data-dir", type=Path, help="default: RPG_DATA_DIR or ./data")
    parser.add_argument(
        "--burst", action="store_true", help="exit once no delivery is queued (tests, batch)"
    )
    parser.set_defaults(func=_run)


def webhook_config(settings: Settings) -> WebhookConfig:
    """The delivery settings from `settings` (the secret made once under data_dir if unset)."""
    from worker.webhooks import WebhookConfig, load_or_create_secret

    return WebhookConfig(
        secret=load_or_create_secret(settings.webhook_secret, settings.data_dir),
        allow_private=settings.webhook_allow_private,
        timeout_s=settings.webhook_timeout_s,
        retries=settings.webhook_retries,
        backoff_s=settings.webhook_backoff_s,
        record_ttl_s=settings.result_ttl_s,
    )


def run_webhook_sender(
    connection: redis_lib.Redis,
    config: WebhookConfig,
    *,
    burst: bool = False,
    heartbeat_interval_s: float = 5.0,
) -> bool:
    """Deliver until stopped (SIGINT/SIGTERM), or until nothing is queued with ``burst``.

    While it runs, a heartbeat says a sender is alive (jobs and ``/readyz`` read it).
    """
    from rq import SimpleWorker

    from worker.webhook_senders import SenderHeartbeat
    from worker.webhooks import install_config, webhook_queue

    queue = webhook_queue(connection)
    worker = SimpleWorker([queue], connection=connection, serializer=queue.serializer)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    heartbeat = SenderHeartbeat(connection, heartbeat_interval_s)
    install_config(config)
    heartbeat.start()
    try:
        return worker.work(
            burst=burst, with_scheduler=True, logging_level="WARNING" if burst else "INFO"
        )
    finally:
        heartbeat.stop()
        install_config(None)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace) -> int:
    from worker.queue import connect
    from worker.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides: dict[str, Any] = {}
    if args.redis_url:
        overrides["redis_url"] = args.redis_url
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    try:
        settings = Settings(**overrides)
        config = webhook_config(settings)
    except ValueError as exc:
        print(f"rpg webhooks: {exc}", file=sys.stderr)
        return 2
    where = (
        "RPG_WEBHOOK_SECRET" if settings.webhook_secret else f"{settings.data_dir}/webhook_secret"
    )
    print(f"rpg webhooks: delivering; signing secret from {where}", flush=True)
    run_webhook_sender(
        connect(settings),
        config,
        burst=args.burst,
        heartbeat_interval_s=settings.heartbeat_interval_s,
    )
    return 0
