"""Rectified flow (flow matching) with a data-predicting denoiser: loss and samplers.

The path from data to noise is a straight line (Liu et al. 2023, "Flow straight and fast";
Lipman et al. 2023, "Flow matching"):

    x_s = (1 - s) x0 + s eps,   s in [0, 1],   eps ~ N(0, I)

so x_1 is pure noise and x_0 the data. The denoiser predicts the clean token, x0_hat(x_s, s)
(data prediction, as DPM-Solver++ prefers for few steps), and the velocity of the ODE
dx/ds = eps - x0 is estimated from it as v(x_s, s) = (x_s - x0_hat) / s. The denoiser sees the
time as `s * num_timesteps` (the scale of the epsilon objective's integer timesteps, so both
objectives share one time embedding).

Samplers follow `samplers.py`'s rules: pure functions, no IO, no global RNG (they draw nothing
after `noise`; `generator` is accepted for a uniform signature), `should_stop()` before and
`on_progress(fraction)` after every denoiser evaluation, float32 state. `steps` counts
denoiser evaluations, whatever the order of the method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.diffusion.loss import masked_mse
from models.diffusion.samplers import (
    Denoiser,
    OnProgress,
    RowGenerators,
    ShouldStop,
    _check_inputs,
    _check_stop,
    _resolve_generators,
)

__all__ = ["flow_loss", "flow_times", "sample_flow_euler", "sample_flow_midpoint"]


def flow_loss(
    denoiser: Denoiser,
    x0: Tensor,
    cond: Tensor,
    *,
    num_timesteps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Data-prediction loss of rectified flow over real values only.

    `x0 (N, token_size)` clean tokens where NaN marks padding, `cond (N, cond_dim)` their
    prototypes. Draws `s ~ U[0, 1)` and `eps ~ N(0, I)` per token from `generator` (or the
    global RNG), builds `x_s = (1 - s) x0 + s eps` with NaN read as 0, and returns the mean
    squared error between `denoiser(x_s, s * num_timesteps, cond)` and `x0` over the
    non-NaN values: a float32 scalar.
    """
    if x0.ndim != 2:
        raise ValueError(f"x0 must be (N, token_size), got shape {tuple(x0.shape)}")
    if cond.ndim != 2 or cond.shape[0] != x0.shape[0]:
        raise ValueError(
            f"cond must be (N={x0.shape[0]}, cond_dim): one prototype per token, "
            f"got shape {tuple(cond.shape)}"
        )
    real = ~torch.isnan(x0)
    clean = torch.where(real, x0, torch.zeros((), dtype=x0.dtype, device=x0.device))
    n = x0.shape[0]
    s = torch.rand((n,), generator=generator, device=x0.device, dtype=torch.float32)  # (N,)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    s_col = s.to(x0.dtype).unsqueeze(1)  # (N, 1)
    x_s = (1.0 - s_col) * clean + s_col * noise  # (N, T)
    pred = denoiser(x_s, s * num_timesteps, cond)  # (N, T): predicted x0
    if pred.shape != x0.shape:
        raise ValueError(
            f"the denoiser returned shape {tuple(pred.shape)} for input {tuple(x0.shape)}; "
            "it must predict one value per token value"
        )
    return masked_mse(pred, x0)


def flow_times(intervals: int) -> list[float]:
    """`intervals + 1` times from 1 (noise) down to 0 (data), evenly spaced."""
    if isinstance(intervals, bool) or not isinstance(intervals, int) or intervals < 1:
        raise ValueError(f"steps must be a positive int, got {intervals!r}")
    return [1.0 - i / intervals for i in range(intervals)] + [0.0]


