"""The job queue: the contract between the gateway (`service/`) and the workers.

Jobs live in Redis through RQ with the JSON serializer (never pickle); the job function is
`worker.jobs.run_generation`, referenced by path. By concern:

- `keys`: the connection (`connect`), key and queue names, time formatting;
- `views`: reads only: `get_job`, `queue_depth`, `live_workers`, `JobView`, `JobStatus`;
- `operations`: `submit` / `enqueue`, `cancel`;
- `reaper`: `reap_dead_jobs` (jobs of dead workers), `prune_dead_workers`;
- `stats`: finished-job counts and durations, recorded where a job ends.

Jobs must run under `rpg worker` (`worker.runtime`), not a plain `rq worker`. Exceptions
live in `worker.errors`.
"""

from worker.queue.keys import JOB_FUNCTION, connect, queue_name
from worker.queue.operations import cancel, enqueue, submit
from worker.queue.reaper import prune_dead_workers, reap_dead_jobs
from worker.queue.stats import JobStats, read_job_stats
from worker.queue.views import JobStatus, JobView, WorkerInfo, get_job, live_workers, queue_depth
from worker.requests import JobRequest, check_job_request

__all__ = [
    "JOB_FUNCTION",
    "JobRequest",
    "JobStats",
    "JobStatus",
    "JobView",
    "WorkerInfo",
    "cancel",
    "check_job_request",
    "connect",
    "enqueue",
    "get_job",
    "live_workers",
    "prune_dead_workers",
    "queue_depth",
    "queue_name",
    "read_job_stats",
    "reap_dead_jobs",
    "submit",
]
