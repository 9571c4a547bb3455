"""``GET /jobs`` (the caller's jobs, newest first, in pages) and ``DELETE /jobs/{job_id}``.

Listing reads only. Deleting removes a finished job's files from storage, then the job:
afterwards it is a 404 and its download URLs stop working.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from service.deps import GatewayDep, OwnerDep
from service.problems import ProblemError
from service.routes.jobs import find_job, job_public
from service.schemas import JobList, JobStatusName
from worker.errors import JobNotFound
from worker.queue.collection import InvalidCursor, JobStillRunning, delete_job, list_jobs
from worker.queue.views import JobStatus
from worker.storage.base import StorageError

__all__ = ["router"]

router = APIRouter(prefix="/jobs", tags=["jobs"])

MAX_PAGE = 100


@router.get(
    "",
    response_model=JobList,
    responses={
        401: {"description": "API key missing or invalid"},
        422: {"description": "bad query"},
    },
)
def read_jobs(
    gateway: GatewayDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="jobs per page")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=400, description="next_cursor of the previous page")
    ] = None,
    status: Annotated[JobStatusName | None, Query(description="only jobs in this state")] = None,
) -> JobList:
    """The caller's jobs (with API keys: the key's own), newest first.

    Finished jobs stay listed until they expire (RPG_RESULT_TTL_S) or are deleted.
    """
    try:
        page = list_jobs(
            gateway.redis,
            owner,
            settings=gateway.settings,
            storage=gateway.storage,
            limit=limit,
            cursor=cursor,
            status=JobStatus(status) if status is not None else None,
        )
    except InvalidCursor as exc:
        raise ProblemError(
            422,
            "invalid-request",
            "Invalid cursor",
            str(exc),
            errors=[{"field": "cursor", "pointer": "/cursor", "message": str(exc)}],
        ) from None
    return JobList(
        jobs=[job_public(view.to_dict()) for view in page.jobs], next_cursor=page.next_cursor
    )


_DELETE_RESPONSES: dict[int | str, dict[str, Any]] = {
    204: {"description": "deleted: the job is gone and its URLs stop working"},
    401: {"description": "API key missing or invalid"},
    404: {"description": "no such job for this key"},
    409: {"description": "the job is still queued or running; cancel it first"},
    503: {"description": "storage could not delete the files; retry"},
}


@router.delete("/{job_id}", status_code=204, response_class=Response, responses=_DELETE_RESPONSES)
async def remove_job(job_id: str, gateway: GatewayDep, owner: OwnerDep) -> Response:
    """Delete a finished job and its files."""
    job = await run_in_threadpool(find_job, gateway, job_id, owner)  # 404 for others' jobs
    try:
        await run_in_threadpool(
            delete_job, gateway.redis, job_id, job.get("owner"), storage=gateway.storage
        )
    except JobNotFound:
        raise ProblemError(404, "job-not-found", "Job not found", f"no job {job_id!r}") from None
    except JobStillRunning as exc:
        raise ProblemError(409, "job-not-finished", "Job not finished", str(exc)) from None
    except StorageError as exc:
        raise ProblemError(
            503,
            "storage-unavailable",
            "Storage unavailable",
            f"the job's files could not be deleted ({exc}); the job is kept, retry the DELETE",
            headers={"Retry-After": "5"},
        ) from None
    return Response(status_code=204)
