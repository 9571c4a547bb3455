"""LSTM backbone: pre-norm residual blocks around single-layer, unidirectional ``nn.LSTM``s."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.backbones.blocks import BackboneStack, CommonOptions, ResidualBlock, make_norm

__all__ = ["LSTMMixer", "LSTMOptions", "build_lstm"]


class LSTMMixer(nn.Module):
    """One unidirectional LSTM layer (hidden size d_model): (b, L, d) -> (b, L, d), causal."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d_model, d_model, num_layers=1, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        """Run the LSTM from a zero state; return the hidden state at every step.

        Under CPU autocast the LSTM runs in float32: oneDNN has no reduced-precision LSTM on
        CPUs without native bf16 (it raises "could not create a primitive descriptor"), and
        one precision on every CPU keeps results the same from host to host.
        """
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                out, _ = self.lstm(x.float())
            return out
        out, _ = self.lstm(x)
        return out

    num_states = 2  # see initial_state

    def initial_state(self, u: Tensor) -> tuple[Tensor, ...]:
        """Zero (h, c), each (1, b, d) in float32."""
        zeros = u.new_zeros(1, u.shape[0], self.lstm.hidden_size, dtype=torch.float32)
        return zeros, zeros.clone()

    def forward_chunk(
        self, u: Tensor, state: tuple[Tensor, ...]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One piece of the sequence from the carried (h, c)."""
        h, c = state
        if u.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                out, (h, c) = self.lstm(u.float(), (h, c))
            return out, (h, c)
        out, (h, c) = self.lstm(u, (h.to(u.dtype), c.to(u.dtype)))
        return out, (h, c)


@dataclass
class LSTMOptions(CommonOptions):
    """Options of the ``lstm`` backbone (only the shared norm options)."""


def build_lstm(d_model: int, num_layers: int, options: LSTMOptions) -> BackboneStack:
    """A stack of ``num_layers`` pre-norm residual LSTM blocks and a final norm."""
    layers = [
        ResidualBlock(LSTMMixer(d_model), make_norm(options.norm, d_model, options.norm_eps))
        for _ in range(num_layers)
    ]
    return BackboneStack(
        "lstm", d_model, layers, make_norm(options.norm, d_model, options.norm_eps)
    )
