"""Changing jobs from the gateway: `enqueue` and `cancel`."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import redis as redis_lib
import redis.asyncio
from rq import Queue
from rq.exceptions import InvalidJobOperation
from rq.job import Job

from worker.errors import JobNotFound, QueueFull
from worker.queue.collection import index_job, owner_index_key
from worker.queue.events import emit
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

__all__ = ["AsyncSubmitter", "cancel", "enqueue", "submit"]


# Total waiting jobs over every rpg queue, read inside the enqueue transaction.
_DEPTH_SCRIPT = """
local total = 0
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  total = total + redis.call('LLEN', 'rq:queue:' .. name)
end
return total
"""


def _new_job(queue: Queue, request: JobRequest, settings: Settings) -> tuple[Job, dict[str, Any]]:
    """An RQ job for `request` (nothing written yet) and its JSON payload."""
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
    return job, payload


def _queued_view(job: Job, request: JobRequest, payload: dict[str, Any], length: int) -> JobView:
    """The view of a job just pushed as the `length`-th entry of its queue."""
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
        queue_position=length - 1,
    )


def _take_back(pipe: Any, queue: Queue, job: Job, owner: str | None) -> None:
    """Commands that undo an enqueue past the depth limit."""
    pipe.lrem(queue.key, 0, job.id)
    pipe.delete(job.key)
    pipe.zrem(owner_index_key(owner), job.id)


def submit(connection: redis_lib.Redis, request: JobRequest, *, settings: Settings) -> JobView:
    """Queue a generation job and return its view, in one Redis round trip.

    The job (a finite timeout and result TTL from `settings`) is written and pushed in one
    transaction that also counts the waiting jobs; past `settings.max_queue_depth` it is
    taken back out and `QueueFull` raised, so the queue never holds more than the limit.
    """
    queue = rq_queue(connection, queue_name(request.generator))
    job, payload = _new_job(queue, request, settings)
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
            _take_back(pipe, queue, job, request.owner)
            pipe.execute()
        raise QueueFull(depth - 1, settings.max_queue_depth)
    return _queued_view(job, request, payload, int(results[pushed_at]))


class AsyncSubmitter:
    """`submit` on an asyncio Redis client: the gateway's hot path, run on its event loop.

    A worker thread per request costs more than the request's work here: each blocking call
    gives up the GIL and waits up to a switch interval to get it back while the loop runs
    (`service.bench.stack` measured it). RQ builds the job (its hash is RQ's own `to_dict`,
    so workers read it as any RQ job); the commands are the ones `Queue.enqueue_job` sends
    (hash, push, the set of queues), in the same transaction as `submit`'s.
    """

    def __init__(self, connection: redis_lib.Redis, aconnection: redis_lib.asyncio.Redis) -> None:
        self.connection = connection  # only for RQ's queue objects; no I/O on the hot path
        self.aconnection = aconnection
        self._queues: dict[str, Queue] = {}

    def _queue(self, generator: str) -> Queue:
        name = queue_name(generator)
        if name not in self._queues:
            queue = rq_queue(self.connection, name)
            queue.get_redis_server_version()  # RQ stamps it on jobs; read once, not per job
            self._queues[name] = queue
        return self._queues[name]

    async def submit(self, request: JobRequest, *, settings: Settings) -> JobView:
        """Queue a generation job and return its view (see `submit`)."""
        queue = self._queue(request.generator)
        job, payload = _new_job(queue, request, settings)
        queue._prepare_for_queue(job)  # origin, enqueued_at, status: RQ 3's own step
        async with self.aconnection.pipeline(transaction=True) as pipe:
            pipe.hset(job.key, mapping=job.to_dict())
            pipe.rpush(queue.key, job.id)
            pipe.sadd(queue.redis_queues_keys, queue.key)
            pipe.sadd(QUEUES_KEY, queue.name)
            index_job(pipe, request.owner, job.id, settings=settings)
            pipe.eval(_DEPTH_SCRIPT, 1, QUEUES_KEY)
            results = await pipe.execute()
        depth = int(results[-1])
        if depth > settings.max_queue_depth:
            async with self.aconnection.pipeline(transaction=True) as pipe:
                _take_back(pipe, queue, job, request.owner)
                await pipe.execute()
            raise QueueFull(depth - 1, settings.max_queue_depth)
        return _queued_view(job, request, payload, int(results[1]))


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
