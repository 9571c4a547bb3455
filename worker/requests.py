"""Generation requests: the JSON-safe request model and its check against a generator config.

Imported through `worker.queue` (the gateway's contract); kept apart so the check has no
Redis in it.
"""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker.errors import InvalidRequest
from worker.registry import generator_name

if TYPE_CHECKING:
    from worker.settings import Settings

__all__ = ["GenerationRequest", "check_request"]


class GenerationRequest(BaseModel):
    """What a job generates; JSON-safe, stored as the job's only argument."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    architecture: str = Field(min_length=1, max_length=200)
    task_embedding: list[float] | None = None
    num_samples: int = Field(default=1, ge=1)
    seed: int = Field(default_factory=lambda: secrets.randbits(63), ge=0, lt=2**63)
    sampler: Literal["ddim", "ddpm"] = "ddim"
    steps: int = Field(default=50, ge=1)
    eta: float = Field(default=0.0, ge=0.0, le=1.0)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    owner: str | None = None

    @field_validator("task_embedding")
    @classmethod
    def _finite(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(math.isfinite(v) for v in value):
            raise ValueError("task_embedding must contain only finite numbers (no NaN or inf)")
        return value


def check_request(
    request: GenerationRequest, config: dict[str, Any], *, settings: Settings
) -> None:
    """Raise `InvalidRequest` (saying what to change) unless `request` fits the generator
    described by `config` (its config.json) and the deployment's limits. Reads no weights."""
    name = generator_name(config)
    if request.architecture != name:
        raise InvalidRequest(
            f"request is for {request.architecture!r} but this generator is {name!r}"
        )
    if request.num_samples > settings.max_num_samples:
        raise InvalidRequest(
            f"num_samples is {request.num_samples}; this deployment allows at most "
            f"{settings.max_num_samples} per request (send several requests)"
        )
    timesteps = int(((config.get("model") or {}).get("diffusion") or {}).get("num_timesteps", 1000))
    if request.sampler == "ddim":
        limit = min(settings.max_steps, timesteps)
        if request.steps > limit:
            raise InvalidRequest(
                f"steps is {request.steps}; ddim on {name!r} allows 1..{limit} "
                f"(the schedule has {timesteps} timesteps, the deployment's limit is {settings.max_steps})"
            )
    elif timesteps > settings.max_steps:
        raise InvalidRequest(
            f"sampler 'ddpm' always runs all {timesteps} timesteps, above this deployment's "
            f"max_steps ({settings.max_steps}); use sampler 'ddim' with fewer steps"
        )
    spec = config.get("condition") or {"kind": "none"}
    if spec.get("kind") == "vector":
        dim = int(spec["dim"])
        if request.task_embedding is None:
            labels = f" (one value per class: {spec['labels']})" if spec.get("labels") else ""
            raise InvalidRequest(
                f"generator {name!r} is conditional: task_embedding with {dim} values is required{labels}"
            )
        if len(request.task_embedding) != dim:
            raise InvalidRequest(
                f"task_embedding has {len(request.task_embedding)} values; generator {name!r} expects {dim}"
            )
    elif request.task_embedding is not None:
        raise InvalidRequest(f"generator {name!r} is unconditional; leave task_embedding out")
