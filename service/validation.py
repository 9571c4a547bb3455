"""From a parsed `GenerateRequest` to the queued `GenerationRequest`, or a 422 problem.

Checks what the schema cannot know: that the architecture is served, the task embedding's
presence and dimension for that generator, the deployment's limits. Fills in the defaults
(the generator's sampler and steps, a random seed) so the queued request replays exactly.
With ``sampler="ddpm"`` the generator's full schedule (``num_timesteps``) is used and
``steps`` is ignored: DDPM cannot skip steps.
"""

from __future__ import annotations

import math
import secrets

from pydantic import ValidationError

from service.catalog import Catalog, GeneratorInfo
from service.problems import FieldError, ProblemError, summarize
from service.schemas import GenerateRequest, TaskSpec
from worker.errors import InvalidRequest
from worker.queue import GenerationRequest, check_request
from worker.settings import Settings

__all__ = ["invalid_request", "to_generation_request"]


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


def _mask_from_classes(
    task: TaskSpec, info: GeneratorInfo, errors: list[FieldError]
) -> list[float] | None:
    """``{"positive_classes": ["0", "3"]}`` -> a 0/1 vector over the generator's labels."""
    labels = info.labels
    if not labels:
        errors.append(
            _error("task", f"generator {info.name!r} has no class labels; pass task_embedding")
        )
        return None
    mask = [0.0] * len(labels)
    for index, item in enumerate(task.positive_classes):
        key = str(item)
        if key not in labels:
            errors.append(
                _error(
                    f"task.positive_classes[{index}]",
                    f"unknown class {item!r}; generator {info.name!r} has classes {labels}",
                )
            )
            continue
        mask[labels.index(key)] = 1.0
    if all(mask):
        errors.append(
            _error(
                "task.positive_classes",
                "lists every class; a binary task needs at least one negative class",
            )
        )
    return mask


def _condition(
    body: GenerateRequest, info: GeneratorInfo, errors: list[FieldError]
) -> list[float] | None:
    if body.task is not None and body.task_embedding is not None:
        errors.append(_error("task", "pass either task or task_embedding, not both"))
        return None
    if not info.is_conditional:
        for name, value in (("task_embedding", body.task_embedding), ("task", body.task)):
            if value is not None:
                errors.append(
                    _error(name, f"generator {info.name!r} is unconditional; remove this field")
                )
        return None
    dim = info.condition_dim
    if body.task is not None:
        return _mask_from_classes(body.task, info, errors)
    if body.task_embedding is None:
        labels = f" or task.positive_classes from {info.labels}" if info.labels else ""
        errors.append(
            _error(
                "task_embedding",
                f"required: generator {info.name!r} is conditional; pass {dim} numbers{labels}",
            )
        )
        return None
    values = [float(v) for v in body.task_embedding]
    if dim is not None and len(values) != dim:
        errors.append(
            _error(
                "task_embedding",
                f"has {len(values)} values; generator {info.name!r} expects {dim}",
            )
        )
    if not all(math.isfinite(v) for v in values):  # the schema already refuses; belt and braces
        errors.append(_error("task_embedding", "must contain only finite numbers"))
    return values


def to_generation_request(
    body: GenerateRequest,
    *,
    catalog: Catalog,
    settings: Settings,
    owner: str | None,
) -> GenerationRequest:
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

    errors: list[FieldError] = []
    embedding = _condition(body, info, errors)
    if body.num_samples > settings.max_num_samples:
        errors.append(
            _error(
                "num_samples",
                f"is {body.num_samples}; this deployment allows at most "
                f"{settings.max_num_samples} per request (send several requests)",
            )
        )
    sampler = body.sampler or info.default_sampler
    if sampler == "ddpm":
        steps = info.num_timesteps or settings.max_steps
        if steps > settings.max_steps:
            errors.append(
                _error(
                    "sampler",
                    f"'ddpm' always runs all {steps} timesteps of {info.name!r}, above this "
                    f"deployment's limit of {settings.max_steps} steps; use 'ddim' with fewer steps",
                )
            )
        if body.eta != 0.0:
            errors.append(_error("eta", "applies to the ddim sampler only; remove it for ddpm"))
    else:
        steps = body.steps if body.steps is not None else info.default_steps
        limit = min(settings.max_steps, info.num_timesteps or settings.max_steps)
        if steps > limit:
            errors.append(
                _error(
                    "steps",
                    f"is {steps}; at most {limit} for generator {info.name!r} on this deployment",
                )
            )
    if errors:
        raise invalid_request(errors)

    try:
        request = GenerationRequest(
            architecture=info.name,
            task_embedding=embedding,
            num_samples=body.num_samples,
            seed=body.seed if body.seed is not None else secrets.randbits(63),
            sampler=sampler,
            steps=steps,
            eta=body.eta,
            dtype=body.dtype,
            owner=owner,
        )
        # The worker's own check (the job repeats it); our checks above should catch all of it.
        check_request(request, dict(info.config), settings=settings)
    except (InvalidRequest, ValidationError) as exc:
        raise invalid_request([_error("(body)", str(exc))]) from None
    return request
