"""Errors of the job queue and the worker, in one hierarchy.

    WorkerError                         base of everything raised by `worker.queue` / the worker
    ├── QueueFull                       too many queued jobs; retry later (gateway: 503 + Retry-After)
    ├── JobNotFound(KeyError)           unknown or expired job id (gateway: 404)
    ├── InvalidRequest(ValueError)      a request does not fit the generator or the limits (4xx)
    ├── GeneratorConfigError(ValueError) `settings.generators` cannot be expanded (bad path, duplicate name)
    ├── EmbeddedRedisError              the embedded redis-server could not be started or reached
    └── JobStopped                      raised inside a running job to stop it; recorded as its error
        ├── JobCanceled                 a client asked to cancel it
        └── JobTimeout                  it ran longer than `settings.job_timeout_s`

Jobs record their failure as `{"type": ..., "message": ...}`; `error_type(exc)` gives the type
name the job JSON shows.
"""

from __future__ import annotations

__all__ = [
    "EmbeddedRedisError",
    "GeneratorConfigError",
    "InvalidRequest",
    "JobCanceled",
    "JobNotFound",
    "JobStopped",
    "JobTimeout",
    "QueueFull",
    "WorkerError",
    "error_type",
]


class WorkerError(Exception):
    """Base class of the queue's and the worker's errors."""


class QueueFull(WorkerError):
    """The queues hold `settings.max_queue_depth` jobs or more; submit again later."""

    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(
            f"{depth} jobs are waiting (limit {limit}); retry in a few seconds or add workers"
        )
        self.depth = depth
        self.limit = limit


class JobNotFound(WorkerError, KeyError):
    """No job with this id (never existed, or its result expired after `result_ttl_s`)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}: the id is unknown or its record has expired")
        self.job_id = job_id

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class InvalidRequest(WorkerError, ValueError):
    """A generation request does not fit its generator or the deployment's limits."""


class GeneratorConfigError(WorkerError, ValueError):
    """`settings.generators` names something that is not a bundle, or two bundles share a name."""


class EmbeddedRedisError(WorkerError):
    """The embedded redis-server (no `--redis-url`) could not be started or reached."""


class JobStopped(WorkerError):
    """Raised inside a running job (from the progress callback) to stop it between chunks."""


class JobCanceled(JobStopped):
    """The client canceled the job while it ran."""


class JobTimeout(JobStopped):
    """The job ran past its timeout (`settings.job_timeout_s`)."""


def error_type(exc: BaseException) -> str:
    """The `error.type` a job records for `exc` (stable names clients can branch on)."""
    from rq.timeouts import JobTimeoutException

    from worker.storage.base import StorageError

    if isinstance(exc, JobCanceled):
        return "Canceled"
    if isinstance(exc, (JobTimeout, JobTimeoutException)):
        return "JobTimeout"
    if isinstance(exc, InvalidRequest):
        return "InvalidRequest"
    if isinstance(exc, StorageError):
        return "StorageError"
    return "GenerationError"
