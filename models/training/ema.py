"""Exponential moving average of a model's weights, the usual companion of diffusion training.

Sampling from the averaged weights removes most of the step-to-step noise of the optimizer,
which matters here because a generated parameter is only as precise as the denoiser.
"""

from __future__ import annotations

import copy
from typing import Generic, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


class EMA(Generic[M]):
    """`shadow = decay_t * shadow + (1 - decay_t) * weights` after every optimizer step.

    `decay_t = min(decay, (1 + t) / (10 + t))` warms up, so early steps (random weights) are
    forgotten quickly. Buffers (BatchNorm statistics) are copied, not averaged.
    """

    def __init__(self, model: M, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model: M = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the current weights of `model` into the average (`step` counts from 0)."""
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        for shadow, current in zip(self.model.parameters(), model.parameters(), strict=True):
            shadow.lerp_(current.detach(), 1.0 - decay)
        for shadow_buffer, buffer in zip(self.model.buffers(), model.buffers(), strict=True):
            shadow_buffer.copy_(buffer)
