"""Jobs whose worker died: re-queued (up to `settings.job_retries` times) or failed with
error type "WorkerDied".

A worker writes `rpg:worker:<name>` every `settings.heartbeat_interval_s` with a TTL of
`DEAD_AFTER_BEATS` intervals. Every live worker's heartbeat, and the gateway's reaper loop,
call `reap_dead_jobs`, so a killed worker's job leaves "running" within about four
intervals whether or not anyone polls it.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import redis as redis_lib
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.job_lifecycle import record_job_failure
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from worker.queue.events import emit
from worker.queue.keys import (
    DEAD_AFTER_BEATS,
    QUEUES_KEY,
    WORKERS_KEY,
    cancel_key,
    iso,
    members,
    rq_queue,
    utc_now,
    worker_key,
)
from worker.queue.stats import record_finished
from worker.queue.views import fetch_job
from worker.reconnect import MAX_WAIT_S

if TYPE_CHECKING:
    from worker.settings import Settings

__all__ = ["ReaperLoop", "prune_dead_workers", "reap_dead_jobs"]

log = logging.getLogger("rpg.reaper")


def _worker_is_dead(connection: redis_lib.Redis, job: Job) -> bool:
    name = job.worker_name
    # No name: the job is between dequeue and start; the worker still owns it.
    return bool(name) and not connection.exists(worker_key(str(name)))


def _drop_started_entries(connection: redis_lib.Redis, job: Job) -> None:
    # The dead attempt's entries in RQ's started registry would later be taken for an
    # abandoned run of the *retried* attempt and fail it; remove them all by job id.
    registry = StartedJobRegistry(job.origin, connection=connection, serializer=JSONSerializer)
    entries: list[bytes] = connection.zrange(registry.key, 0, -1)  # type: ignore[assignment]
    stale = [m for m in entries if m.decode().split(":")[0] == job.id]
    if stale:
        connection.zrem(registry.key, *stale)


def _fail(connection: redis_lib.Redis, job: Job, error: dict[str, str], settings: Settings) -> None:
    now = utc_now()
    job.meta["error"] = error
    job.meta["finished_at"] = iso(now)
    job.save_meta()
    job.failure_ttl = settings.result_ttl_s
    status = "canceled" if error["type"] == "Canceled" else "failed"
    with connection.pipeline() as pipe:
        record_job_failure(job, error["message"], pipe)
        record_finished(
            pipe,
            status=status,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=now,
        )
        pipe.execute()


def _reap(connection: redis_lib.Redis, job_id: str, *, settings: Settings) -> bool:
    """Re-queue or fail one job whose worker is dead. Returns whether it acted."""
    lock = f"rpg:reap:{job_id}"
    if not connection.set(lock, "1", nx=True, ex=30):
        return False  # another process is reaping it
    try:
        job = fetch_job(connection, job_id)
        if job is None or job.get_status(refresh=False) != RQStatus.STARTED:
            return False
        if not _worker_is_dead(connection, job):
            return False
        attempts = int(job.meta.get("attempts", 1))
        reason = (
            f"worker {job.worker_name} stopped heart-beating during attempt {attempts} "
            "(killed, crashed or lost its connection)"
        )
        _drop_started_entries(connection, job)
        canceled = bool(connection.exists(cancel_key(job.id)))
        if attempts <= settings.job_retries and not canceled:
            job.meta["retried_after"] = reason
            rq_queue(connection, job.origin).enqueue_job(job, at_front=True)
            return True
        error = {
            "type": "WorkerDied",
            "message": f"{reason}; retries used: {attempts - 1} of {settings.job_retries}",
        }
        if canceled:
            error = {"type": "Canceled", "message": "canceled by the client (its worker stopped)"}
        _fail(connection, job, error, settings)
        emit(connection, job.id, "completed", settings=settings)  # its webhook, if any
        return True
    finally:
        connection.delete(lock)


def restart_grace_s(settings: Settings) -> float:
    """How long after a Redis (re)start missing heartbeats prove nothing: a heartbeat's TTL
    plus the longest a live worker waits between reconnection attempts."""
    return DEAD_AFTER_BEATS * settings.heartbeat_interval_s + MAX_WAIT_S


def _restarted_recently(connection: redis_lib.Redis, settings: Settings) -> bool:
    """Redis came up less than `restart_grace_s` ago.

    Heartbeat keys are restored from the AOF with their absolute expiry, so an outage longer
    than a heartbeat's TTL brings every worker's key back already expired, live workers' too;
    until each has had the time to beat again, a missing key is no sign of a dead worker.
    """
    try:
        uptime = float(connection.info("server")["uptime_in_seconds"])
    except (redis_lib.ResponseError, KeyError, TypeError, ValueError):
        return False  # INFO unavailable (some hosted Redis): reap as before
    return uptime < restart_grace_s(settings)


def reap_dead_jobs(connection: redis_lib.Redis, *, settings: Settings) -> list[str]:
    """Re-queue or fail every running job whose worker stopped heart-beating; returns the
    ids handled. Nothing is reaped right after a Redis restart (`_restarted_recently`)."""
    if _restarted_recently(connection, settings):
        return []
    handled = []
    for name in members(connection, QUEUES_KEY):
        registry = StartedJobRegistry(name, connection=connection, serializer=JSONSerializer)
        for job_id in registry.get_job_ids(cleanup=False):
            job = fetch_job(connection, job_id)
            if job is None or job.get_status(refresh=False) != RQStatus.STARTED:
                continue
            if _worker_is_dead(connection, job) and _reap(connection, job.id, settings=settings):
                handled.append(job.id)
    return handled


def prune_dead_workers(connection: redis_lib.Redis) -> list[str]:
    """Remove names whose heartbeat key expired from the set of workers; returns them."""
    names = sorted(members(connection, WORKERS_KEY))
    if not names:
        return []
    values = connection.mget([worker_key(n) for n in names])
    dead = [name for name, raw in zip(names, values, strict=True) if raw is None]
    if dead:
        connection.srem(WORKERS_KEY, *dead)
    return dead


class ReaperLoop:
    """Reaps every `settings.heartbeat_interval_s` on a daemon thread: the gateway runs one,
    so jobs of dead workers leave "running" even when no worker is alive to reap them."""

    def __init__(self, connection: redis_lib.Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[str]:
        """Prune dead workers' names and reap their jobs now; returns the job ids handled."""
        prune_dead_workers(self.connection)
        return reap_dead_jobs(self.connection, settings=self.settings)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            try:
                handled = self.run_once()
                if handled:
                    log.warning("jobs of dead workers re-queued or failed: %s", handled)
            except (redis_lib.RedisError, OSError) as exc:  # Redis away: try again next time
                log.info("reaper: Redis unavailable (%s); retrying", exc)

    def start(self) -> None:
        """Start the loop on a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="rpg-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop (waits for a pass in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
