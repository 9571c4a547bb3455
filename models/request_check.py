"""The one check of a generation request against a generator: used by the gateway, the
worker and `rpg sample` alike, so the three can never disagree.

    checked, errors = check_request(config, num_samples=2, sampler="ddpm", limits=limits)

`config` is a bundle's config.json dict (no weights needed). The check is pure: it returns
every problem as a `FieldError` named by its field in the HTTP body (``task_embedding``,
``task.positive_classes[1]``), and, when there are none, the `CheckedRequest` with the
generator's defaults filled in. Structural rules (types, ranges that need no generator) are
the callers' schemas' job; this module owns the rules that depend on the generator or the
deployment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from models.sampler_names import SAMPLERS, Objective, SamplerName, objective_error

__all__ = [
    "SAMPLERS",
    "CheckedRequest",
    "FieldError",
    "RequestLimits",
    "SamplerName",
    "check_condition",
    "check_request",
    "default_sampling",
    "mask_from_classes",
    "num_timesteps",
    "objective",
    "steps_to_run",
]

DEFAULT_SAMPLER: SamplerName = "ddim"
DEFAULT_STEPS = 50
# A bundle without usable defaults gets its objective's (a flow bundle cannot run DDIM).
_OBJECTIVE_DEFAULTS: dict[str, tuple[SamplerName, int]] = {
    "epsilon": (DEFAULT_SAMPLER, DEFAULT_STEPS),
    "flow": ("flow-midpoint", 4),
}


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of a request."""

    field: str  # as in the HTTP body: "task_embedding", "task.positive_classes[2]"
    message: str


@dataclass(frozen=True)
class RequestLimits:
    """A deployment's limits (None: no limit, as for `rpg sample`)."""

    max_num_samples: int | None = None
    max_steps: int | None = None


@dataclass(frozen=True)
class CheckedRequest:
    """A request that fits its generator, with every default resolved."""

    task_embedding: list[float] | None
    num_samples: int
    sampler: SamplerName
    steps: int  # the denoiser steps that actually run (ddpm: the whole schedule)
    eta: float


def num_timesteps(config: Mapping[str, Any]) -> int:
    """The diffusion schedule's length T."""
    diffusion = (config.get("model") or {}).get("diffusion") or {}
    return int(diffusion.get("num_timesteps", 1000))


def objective(config: Mapping[str, Any]) -> Objective:
    """The generator's training objective (bundles saved before objectives existed: epsilon)."""
    diffusion = (config.get("model") or {}).get("diffusion") or {}
    return cast(Objective, diffusion.get("objective", "epsilon"))


def default_sampling(config: Mapping[str, Any]) -> tuple[SamplerName, int]:
    """The (sampler, steps) a request without them gets: the bundle's `defaults`, or its
    objective's when those are missing or do not fit the objective."""
    fallback_sampler, fallback_steps = _OBJECTIVE_DEFAULTS.get(
        objective(config), (DEFAULT_SAMPLER, DEFAULT_STEPS)
    )
    defaults = config.get("defaults") or {}
    sampler = defaults.get("sampler", fallback_sampler)
    if sampler not in SAMPLERS or objective_error(sampler, objective(config)) is not None:
        return fallback_sampler, fallback_steps
    return cast(SamplerName, sampler), int(defaults.get("steps") or fallback_steps)


def steps_to_run(sampler: str, steps: int, timesteps: int) -> int:
    """DDPM cannot skip steps: it always runs the whole schedule; the others run `steps`."""
    return timesteps if sampler == "ddpm" else steps


def _name(config: Mapping[str, Any]) -> str:
    architecture = config.get("architecture") or {}
    return str(config.get("name") or architecture.get("name") or "generator")


def mask_from_classes(
    config: Mapping[str, Any], positive: Sequence[str | int]
) -> tuple[list[float] | None, list[FieldError]]:
    """``["0", "3"]`` -> a 0/1 mask over the generator's class labels.

    Entries are class labels as listed in the condition spec's ``labels``; a number is read
    as its text (``3`` names the label ``"3"``), not as a position in the list.
    """
    name = _name(config)
    labels = [str(label) for label in (config.get("condition") or {}).get("labels") or []]
    if not labels:
        return None, [
            FieldError("task", f"generator {name!r} has no class labels; pass task_embedding")
        ]
    if not positive:
        return None, [FieldError("task.positive_classes", "must list at least one class")]
    errors = []
    mask = [0.0] * len(labels)
    for index, item in enumerate(positive):
        key = str(item)
        if key not in labels:
            errors.append(
                FieldError(
                    f"task.positive_classes[{index}]",
                    f"unknown class {item!r}; generator {name!r} has classes {labels}",
                )
            )
            continue
        mask[labels.index(key)] = 1.0
    if not errors and all(mask):
        errors.append(
            FieldError(
                "task.positive_classes",
                "lists every class; a binary task needs at least one negative class",
            )
        )
    return (None if errors else mask), errors


