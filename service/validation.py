"""From a parsed `GenerateRequest` to the queued `JobRequest`, or a 422 problem.

The schema (`service.schemas`) checks types and fixed ranges; what depends on the generator
or the deployment (the architecture is served, the task embedding's presence and dimension,
class names, limits, DDPM's full schedule) is `models.request_check.check_request`, the same
check the worker and `rpg sample` run. A random seed is drawn here, so the queued request
replays exactly.
"""

from __future__ import annotations

import secrets
from typing import get_args

from models.request_check import FieldError as CheckError
from models.request_check import check_request
from service.catalog import Catalog
from service.problems import FieldError, ProblemError, summarize
from service.schemas import GenerateRequest
from service.settings import GatewaySettings
from worker.requests import JobRequest, WebhookEvent, request_limits
from worker.webhooks import WebhookUrlError, check_url

__all__ = ["invalid_request", "to_job_request"]


def _error(field: str, message: str) -> FieldError:
    if field == "(body)":
        return {"field": field, "pointer": "/", "message": message}
    pointer = "/" + field.replace("[", "/").replace("]", "").replace(".", "/")
    return {"field": field, "pointer": pointer, "message": message}


def invalid_request(errors: list[FieldError]) -> ProblemError:
    """The 422 problem for a request body with these field errors."""
    return ProblemError(
        422,
        "invalid-request",
        "Invalid request body",
        f"fix the request body and retry: {summarize(errors)}",
        errors=errors,
    )


def _public(errors: list[CheckError]) -> list[FieldError]:
    return [_error(e.field, e.message) for e in errors]


def to_job_request(
    body: GenerateRequest,
    *,
    catalog: Catalog,
    settings: GatewaySettings,
    owner: str | None,
) -> JobRequest:
    """Validate ``body`` for this deployment and return the request to enqueue.

    Raises `ProblemError` (422) listing every problem found, each with its field path.
    """
    info = catalog.get(body.architecture)
    if info is None:
        served = catalog.names()
        hint = (
            f"choose one of {served} (GET /architectures)"
            if served
            else "this gateway serves no generators; start it with --generators"
        )
        raise invalid_request(
            [_error("architecture", f"unknown architecture {body.architecture!r}; {hint}")]
        )
    checked, errors = check_request(
        info.config,
        task_embedding=body.task_embedding,
        positive_classes=body.task.positive_classes if body.task is not None else None,
        num_samples=body.num_samples,
        sampler=body.sampler,
        steps=body.steps,
        eta=body.eta,
        limits=request_limits(settings),
    )
    problems = _public(errors) + _webhook_errors(body, settings)
    if checked is None or problems:
        raise invalid_request(problems)
    return JobRequest(
        architecture=info.name,  # the wire name of JobRequest.generator
        task_embedding=checked.task_embedding,
        num_samples=checked.num_samples,
        seed=body.seed if body.seed is not None else secrets.randbits(63),
        sampler=checked.sampler,
        steps=checked.steps,
        eta=checked.eta,
        dtype=body.dtype,
        owner=owner,
        webhook=body.webhook,
        webhook_events_filter=_events(body) if body.webhook is not None else None,
    )


def _events(body: GenerateRequest) -> list[WebhookEvent]:
    chosen = set(body.webhook_events_filter or ["completed"])
    return [event for event in get_args(WebhookEvent) if event in chosen]  # in order, once


def _webhook_errors(body: GenerateRequest, settings: GatewaySettings) -> list[FieldError]:
    """The webhook URL's problems (resolved and checked now, and again at each delivery)."""
    if body.webhook is None:
        if body.webhook_events_filter is not None:
            return [_error("webhook_events_filter", "set 'webhook' too, or leave this out")]
        return []
    try:
        check_url(body.webhook, allow_private=settings.webhook_allow_private)
    except WebhookUrlError as exc:
        return [_error("webhook", str(exc))]
    return []
