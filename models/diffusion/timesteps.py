"""Which timesteps a few-step sampler visits: DDIM's integer spacings and log-SNR spacing.

Pure functions of the schedule's size (or its `alphas_cumprod`); the samplers read them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from models.diffusion.schedule import NoiseSchedule

__all__ = ["SolverSpacing", "Spacing", "ddim_timesteps", "logsnr_timesteps"]

Spacing = Literal["uniform", "trailing", "leading"]
_SPACINGS: tuple[str, ...] = ("uniform", "trailing", "leading")
SolverSpacing = Literal["logsnr", "uniform", "trailing", "leading"]
"""DPM-Solver++'s timestep choices: `"logsnr"` (`logsnr_timesteps`) or one of DDIM's."""


def logsnr_timesteps(schedule: NoiseSchedule, steps: int) -> list[int]:
    """`steps` timesteps from `T - 1` down to 0, evenly spaced in lambda = log(alpha / sigma)
    (half the log-SNR), each the nearest discrete timestep (kept strictly decreasing).

    DPM-Solver's "logSNR" option (Lu et al. 2022): the solvers integrate in lambda, so equal
    steps there keep r_i = h_(i-1) / h_i at 1, and the last step starts at t = 0. With an
    exact noise predictor it is the most accurate choice; with a trained one its first long
    jumps from pure noise hurt (see `sample_dpm_solver_pp`).
    """
    big_t = schedule.num_timesteps
    ddim_timesteps(big_t, steps)  # the same checks of `steps`
    lam = [
        0.5 * (math.log(a) - math.log1p(-a))
        for a in schedule.alphas_cumprod.detach().to("cpu", torch.float64).tolist()
    ]
    if steps == 1:
        return [big_t - 1]
    timesteps: list[int] = []
    for i in range(steps):
        target = lam[-1] + (lam[0] - lam[-1]) * i / (steps - 1)
        t = min(range(big_t), key=lambda k: abs(lam[k] - target))
        if timesteps:
            t = min(t, timesteps[-1] - 1)  # strictly decreasing ...
        timesteps.append(max(t, steps - 1 - i))  # ... with room left for the rest
    return timesteps


def ddim_timesteps(num_timesteps: int, steps: int, spacing: Spacing = "trailing") -> list[int]:
    """The `steps` timesteps a DDIM run visits, in the order visited (descending).

    - `"trailing"`: `round(T - i * T / steps) - 1` for `i = 0 .. steps - 1`; always starts at
      `T - 1` (pure noise), the choice of Lin et al. (2024) and our default.
    - `"leading"`: `i * (T // steps)`; ends at 0 but may start well below `T - 1`
      (Song et al. 2021's original choice).
    - `"uniform"`: `round(i * (T - 1) / (steps - 1))`: both ends, `T - 1` and 0
      (a single step is `[T - 1]`).

    With `steps == T` all three give `T - 1, ..., 0`.
    """
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {steps!r}")
    if not 1 <= steps <= num_timesteps:
        raise ValueError(
            f"steps must be between 1 and the schedule's num_timesteps ({num_timesteps}), "
            f"got {steps}"
        )
    if spacing not in _SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {list(_SPACINGS)}")
    big_t = num_timesteps
    if spacing == "trailing":
        # integer form of floor(x + 1/2) with x = (steps - i) * T / steps: no float drift
        ts = [(2 * (steps - i) * big_t + steps) // (2 * steps) - 1 for i in range(steps)]
    elif spacing == "leading":
        ratio = big_t // steps
        ts = [i * ratio for i in range(steps - 1, -1, -1)]
    elif steps == 1:
        ts = [big_t - 1]
    else:
        span = steps - 1
        ts = [(2 * i * (big_t - 1) + span) // (2 * span) for i in range(span, -1, -1)]
    return ts
