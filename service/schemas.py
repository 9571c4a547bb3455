"""Request and response bodies of the HTTP API (separate models for what comes in and goes out).

`GenerateRequest` is strict: unknown fields, wrong JSON types (``"3"`` or ``3.0`` for an
integer, ``true`` for a number) and non-finite numbers (JSON ``NaN`` / ``Infinity`` literals, or
``1e400``) are rejected. Limits that depend on the deployment or the generator
(``num_samples``, ``steps``, the embedding's dimension) are checked afterwards by
`service.validation`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.types import FiniteFloat

from models.sampler_names import SamplerName
from worker.requests import OutputDtype, WebhookEvent

__all__ = [
    "ArchitectureList",
    "ArchitecturePublic",
    "FieldErrorPublic",
    "GenerateRequest",
    "JobError",
    "JobList",
    "JobPublic",
    "JobResult",
    "Limits",
    "NameSource",
    "Problem",
    "ResultFile",
    "TaskSpec",
    "WebhookDelivery",
]

MAX_SEED = 2**63 - 1
JobStatusName = Literal["queued", "running", "succeeded", "failed", "canceled"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TaskSpec(_Strict):
    """A binary task named by its positive classes, e.g. ``{"positive_classes": ["0", "3"]}``."""

    positive_classes: list[str | int] = Field(
        fail_fast=True,
        min_length=1,
        max_length=4096,
        description="class labels (GET /architectures: condition.labels) that count as positive; the "
        'rest are negative. A number names the label with that text (3 -> "3"), not a position',
    )


class GenerateRequest(_Strict):
    """Body of ``POST /generate``."""

    architecture: str = Field(
        min_length=1,
        max_length=200,
        description="generator name as listed by GET /architectures",
        examples=["digits-mlp"],
    )
    # fail_fast: a list stops at its first bad item. One request of 21,000 bad items would
    # otherwise build 21,000 errors (~0.3 s holding the GIL: every other request waits).
    task_embedding: list[FiniteFloat] | None = Field(
        fail_fast=True,
        default=None,
        max_length=65536,
        description="condition vector; required exactly when the generator is conditional, "
        "with its dimension (GET /architectures: condition.dim)",
    )
    task: TaskSpec | None = Field(
        default=None,
        description="convenience form of task_embedding for generators with class labels; "
        "mutually exclusive with task_embedding",
    )
    num_samples: int = Field(
        default=1, ge=1, description="how many weight sets to generate (limit: GET /architectures)"
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="random seed; omitted = a random one, returned in the job so it can be replayed",
    )
    sampler: SamplerName | None = Field(
        default=None,
        description="'ddim', 'ddpm' or 'dpm-solver++' (epsilon generators), 'flow-euler' or "
        "'flow-midpoint' (flow generators); omitted = the generator's default",
    )
    steps: int | None = Field(
        default=None,
        ge=1,
        description="denoiser evaluations; omitted = the generator's default. With 'ddpm' the generator's "
        "full schedule (num_timesteps) is always used",
    )
    eta: FiniteFloat = Field(
        default=0.0, ge=0.0, le=1.0, description="DDIM stochasticity (0 = deterministic); ddim only"
    )
    dtype: OutputDtype = Field(
        default="float32", description="floating-point dtype of the weights in the output files"
    )
    webhook: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="https URL that receives the job document on the events in "
        "webhook_events_filter, signed with Standard Webhooks (webhook-id, webhook-timestamp, "
        "webhook-signature); it must resolve to public addresses",
    )
    webhook_events_filter: list[WebhookEvent] | None = Field(
        default=None,
        min_length=1,
        max_length=3,
        description="which events are sent to webhook: 'start', 'progress' (throttled), "
        "'completed' (any terminal state); default ['completed']",
    )

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {"architecture": "digits-mlp", "num_samples": 2, "seed": 7},
                {"architecture": "digits-tasks", "task": {"positive_classes": ["0", "3"]}},
            ]
        },
    )


class ResultFile(BaseModel):
    """One generated ``.safetensors`` file."""

    name: str
    url: str = Field(description="download URL (signed and expiring for local/s3 storage)")
    sha256: str
    size_bytes: int
    num_parameters: int


class JobResult(BaseModel):
    """What a succeeded job produced."""

    files: list[ResultFile]
    generator_id: str | None = None
    seed: int | None = None
    storage_version: str | None = None
    timings: dict[str, float] | None = None


class JobError(BaseModel):
    """Why a job failed or was canceled."""

    type: str
    message: str


class WebhookDelivery(BaseModel):
    """One attempt to deliver a webhook event."""

    time: str
    event: str
    attempt: int
    message_id: str = Field(description="the webhook-id header (the same for every retry)")
    status_code: int | None = Field(description="the receiver's answer; null if none came")
    error: str | None = Field(description="why the attempt failed (timeout, refused, ...)")


class JobPublic(BaseModel):
    """A job as clients see it (``GET /jobs/{id}``)."""

    id: str
    status: JobStatusName
    progress: float = Field(ge=0.0, le=1.0)
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    request: dict[str, Any] = Field(
        description="the request as queued (seed and defaults filled in): replaying it "
        "reproduces the weights"
    )
    result: JobResult | None = None
    error: JobError | None = None
    cancel_requested: bool = False
    queue_position: int | None = Field(
        default=None, description="0-based place in the queue while queued"
    )
    attempts: int = 0
    webhook_deliveries: list[WebhookDelivery] = Field(
        default_factory=list,
        description="attempts to deliver this job's webhook events, oldest first",
    )
    webhook_warning: str | None = Field(
        default=None,
        description="why this job's webhook events are not being delivered (no webhook "
        "sender, `rpg webhooks`, is running); null when nothing stands in the way",
    )


class JobList(BaseModel):
    """A page of the caller's jobs (``GET /jobs``), newest first."""

    jobs: list[JobPublic]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null on the last page"
    )


