"""The paper's RPG denoiser: a small 1-D convolutional U-Net over one parameter token.

A token (`token_size` values) is a 1-channel sequence. Every conv layer sees
`(h + cond_l) * time_l`, where `cond_l` and `time_l` are learned projections of the token's
prototype (from the recurrent backbone) and of the timestep embedding, each of length
`token_size` and broadcast over channels. Encoder and decoder layers of equal width are joined
by additive skips.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.config import CondProjection, NormKind

__all__ = ["ConvUNetDenoiser", "timestep_embedding"]


# The output conv starts at this fraction of PyTorch's default init (see __init__).
_OUTPUT_INIT_SCALE = 0.1
_MAX_GROUPS = 8


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017; Ho et al. 2020).

    `t` is `(N,)`; returns `(N, dim)` float32: `dim // 2` cosines then `dim // 2` sines with
    geometrically spaced frequencies from 1 to `1 / max_period`, zero-padded when `dim` is odd.
    """
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) / max(half, 1)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t.to(torch.float32)[:, None] * freqs[None, :]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2 * half)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))  # (N, dim)
    return emb


def _norm(kind: NormKind, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    # The largest group count <= 8 that divides the width, so any width works.
    groups = max(g for g in range(1, _MAX_GROUPS + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _check_channels(channels: Sequence[int]) -> tuple[int, ...]:
    chans = tuple(channels)
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in chans):
        raise ValueError(f"channels must be positive ints, got {chans}")
    if len(chans) < 3 or len(chans) % 2 == 0:
        raise ValueError(
            f"channels must have an odd length >= 3 (encoder widths, bottleneck, mirrored "
            f"decoder widths), got {len(chans)} entries: {chans}; e.g. (1, 32, 64, 128, 64, 32, 1)"
        )
    if chans != chans[::-1]:
        raise ValueError(
            f"channels must be symmetric so that mirrored layers can share skips, got {chans}"
        )
    if chans[0] != 1:
        raise ValueError(
            f"channels must start and end with 1 (a token is one channel), got {chans}"
        )
    return chans


class ConvUNetDenoiser(nn.Module):
    """Predicts the noise in a batch of noisy tokens, given each token's prototype.

    `forward(x, t, cond)`: `x (N, token_size)` noisy tokens, `t (N,)` int64 timesteps,
    `cond (N, cond_dim)` prototypes -> `(N, token_size)` predicted noise.

    `channels` lists the widths from input to output, e.g. `(1, 32, 64, 128, 64, 32, 1)`:
    one conv layer per consecutive pair, each followed by `norm` + ELU except the last.
    The output of encoder layer `i` is added to the decoder output of the same width.
    `cond_projection="per_layer"` (default) gives each layer its own `Linear(cond_dim,
    token_size)`; `"shared"` uses one for all layers, which saves `(L - 1) * cond_dim *
    token_size` parameters at large token sizes.

    With `norm="batch"`, use `eval()` for sampling: running statistics then make each token's
    output independent of the other tokens in its batch.
    """

    def __init__(
        self,
        token_size: int,
        cond_dim: int,
        channels: Sequence[int] = (1, 32, 64, 128, 64, 32, 1),
        kernel_size: int = 7,
        time_dim: int = 128,
        norm: NormKind = "batch",
        *,
        cond_projection: CondProjection = "per_layer",
    ) -> None:
        super().__init__()
        for name, value in (
            ("token_size", token_size),
            ("cond_dim", cond_dim),
            ("kernel_size", kernel_size),
            ("time_dim", time_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if time_dim < 2:
            raise ValueError(f"time_dim must be at least 2 (a sine and a cosine), got {time_dim}")
        if norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group', got {norm!r}")
        if cond_projection not in ("per_layer", "shared"):
            raise ValueError(
                f"cond_projection must be 'per_layer' or 'shared', got {cond_projection!r}"
            )
        self.channels = _check_channels(channels)
        self.token_size = token_size
        self.cond_dim = cond_dim
        self.kernel_size = kernel_size
        self.time_dim = time_dim
        self.norm = norm
        self.cond_projection = cond_projection
        num_layers = len(self.channels) - 1

        # A shared MLP gives the timestep a nonlinear feature space; each layer then reads
        # the slice it needs through its own linear projection.
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        num_cond = num_layers if cond_projection == "per_layer" else 1
        self.cond_proj = nn.ModuleList(nn.Linear(cond_dim, token_size) for _ in range(num_cond))
        self.time_proj = nn.ModuleList(nn.Linear(time_dim, token_size) for _ in range(num_layers))
        # "same" padding keeps the token length for any kernel size, even ones longer
        # than the token.
        self.convs = nn.ModuleList(
            nn.Conv1d(c_in, c_out, kernel_size, padding="same")
            for c_in, c_out in zip(self.channels[:-1], self.channels[1:], strict=True)
        )
        self.norms = nn.ModuleList(_norm(norm, c) for c in self.channels[1:-1])
        self.act = nn.ELU()

        # Why these inits:
        # - The time factor is `1 + proj(t_emb)`, not `proj(t_emb)`: a raw product of L small
        #   factors (default Linear init gives |proj| ~ 0.3) would shrink the signal, and its
        #   gradients, geometrically with depth; around 1 each layer starts close to a plain
        #   conv of `h + cond`, and the time modulation is learned as a deviation.
        # - The output conv starts at a tenth of its default scale, so the predicted noise
        #   starts near 0 and the first loss is about E[eps^2] = 1 (the trivial predictor)
        #   instead of 1 + Var(random output). Not exactly 0: a zero output layer would
        #   block every earlier layer's gradient on the first step.
        out_conv = self.convs[-1]
        assert isinstance(out_conv, nn.Conv1d)
        with torch.no_grad():
            out_conv.weight.mul_(_OUTPUT_INIT_SCALE)
            if out_conv.bias is not None:
                out_conv.bias.zero_()

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Predict the noise in `x (N, token_size)` at timesteps `t (N,)` given `cond (N, cond_dim)`."""
        self._check_inputs(x, t, cond)
        num_layers = len(self.convs)
        half = num_layers // 2
        freqs = timestep_embedding(t, self.time_dim).to(next(self.time_mlp.parameters()).dtype)
        t_emb = self.time_mlp(freqs)  # (N, time_dim)

        h = x.unsqueeze(1)  # (N, token_size) -> (N, 1, token_size)
        skips: list[Tensor] = []
        for i, conv in enumerate(self.convs):
            proj = self.cond_proj[i if len(self.cond_proj) > 1 else 0]
            cond_l = proj(cond).unsqueeze(1)  # (N, cond_dim) -> (N, 1, token_size)
            time_l = 1.0 + self.time_proj[i](t_emb).unsqueeze(1)  # (N, 1, token_size)
            h = conv((h + cond_l) * time_l)  # (N, channels[i + 1], token_size)
            if i == num_layers - 1:
                break
            h = self.act(self.norms[i](h))
            if i < half - 1:
                # encoder output of width channels[i + 1], saved for its mirrored decoder layer
                skips.append(h)
            elif i >= half:
                # decoder layer i has width channels[i + 1] == channels[num_layers - 1 - i]
                h = h + skips.pop()
        return h.squeeze(1)  # (N, 1, token_size) -> (N, token_size)

    def _check_inputs(self, x: Tensor, t: Tensor, cond: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.token_size:
            raise ValueError(
                f"x must be (N, token_size={self.token_size}), got shape {tuple(x.shape)}"
            )
        n = x.shape[0]
        if t.shape != (n,):
            raise ValueError(f"t must be ({n},): one timestep per token, got {tuple(t.shape)}")
        if cond.shape != (n, self.cond_dim):
            raise ValueError(
                f"cond must be ({n}, cond_dim={self.cond_dim}): one prototype per token, "
                f"got {tuple(cond.shape)}"
            )

    def extra_repr(self) -> str:
        return (
            f"token_size={self.token_size}, cond_dim={self.cond_dim}, "
            f"channels={self.channels}, norm={self.norm!r}, cond_projection={self.cond_projection!r}"
        )
