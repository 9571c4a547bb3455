"""The samplers' names: what requests, bundles and the CLI may name (torch-free, so the gateway
and the client can read it without importing torch; the functions are in
`models.diffusion.samplers`)."""

from __future__ import annotations

from typing import Literal

__all__ = ["SAMPLERS", "SamplerName"]

SamplerName = Literal["ddim", "ddpm", "dpm-solver++"]
SAMPLERS: tuple[SamplerName, ...] = ("ddim", "ddpm", "dpm-solver++")
