"""Which webhook senders (`rpg webhooks`) are alive, and which of a job's events still wait.

Deliveries only happen while a sender runs. So that a job can say its webhook is stuck, and
`/readyz` can say whether anyone delivers:

- each sender beats a key ``rpg:webhook-sender:<name>`` that expires after three intervals
  (the worker heartbeat's rule), and lists its name in ``rpg:webhook-senders``;
- each queued event's message id sits in ``rpg:webhook-pending:<job id>`` from enqueue until
  its last attempt (delivered, refused, or out of retries).

Readers (`live_senders`, `pending_count`) only read; senders prune the names of dead senders
on their own beat.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import uuid

import redis as redis_lib

__all__ = [
    "SENDERS_KEY",
    "SenderHeartbeat",
    "live_senders",
    "pending_count",
    "pending_key",
    "sender_key",
]

log = logging.getLogger("rpg.webhooks")

SENDERS_KEY = "rpg:webhook-senders"
DEAD_AFTER_BEATS = 3


def sender_key(name: str) -> str:
    """The liveness key of one sender (expires when it stops beating)."""
    return f"rpg:webhook-sender:{name}"


def pending_key(job_id: str) -> str:
    """The set of a job's event message ids that are queued and not yet finally attempted."""
    return f"rpg:webhook-pending:{job_id}"


def live_senders(connection: redis_lib.Redis) -> list[str]:
    """Names of the senders whose liveness key has not expired (reads only)."""
    names = sorted(item.decode() for item in connection.smembers(SENDERS_KEY))  # type: ignore[union-attr]
    if not names:
        return []
    alive = connection.mget([sender_key(name) for name in names])
    return [name for name, value in zip(names, alive, strict=True) if value is not None]


def pending_count(connection: redis_lib.Redis, job_id: str) -> int:
    """How many of the job's webhook events wait for a delivery attempt (reads only)."""
    return int(connection.scard(pending_key(job_id)))


class SenderHeartbeat:
    """Beats this sender's liveness key on a daemon thread until `stop`."""

    def __init__(self, connection: redis_lib.Redis, interval_s: float) -> None:
        self.connection = connection
        self.interval_s = interval_s
        self.name = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Refresh the liveness key now, and forget the names of senders that died."""
        ttl_ms = max(1, math.ceil(DEAD_AFTER_BEATS * self.interval_s * 1000))
        with self.connection.pipeline() as pipe:
            pipe.set(sender_key(self.name), "1", px=ttl_ms)
            pipe.sadd(SENDERS_KEY, self.name)
            pipe.execute()
        names = [item.decode() for item in self.connection.smembers(SENDERS_KEY)]  # type: ignore[union-attr]
        beats = self.connection.mget([sender_key(name) for name in names])
        gone = [name for name, beat in zip(names, beats, strict=True) if beat is None]
        if gone:
            self.connection.srem(SENDERS_KEY, *gone)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except redis_lib.RedisError as exc:  # keep beating once Redis is back
                log.warning("webhook sender heartbeat failed: %s", exc)

    def start(self) -> None:
        """Beat once now, then every interval."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="rpg-sender-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove the key (a clean exit is not a death)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            with self.connection.pipeline() as pipe:
                pipe.delete(sender_key(self.name))
                pipe.srem(SENDERS_KEY, self.name)
                pipe.execute()
        except redis_lib.RedisError:
            pass
