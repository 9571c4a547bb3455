"""Which denoiser a config names: `DenoiserConfig.kind` -> the module that implements it."""

from __future__ import annotations

from models.config import RPGConfig
from models.diffusion.denoiser import ConvUNetDenoiser
from models.diffusion.mlp_denoiser import MLPDenoiser

__all__ = ["denoiser_from_config"]


def denoiser_from_config(config: RPGConfig, cond_dim: int) -> ConvUNetDenoiser | MLPDenoiser:
    """The denoiser a saved `RPGConfig` describes, for prototypes of `cond_dim` channels."""
    if config.denoiser.kind == "mlp":
        return MLPDenoiser(
            config.token_size,
            cond_dim,
            width=config.denoiser.width,
            depth=config.denoiser.depth,
            mlp_ratio=config.denoiser.mlp_ratio,
            time_dim=config.denoiser.time_dim,
        )
    return ConvUNetDenoiser(
        config.token_size,
        cond_dim,
        channels=config.denoiser.channels,
        kernel_size=config.denoiser.kernel_size,
        time_dim=config.denoiser.time_dim,
        norm=config.denoiser.norm,
        cond_projection=config.denoiser.cond_projection,
    )
