"""Changing jobs from the gateway: `enqueue` and `cancel`."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING

import redis as redis_lib
from rq.exceptions import InvalidJobOperation

from worker.errors import JobNotFound, QueueFull
from worker.job_events import emit
from worker.queue.collection import index_job
from worker.queue.keys import (
    JOB_FUNCTION,
    QUEUES_KEY,
    cancel_key,
    iso,
    queue_name,
    rq_queue,
    utc_now,
)
from worker.queue.stats import record_finished
from worker.queue.views import JobStatus, JobView, fetch_job, get_job, public_status, queue_depth

if TYPE_CHECKING:
    from worker.requests import JobRequest
    from worker.settings import Settings
    from worker.storage.base import Storage

__all__ = ["cancel", "enqueue"]


def enqueue(connection: redis_lib.Redis, request: JobRequest, *, settings: Settings) -> str:
    """Queue a generation job on its generator's queue and return its id (uuid4 hex).

    The job has a finite timeout and result TTL from `settings`; `QueueFull` when the rpg
    queues already hold `settings.max_queue_depth` waiting jobs.
    """
    depth = queue_depth(connection)
    if depth >= settings.max_queue_depth:
        raise QueueFull(depth, settings.max_queue_depth)
    queue = rq_queue(connection, queue_name(request.generator))
    job_id = uuid.uuid4().hex
    connection.sadd(QUEUES_KEY, queue.name)
    queue.enqueue_call(
        JOB_FUNCTION,
        kwargs={"request": request.model_dump(mode="json")},
        timeout=settings.job_timeout_s,
        result_ttl=settings.result_ttl_s,
        failure_ttl=settings.result_ttl_s,
        job_id=job_id,
        description=f"generate {request.num_samples} x {request.generator}",
        meta={
            "progress": 0.0,
            "attempts": 0,
            "owner": request.owner,
            "architecture": request.generator,
        },
    )
    with connection.pipeline(transaction=False) as pipe:
        index_job(pipe, request.owner, job_id, settings=settings)
        pipe.execute()
    return job_id


def cancel(
    connection: redis_lib.Redis, job_id: str, *, settings: Settings, storage: Storage | None = None
) -> JobView:
    """Cancel a queued job now, or flag a running one (it stops within a denoiser step and
    becomes "canceled"); finished jobs are left as they are. `JobNotFound` for unknown ids."""
    job = fetch_job(connection, job_id)
    if job is None:
        raise JobNotFound(job_id)
    status = public_status(job)
    if status in (JobStatus.QUEUED, JobStatus.RUNNING):
        # The flag first: a worker that dequeues the job right now still sees it.
        connection.set(cancel_key(job_id), "1", ex=settings.job_timeout_s + settings.result_ttl_s)
    if status == JobStatus.QUEUED:
        now = utc_now()
        job.meta["error"] = {
            "type": "Canceled",
            "message": "canceled by the client before it started",
        }
        job.meta["finished_at"] = iso(now)
        job.save_meta()
        canceled = False
        with contextlib.suppress(InvalidJobOperation):  # canceled concurrently
            job.cancel()
            canceled = True
        connection.expire(job.key, settings.result_ttl_s)
        if canceled:
            emit(connection, job_id, "completed", settings=settings, storage=storage)
            record_finished(
                connection,
                status="canceled",
                created_at=job.created_at,
                started_at=None,
                finished_at=now,
            )
    view = get_job(connection, job_id, settings=settings, storage=storage)
    if view is None:
        raise JobNotFound(job_id)
    return view
