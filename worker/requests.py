"""`JobRequest`: what a queued job generates, and its check against the generator it names.

The rules live in `models.request_check` (one check for the gateway, the worker and the
CLI); this module only adds the JSON-safe model that is stored as the job's argument.
"""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.request_check import RequestLimits, SamplerName
from models.request_check import check_request as check_against_config
from worker.errors import InvalidRequest
from worker.registry import generator_name

if TYPE_CHECKING:
    from worker.settings import Settings

__all__ = ["JobRequest", "OutputDtype", "WebhookEvent", "check_job_request", "request_limits"]

OutputDtype = Literal["float32", "float16", "bfloat16"]
WebhookEvent = Literal["start", "progress", "completed"]


class JobRequest(BaseModel):
    """A queued generation request with every default resolved (replaying it reproduces the
    weights). On the wire and in Redis the generator's name is the field ``architecture``."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    generator: str = Field(alias="architecture", min_length=1, max_length=200)
    task_embedding: list[float] | None = None
    num_samples: int = Field(default=1, ge=1)
    seed: int = Field(default_factory=lambda: secrets.randbits(63), ge=0, lt=2**63)
    sampler: SamplerName = "ddim"
    steps: int = Field(default=50, ge=1)
    eta: float = Field(default=0.0, ge=0.0, le=1.0)
    dtype: OutputDtype = "float32"
    owner: str | None = None
    webhook: str | None = None  # checked by worker.webhooks.check_url when accepted
    webhook_events_filter: list[WebhookEvent] | None = None  # set exactly when webhook is

    @field_validator("task_embedding")
    @classmethod
    def _finite(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(math.isfinite(v) for v in value):
            raise ValueError("task_embedding must contain only finite numbers (no NaN or inf)")
        return value


def request_limits(settings: Settings) -> RequestLimits:
    """The deployment's request limits, from its settings."""
    return RequestLimits(max_num_samples=settings.max_num_samples, max_steps=settings.max_steps)


def check_job_request(request: JobRequest, config: dict[str, Any], *, settings: Settings) -> None:
    """Raise `InvalidRequest` (saying what to change) unless `request` fits the generator
    described by `config` (its config.json) and the deployment's limits. Reads no weights."""
    name = generator_name(config)
    if request.generator != name:
        raise InvalidRequest(f"request is for {request.generator!r} but this generator is {name!r}")
    _, errors = check_against_config(
        config,
        task_embedding=request.task_embedding,
        num_samples=request.num_samples,
        sampler=request.sampler,
        steps=request.steps,
        eta=request.eta,
        limits=request_limits(settings),
    )
    if errors:
        raise InvalidRequest("; ".join(f"{e.field}: {e.message}" for e in errors))
