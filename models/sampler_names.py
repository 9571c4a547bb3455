"""The samplers' names and the training objective each one samples (torch-free, so the gateway
and the client can read it without importing torch; the functions are in
`models.diffusion.samplers` and `models.diffusion.flow`)."""

from __future__ import annotations

from typing import Literal

__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "SAMPLER_OBJECTIVE",
    "Objective",
    "SamplerName",
    "objective_error",
    "samplers_for",
]

SamplerName = Literal["ddim", "ddpm", "dpm-solver++", "flow-euler", "flow-midpoint"]
SAMPLERS: tuple[SamplerName, ...] = ("ddim", "ddpm", "dpm-solver++", "flow-euler", "flow-midpoint")

Objective = Literal["epsilon", "flow"]
OBJECTIVES: tuple[Objective, ...] = ("epsilon", "flow")

SAMPLER_OBJECTIVE: dict[SamplerName, Objective] = {
    "ddim": "epsilon",
    "ddpm": "epsilon",
    "dpm-solver++": "epsilon",
    "flow-euler": "flow",
    "flow-midpoint": "flow",
}
"""Which training objective each sampler integrates: a sampler of the other objective would
read the denoiser's output as the wrong quantity (noise vs clean data)."""


def samplers_for(objective: str) -> tuple[SamplerName, ...]:
    """The samplers that can sample a generator trained with `objective`."""
    return tuple(name for name in SAMPLERS if SAMPLER_OBJECTIVE[name] == objective)


def objective_error(sampler: str, objective: str) -> str | None:
    """None when `sampler` fits a generator of `objective`, else the one-line reason."""
    if sampler not in SAMPLER_OBJECTIVE or SAMPLER_OBJECTIVE[sampler] == objective:
        return None
    return (
        f"{sampler!r} samples {SAMPLER_OBJECTIVE[sampler]}-objective generators "
        f"but this one was trained with the {objective!r} objective; "
        f"choose one of {list(samplers_for(objective))}"
    )
