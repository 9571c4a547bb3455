"""The diffusion half of RPG: noise schedule, per-token denoiser, training loss, samplers.

Pure PyTorch and pure math: no IO. The recurrent backbone produces one prototype per token;
everything here treats tokens as independent given their prototypes.
"""

from __future__ import annotations

from models.diffusion.denoiser import ConvUNetDenoiser, timestep_embedding
from models.diffusion.kinds import denoiser_from_config
from models.diffusion.loss import diffusion_loss, masked_mse
from models.diffusion.mlp_denoiser import MLPDenoiser
from models.diffusion.samplers import (
    SAMPLER_FUNCTIONS,
    SAMPLERS,
    Denoiser,
    OnProgress,
    SamplerName,
    ShouldStop,
    SolverSpacing,
    Spacing,
    ddim_timesteps,
    logsnr_timesteps,
    sample_ddim,
    sample_ddpm,
    sample_dpm_solver_pp,
)
from models.diffusion.schedule import NoiseSchedule, ScheduleKind, extract

__all__ = [
    "SAMPLERS",
    "SAMPLER_FUNCTIONS",
    "ConvUNetDenoiser",
    "Denoiser",
    "MLPDenoiser",
    "NoiseSchedule",
    "OnProgress",
    "SamplerName",
    "ScheduleKind",
    "ShouldStop",
    "SolverSpacing",
    "Spacing",
    "ddim_timesteps",
    "denoiser_from_config",
    "diffusion_loss",
    "extract",
    "logsnr_timesteps",
    "masked_mse",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpm_solver_pp",
    "timestep_embedding",
]
