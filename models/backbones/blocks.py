"""What every backbone shares: norms, the pre-norm residual block, the stack and its options."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Literal, Protocol, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "NORMS",
    "BackboneStack",
    "CommonOptions",
    "PlainBlock",
    "ResidualBlock",
    "StatefulMixer",
    "make_norm",
]

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


class StatefulMixer(Protocol):
    """A causal mixer that can run a long sequence piece by piece, carrying its state.

    ``forward_chunk(u, state)`` on consecutive pieces of a sequence gives the outputs that
    ``forward`` gives on the whole (up to float rounding), starting from ``initial_state``.
    """

    num_states: int  # tensors in the state tuple

    def initial_state(self, u: Tensor) -> tuple[Tensor, ...]:
        """The state before the first step, for a batch like ``u`` (b, L, d)."""
        ...

    def forward_chunk(
        self, u: Tensor, state: tuple[Tensor, ...]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """(b, l, d) piece and the state before it -> outputs and the state after it."""
        ...


class ResidualBlock(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))``."""

    def __init__(self, mixer: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.mixer = mixer

    def forward(self, x: Tensor) -> Tensor:
        """(b, L, d) -> (b, L, d)."""
        return x + self.mixer(self.norm(x))

    def forward_chunk(
        self, x: Tensor, state: tuple[Tensor, ...]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One piece of a sequence with the mixer's carried state (stateful mixers only)."""
        y, state = cast(StatefulMixer, self.mixer).forward_chunk(self.norm(x), state)
        return x + y, state


class PlainBlock(nn.Module):
    """A bare mixer, ``x -> mixer(x)``: the official RPG code stacks Mamba2s this way."""

    def __init__(self, mixer: nn.Module) -> None:
        super().__init__()
        self.mixer = mixer

    def forward(self, x: Tensor) -> Tensor:
        """(b, L, d_in) -> (b, L, d_out)."""
        out: Tensor = self.mixer(x)
        return out

    def forward_chunk(
        self, x: Tensor, state: tuple[Tensor, ...]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One piece of a sequence with the mixer's carried state (stateful mixers only)."""
        return cast(StatefulMixer, self.mixer).forward_chunk(x, state)


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
        self.d_output = d_model  # channels of the prototypes (wider with a "post_d_model")
        self.layers = nn.ModuleList(layers)
        self.norm_f = norm_f

    def forward(self, x: Tensor, *, checkpoint_chunk: int | None = None) -> Tensor:
        """Map ``x`` (b, L, d_model), L >= 1, to prototypes of the same shape.

        ``checkpoint_chunk`` (training on long sequences): when gradients are on, run the
        sequence in pieces of that many steps under activation checkpointing, carrying each
        layer's recurrent state from piece to piece, so backward holds one piece's activations
        at a time instead of the whole sequence's. Same result up to float rounding. Mixers
        without a carried state (attention, gMLP) are checkpointed per layer instead.
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"{self.kind} backbone expects input (batch, length, {self.d_model}); got shape "
                f"{tuple(x.shape)} (add a batch dim with x.unsqueeze(0) for a single sequence)"
            )
        if x.shape[1] < 1:
            raise ValueError(f"{self.kind} backbone needs a sequence length >= 1; got 0")
        if checkpoint_chunk is not None and torch.is_grad_enabled():
            return self._forward_checkpointed(x, checkpoint_chunk)
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)

    def _forward_checkpointed(self, x: Tensor, chunk: int) -> Tensor:
        if chunk < 1:
            raise ValueError(f"checkpoint_chunk must be >= 1; got {chunk}")
        if not self.stateful:
            for layer in self.layers:
                x = checkpoint(layer, x, use_reentrant=False)
            return self.norm_f(x)
        flat = self.initial_state(x)
        outs = []
        for start in range(0, x.shape[1], chunk):
            y, *flat = checkpoint(
                self.forward_chunk, x[:, start : start + chunk], *flat, use_reentrant=False
            )
            outs.append(y)  # (b, chunk, d)
        return torch.cat(outs, dim=1)  # (b, L, d)

    @property
    def stateful(self) -> bool:
        """Whether every layer can run a sequence piece by piece (``forward_chunk``)."""
        return all(hasattr(getattr(layer, "mixer", None), "forward_chunk") for layer in self.layers)

    def initial_state(self, x: Tensor) -> list[Tensor]:
        """Every layer's state before the first step, flattened, for a batch like x (b, L, d)."""
        return [t for layer in self.layers for t in _mixer(layer).initial_state(x)]

    def forward_chunk(self, x: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        """One piece (b, l, d) from the flat states before it -> (prototypes, states after)."""
        new: list[Tensor] = []
        i = 0
        for layer in self.layers:
            n = _mixer(layer).num_states
            x, state = cast(ResidualBlock, layer).forward_chunk(x, tuple(flat[i : i + n]))
            new.extend(state)
            i += n
        return (self.norm_f(x), *new)

    @property
    def num_layers(self) -> int:
        """Number of residual layers."""
        return len(self.layers)


def _mixer(layer: nn.Module) -> StatefulMixer:
    return cast(StatefulMixer, layer.mixer)
