"""One home for what a generator's objective decides: its loss and the samplers that fit it.

`DiffusionConfig.objective` is "epsilon" (DDPM noise prediction: `loss.diffusion_loss`, the
`samplers.py` samplers) or "flow" (rectified flow, data prediction: `flow.flow_loss`, the
`flow.py` samplers). `models.sampler_names` says which sampler belongs to which objective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from models.diffusion.flow import flow_loss, sample_flow_euler, sample_flow_midpoint
from models.diffusion.loss import diffusion_loss
from models.diffusion.mlp_denoiser import MLPDenoiser
from models.diffusion.samplers import SAMPLER_FUNCTIONS, Denoiser
from models.diffusion.schedule import NoiseSchedule
from models.sampler_names import SAMPLERS, Objective, SamplerName, objective_error

__all__ = ["FLOW_SAMPLER_FUNCTIONS", "check_sampler", "objective_loss", "run_sampler"]

FLOW_SAMPLER_FUNCTIONS: dict[SamplerName, Callable[..., Tensor]] = {
    "flow-euler": sample_flow_euler,
    "flow-midpoint": sample_flow_midpoint,
}
"""`FLOW_SAMPLER_FUNCTIONS[name](denoiser, noise, cond, num_timesteps=T, **options)`."""
assert set(SAMPLER_FUNCTIONS) | set(FLOW_SAMPLER_FUNCTIONS) == set(SAMPLERS)


def check_sampler(sampler: str, objective: Objective) -> None:
    """Raise ValueError (one line, with the fix) unless `sampler` samples `objective`."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    error = objective_error(sampler, objective)
    if error is not None:
        raise ValueError(error)


def objective_loss(
    objective: Objective,
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    x0: Tensor,
    cond: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The training loss of `objective` on clean tokens `x0 (N, T)` (NaN padding masked)."""
    if objective == "flow":
        return flow_loss(
            denoiser, x0, cond, num_timesteps=schedule.num_timesteps, generator=generator
        )
    return diffusion_loss(denoiser, schedule, x0, cond, generator=generator)


def run_sampler(
    sampler: SamplerName,
    denoiser: torch.nn.Module,
    schedule: NoiseSchedule,
    noise: Tensor,
    cond: Tensor,
    **options: Any,
) -> Tensor:
    """Run sampler `sampler` on `noise (N, T)` with conditions `cond (N, C)`.

    An `MLPDenoiser`'s prototype terms do not change across steps: they are computed here,
    once per call, and every step runs only the token path (`forward_terms`).
    """
    step: Denoiser = denoiser
    if isinstance(denoiser, MLPDenoiser):
        cond = denoiser.condition_terms(cond)  # (N, width + modulations), once per call
        step = denoiser.forward_terms
    if sampler in FLOW_SAMPLER_FUNCTIONS:
        return FLOW_SAMPLER_FUNCTIONS[sampler](
            step, noise, cond, num_timesteps=schedule.num_timesteps, **options
        )
    return SAMPLER_FUNCTIONS[sampler](step, schedule, noise, cond, **options)
