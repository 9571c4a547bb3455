"""Redis clients that wait out an outage instead of failing, and say that they are waiting.

A worker must outlive a Redis restart or a network cut of any length: a failed command is
retried with capped exponential backoff until Redis answers again (`patient`). Nothing
above the client needs to know: the RQ work loop blocked in a dequeue, the job saving its
progress and the heartbeat thread all resume where they were once the server is back.
A running job stays bounded by its own timeout (RQ's alarm interrupts the wait).

The waiting is logged once when it starts and then every `LOG_EVERY_S` seconds, so an
operator sees why a worker is idle without a line per retry. Once the process is asked to
stop (`stop_waiting`, called on SIGINT/SIGTERM), calls fail at once instead: a worker told
to stop while Redis is down must exit, not wait for a server that may never come back.
"""

from __future__ import annotations

import logging
import threading
import time

import redis as redis_lib
from redis.backoff import AbstractBackoff, NoBackoff
from redis.retry import Retry

__all__ = ["WaitingBackoff", "impatient", "patient", "stop_waiting"]

log = logging.getLogger("rpg.worker")

FIRST_WAIT_S = 0.1
MAX_WAIT_S = 2.0
LOG_EVERY_S = 10.0


class _WaitLog:
    """One per process: the retries of every connection share it, so an outage is one line
    every `LOG_EVERY_S`, not one per connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0.0

    def waiting(self, where: str, failures: int, wait_s: float) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < LOG_EVERY_S:
                return
            self._last = now
        log.warning(
            "Redis at %s is unreachable; waiting for it (retry %d, next in %.1f s). Jobs resume "
            "when it is back; check that redis-server runs and RPG_REDIS_URL points at it",
            where,
            failures,
            wait_s,
        )


_WAIT_LOG = _WaitLog()
_STOPPING = threading.Event()


def stop_waiting() -> None:
    """From now on, Redis calls of this process that fail raise instead of waiting."""
    _STOPPING.set()


class WaitingBackoff(AbstractBackoff):
    """Exponential backoff from `first_s` up to `cap_s` that logs that it is waiting."""

    def __init__(
        self, where: str, *, first_s: float = FIRST_WAIT_S, cap_s: float = MAX_WAIT_S
    ) -> None:
        self.where = where
        self.first_s = first_s
        self.cap_s = cap_s

    def compute(self, failures: int) -> float:
        if _STOPPING.is_set():  # raised here, the retry loop gives up with this error
            raise redis_lib.ConnectionError(f"Redis at {self.where} is unreachable; stopping")
        wait_s = min(self.cap_s, self.first_s * 2 ** max(0, failures - 1))
        _WAIT_LOG.waiting(self.where, failures, wait_s)
        return wait_s


def _where(client: redis_lib.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def patient(client: redis_lib.Redis) -> redis_lib.Redis:
    """Make `client` retry connection errors and timeouts forever, with backoff; returns it."""
    retry = Retry(
        WaitingBackoff(_where(client)),
        retries=-1,
        supported_errors=(redis_lib.ConnectionError, redis_lib.TimeoutError, OSError),
    )
    client.set_retry(retry)
    return client


def impatient(client: redis_lib.Redis, *, timeout_s: float = 1.0) -> redis_lib.Redis:
    """A client to `client`'s server that gives up at once (no retries, short timeouts): for
    best-effort calls, such as a last clean-up, that must not wait out an outage."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    return redis_lib.Redis(
        connection_pool=redis_lib.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    )
