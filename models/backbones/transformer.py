"""Transformer backbone: pre-norm self-attention + feed-forward layers.

Attention runs through ``F.scaled_dot_product_attention``, which picks a memory-efficient
kernel (flash / memory-efficient on CUDA, flash on CPU) so tens of thousands of tokens fit.
Bidirectional by default: the backbone's input is position + permutation + condition
embeddings, known for every token up front, so nothing forces causality (``causal=True``
is there for comparison with the recurrent backbones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones.blocks import BackboneStack, CommonOptions, ResidualBlock, make_norm

__all__ = [
    "FeedForward",
    "SelfAttention",
    "TransformerLayer",
    "TransformerOptions",
    "build_transformer",
]


class SelfAttention(nn.Module):
    """Multi-head self-attention: (b, L, d) -> (b, L, d)."""

    def __init__(
        self, d_model: int, n_heads: int, *, causal: bool = False, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.causal = causal
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """Attend over all positions (or the past only, when causal)."""
        b, L, d = x.shape
        # (b, L, 3d) -> (b, L, 3, heads, d/heads) -> (3, b, heads, L, d/heads)
        q, k, v = (
            self.qkv(x).reshape(b, L, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        )
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal
        )
        return self.out_proj(y.transpose(1, 2).reshape(b, L, d))  # (b, heads, L, dh) -> (b, L, d)


class FeedForward(nn.Module):
    """Position-wise MLP: Linear -> GELU -> Linear."""

    def __init__(self, d_model: int, d_hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """(b, L, d) -> (b, L, d)."""
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerLayer(nn.Module):
    """One encoder layer: two pre-norm residual blocks, attention then feed-forward."""

    def __init__(self, attn: ResidualBlock, mlp: ResidualBlock) -> None:
        super().__init__()
        self.attn = attn
        self.mlp = mlp

    def forward(self, x: Tensor) -> Tensor:
        """(b, L, d) -> (b, L, d)."""
        return self.mlp(self.attn(x))


@dataclass
class TransformerOptions(CommonOptions):
    """Options of the ``transformer`` backbone.

    ``n_heads``: None means ``max(1, d_model // 64)``. ``mlp_ratio``: feed-forward width as a
    multiple of d_model. ``dropout``: attention dropout (training only).
    """

    n_heads: int | None = None
    mlp_ratio: int = 4
    causal: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_heads is not None and (isinstance(self.n_heads, bool) or self.n_heads < 1):
            raise ValueError(
                f"n_heads must be a positive int (or None for d_model // 64); got {self.n_heads!r}"
            )
        if (
            isinstance(self.mlp_ratio, bool)
            or not isinstance(self.mlp_ratio, int)
            or self.mlp_ratio < 1
        ):
            raise ValueError(f"mlp_ratio must be a positive int; got {self.mlp_ratio!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout!r}")


def build_transformer(d_model: int, num_layers: int, options: TransformerOptions) -> BackboneStack:
    """A stack of ``num_layers`` pre-norm encoder layers and a final norm."""
    n_heads = options.n_heads if options.n_heads is not None else max(1, d_model // 64)
    if d_model % n_heads != 0:
        raise ValueError(
            f"transformer: d_model ({d_model}) must be a multiple of n_heads ({n_heads}); "
            "pass an n_heads that divides d_model"
        )

    def norm() -> nn.Module:
        return make_norm(options.norm, d_model, options.norm_eps)

    layers = [
        TransformerLayer(
            ResidualBlock(
                SelfAttention(d_model, n_heads, causal=options.causal, dropout=options.dropout),
                norm(),
            ),
            ResidualBlock(FeedForward(d_model, options.mlp_ratio * d_model), norm()),
        )
        for _ in range(num_layers)
    ]
    return BackboneStack("transformer", d_model, layers, norm())
