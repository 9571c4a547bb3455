"""Changing jobs from the gateway: `enqueue` and `cancel`."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING

import redis as redis_lib
from rq.exceptions import InvalidJobOperation

from worker.errors import JobNotFound, QueueFull
from worker.job_events import emit
from worker.queue.collection import index_job, owner_index_key
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
from worker.queue.views import JobStatus, JobView, fetch_job, get_job, public_status

if TYPE_CHECKING:
    from worker.requests import JobRequest
    from worker.settings import Settings
    from worker.storage.base import Storage

__all__ = ["cancel", "enqueue", "submit"]


# Total waiting jobs over every rpg queue, read inside the enqueue transaction.
_DEPTH_SCRIPT = """
local total = 0
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  total = total + redis.call('LLEN', 'rq:queue:' .. name)
end
return total
"""


def submit(connection: redis_lib.Redis, request: JobRequest, *, settings: Settings) -> JobView:
    """Queue a generation job and return its view, in one Redis round trip.

    The job (a finite timeout and result TTL from `settings`) is written and pushed in one
    transaction that also counts the waiting jobs; past `settings.max_queue_depth` it is
    taken back out and `QueueFull` raised, so the queue never holds more than the limit.
    """
    queue = rq_queue(connection, queue_name(request.generator))
    payload = request.model_dump(mode="json")
    job = queue.create_job(
        JOB_FUNCTION,
        kwargs={"request": payload},
        timeout=settings.job_timeout_s,
        result_ttl=settings.result_ttl_s,
        failure_ttl=settings.result_ttl_s,
        job_id=uuid.uuid4().hex,
        description=f"generate {request.num_samples} x {request.generator}",
        meta={
            "progress": 0.0,
            "attempts": 0,
            "owner": request.owner,
            "architecture": request.generator,
        },
    )
    with connection.pipeline() as pipe:
        queue.enqueue_job(job, pipeline=pipe)
        pushed_at = len(pipe.command_stack) - 1  # enqueue_job's last command is the push
        pipe.sadd(QUEUES_KEY, queue.name)
        index_job(pipe, request.owner, job.id, settings=settings)
        pipe.eval(_DEPTH_SCRIPT, 1, QUEUES_KEY)
        results = pipe.execute()
    depth = int(results[-1])
    if depth > settings.max_queue_depth:
        with connection.pipeline() as pipe:
            pipe.lrem(queue.key, 0, job.id)
            pipe.delete(job.key)
            pipe.zrem(owner_index_key(request.owner), job.id)
            pipe.execute()
        raise QueueFull(depth - 1, settings.max_queue_depth)
    return JobView(
        id=job.id,
        status=JobStatus.QUEUED,
        progress=0.0,
        created_at=iso(job.created_at) or "",
        started_at=None,
        finished_at=None,
        request=payload,
        result=None,
        error=None,
        owner=request.owner,
        architecture=request.generator,
        queue_position=int(results[pushed_at]) - 1,
    )


def enqueue(connection: redis_lib.Redis, request: JobRequest, *, settings: Settings) -> str:
    """`submit` a job and return its id (a uuid4 hex string)."""
    return submit(connection, request, settings=settings).id


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
