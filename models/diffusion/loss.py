"""The DDPM training objective with RPG's NaN padding mask."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from models.diffusion.schedule import NoiseSchedule

__all__ = ["diffusion_loss", "masked_mse"]


def diffusion_loss(
    denoiser: Callable[[Tensor, Tensor, Tensor], Tensor],
    schedule: NoiseSchedule,
    x0: Tensor,
    cond: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Epsilon-prediction loss of Ho et al. (2020), eq. 14 (L_simple), over real values only.

    `x0 (N, token_size)` are clean tokens where NaN marks padding; `cond (N, cond_dim)` their
    prototypes. Draws `t ~ U{0, ..., T-1}` and `eps ~ N(0, I)` per token from `generator`
    (or torch's global RNG when it is None, like any training step), noises `x0` with NaN
    read as 0, and returns the mean squared error between predicted and true noise over
    the non-NaN positions: a float32 scalar. A batch that is all padding gives 0.
    """
    if x0.ndim != 2:
        raise ValueError(f"x0 must be (N, token_size), got shape {tuple(x0.shape)}")
    if cond.ndim != 2 or cond.shape[0] != x0.shape[0]:
        raise ValueError(
            f"cond must be (N={x0.shape[0]}, cond_dim): one prototype per token, "
            f"got shape {tuple(cond.shape)}"
        )
    if not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point tensor, got dtype {x0.dtype}")
    n = x0.shape[0]
    real = ~torch.isnan(x0)
    # Padding enters the network as 0 so it never poisons the convs; it is masked below.
    x0 = torch.where(real, x0, torch.zeros((), dtype=x0.dtype, device=x0.device))
    t = torch.randint(
        0, schedule.num_timesteps, (n,), generator=generator, device=x0.device, dtype=torch.long
    )
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = schedule.q_sample(x0, t, noise)
    pred = denoiser(x_t, t, cond)
    if pred.shape != x0.shape:
        raise ValueError(
            f"the denoiser returned shape {tuple(pred.shape)} for input {tuple(x0.shape)}; "
            "it must predict one noise value per token value"
        )
    return _mean_over(real, pred, noise)


def masked_mse(pred: Tensor, target: Tensor, row_weights: Tensor | None = None) -> Tensor:
    """Mean squared error of `pred` against `target (N, token_size)` over target's non-NaN
    values (NaN marks padding): a float32 scalar, 0 for an all-padding batch.

    `row_weights (N,)`: each row's values count this many times (a weighted mean).
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred has shape {tuple(pred.shape)}, target {tuple(target.shape)}; they must match"
        )
    real = ~torch.isnan(target)
    target = torch.where(real, target, torch.zeros_like(target))
    return _mean_over(real, pred, target, row_weights)


def _mean_over(
    real: Tensor, pred: Tensor, target: Tensor, row_weights: Tensor | None = None
) -> Tensor:
    # float32 even under bf16 autocast: a mean over 10^5..10^7 squared errors.
    sq_err = (pred.float() - target.float()).square()
    sq_err = torch.where(real, sq_err, torch.zeros((), dtype=sq_err.dtype, device=real.device))
    # The clamps turn an all-padding batch into 0 instead of 0 / 0 (without a host sync).
    if row_weights is None:
        return sq_err.sum() / real.sum().clamp(min=1)
    weights = row_weights.float().unsqueeze(1)  # (N, 1)
    return (sq_err * weights).sum() / (real * weights).sum().clamp(min=1e-12)
