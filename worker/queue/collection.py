"""Jobs as a collection: each owner's index, listing (`GET /jobs`) and deleting.

Every job is added, at enqueue time, to its owner's index: a sorted set
`rpg:owner-jobs:<owner>` scored by creation time in milliseconds ("-" is the owner when API
keys are off). Listing reads the index and the jobs and writes nothing; entries of jobs
that expired are skipped when read and trimmed at the next enqueue of that owner.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import redis as redis_lib
import redis.asyncio.client

from worker.errors import JobNotFound
from worker.queue.keys import cancel_key, utc_now
from worker.queue.views import JobStatus, JobView, fetch_job, get_job, public_status
from worker.webhooks import deliveries_key

if TYPE_CHECKING:
    from worker.settings import Settings
    from worker.storage.base import Storage

__all__ = [
    "InvalidCursor",
    "JobPage",
    "JobStillRunning",
    "delete_job",
    "index_job",
    "list_jobs",
    "owner_index_key",
]

NO_OWNER = "-"
MAX_SCAN = 1000  # index entries one listing request reads at most (status filters skip some)
FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class InvalidCursor(ValueError):
    """A `cursor` that this API did not hand out."""


class JobStillRunning(Exception):
    """Only finished jobs can be deleted; cancel a queued or running one first."""

    def __init__(self, job_id: str, status: JobStatus) -> None:
        self.status = status
        super().__init__(
            f"job {job_id} is {status.value}; cancel it first (POST /jobs/{job_id}/cancel), "
            "then delete it once it is canceled"
        )


def owner_index_key(owner: str | None) -> str:
    """The sorted set of one owner's job ids."""
    return f"rpg:owner-jobs:{owner or NO_OWNER}"


def index_job(
    pipe: redis_lib.client.Pipeline | redis_lib.asyncio.client.Pipeline,
    owner: str | None,
    job_id: str,
    *,
    settings: Settings,
) -> None:
    """Add a new job to its owner's index (in the enqueue's pipeline) and trim expired ones."""
    now_ms = int(utc_now().timestamp() * 1000)
    key = owner_index_key(owner)
    keep_ms = (settings.result_ttl_s + settings.job_timeout_s) * 1000
    pipe.zadd(key, {job_id: now_ms})
    pipe.zremrangebyscore(key, "-inf", now_ms - keep_ms - 24 * 3600 * 1000)
    pipe.expire(key, settings.result_ttl_s + settings.job_timeout_s + 24 * 3600)


@dataclass(frozen=True)
class JobPage:
    """One page of a listing; `next_cursor` is None on the last page."""

    jobs: list[JobView]
    next_cursor: str | None


def _encode(score: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{int(score)}:{job_id}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[int, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, job_id = text.split(":", 1)
        return int(score), job_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(
            f"cursor {cursor!r} is not one this API handed out; pass the next_cursor of the "
            "previous page, or omit it for the first page"
        ) from None


def list_jobs(
    connection: redis_lib.Redis,
    owner: str | None,
    *,
    settings: Settings,
    storage: Storage | None = None,
    limit: int = 20,
    cursor: str | None = None,
    status: JobStatus | None = None,
) -> JobPage:
    """The owner's jobs, newest first, after ``cursor``, optionally only those in ``status``.

    Reads only. Ties in creation time are ordered by id, so a cursor is exact.
    """
    key = owner_index_key(owner)
    top: str = "+inf"
    after: tuple[int, str] | None = None
    if cursor is not None:
        after = _decode(cursor)
        top = str(after[0])
    found: list[JobView] = []
    scanned = 0
    last: tuple[int, str] | None = None
    batch = max(limit * 2, 20)
    offset = 0
    while scanned < MAX_SCAN:
        entries = cast(
            "list[tuple[bytes, float]]",
            connection.zrevrangebyscore(key, top, "-inf", start=offset, num=batch, withscores=True),
        )
        if not entries:
            return JobPage(found, None)
        offset += len(entries)
        for raw, score in entries:
            job_id = raw.decode()
            position = (int(score), job_id)
            # Same millisecond as the cursor: zrevrangebyscore orders ties by id, descending.
            if after is not None and (
                position[0] > after[0] or (position[0] == after[0] and job_id >= after[1])
            ):
                continue
            scanned += 1
            last = position
            view = get_job(connection, job_id, settings=settings, storage=storage)
            if view is None or (status is not None and view.status != status):
                continue
            found.append(view)
            if len(found) == limit:
                return JobPage(found, _encode(*position))
    return JobPage(found, _encode(*last) if last is not None else None)


def delete_job(
    connection: redis_lib.Redis, job_id: str, owner: str | None, *, storage: Storage
) -> None:
    """Remove a finished job: its files from storage, then the job and everything about it.

    `JobNotFound` for an unknown id, `JobStillRunning` for a queued or running job. Files go
    first, so a failure to delete them (`StorageError`) leaves the job there to retry.
    """
    job = fetch_job(connection, job_id)
    if job is None:
        raise JobNotFound(job_id)
    status = public_status(job)
    if status not in FINISHED:
        raise JobStillRunning(job_id, status)
    manifest = job.return_value() if status == JobStatus.SUCCEEDED else None
    if isinstance(manifest, dict) and manifest.get("files"):
        storage.delete_many(
            [entry["key"] for entry in manifest["files"]], version=manifest.get("storage_version")
        )
    job.delete(remove_from_queue=True, delete_dependents=False)
    with connection.pipeline() as pipe:
        pipe.zrem(owner_index_key(owner), job_id)
        pipe.delete(cancel_key(job_id), deliveries_key(job_id))
        pipe.execute()
