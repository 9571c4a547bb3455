"""Sizing a generator before training it: parameter counts, memory and FLOPs (`rpg plan`).

Counts come from instantiating the model on PyTorch's ``meta`` device (shapes only, no
memory). ``official_parameter_count`` counts the official code's model for a preset
(NUS-HPC-AI-Lab/Recurrent-Parameter-Generation: ``model/mamba.py``, ``model/denoiser.py``,
``model/__init__.py`` and the configuration file the preset names), written out from those
files' layer shapes; ``mamba_ssm.Mamba2``'s shapes are our ``Mamba2``'s, so it is counted by
instantiating ours.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from models.backbones import Mamba2, build_backbone
from models.config import PRESETS, Preset, RPGConfig
from models.diffusion import ConvUNetDenoiser

__all__ = ["count_parameters", "official_parameter_count", "preset_parameter_count"]


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(config: RPGConfig, num_tokens: int = 1) -> int:
    """Trainable parameters of ``RPGModel(config, positions)`` for ``num_tokens`` tokens.

    The backbone and denoiser are built on the ``meta`` device (no memory); the small parts
    (embeddings, condition MLP) are counted from their shapes, as ``RPGModel`` builds them.
    """
    d = config.backbone.d_model
    with torch.device("meta"):
        backbone = build_backbone(
            config.backbone.kind,
            d_model=d,
            num_layers=config.backbone.num_layers,
            residual=config.backbone.residual,
            d_output=config.backbone.d_output,
            **config.backbone.options,
        )
        denoiser = ConvUNetDenoiser(
            config.token_size,
            backbone.d_output,
            channels=config.denoiser.channels,
            kernel_size=config.denoiser.kernel_size,
            time_dim=config.denoiser.time_dim,
            norm=config.denoiser.norm,  # type: ignore[arg-type]
            cond_projection=config.denoiser.cond_projection,  # type: ignore[arg-type]
        )
    total = _numel(backbone) + _numel(denoiser) + config.num_permutation_states * d
    if config.condition_dim:
        total += config.condition_dim * d + d + d * d + d  # Linear, SiLU, Linear
        if config.condition_mode == "gate":
            total += d + 1
    if config.position == "learned":
        total += num_tokens * d
    return total


def preset_parameter_count(name: str, *, backbone: str = "mamba") -> int:
    """Our generator's parameter count for preset ``name`` (unconditional, one permutation
    state, ``num_layers=2``), as ``rpg train`` builds it."""
    from models.config import BackboneConfig, DenoiserConfig

    preset = PRESETS[name]
    config = RPGConfig(
        token_size=preset.token_size,
        backbone=BackboneConfig(
            kind=backbone,
            d_model=preset.d_model,
            num_layers=2,
            options={"d_state": preset.d_state} if backbone == "mamba" else {},
            residual=preset.residual,
            d_output=preset.d_output,
        ),
        denoiser=DenoiserConfig(channels=preset.channels, cond_projection=preset.cond_projection),
    )
    return count_parameters(config)


def _official_unet(channels: tuple[int, ...], model_dim: int, condition_dim: int) -> int:
    """``ConditionalUNet`` (official model/denoiser.py): timestep MLP 256 -> m -> m, one shared
    condition ``Linear(condition_dim, m)``, convs with bias, BatchNorm after every conv whose
    output has more than one channel."""
    kernel = 7
    time = 256 * model_dim + model_dim + model_dim * model_dim + model_dim
    cond = condition_dim * model_dim + model_dim
    convs = sum(c_in * c_out * kernel + c_out for c_in, c_out in itertools.pairwise(channels))
    norms = sum(2 * c for c in channels[1:] if c != 1)
    return time + cond + convs + norms


def official_parameter_count(preset: Preset) -> int:
    """The official code's generator for the configuration ``preset.official`` names.

    Two bare ``Mamba2`` layers (d_conv 4, expand 2, headdim 64); with ``post_d_model`` the
    second is built at that width with an input projection from ``d_model`` channels
    (``VaryMambaModel``); the ``ConditionalUNet`` above with ``condition_dim`` = the Mamba
    output width; ``to_condition = Linear(1, d_model)``; one permutation embedding row.
    """
    width = preset.d_output or preset.d_model
    with torch.device("meta"):
        first = Mamba2(preset.d_model, d_state=preset.d_state)
        second = Mamba2(width, d_state=preset.d_state)
        second.in_proj = nn.Linear(preset.d_model, second.in_proj.out_features, bias=False)
    mamba = _numel(first) + _numel(second)
    unet = _official_unet(preset.channels, preset.token_size, width)
    return mamba + unet + 2 * preset.d_model + preset.d_model
