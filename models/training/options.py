"""What one training run is: its options (`TrainConfig`), the generator config they resolve to
on a zoo (`build_model_config`: the preset table overridden by explicit options), and the small
rules the loop applies (permutation ids, token weighting, checkpointed pieces, the learning-rate
schedule). No IO: the loop (`models.training.loop`) reads the zoo and writes bundles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from models.config import (
    PRESETS,
    BackboneConfig,
    BackboneKind,
    ConditionMode,
    DenoiserConfig,
    DenoiserKind,
    DiffusionConfig,
    RPGConfig,
    preset_for,
)
from models.sampler_names import Objective
from models.tokenizer import Granularity, ParameterTokenizer
from models.training.data import DEFAULT_RESIDENT_BYTES
from models.zoo.store import Zoo

# Above this many tokens per forward pass (micro-batch x sequence), the backbone runs in
# activation-checkpointed pieces of about this many tokens (see BackboneStack.forward).
CHECKPOINT_TOKENS = 4096

TokenWeighting = Literal["uniform", "tensor"]


@dataclass
class TrainConfig:
    """Options of one training run (what `rpg train` exposes)."""

    preset: str | None = None  # None: chosen from the zoo's parameter count
    backbone: BackboneKind = "mamba"
    denoiser: DenoiserKind | None = None  # None: the preset's default (unet if channels given)
    objective: Objective | None = None  # None: the kind's (Preset.objective_for)
    steps: int | None = None  # None: the preset's default
    token_size: int | None = None
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    lr: float | None = None
    batch_size: int | None = None
    diffusion_batch: int | None = None
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float | None = None  # None: the preset's; 0: off (save the raw weights)
    warmup_steps: int | None = None
    save_every: int = 500
    stop_at_step: int | None = (
        None  # stop (and save) early, e.g. before a preemption; --resume continues
    )
    permutation_states: str = "run"  # "run" | "checkpoint"
    condition_mode: ConditionMode = "all"
    granularity: Granularity = "tensor"
    # Which tokens the denoiser trains on each step: "uniform" over the batch's tokens, or
    # "tensor": every tensor gets an equal share (token_weights_for). None: "tensor" on a
    # conditional zoo, "uniform" otherwise (docs/benchmarks, "Task-conditioned generation").
    token_weighting: TokenWeighting | None = None
    # A regression head for each token's mean, with the denoiser modelling the residual
    # (RPGModel). None: the preset's recipe decides (on for conditional zoos).
    mean_head: bool | None = None
    num_layers: int = 2
    d_model: int | None = None  # overrides of the preset, for experiments and fast tests
    d_state: int | None = None
    channels: tuple[int, ...] | None = None
    width: int | None = None  # the mlp denoiser's width / blocks, if not the preset's
    depth: int | None = None
    name: str | None = None
    progress: bool = True
    # Memory (none of these change what a step computes, except micro_batch: see below).
    micro_batch: int | None = None  # checkpoints per forward/backward; None: the whole batch
    checkpoint_chunk: int | None = None  # tokens per checkpointed piece; None: auto, 0: off
    resident_bytes: int = DEFAULT_RESIDENT_BYTES  # larger encoded zoos are read per batch


@dataclass
class TrainResult:
    """What a run reports: losses, throughput and where the bundle went."""

    bundle: Path
    steps: int
    seconds: float
    steps_per_second: float
    first_loss: float
    final_loss: float
    losses: list[float] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch.cuda.is_available() is False")
    return torch.device(name)


def build_model_config(
    zoo: Zoo, tokenizer_size: int, options: TrainConfig, num_states: int
) -> tuple[RPGConfig, str]:
    """The RPG config for this zoo: preset defaults overridden by explicit options."""
    preset_name = options.preset or preset_for(tokenizer_size)
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[preset_name]
    d_state = options.d_state or preset.d_state
    backbone_options: dict[str, Any] = {"d_state": d_state} if options.backbone == "mamba" else {}
    condition = zoo.condition or {"kind": "none"}
    conditional = condition.get("kind") == "vector"
    # U-Net widths given without a kind mean the U-Net (they are its widths).
    kind = options.denoiser or ("unet" if options.channels else preset.denoiser)
    recipe = preset.recipe(conditional, kind)
    denoiser = DenoiserConfig(
        kind=kind,
        channels=options.channels or recipe.channels or preset.channels,
        cond_projection=preset.cond_projection,
    )
    if kind == "mlp":
        mlp = preset.mlp_recipe()
        denoiser.width = options.width or mlp.width
        denoiser.depth = options.depth or mlp.depth
        denoiser.mlp_ratio = mlp.mlp_ratio
    config = RPGConfig(
        token_size=options.token_size or preset.token_size,
        num_permutation_states=num_states,
        condition_dim=int(condition["dim"]) if conditional else 0,
        condition_mode=options.condition_mode,
        mean_head=recipe.mean_head if options.mean_head is None else options.mean_head,
        backbone=BackboneConfig(
            kind=options.backbone,
            d_model=options.d_model or preset.d_model,
            num_layers=options.num_layers,
            options=backbone_options,
            residual=preset.residual,
            # a d_model override drops the preset's wider last layer
            d_output=None if options.d_model else preset.d_output,
        ),
        denoiser=denoiser,
        diffusion=DiffusionConfig(objective=options.objective or preset.objective_for(kind)),
    )
    return config, preset_name


def permutation_ids(zoo: Zoo, mode: str) -> tuple[list[int], int]:
    """One id per checkpoint: by training run (default) or one per checkpoint."""
    if mode == "checkpoint":
        n = len(zoo.checkpoints)
        return list(range(n)), n
    if mode != "run":
        raise ValueError(f"permutation_states must be 'run' or 'checkpoint', got {mode!r}")
    runs = zoo.run_ids()
    index = {run: i for i, run in enumerate(sorted(set(runs)))}
    return [index[r] for r in runs], len(index)


def distinct_pairs(ids: list[int], conditions: Tensor | None) -> int:
    """Distinct (permutation id, condition) pairs of a zoo: the most rows a pass sends through
    the backbone (RPGModel runs the rows that share both once)."""
    if conditions is None:
        return len(set(ids))
    rows = conditions.tolist()
    return len({(i, tuple(row)) for i, row in zip(ids, rows, strict=True)})


def zoo_conditions(zoo: Zoo) -> Tensor | None:
    """(N, dim) condition per checkpoint for a conditional zoo, else None."""
    condition = zoo.condition or {"kind": "none"}
    if condition.get("kind") != "vector":
        return None
    rows = []
    for ckpt in zoo.checkpoints:
        value = ckpt.condition
        if value is None:
            raise ValueError("a conditional zoo needs a condition on every checkpoint")
        rows.append([float(v) for v in value])
    return torch.tensor(rows, dtype=torch.float32)


def token_weights_for(tokenizer: ParameterTokenizer, mode: TokenWeighting) -> Tensor | None:
    """(L,) odds of each token for the denoiser's batch, or None for uniform.

    "tensor": each tensor's tokens share one equal part, so a tensor of one token (a task
    head, a bias) is trained on as often as a tensor of hundreds (the shared body).
    """
    if mode == "uniform":
        return None
    if mode != "tensor":
        raise ValueError(f"token_weighting must be 'uniform' or 'tensor', got {mode!r}")
    tensor_of_token = tokenizer.positions()[:, 0]  # (L,)
    per_tensor = torch.bincount(tensor_of_token).to(torch.float32)  # tokens of each tensor
    return 1.0 / per_tensor[tensor_of_token]  # (L,)


# The denoiser's default batch draws each real token of a step's checkpoints at most this many
# times (each with its own noise level). Only zoos of very few tokens per checkpoint reach the
# cap (an adapter zoo of 4 tokens: 256 instead of 1,024); every digits zoo stays above it.
MAX_TOKEN_DRAWS = 2


def default_diffusion_batch(recipe_value: int, batch_size: int, num_tokens: int) -> int:
    """Tokens per step when ``--diffusion-batch`` is not given: the recipe's, capped at
    ``MAX_TOKEN_DRAWS`` draws of each real token of the batch (step time is the denoiser's)."""
    return max(1, min(recipe_value, MAX_TOKEN_DRAWS * batch_size * num_tokens))


def checkpoint_chunk_for(option: int | None, micro_batch: int, num_tokens: int) -> int | None:
    """Tokens per checkpointed backbone piece: the option, or automatic (None = no pieces).

    Automatic: pieces only when a forward pass holds more than ``CHECKPOINT_TOKENS`` tokens,
    of a length (a multiple of 64, the SSD block) that keeps each piece near that many.
    """
    if option is not None:
        return option or None
    if micro_batch * num_tokens <= CHECKPOINT_TOKENS:
        return None
    return max(64, CHECKPOINT_TOKENS // micro_batch // 64 * 64)


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Multiplier: linear warm-up to 1, then cosine decay to 0.05 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))
