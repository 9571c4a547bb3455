"""Reading jobs and workers: what `GET /jobs/{id}`, `/readyz` and `/metrics` see.

Everything here only reads Redis. Reaping dead workers' jobs happens in the workers'
heartbeats and the gateway's reaper loop (`worker.queue.reaper`), never on a read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import redis as redis_lib
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from worker.queue.keys import (
    QUEUES_KEY,
    WORKERS_KEY,
    cancel_key,
    iso,
    members,
    queue_name,
    rq_queue,
    worker_key,
)
from worker.webhook_senders import live_senders, pending_count
from worker.webhooks import deliveries

if TYPE_CHECKING:
    from worker.settings import Settings
    from worker.storage.base import Storage

__all__ = [
    "JobStatus",
    "JobView",
    "WorkerInfo",
    "fetch_job",
    "get_job",
    "live_workers",
    "public_status",
    "queue_depth",
    "webhook_warning",
]


class JobStatus(str, Enum):
    """A job's state as clients see it."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


@dataclass(frozen=True)
class JobView:
    """A job as the gateway shows it (`to_dict` is the job JSON minus schema defaults)."""

    id: str
    status: JobStatus
    progress: float  # 0..1, never decreases (even across a retry); 1.0 once succeeded
    created_at: str  # ISO 8601 UTC with Z
    started_at: str | None  # when the latest attempt started
    finished_at: str | None
    request: dict[str, Any]  # the queued JobRequest, as JSON
    result: dict[str, Any] | None  # succeeded: files (with fresh URLs), generator_id, timings
    error: dict[str, str] | None  # failed / canceled: {"type", "message"}
    owner: str | None
    architecture: str  # the generator's name (request["architecture"])
    attempts: int = 0  # attempts started (more than one after a worker died)
    cancel_requested: bool = False
    queue_position: int | None = None  # 0-based, while queued
    webhook_deliveries: list[dict[str, Any]] = field(default_factory=list)  # attempts, oldest first
    webhook_warning: str | None = None  # why the webhook's events are not being delivered

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
    state: str = "idle"  # "idle" | "busy"
    current_job: str | None = None
    last_heartbeat: str = ""
    # Bundles the worker could not serve: [{"path", "reason"}] (worker.registry).
    skipped_generators: list[dict[str, str]] = field(default_factory=list)


def fetch_job(connection: redis_lib.Redis, job_id: str) -> Job | None:
    """The RQ job, or None for an unknown, expired or malformed id."""
    if not job_id or len(job_id) > 100 or not all(c.isalnum() or c in "-_" for c in job_id):
        return None  # not an id we issue; RQ would raise on some of these
    try:
        return Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def public_status(job: Job) -> JobStatus:
    """RQ's status mapped onto the five a client sees."""
    status = job.get_status(refresh=False)
    if status == RQStatus.STARTED:
        return JobStatus.RUNNING
    if status == RQStatus.FINISHED:
        return JobStatus.SUCCEEDED
    if status in (RQStatus.CANCELED, RQStatus.STOPPED):
        return JobStatus.CANCELED
    if status == RQStatus.FAILED:
        error = job.meta.get("error") or {}
        return JobStatus.CANCELED if error.get("type") == "Canceled" else JobStatus.FAILED
    return JobStatus.QUEUED  # queued, deferred, scheduled, created


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


def _outcome(
    job: Job, status: JobStatus, settings: Settings, storage: Storage | None
) -> tuple[dict[str, Any] | None, dict[str, str] | None]:
    """(result, error) of a finished job."""
    if status == JobStatus.SUCCEEDED:
        manifest = job.return_value()
        if not isinstance(manifest, dict):
            return None, None
        if storage is None:
            from worker.storage import make_storage

            storage = make_storage(settings.storage_settings())
        return _signed_result(manifest, storage), None
    if status == JobStatus.FAILED:
        return None, job.meta.get("error") or _failure_from_rq(job)
    if status == JobStatus.CANCELED:
        return None, job.meta.get("error") or {
            "type": "Canceled",
            "message": "canceled by the client",
        }
    return None, None


def get_job(
    connection: redis_lib.Redis, job_id: str, *, settings: Settings, storage: Storage | None = None
) -> JobView | None:
    """The job's current view, or None for an unknown / expired id. Download URLs are signed
    afresh on every call (pass a long-lived `storage` to avoid rebuilding the backend)."""
    job = fetch_job(connection, job_id)
    if job is None:
        return None
    meta = job.meta
    request = dict((job.kwargs or {}).get("request") or {})
    status = public_status(job)
    result, error = _outcome(job, status, settings, storage)
    running = status in (JobStatus.QUEUED, JobStatus.RUNNING)
    finished_at = None if running else (meta.get("finished_at") or iso(job.ended_at))
    progress = 1.0 if status == JobStatus.SUCCEEDED else float(meta.get("progress", 0.0))
    position = None
    if status == JobStatus.QUEUED:
        position = rq_queue(connection, job.origin).get_job_position(job.id)
    return JobView(
        id=job.id,
        status=status,
        progress=min(max(progress, 0.0), 1.0),
        created_at=iso(job.created_at) or "",
        started_at=iso(job.started_at) if status != JobStatus.QUEUED else None,
        finished_at=finished_at,
        request=request,
        result=result,
        error=error,
        owner=meta.get("owner", request.get("owner")),
        architecture=str(request.get("architecture") or meta.get("architecture") or ""),
        attempts=int(meta.get("attempts", 0)),
        cancel_requested=bool(connection.exists(cancel_key(job.id))),
        queue_position=position,
        webhook_deliveries=deliveries(connection, job.id) if request.get("webhook") else [],
        webhook_warning=(
            webhook_warning(connection, job.id, finished=not running)
            if request.get("webhook")
            else None
        ),
    )


def webhook_warning(connection: redis_lib.Redis, job_id: str, *, finished: bool) -> str | None:
    """Why a job's webhook events are not delivered, or None while nothing stands in the way.

    Only a missing sender is said here (a receiver's failures show in the deliveries): the
    job asked for a webhook, some of its events wait or are still to come, and no
    `rpg webhooks` process is alive to deliver them.
    """
    waiting = pending_count(connection, job_id)
    if (finished and not waiting) or live_senders(connection):
        return None
    if waiting:
        return (
            f"{waiting} webhook event(s) of this job wait in the queue: no webhook sender is "
            "running (start `rpg webhooks`); they are delivered once one runs"
        )
    return (
        "no webhook sender is running (start `rpg webhooks`): this job's webhook events will "
        "wait in the queue until one runs"
    )


def queue_depth(connection: redis_lib.Redis, generator: str | None = None) -> int:
    """Jobs waiting (not running) in one generator's queue, or in all rpg queues."""
    names = [queue_name(generator)] if generator is not None else members(connection, QUEUES_KEY)
    return sum(rq_queue(connection, name).count for name in names)


def live_workers(connection: redis_lib.Redis, *, settings: Settings) -> list[WorkerInfo]:
    """Workers with a fresh heartbeat (names of dead ones are pruned by the reaper)."""
    names = sorted(members(connection, WORKERS_KEY))
    if not names:
        return []
    values = connection.mget([worker_key(n) for n in names])
    found = []
    for raw in values:
        if raw is None:
            continue
        data = json.loads(raw)
        found.append(
            WorkerInfo(**{k: v for k, v in data.items() if k in WorkerInfo.__dataclass_fields__})
        )
    return found
