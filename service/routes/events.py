"""``GET /jobs/{job_id}/events``: a job's progress as Server-Sent Events.

Each event's ``data:`` is the job document (the same JSON as ``GET /jobs/{id}``); one is sent
at once, then one on every change of status, progress, queue position or cancel flag,
and the stream ends after the terminal state. Event ids order the job's states
(``<stage>.<progress in 1/10000>.<queue position>``), so a client that reconnects with
``Last-Event-ID`` gets nothing it has already seen. Reads only: the gateway polls the job
(every ``POLL_S``) and writes nothing to Redis. Comments (``: keep-alive``) keep idle
connections open through proxies.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.deps import GatewayDep, OwnerDep
from service.problems import ProblemError
from service.routes.jobs import FINISHED, find_job, job_public

__all__ = ["event_id", "router"]

router = APIRouter(prefix="/jobs", tags=["jobs"])

POLL_S = 0.25
KEEPALIVE_S = 15.0
MAX_STREAM_S = 3600.0  # then the client reconnects with Last-Event-ID
_STAGES = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2, "canceled": 2}


def event_id(job: dict[str, Any]) -> str:
    """An id that grows as the job moves on: stage, progress, then (while queued) the place
    in line counted down from a large number."""
    stage = _STAGES.get(job["status"], 0)
    progress = round(float(job.get("progress") or 0.0) * 10000)
    position = job.get("queue_position")
    line = 999999 - min(int(position), 999999) if position is not None else 999999
    return f"{stage}.{progress:05d}.{line:06d}.{int(bool(job.get('cancel_requested')))}"


def _order(value: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in value.split("."))
    except ValueError:
        return None


def _frame(job: dict[str, Any]) -> str:
    document = job_public(job).model_dump(mode="json")
    return f"id: {event_id(job)}\ndata: {json.dumps(document, separators=(',', ':'))}\n\n"


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        # OpenAPI 3.1: the schema of an event stream describes one event.
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "id": {"type": "string"},
                        "event": {"type": "string"},
                        "data": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": {"$ref": "#/components/schemas/JobPublic"},
                        },
                    },
                }
            }
        },
        "description": "events until the job ends; each data: line is the job JSON",
    },
    401: {"description": "API key missing or invalid"},
    404: {"description": "no such job for this key"},
}


@router.get("/{job_id}/events", response_class=StreamingResponse, responses=_RESPONSES)
async def job_events(
    job_id: str,
    request: Request,
    gateway: GatewayDep,
    owner: OwnerDep,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", description="resume after this event (sent by browsers)"),
    ] = None,
) -> StreamingResponse:
    """Stream the job's document on every change until it ends (Server-Sent Events)."""
    job = await run_in_threadpool(find_job, gateway, job_id, owner)  # 404 before streaming
    seen = _order(last_event_id) if last_event_id else None

    async def stream() -> AsyncIterator[str]:
        nonlocal job, seen
        started = time.monotonic()
        quiet_since = started
        while True:
            current = _order(event_id(job))
            if seen is None or (current is not None and current > seen):
                yield _frame(job)
                seen, quiet_since = current, time.monotonic()
            if job["status"] in FINISHED:
                return
            now = time.monotonic()
            if now - started > MAX_STREAM_S:
                return
            if now - quiet_since > KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet_since = now
            await asyncio.sleep(POLL_S)
            if await request.is_disconnected():
                return
            try:
                job = await run_in_threadpool(find_job, gateway, job_id, owner)
            except ProblemError:
                return  # the job was deleted or expired meanwhile

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
