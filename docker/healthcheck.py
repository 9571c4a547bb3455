"""Container health checks for the RPG images (installed as /usr/local/bin/rpg-healthcheck).

    rpg-healthcheck gateway [--url URL]   GET URL (default http://127.0.0.1:$RPG_PORT/healthz)
                                          answers 2xx: the gateway process serves HTTP.
    rpg-healthcheck worker                a worker on this host (the container's hostname) has a
                                          fresh heartbeat in Redis: it loaded its generators,
                                          reaches Redis, and its heartbeat thread runs.
    rpg-healthcheck webhooks              an RQ worker on this host serves the webhook queue
                                          (`rpg webhooks`: RQ keeps its registration fresh).

Exit 0 = healthy, 1 = unhealthy (Docker's convention); the reason goes to stdout, which Docker
keeps in `docker inspect --format '{{json .State.Health}}' CONTAINER`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence


def check_gateway(url: str, timeout_s: float) -> tuple[bool, str]:
    """Whether `url` answers 2xx within `timeout_s`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = int(response.status)
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {exc}"
    return 200 <= status < 300, f"{url}: HTTP {status}"


# worker.queue's heartbeat keys, repeated here because importing worker.queue imports torch
# (seconds of CPU on every check); tests/test_deploy.py checks that they agree.
WORKERS_KEY = "rpg:workers"
WORKER_KEY_PREFIX = "rpg:worker:"
# worker.webhooks.WEBHOOK_QUEUE and RQ's registry of workers (a set of their hash keys).
WEBHOOK_QUEUE = "rpg-webhooks"
RQ_WORKERS_KEY = "rq:workers"


def _client():  # type: ignore[no-untyped-def]
    """A Redis client from RPG_* settings that fails fast (never starts an embedded server)."""
    import redis

    from worker.redis_embedded import socket_path
    from worker.settings import Settings

    settings = Settings()
    if settings.redis_url:
        return redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
    return redis.Redis(
        unix_socket_path=str(socket_path(settings.data_dir)),
        socket_timeout=3,
        socket_connect_timeout=3,
    )


def check_worker(hostname: str) -> tuple[bool, str]:
    """Whether a worker whose heartbeat names `hostname` is alive (settings from RPG_*)."""
    import redis

    client = _client()
    try:
        names = sorted(n.decode() for n in client.smembers(WORKERS_KEY))  # type: ignore[union-attr]
        beats = client.mget([WORKER_KEY_PREFIX + n for n in names]) if names else []
    except (redis.RedisError, OSError) as exc:
        return False, f"Redis unreachable: {exc}"
    finally:
        client.close()
    live = [json.loads(b) for b in beats if b is not None]  # an expired key = a dead worker
    mine = [str(info.get("name")) for info in live if info.get("hostname") == hostname]
    if not mine:
        return False, f"no live worker on host {hostname!r} ({len(live)} live elsewhere)"
    return True, f"live: {', '.join(mine)}"


def check_webhooks(hostname: str) -> tuple[bool, str]:
    """Whether an RQ worker on `hostname` serves the webhook queue (settings from RPG_*)."""
    import redis

    client = _client()
    try:
        keys = sorted(client.smembers(RQ_WORKERS_KEY))  # type: ignore[union-attr]
        with client.pipeline() as pipe:
            for key in keys:
                pipe.hmget(key, "hostname", "queues")
            rows = pipe.execute()
    except (redis.RedisError, OSError) as exc:
        return False, f"Redis unreachable: {exc}"
    finally:
        client.close()
    mine = [
        key.decode()
        for key, (host, queues) in zip(keys, rows, strict=True)
        if host is not None
        and host.decode() == hostname
        and WEBHOOK_QUEUE in (queues or b"").decode().split(",")
    ]
    if not mine:
        return False, f"no webhook sender on host {hostname!r}"
    return True, f"live: {', '.join(mine)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one check; 0 healthy, 1 not."""
    parser = argparse.ArgumentParser(prog="rpg-healthcheck", description=__doc__)
    parser.add_argument("role", choices=["gateway", "worker", "webhooks"])
    parser.add_argument("--url", help="gateway liveness URL (default: 127.0.0.1:$RPG_PORT/healthz)")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    args = parser.parse_args(argv)
    if args.role == "gateway":
        url = args.url or f"http://127.0.0.1:{os.environ.get('RPG_PORT', '8000')}/healthz"
        healthy, reason = check_gateway(url, args.timeout)
    elif args.role == "webhooks":
        healthy, reason = check_webhooks(socket.gethostname())
    else:
        healthy, reason = check_worker(socket.gethostname())
    print(("healthy: " if healthy else "unhealthy: ") + reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
