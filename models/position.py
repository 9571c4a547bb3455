"""Position embeddings for parameter tokens (RPG.md "Pipeline", step 2).

Every token of a tokenized model gets a vector that says where it sits: by default a fixed
2-D sinusoidal code whose first half encodes the tensor (layer) index and second half the
token index inside that tensor. The paper found this as good as a learned table, and being
fixed it costs no checkpoint space: fixed tables are non-persistent buffers, rebuilt from
the tokenizer's positions.
"""

from __future__ import annotations

import math
from typing import get_args

import torch
from torch import Tensor, nn

from models.config import PositionKind

__all__ = ["PositionEmbedding", "PositionKind", "sinusoidal_embedding"]


# Wavelengths span 2*pi .. 2*pi*10000 tokens, as in "Attention Is All You Need".
_MAX_PERIOD = 10000.0
_LEARNED_INIT_STD = 0.02


def sinusoidal_embedding(index: Tensor, dim: int) -> Tensor:
    """Fixed sin/cos code of integer positions: `(n,)` -> `(n, dim)` float32, `dim` even.

    Channel `j < dim/2` is `sin(index * w_j)`, channel `dim/2 + j` is `cos(index * w_j)`,
    with frequencies `w_j = 10000 ** (-j / (dim/2))` from 1 down towards 1/10000.
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"sinusoidal embedding needs an even dim >= 2, got {dim}")
    half = dim // 2
    # float64 keeps index * w exact enough for indices in the millions.
    frequencies = torch.exp(-math.log(_MAX_PERIOD) * torch.arange(half, dtype=torch.float64) / half)
    angles = index.to(torch.float64)[:, None] * frequencies[None, :]  # (n, half)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()  # (n, dim)


class PositionEmbedding(nn.Module):
    """One embedding vector per token, `forward() -> (num_tokens, dim)`.

    `positions` is `ParameterTokenizer.positions()`: a `(num_tokens, 2)` integer tensor of
    (tensor index, token index inside the tensor). Kinds:
    - "2d": fixed sinusoidal; `dim/2` channels for the tensor index, `dim/2` for the token
      index (dim divisible by 4);
    - "1d": fixed sinusoidal of the flat token index (dim even);
    - "learned": a `(num_tokens, dim)` parameter with a small random init.
    """

    def __init__(self, positions: Tensor, dim: int, kind: PositionKind = "2d") -> None:
        super().__init__()
        if kind not in get_args(PositionKind):
            raise ValueError(f"kind must be one of {get_args(PositionKind)}, got {kind!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if kind == "2d" and dim % 4:
            raise ValueError(
                f"2d position embedding needs dim divisible by 4 (two sin/cos halves), got "
                f"{dim}; use e.g. {dim + (-dim) % 4}"
            )
        if kind == "1d" and dim % 2:
            raise ValueError(f"1d position embedding needs an even dim, got {dim}; use {dim + 1}")
        if (
            not isinstance(positions, Tensor)
            or positions.dim() != 2
            or positions.shape[1] != 2
            or positions.is_floating_point()
            or positions.is_complex()
        ):
            raise ValueError(
                "positions must be an integer tensor of shape (num_tokens, 2), as returned by "
                "ParameterTokenizer.positions()"
            )
        # A meta tensor (shapes only: models.bundle_check) has no values to check.
        if positions.numel() and not positions.is_meta and int(positions.min()) < 0:
            raise ValueError("positions must be non-negative (tensor index, token index) pairs")
        self.kind: PositionKind = kind
        self.dim = dim
        self.num_tokens = positions.shape[0]

        self.table: Tensor | nn.Parameter
        if kind == "learned":
            self.table = nn.Parameter(torch.randn(self.num_tokens, dim) * _LEARNED_INIT_STD)
            return
        if not positions.is_meta:
            positions = positions.detach().to("cpu", torch.long)
        if kind == "2d":
            table = torch.cat(
                [
                    sinusoidal_embedding(positions[:, 0], dim // 2),  # which tensor
                    sinusoidal_embedding(positions[:, 1], dim // 2),  # where inside it
                ],
                dim=1,
            )  # (num_tokens, dim)
        else:
            table = sinusoidal_embedding(torch.arange(self.num_tokens), dim)
        # Non-persistent: rebuilt from positions, so checkpoints do not carry it.
        self.register_buffer("table", table, persistent=False)

    def forward(self) -> Tensor:
        """The `(num_tokens, dim)` embedding table."""
        return self.table

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, dim={self.dim}, kind={self.kind!r}"
