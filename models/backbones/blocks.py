"""What every backbone shares: norms, the pre-norm residual block, the stack and its options."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Literal

from torch import Tensor, nn

__all__ = ["NORMS", "BackboneStack", "CommonOptions", "ResidualBlock", "make_norm"]

NormKind = Literal["rmsnorm", "layernorm"]
NORMS: tuple[str, ...] = ("rmsnorm", "layernorm")


@dataclass
class CommonOptions:
    """Options every backbone accepts: the kind of norm and its epsilon."""

    norm: NormKind = "rmsnorm"
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {self.norm!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0; got {self.norm_eps!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names this class accepts, in declaration order."""
        return tuple(f.name for f in fields(cls))


def make_norm(kind: str, d_model: int, eps: float) -> nn.Module:
    """An ``nn.RMSNorm`` or ``nn.LayerNorm`` over the last dim (both with a learnable weight)."""
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model, eps=eps)
    if kind == "layernorm":
        return nn.LayerNorm(d_model, eps=eps)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {kind!r}")


class ResidualBlock(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))``."""

    def __init__(self, mixer: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.mixer = mixer

    def forward(self, x: Tensor) -> Tensor:
        """(b, L, d) -> (b, L, d)."""
        return x + self.mixer(self.norm(x))


class BackboneStack(nn.Module):
    """Residual layers then a final norm: (b, L, d_model) -> (b, L, d_model).

    Parameter names follow ``mamba_ssm``'s mixer model: ``layers.{i}.norm``,
    ``layers.{i}.mixer``, ``norm_f``.
    """

    def __init__(
        self, kind: str, d_model: int, layers: Iterable[nn.Module], norm_f: nn.Module
    ) -> None:
        super().__init__()
        self.kind = kind
        self.d_model = d_model
        self.layers = nn.ModuleList(layers)
        self.norm_f = norm_f

    def forward(self, x: Tensor) -> Tensor:
        """Map ``x`` (b, L, d_model), L >= 1, to prototypes of the same shape."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"{self.kind} backbone expects input (batch, length, {self.d_model}); got shape "
                f"{tuple(x.shape)} (add a batch dim with x.unsqueeze(0) for a single sequence)"
            )
        if x.shape[1] < 1:
            raise ValueError(f"{self.kind} backbone needs a sequence length >= 1; got 0")
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)

    @property
    def num_layers(self) -> int:
        """Number of residual layers."""
        return len(self.layers)