class NameSource(BaseModel):
    """Where a served generator's name comes from (`models.naming`)."""

    origin: Literal["train --name", "zoo architecture", "zoo folder", "config.json"] = Field(
        description="'train --name': chosen with `rpg train --name`; 'zoo architecture': the "
        "training zoo's architecture name; 'zoo folder': the training zoo's folder name; "
        "'config.json': the bundle's config says so"
    )
    bundle: str | None = Field(description="the bundle's folder name, or its hf:// id")
    detail: str = Field(description="the same in words, and how to choose another name")


class ArchitecturePublic(BaseModel):
    """A generator this deployment serves."""

    name: str = Field(description="pass as 'architecture' to POST /generate")
    name_source: NameSource
    architecture: dict[str, Any] = Field(
        description="spec to rebuild the nn.Module: {name, builder, kwargs}"
    )
    num_parameters: int | None = Field(description="parameter values per generated model")
    condition: dict[str, Any] = Field(
        description='{"kind": "none"} or {"kind": "vector", "dim": D, "labels": [...]}'
    )
    defaults: dict[str, Any] = Field(description="sampler and steps used when omitted")
    num_timesteps: int | None = Field(description="diffusion steps (what 'ddpm' always uses)")
    dataset: dict[str, Any] | None = None
    zoo_accuracy_mean: float | None = Field(
        default=None, description="mean accuracy of the training zoo, when known"
    )
    zoo_num_checkpoints: int | None = None
    adapter: dict[str, Any] | None = Field(
        default=None,
        description="set when samples are LoRA adapters of a base network: the PEFT config, "
        "the canonical/raw form, the base (architecture, sha256, hub_id) and the files of "
        "each sample's PEFT folder (sample_000/adapter_config.json, ...)",
    )


class Limits(BaseModel):
    """This deployment's request limits."""

    max_num_samples: int
    max_steps: int
    max_body_bytes: int
    rate_limit_per_minute: int


class ArchitectureList(BaseModel):
    """``GET /architectures``."""

    architectures: list[ArchitecturePublic]
    limits: Limits


class FieldErrorPublic(BaseModel):
    """One invalid field."""

    field: str = Field(examples=["task_embedding[3]"])
    pointer: str = Field(description="JSON pointer into the body", examples=["/task_embedding/3"])
    message: str


class Problem(BaseModel):
    """An error (RFC 9457 ``application/problem+json``)."""

    type: str = Field(examples=["urn:rpg:problem:invalid-request"])
    title: str
    status: int
    detail: str = Field(description="what is wrong and how to fix it")
    errors: list[FieldErrorPublic] | None = Field(
        default=None, description="per-field problems (at most 20; see more_errors)"
    )
    more_errors: int | None = Field(
        default=None, description="how many more field problems were found than listed"
    )

    model_config = ConfigDict(extra="allow")
