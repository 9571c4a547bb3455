"""A job's webhook events: which ones its request asked for, and queueing their deliveries.

The events are `start` (the worker picked the job up), `progress` (at most every
`settings.webhook_progress_interval_s`) and `completed` (any terminal state: succeeded,
failed, canceled). Each queues a delivery of the job document as it is at that moment
(`worker.webhooks`); nothing here ever raises into the job.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from worker.queue.views import get_job
from worker.webhooks import enqueue_delivery

if TYPE_CHECKING:
    import redis as redis_lib

    from worker.settings import Settings
    from worker.storage.base import Storage

__all__ = ["FINISHED", "PUBLIC_FIELDS", "JobEvents", "emit", "public_document", "wants_webhook"]

FINISHED = frozenset({"succeeded", "failed", "canceled"})

log = logging.getLogger("rpg.webhooks")

# The job document's fields as GET /jobs/{id} shows them (tests check this against the
# gateway's JobPublic schema).
PUBLIC_FIELDS = (
    "id",
    "status",
    "progress",
    "created_at",
    "started_at",
    "finished_at",
    "request",
    "result",
    "error",
    "cancel_requested",
    "queue_position",
    "attempts",
    "webhook_deliveries",
    "webhook_warning",
)


def public_document(job: dict[str, Any]) -> dict[str, Any]:
    """The client-facing fields of a job dict (`JobView.to_dict`)."""
    return {name: job.get(name) for name in PUBLIC_FIELDS if name in job}


def emit(
    connection: redis_lib.Redis,
    job_id: str,
    event: str,
    *,
    settings: Settings,
    storage: Storage | None = None,
) -> bool:
    """Queue ``event`` for the job's webhook if its request asked for it; True if queued."""
    try:
        view = get_job(connection, job_id, settings=settings, storage=storage)
        if view is None:
            return False
        if not wants_webhook(view.request, event):
            return False
        if event == "completed" and view.status.value not in FINISHED:
            return False
        return (
            enqueue_delivery(
                connection,
                job_id=job_id,
                event=event,
                url=str(view.request["webhook"]),
                document=public_document(view.to_dict()),
                retries=settings.webhook_retries,
                backoff_s=settings.webhook_backoff_s,
                timeout_s=settings.webhook_timeout_s,
                record_ttl_s=settings.result_ttl_s,
            )
            is not None
        )
    except Exception as exc:  # a webhook must never fail the job that emits it
        log.warning("webhook %s of job %s not queued: %s", event, job_id, exc)
        return False


def wants_webhook(request: dict[str, Any], event: str) -> bool:
    """Whether the queued request asked for ``event`` at its webhook."""
    return bool(request.get("webhook")) and event in (
        request.get("webhook_events_filter") or ["completed"]
    )


class JobEvents:
    """One running job's `start` and `progress` events (the latter at most every
    `settings.webhook_progress_interval_s`); no-ops when the request has no webhook."""

    def __init__(
        self,
        connection: redis_lib.Redis,
        job_id: str,
        request: dict[str, Any],
        *,
        settings: Settings,
        storage: Storage | None = None,
    ) -> None:
        self.connection = connection
        self.job_id = job_id
        self.settings = settings
        self.storage = storage
        self.wants_start = wants_webhook(request, "start")
        self.wants_progress = wants_webhook(request, "progress")
        self._last = float("-inf")

    def start(self) -> None:
        """The worker picked the job up."""
        if self.wants_start:
            emit(
                self.connection, self.job_id, "start", settings=self.settings, storage=self.storage
            )

    def progress(self) -> None:
        """Call after each progress write; queues an event when the interval has passed."""
        if not self.wants_progress:
            return
        now = time.monotonic()
        if now - self._last < self.settings.webhook_progress_interval_s:
            return
        self._last = now
        emit(self.connection, self.job_id, "progress", settings=self.settings, storage=self.storage)
