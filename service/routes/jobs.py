"""``GET /jobs/{job_id}`` and ``POST /jobs/{job_id}/cancel``.

With API keys on, a job belongs to the key that created it; any other key gets the same 404
as for an id that never existed, so ids leak nothing.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Response

from service.deps import GatewayDep, OwnerDep
from service.problems import ProblemError
from service.schemas import JobPublic
from service.state import Gateway
from worker.errors import JobNotFound
from worker.queue import cancel, get_job

__all__ = ["find_job", "job_public", "router"]

router = APIRouter(prefix="/jobs", tags=["jobs"])

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
FINISHED = frozenset({"succeeded", "failed", "canceled"})


def _not_found(job_id: str) -> ProblemError:
    return ProblemError(
        404,
        "job-not-found",
        "Job not found",
        f"no job {job_id!r} for this client: check the id (from the Location header of "
        "POST /generate); finished jobs expire after a while",
    )


def find_job(gateway: Gateway, job_id: str, owner: str | None) -> dict[str, Any]:
    """The job as a dict (`JobView.to_dict`) if it exists and ``owner`` may see it; else 404."""
    if not _JOB_ID.fullmatch(job_id):
        raise _not_found(job_id)
    view = get_job(gateway.redis, job_id, settings=gateway.settings, storage=gateway.storage)
    if view is None:
        raise _not_found(job_id)
    job = view.to_dict()
    if gateway.keyring.enabled and job.get("owner") != owner:
        raise _not_found(job_id)
    return job


def job_public(job: dict[str, Any]) -> JobPublic:
    """The client-facing job document."""
    return JobPublic.model_validate(job)


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "API key missing or invalid"},
    404: {"description": "no such job for this key"},
}


@router.get("/{job_id}", response_model=JobPublic, responses=_ERRORS)
def read_job(job_id: str, gateway: GatewayDep, owner: OwnerDep) -> JobPublic:
    """The job's status, progress and, once it succeeded, its download URLs.

    URLs of the local and S3 backends are signed and expire (RPG_URL_TTL_S); every poll
    returns fresh ones.
    """
    return job_public(find_job(gateway, job_id, owner))


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={
        **_ERRORS,
        200: {"description": "the job is canceled"},
        202: {"description": "cancel requested; the running job stops within a denoiser step"},
        409: {"description": "the job already finished"},
    },
)
def cancel_job(job_id: str, gateway: GatewayDep, owner: OwnerDep, response: Response) -> JobPublic:
    """Cancel a queued job (at once: 200) or a running one (it stops within a step: 202)."""
    job = find_job(gateway, job_id, owner)
    if job["status"] not in FINISHED:
        try:
            view = cancel(gateway.redis, job_id, settings=gateway.settings, storage=gateway.storage)
        except JobNotFound:
            raise _not_found(job_id) from None
        job = view.to_dict()
        if job["status"] == "canceled":
            return job_public(job)
        if job["status"] not in FINISHED:
            response.status_code = 202
            return job_public(job)
        # else: it succeeded or failed on its own between the two reads
    raise ProblemError(
        409,
        "job-finished",
        "Job already finished",
        f"job {job_id!r} is already {job['status']}; only queued or running jobs can be canceled",
        extra={"job": job_public(job).model_dump(mode="json")},
    )
