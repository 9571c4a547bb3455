"""``POST /generate``: validate, enqueue, answer ``202`` + ``Location: /jobs/{id}`` + the job.

With an ``Idempotency-Key`` header, a retry with the same body returns the job the first
request created with ``200`` (and ``Idempotent-Replayed: true``) instead of ``202``; the same
key with another body is a 422. Nothing is enqueued for a request that fails validation.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from starlette.concurrency import run_in_threadpool

from service.deps import GatewayDep, GenerateBodyDep, OwnerDep, RateLimitDep
from service.idempotency import (
    IdempotencyInProgress,
    IdempotencyMismatch,
    InvalidIdempotencyKey,
    fingerprint,
)
from service.problems import ProblemError
from service.routes.jobs import FINISHED, find_job, job_public
from service.schemas import GenerateRequest, JobPublic
from service.state import Gateway
from service.validation import to_job_request
from worker.errors import QueueFull
from worker.queue import JobRequest, JobView, submit

__all__ = ["router"]

router = APIRouter(tags=["generate"])

QUEUE_FULL_RETRY_S = 10
WAIT_POLL_S = 0.2  # how often Prefer: wait re-reads the job

# The body is read by `read_generate_body` (size cap, strict JSON), so describe it here.
_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/GenerateRequest"}}
        },
    }
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": JobPublic,
        "description": "replay of an earlier request with the same Idempotency-Key",
    },
    202: {
        "description": "queued; poll the Location header's URL",
        "headers": {"Location": {"schema": {"type": "string"}, "description": "/jobs/{id}"}},
    },
    400: {"description": "malformed JSON or Idempotency-Key"},
    401: {"description": "API key missing or invalid"},
    409: {"description": "the first request with this Idempotency-Key is still in flight"},
    413: {"description": "body larger than RPG_MAX_BODY_BYTES"},
    415: {"description": "body is not application/json"},
    422: {"description": "invalid fields (see errors[]) or Idempotency-Key reused"},
    429: {"description": "rate limit; see Retry-After"},
    503: {"description": "queue full or Redis unavailable; see Retry-After"},
}


def _queue_full(exc: QueueFull) -> ProblemError:
    return ProblemError(
        503,
        "queue-full",
        "Queue full",
        f"{exc}",
        headers={"Retry-After": str(QUEUE_FULL_RETRY_S)},
    )


def _enqueue(gateway: Gateway, request: JobRequest) -> JobView:
    try:
        return submit(gateway.redis, request, settings=gateway.settings)
    except QueueFull as exc:
        raise _queue_full(exc) from None


async def _submit_now(gateway: Gateway, body: GenerateRequest, owner: str | None) -> dict[str, Any]:
    """Validate and enqueue on the event loop (no Idempotency-Key): the common, hot path."""
    request = to_job_request(body, catalog=gateway.catalog, settings=gateway.settings, owner=owner)
    try:
        view = await gateway.submitter.submit(request, settings=gateway.settings)
    except QueueFull as exc:
        raise _queue_full(exc) from None
    return view.to_dict()  # the view of what was just written


def _idempotent_enqueue(
    gateway: Gateway, request: JobRequest, owner: str | None, key: str, digest: str
) -> tuple[str, bool]:
    """(job id, replayed): the job this key already names, or a new one recorded under it."""
    store = gateway.idempotency
    try:
        existing = store.begin(owner, key, digest)
        if existing is not None:
            return existing, True
    except InvalidIdempotencyKey as exc:
        raise ProblemError(400, "bad-idempotency-key", "Bad Idempotency-Key", str(exc)) from None
    except IdempotencyMismatch as exc:
        raise ProblemError(
            422, "idempotency-key-reused", "Idempotency-Key reused", str(exc)
        ) from None
    except IdempotencyInProgress as exc:
        raise ProblemError(
            409,
            "idempotency-in-progress",
            "Request in progress",
            str(exc),
            headers={"Retry-After": "1"},
        ) from None
    try:
        view = _enqueue(gateway, request)
    except BaseException:
        store.release(owner, key)  # let the client retry with the same key
        raise
    store.complete(owner, key, digest, view.id)
    return view.id, False


def _submit_idempotent(
    gateway: Gateway, body: GenerateRequest, owner: str | None, idempotency_key: str
) -> tuple[dict[str, Any], bool]:
    """(job dict, replayed) for a request with an Idempotency-Key: validate, then enqueue or
    find the job the key names (blocking Redis calls: run in the thread pool)."""
    request = to_job_request(body, catalog=gateway.catalog, settings=gateway.settings, owner=owner)
    digest = fingerprint(body.model_dump(mode="json"))
    job_id, replayed = _idempotent_enqueue(gateway, request, owner, idempotency_key, digest)
    return find_job(gateway, job_id, owner), replayed


def preferred_wait(prefer: str | None, limit: int) -> int | None:
    """Seconds asked for by ``Prefer: wait=N`` (RFC 7240), capped at ``limit``; None if none.

    ``respond-async`` in the same header wins (no wait). Malformed values are ignored, as
    RFC 7240 asks of preferences a server does not understand.
    """
    if not prefer:
        return None
    wait: int | None = None
    for item in prefer.split(","):
        token = item.split(";", 1)[0].strip().lower()
        name, _, value = token.partition("=")
        if name.strip() == "respond-async":
            return None
        if name.strip() == "wait" and value.strip().strip('"').isdigit():
            wait = int(value.strip().strip('"'))
    return None if wait is None or limit <= 0 else min(wait, limit)


async def _wait_until_finished(
    gateway: Gateway, job: dict[str, Any], owner: str | None, seconds: int
) -> dict[str, Any]:
    """The job once finished, or as it is after ``seconds`` (reads only, every WAIT_POLL_S)."""
    deadline = time.monotonic() + seconds
    while job["status"] not in FINISHED and time.monotonic() < deadline:
        await asyncio.sleep(min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))
        job = await run_in_threadpool(find_job, gateway, job["id"], owner)
    return job


@router.post(
    "/generate",
    status_code=202,
    response_model=JobPublic,
    responses=_RESPONSES,
    openapi_extra=_BODY_DOC,
)
async def generate(
    response: Response,
    gateway: GatewayDep,
    owner: OwnerDep,
    _rate: RateLimitDep,
    body: GenerateBodyDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="any unique string (e.g. a UUID); retries with it return the same job",
        ),
    ] = None,
    prefer: Annotated[
        str | None,
        Header(
            alias="Prefer",
            description="'wait=N': answer with the finished job (200) if it finishes within N "
            "seconds (capped by RPG_PREFER_WAIT_MAX_S), else 202 as usual",
        ),
    ] = None,
) -> JobPublic:
    """Queue a request to generate ``num_samples`` weight sets of ``architecture``.

    The job document echoes the request with every default filled in (seed included), so
    sending that request again reproduces the same weights.
    """
    if idempotency_key is None:
        job, replayed = await _submit_now(gateway, body, owner), False
    else:
        job, replayed = await run_in_threadpool(
            _submit_idempotent, gateway, body, owner, idempotency_key
        )
    response.headers["Location"] = f"/jobs/{job['id']}"
    if replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    wait = preferred_wait(prefer, gateway.settings.prefer_wait_max_s)
    if wait is not None:
        job = await _wait_until_finished(gateway, job, owner, wait)
        if job["status"] in FINISHED:
            response.status_code = 200
            response.headers["Preference-Applied"] = f"wait={wait}"
    return job_public(job)