def check_condition(
    config: Mapping[str, Any],
    task_embedding: Sequence[float] | None,
    positive_classes: Sequence[str | int] | None = None,
) -> tuple[list[float] | None, list[FieldError]]:
    """The condition vector a request asks for, checked against the condition spec."""
    name = _name(config)
    spec = config.get("condition") or {"kind": "none"}
    if positive_classes is not None and task_embedding is not None:
        return None, [FieldError("task", "pass either task or task_embedding, not both")]
    if spec.get("kind") != "vector":
        errors = [
            FieldError(field, f"generator {name!r} is unconditional; remove this field")
            for field, value in (("task_embedding", task_embedding), ("task", positive_classes))
            if value is not None
        ]
        return None, errors
    if positive_classes is not None:
        return mask_from_classes(config, positive_classes)
    dim = int(spec["dim"])
    if task_embedding is None:
        labels = spec.get("labels")
        hint = f" or task.positive_classes from {[str(x) for x in labels]}" if labels else ""
        return None, [
            FieldError(
                "task_embedding",
                f"required: generator {name!r} is conditional; pass {dim} numbers{hint}",
            )
        ]
    values = [float(v) for v in task_embedding]
    errors = []
    if len(values) != dim:
        errors.append(
            FieldError(
                "task_embedding", f"has {len(values)} values; generator {name!r} expects {dim}"
            )
        )
    if not all(math.isfinite(v) for v in values):
        errors.append(
            FieldError("task_embedding", "must contain only finite numbers (no NaN or inf)")
        )
    return (None if errors else values), errors


def check_request(
    config: Mapping[str, Any],
    *,
    task_embedding: Sequence[float] | None = None,
    positive_classes: Sequence[str | int] | None = None,
    num_samples: int = 1,
    sampler: str | None = None,
    steps: int | None = None,
    eta: float = 0.0,
    limits: RequestLimits = RequestLimits(),
) -> tuple[CheckedRequest | None, list[FieldError]]:
    """Check a request against the generator `config` and the deployment's `limits`.

    Returns (the checked request, []) or (None, every problem found).
    """
    name = _name(config)
    embedding, errors = check_condition(config, task_embedding, positive_classes)
    if num_samples < 1:
        errors.append(FieldError("num_samples", f"is {num_samples}; must be at least 1"))
    elif limits.max_num_samples is not None and num_samples > limits.max_num_samples:
        errors.append(
            FieldError(
                "num_samples",
                f"is {num_samples}; this deployment allows at most {limits.max_num_samples} "
                "per request (send several requests)",
            )
        )
    default_sampler, default_steps = default_sampling(config)
    chosen = sampler if sampler is not None else default_sampler
    timesteps = num_timesteps(config)
    max_steps = limits.max_steps if limits.max_steps is not None else timesteps
    mismatch = objective_error(chosen, objective(config))
    if chosen not in SAMPLERS:
        errors.append(FieldError("sampler", f"is {chosen!r}; choose one of {list(SAMPLERS)}"))
    elif mismatch is not None:
        errors.append(FieldError("sampler", mismatch))
    elif chosen == "ddpm":
        if timesteps > max_steps:
            errors.append(
                FieldError(
                    "sampler",
                    f"'ddpm' always runs all {timesteps} timesteps of {name!r}, above this "
                    f"deployment's limit of {max_steps} steps; use 'ddim' with fewer steps",
                )
            )
        if eta != 0.0:
            errors.append(FieldError("eta", "applies to the ddim sampler only; remove it for ddpm"))
    else:
        wanted = steps if steps is not None else default_steps
        limit = min(max_steps, timesteps)
        if not 1 <= wanted <= limit:
            errors.append(
                FieldError(
                    "steps",
                    f"is {wanted}; {chosen} on {name!r} allows 1..{limit}, at most {limit} "
                    f"(the schedule has {timesteps} timesteps, the deployment's limit is "
                    f"{max_steps})",
                )
            )
    if not 0.0 <= eta <= 1.0 or not math.isfinite(eta):
        errors.append(FieldError("eta", f"is {eta}; must be between 0 and 1"))
    if errors:
        return None, errors
    run_steps = steps_to_run(chosen, steps if steps is not None else default_steps, timesteps)
    checked = CheckedRequest(
        task_embedding=embedding,
        num_samples=num_samples,
        sampler=cast(SamplerName, chosen),
        steps=run_steps,
        eta=eta,
    )
    return checked, []