def sample_flow_euler(
    denoiser: Denoiser,
    noise: Tensor,
    cond: Tensor,
    *,
    steps: int = 4,
    num_timesteps: int = 1000,
    generator: torch.Generator | RowGenerators | None = None,
    clip_x0: float | None = None,
    should_stop: ShouldStop | None = None,
    on_progress: OnProgress | None = None,
) -> Tensor:
    """Euler's method on the flow ODE from s = 1 to 0 in `steps` equal steps (one denoiser
    evaluation each). `noise (N, D)` is x_1, `cond (N, C)` one condition per row. The last
    step lands on s = 0, where the update is exactly the data prediction (as DDIM's last
    step is). Returns x_0 `(N, D)` float32.
    """
    _check_inputs(noise, cond, clip_x0)
    if generator is not None:
        _resolve_generators(generator, noise)  # same validation as the other samplers
    times = flow_times(steps)
    x = noise.to(torch.float32)
    for i in range(steps):
        s, s_next = times[i], times[i + 1]
        # 1. predict the clean token at time s
        _check_stop(should_stop, i, steps)
        x0 = _predict_x0(denoiser, x, s, num_timesteps, cond, clip_x0)
        # 2. Euler step of dx/ds = (x - x0_hat) / s from s to s_next:
        #    x + (s_next - s) (x - x0_hat) / s = x0_hat + (s_next / s) (x - x0_hat)
        x = x0 + (s_next / s) * (x - x0)
        if on_progress is not None:
            on_progress((i + 1) / steps)
    return x


def sample_flow_midpoint(
    denoiser: Denoiser,
    noise: Tensor,
    cond: Tensor,
    *,
    steps: int = 4,
    num_timesteps: int = 1000,
    generator: torch.Generator | RowGenerators | None = None,
    clip_x0: float | None = None,
    should_stop: ShouldStop | None = None,
    on_progress: OnProgress | None = None,
) -> Tensor:
    """The explicit midpoint method (second order) on the flow ODE, `steps` denoiser
    evaluations in all: `steps // 2` midpoint intervals of two evaluations each, and, when
    `steps` is odd, one last Euler interval (one evaluation). Intervals are equal in s, from 1
    to 0. `steps=4`: two midpoint intervals, 1 -> 0.5 -> 0. Returns x_0 `(N, D)` float32.
    """
    _check_inputs(noise, cond, clip_x0)
    if generator is not None:
        _resolve_generators(generator, noise)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps (denoiser evaluations) must be a positive int, got {steps!r}")
    midpoint_intervals, euler_last = steps // 2, steps % 2 == 1
    times = flow_times(midpoint_intervals + int(euler_last))
    x = noise.to(torch.float32)
    done = 0

    def evaluate(x_in: Tensor, s: float) -> Tensor:
        nonlocal done
        _check_stop(should_stop, done, steps)
        x0 = _predict_x0(denoiser, x_in, s, num_timesteps, cond, clip_x0)
        done += 1
        if on_progress is not None:
            on_progress(done / steps)
        return x0

    for i in range(len(times) - 1):
        s, s_next = times[i], times[i + 1]
        x0 = evaluate(x, s)
        if euler_last and i == len(times) - 2:
            # 1'. the odd evaluation: an Euler step (to s = 0 it is the data prediction)
            x = x0 + (s_next / s) * (x - x0)
            break
        # 1. half an Euler step to the interval's midpoint
        s_mid = 0.5 * (s + s_next)
        x_mid = x0 + (s_mid / s) * (x - x0)
        # 2. the velocity there, v = (x_mid - x0_hat(x_mid)) / s_mid ...
        x0_mid = evaluate(x_mid, s_mid)
        velocity = (x_mid - x0_mid) / s_mid
        # 3. ... carries x over the whole interval
        x = x + (s_next - s) * velocity
    return x


def _predict_x0(
    denoiser: Denoiser,
    x: Tensor,
    s: float,
    num_timesteps: int,
    cond: Tensor,
    clip_x0: float | None,
) -> Tensor:
    # One time for the whole call, expanded (stride 0): a denoiser may embed it once.
    times = torch.full((1,), s * num_timesteps, dtype=torch.float32, device=x.device)
    x0 = denoiser(x, times.expand(x.shape[0]), cond)
    if x0.shape != x.shape:
        raise ValueError(
            f"the denoiser returned shape {tuple(x0.shape)} for input {tuple(x.shape)}; "
            "it must predict the clean token, one value per input value"
        )
    x0 = x0.to(torch.float32)
    return x0 if clip_x0 is None else x0.clamp(-clip_x0, clip_x0)
