"""The DDPM noise schedule: beta tables and the forward (noising) process.

Every table is computed once in float64 and stored as a float32 buffer: cumulative products
over 1000 steps lose digits in float32, and the samplers divide by `sqrt(alphas_cumprod)`,
which is tiny near t = T. The buffers are non-persistent: the schedule is rebuilt from its
`config`, so checkpoints never carry (or disagree about) derived tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.config import ScheduleKind

__all__ = ["NoiseSchedule", "ScheduleKind", "extract"]


_KINDS: tuple[str, ...] = ("linear", "cosine")

# Nichol & Dhariwal (2021), eq. 17: the offset keeps beta_0 from being vanishingly small,
# and betas are capped below 1 so that no step destroys the signal completely.
_COSINE_OFFSET = 0.008
_COSINE_MAX_BETA = 0.999


def extract(a: Tensor, t: Tensor, shape: Sequence[int] | torch.Size) -> Tensor:
    """Gather `a[t]` and reshape it to broadcast against a tensor of shape `shape`.

    `a` is a 1-D table indexed by timestep, `t` a 1-D int64 tensor with one timestep per
    sample (`len(t) == shape[0]`, or 1 to broadcast). Returns `(len(t), 1, ..., 1)` with
    `len(shape)` dimensions.
    """
    if a.ndim != 1:
        raise ValueError(f"extract: the table must be 1-D, got shape {tuple(a.shape)}")
    if t.ndim != 1:
        raise ValueError(
            f"extract: t must be 1-D (one timestep per sample), got shape {tuple(t.shape)}; "
            "use t.reshape(-1)"
        )
    if len(shape) == 0:
        raise ValueError("extract: the target shape needs a batch dimension")
    if t.shape[0] not in (1, shape[0]):
        raise ValueError(
            f"extract: t has {t.shape[0]} timesteps but the batch has {shape[0]} samples"
        )
    out = a.gather(0, t.to(device=a.device, dtype=torch.long))
    # (B,) -> (B, 1, ..., 1) so it broadcasts over every non-batch dimension
    return out.reshape(t.shape[0], *([1] * (len(shape) - 1)))


def _betas(num_timesteps: int, beta_start: float, beta_end: float, kind: str) -> np.ndarray:
    if kind == "linear":
        return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    # cosine: alphas_cumprod(t) = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return np.clip(betas, 0.0, _COSINE_MAX_BETA)


class NoiseSchedule(nn.Module):
    """Variance schedule of a DDPM (Ho et al. 2020) with its derived tables.

    Buffers (float32, one entry per timestep `t = 0 .. num_timesteps - 1`):
    `betas`, `alphas`, `alphas_cumprod`, `alphas_cumprod_prev` (with `alphas_cumprod_prev[0]
    = 1`), `sqrt_alphas_cumprod`, `sqrt_one_minus_alphas_cumprod`, `sqrt_recip_alphas_cumprod`,
    `sqrt_recipm1_alphas_cumprod` (`sqrt(1 / a - 1)`), `posterior_variance` (beta tilde, eq. 7),
    `posterior_log_variance_clipped` (entry 0 copied from entry 1, since the variance is 0
    there), `posterior_mean_coef1` / `posterior_mean_coef2` (eq. 7: the weights of x0 and x_t).

    `kind="linear"` spaces betas evenly from `beta_start` to `beta_end` (the paper's default);
    `kind="cosine"` uses Nichol & Dhariwal (2021) and ignores `beta_start` / `beta_end`.
    """

    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        kind: ScheduleKind = "linear",
    ) -> None:
        super().__init__()
        if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int):
            raise TypeError(f"num_timesteps must be an int, got {num_timesteps!r}")
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be at least 2, got {num_timesteps}")
        if kind not in _KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; choose one of {list(_KINDS)}")
        if not (0.0 < beta_start <= beta_end < 1.0):
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, "
                f"beta_end={beta_end} (the paper uses 1e-4 and 0.02)"
            )
        self.num_timesteps = num_timesteps
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.kind: ScheduleKind = kind

        betas = _betas(num_timesteps, self.beta_start, self.beta_end, kind)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        tables = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
            "posterior_variance": posterior_variance,
            # The variance is 0 at t = 0; its log would be -inf, so borrow entry 1 there.
            "posterior_log_variance_clipped": np.log(
                np.append(posterior_variance[1], posterior_variance[1:])
            ),
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev)
            * np.sqrt(alphas)
            / (1.0 - alphas_cumprod),
        }
        for name, values in tables.items():
            buffer = torch.from_numpy(values).to(torch.float32)
            self.register_buffer(name, buffer, persistent=False)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-safe arguments that rebuild this schedule: `NoiseSchedule(**s.config)`."""
        return {
            "num_timesteps": self.num_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "kind": self.kind,
        }

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) (Ho et al. 2020, eq. 4): `sqrt(a_t) x0 + sqrt(1 - a_t) noise`.

        `x0` and `noise` share a shape whose first dimension is the batch; `t` is `(batch,)`
        int64. The result has the dtype of `x0`.
        """
        if noise.shape != x0.shape:
            raise ValueError(
                f"noise has shape {tuple(noise.shape)} but x0 has {tuple(x0.shape)}; "
                "draw the noise with torch.randn_like(x0)"
            )
        self._check_timesteps(t)
        signal = extract(self.sqrt_alphas_cumprod, t, x0.shape)
        sigma = extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape)
        return (signal * x0 + sigma * noise).to(x0.dtype)

    def _check_timesteps(self, t: Tensor) -> None:
        if t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"timesteps must be an integer tensor, got dtype {t.dtype}")

    def extra_repr(self) -> str:
        return (
            f"num_timesteps={self.num_timesteps}, kind={self.kind!r}, "
            f"beta_start={self.beta_start}, beta_end={self.beta_end}"
        )
