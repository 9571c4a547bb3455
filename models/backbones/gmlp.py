"""gMLP backbone (Liu et al. 2021, "Pay Attention to MLPs") with a convolutional gate.

The original spatial gating unit mixes tokens with an (L x L) matrix, which fixes the sequence
length. Here the gate mixes tokens with a depthwise 1-D convolution along the sequence
("same" padding), so any length works and the cost is linear in L.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones.blocks import BackboneStack, CommonOptions, ResidualBlock, make_norm

__all__ = ["GMLPMixer", "GMLPOptions", "SpatialGatingUnit", "build_gmlp"]


class SpatialGatingUnit(nn.Module):
    """``u * conv(norm(v))`` for the two halves u, v of the hidden channels."""

    def __init__(self, d_hidden: int, kernel: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_hidden)
        self.conv = nn.Conv1d(d_hidden, d_hidden, kernel, groups=d_hidden, padding="same")
        # As in the paper: weights near zero and bias 1, so the gate starts close to identity
        # (u * 1) and training is not disturbed early. Not exactly zero, or nothing upstream of
        # the gate (its norm) would get a gradient on the first step.
        nn.init.normal_(self.conv.weight, std=1e-2)
        if self.conv.bias is not None:  # always: bias=True above
            nn.init.ones_(self.conv.bias)

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        """u, v (b, L, d_hidden) -> (b, L, d_hidden)."""
        gate = self.conv(self.norm(v).transpose(1, 2)).transpose(1, 2)  # conv over L: (b, d, L)
        return u * gate


class GMLPMixer(nn.Module):
    """Channel projection up, GELU, spatial gating, projection down: (b, L, d) -> (b, L, d)."""

    def __init__(self, d_model: int, d_hidden: int, kernel: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(d_model, 2 * d_hidden)
        self.sgu = SpatialGatingUnit(d_hidden, kernel)
        self.out_proj = nn.Linear(d_hidden, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """Mix channels, then tokens within ``kernel`` of each other."""
        u, v = torch.chunk(F.gelu(self.in_proj(x)), 2, dim=-1)
        return self.out_proj(self.sgu(u, v))


@dataclass
class GMLPOptions(CommonOptions):
    """Options of the ``gmlp`` backbone.

    ``kernel``: width of the token-mixing convolution. ``expand``: hidden width of each half
    (u, v) as a multiple of d_model.
    """

    kernel: int = 7
    expand: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("kernel", "expand"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"gmlp: {name} must be a positive int; got {value!r}")


def build_gmlp(d_model: int, num_layers: int, options: GMLPOptions) -> BackboneStack:
    """A stack of ``num_layers`` pre-norm residual gMLP blocks and a final norm."""
    layers = [
        ResidualBlock(
            GMLPMixer(d_model, options.expand * d_model, options.kernel),
            make_norm(options.norm, d_model, options.norm_eps),
        )
        for _ in range(num_layers)
    ]
    return BackboneStack(
        "gmlp", d_model, layers, make_norm(options.norm, d_model, options.norm_eps)
    )
