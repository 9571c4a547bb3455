"""A GEMM-shaped denoiser: an MLP over the whole token, modulated by its prototype and the time.

The paper's 1-D conv U-Net (`denoiser.py`) runs a one-channel kernel-7 convolution over each
token: ~290K FLOP per generated value per step at the tiny preset, in shapes that keep a
matrix unit mostly idle. This denoiser treats a token as one vector instead:

    h = in_proj(x) + cond_in(prototype)                      (N, width)
    block k (depth of them), adaLN-style:
        h = h + fc2(gelu(fc1(layer_norm(h) * (1 + scale_k) + shift_k)))
    out = out_proj(layer_norm(h) * (1 + scale_out) + shift_out)  (N, token_size)

Every modulation (shift, scale) is separable: a per-token term from the prototype plus one
term from the time. The time term depends on the step only, so during sampling, when every
token of a call shares one time, it is computed once and broadcast (a `t` expanded from one
value, stride 0, signals it); the prototype term does not change across steps, so samplers
compute it once per sampling call (`condition_terms`) and every step runs only the x path
(`forward_terms`): `2 * (token_size * width * 2 + depth * width * hidden * 2)` FLOP per token.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.diffusion.denoiser import timestep_embedding

__all__ = ["MLPDenoiser"]

# The output projection starts at this fraction of PyTorch's default init: the first
# prediction is close to 0 (the mean of normalized tokens) without blocking the gradients of
# every earlier layer, as a zero init would on the first step.
_OUTPUT_INIT_SCALE = 0.1


class MLPDenoiser(nn.Module):
    """Predicts a noisy token's target (noise or clean data) from the token, the time and the
    token's prototype.

    `forward(x, t, cond)`: `x (N, token_size)`, `t (N,)` times (int64 timesteps or float),
    `cond (N, cond_dim)` prototypes -> `(N, token_size)`. Same interface as
    `ConvUNetDenoiser`; `condition_terms` + `forward_terms` split it for samplers.
    """

    def __init__(
        self,
        token_size: int,
        cond_dim: int,
        *,
        width: int = 256,
        depth: int = 3,
        mlp_ratio: int = 2,
        time_dim: int = 128,
    ) -> None:
        super().__init__()
        for name, value in (
            ("token_size", token_size),
            ("cond_dim", cond_dim),
            ("width", width),
            ("depth", depth),
            ("mlp_ratio", mlp_ratio),
            ("time_dim", time_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if time_dim < 2:
            raise ValueError(f"time_dim must be at least 2 (a sine and a cosine), got {time_dim}")
        self.token_size, self.cond_dim = token_size, cond_dim
        self.width, self.depth, self.mlp_ratio, self.time_dim = width, depth, mlp_ratio, time_dim
        # Modulations: a shift and a scale per block and for the output layer.
        self.num_modulations = 2 * (depth + 1) * width
        hidden = mlp_ratio * width

        self.in_proj = nn.Linear(token_size, width)
        # The prototype enters the input (width) and every modulation (num_modulations).
        self.cond_proj = nn.Linear(cond_dim, width + self.num_modulations)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, self.num_modulations)
        )
        self.fc1 = nn.ModuleList(nn.Linear(width, hidden) for _ in range(depth))
        self.fc2 = nn.ModuleList(nn.Linear(hidden, width) for _ in range(depth))
        self.out_proj = nn.Linear(width, token_size)
        with torch.no_grad():
            self.out_proj.weight.mul_(_OUTPUT_INIT_SCALE)
            self.out_proj.bias.zero_()

    def condition_terms(self, cond: Tensor) -> Tensor:
        """The prototype's part of the input and of every modulation: `(N, cond_dim)` ->
        `(N, width + num_modulations)`. Constant across a sampling call's steps."""
        if cond.ndim != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(
                f"cond must be (N, cond_dim={self.cond_dim}): one prototype per token, "
                f"got shape {tuple(cond.shape)}"
            )
        terms: Tensor = self.cond_proj(cond)
        return terms

    def time_terms(self, t: Tensor) -> Tensor:
        """The time's part of every modulation: `(N,)` -> `(N, num_modulations)`, or `(1, ...)`
        when `t` is one value expanded over the batch (stride 0), as samplers pass it."""
        if t.ndim == 1 and t.shape[0] > 1 and t.stride(0) == 0:
            t = t[:1]  # one time for every token of the call: embed it once
        dtype = self.in_proj.weight.dtype
        freqs = timestep_embedding(t, self.time_dim).to(dtype)  # (n, time_dim)
        terms: Tensor = self.time_mlp(freqs)  # (n, num_modulations)
        return terms

    def forward_terms(self, x: Tensor, t: Tensor, terms: Tensor) -> Tensor:
        """`forward` given `condition_terms(cond)` (`terms`): what each sampling step runs."""
        n, width = x.shape[0], self.width
        if x.ndim != 2 or x.shape[1] != self.token_size:
            raise ValueError(
                f"x must be (N, token_size={self.token_size}), got shape {tuple(x.shape)}"
            )
        if t.shape != (n,):
            raise ValueError(f"t must be ({n},): one time per token, got {tuple(t.shape)}")
        if terms.shape != (n, width + self.num_modulations):
            raise ValueError(
                f"terms must be ({n}, {width + self.num_modulations}) from condition_terms, "
                f"got {tuple(terms.shape)}"
            )
        cond_in, cond_mod = terms[:, :width], terms[:, width:]  # (N, W), (N, M)
        # (N, M) + (N or 1, M): separable modulation, then one (shift, scale) pair per layer
        mod = (cond_mod + self.time_terms(t)).view(n, self.depth + 1, 2, width)  # (N, K+1, 2, W)
        h = self.in_proj(x) + cond_in  # (N, W)
        for k in range(self.depth):
            shift, scale = mod[:, k, 0], mod[:, k, 1]  # (N, W) each
            u = F.layer_norm(h, (width,)) * (1.0 + scale) + shift  # (N, W)
            h = h + self.fc2[k](F.gelu(self.fc1[k](u)))  # (N, W) -> (N, hidden) -> (N, W)
        shift, scale = mod[:, -1, 0], mod[:, -1, 1]
        u = F.layer_norm(h, (width,)) * (1.0 + scale) + shift  # (N, W)
        out: Tensor = self.out_proj(u)  # (N, token_size)
        return out

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Predict the target for `x (N, token_size)` at times `t (N,)` given `cond (N, cond_dim)`."""
        if cond.shape[0] != x.shape[0]:
            raise ValueError(
                f"cond must be ({x.shape[0]}, cond_dim={self.cond_dim}): one prototype per "
                f"token, got shape {tuple(cond.shape)}"
            )
        return self.forward_terms(x, t, self.condition_terms(cond))

    def extra_repr(self) -> str:
        return (
            f"token_size={self.token_size}, cond_dim={self.cond_dim}, width={self.width}, "
            f"depth={self.depth}, mlp_ratio={self.mlp_ratio}"
        )
