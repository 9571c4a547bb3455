"""DPM-Solver++(2M): convergence on a Gaussian toy with the exact noise predictor, the
log-SNR timesteps, determinism, and the same output contract as DDIM."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from models.diffusion import (
    NoiseSchedule,
    ddim_timesteps,
    logsnr_timesteps,
    sample_ddim,
    sample_dpm_solver_pp,
)

SD = 0.5  # data: x0 ~ N(mu, SD^2) per value, mu given by the condition


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gaussian_problem(n: int = 2000) -> tuple[NoiseSchedule, Tensor, Tensor, Tensor, object]:
    """The schedule, x_T, the condition, the exact ODE answer, and the Bayes-optimal
    noise predictor E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a SD^2 + 1 - a)."""
    schedule = NoiseSchedule(1000)
    ac = schedule.alphas_cumprod.double()

    def optimal(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        a = ac[t][:, None]
        mu = cond[:, :1].double()
        return ((1 - a).sqrt() * (x.double() - a.sqrt() * mu) / (a * SD**2 + 1 - a)).float()

    cond = torch.randn(n, 1, generator=_gen(0)) * 2
    noise = torch.randn(n, 4, generator=_gen(1))
    # For Gaussian data the probability-flow ODE keeps (x_t - sqrt(a) mu) / sqrt(a SD^2 + 1 - a)
    # constant along a path: the exact answer from x_T follows in closed form.
    a_big = float(ac[-1])
    z = (noise.double() - math.sqrt(a_big) * cond.double()) / math.sqrt(a_big * SD**2 + 1 - a_big)
    exact = (cond.double() + SD * z).float()
    return schedule, noise, cond, exact, optimal


def test_converges_with_few_steps_and_faster_than_ddim() -> None:
    schedule, noise, cond, exact, optimal = _gaussian_problem()

    def error(sampler: object, steps: int, **kwargs: object) -> float:
        out = sampler(optimal, schedule, noise, cond, steps=steps, **kwargs)  # type: ignore[operator]
        return float((out - exact).abs().mean())

    ddim = {steps: error(sample_ddim, steps) for steps in (5, 15, 20, 50)}
    # trailing spacing (the default), measured: 1.8e-1, 3.6e-2, 1.7e-2, 4.3e-4;
    # DDIM: 1.9e-1, 7.1e-2, 5.5e-2, 2.3e-2
    dpm = {steps: error(sample_dpm_solver_pp, steps) for steps in (5, 15, 20, 50)}
    assert all(dpm[steps] < ddim[steps] for steps in dpm)
    assert dpm[15] < ddim[15] / 1.5 and dpm[20] < ddim[20] / 2.5
    assert dpm[50] < dpm[20] < dpm[15] < dpm[5]
    assert dpm[50] / dpm[5] < (ddim[50] / ddim[5]) / 10  # the error falls much faster
    # log-SNR spacing, measured: 8.0e-2, 9.3e-3, 5.8e-3, 8.7e-4
    logsnr = {steps: error(sample_dpm_solver_pp, steps, spacing="logsnr") for steps in (15, 20)}
    assert logsnr[20] < 0.01 and logsnr[15] < ddim[50] / 2  # 15 steps beat DDIM-50


def test_exact_noise_keeps_the_path_on_q_and_ends_at_x0() -> None:
    # With the exact noise of a known x0, every update lands on
    # x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps for the starting eps.
    schedule = NoiseSchedule(100, 1e-4, 0.05)
    ac = schedule.alphas_cumprod.double()
    x0 = torch.rand(64, 8, generator=_gen(1)) * 2 - 1
    eps0 = torch.randn(64, 8, generator=_gen(2))
    seen: list[tuple[int, Tensor]] = []

    def exact_noise(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        a = ac[int(t[0])]
        seen.append((int(t[0]), x.clone()))
        return ((x.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()).float()

    a_big = float(ac[-1])
    noise = (math.sqrt(a_big) * x0.double() + math.sqrt(1 - a_big) * eps0.double()).float()
    for spacing in ("logsnr", "trailing", "uniform"):
        seen.clear()
        out = sample_dpm_solver_pp(
            exact_noise, schedule, noise, torch.zeros(64, 1), steps=12, spacing=spacing
        )
        torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
        expected_steps = (
            logsnr_timesteps(schedule, 12)
            if spacing == "logsnr"
            else ddim_timesteps(100, 12, spacing)  # type: ignore[arg-type]
        )
        assert [t for t, _ in seen] == expected_steps
        for t, x_t in seen:
            expected = ac[t].sqrt() * x0.double() + (1 - ac[t]).sqrt() * eps0.double()
            torch.testing.assert_close(x_t.double(), expected, atol=2e-4, rtol=0)


@pytest.mark.parametrize("big_t", [10, 100, 1000])
def test_logsnr_timesteps_properties(big_t: int) -> None:
    schedule = NoiseSchedule(big_t, 1e-4, 0.02 if big_t == 1000 else 0.2)
    for steps in sorted({1, 2, 3, 5, 10, big_t // 2, big_t}):
        ts = logsnr_timesteps(schedule, steps)
        assert len(ts) == steps and ts[0] == big_t - 1
        assert all(a > b for a, b in itertools.pairwise(ts)), ts
        if steps > 1:
            assert ts[-1] == 0
    assert logsnr_timesteps(NoiseSchedule(1000), 5) == [999, 722, 302, 30, 0]
    with pytest.raises(ValueError, match="between 1 and"):
        logsnr_timesteps(schedule, 0)


def test_deterministic_never_draws_noise_and_keeps_inputs() -> None:
    schedule, noise, cond, _, optimal = _gaussian_problem(50)
    gen = _gen(7)
    state, global_state = gen.get_state(), torch.get_rng_state()
    a = sample_dpm_solver_pp(optimal, schedule, noise, cond, steps=8, generator=gen)
    b = sample_dpm_solver_pp(optimal, schedule, noise, cond, steps=8)
    assert torch.equal(a, b)
    assert torch.equal(gen.get_state(), state) and torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(noise, torch.randn(50, 4, generator=_gen(1)))


def test_same_shape_dtype_and_nan_rows_as_ddim() -> None:
    schedule = NoiseSchedule(100, 1e-4, 0.05)

    def nan_in_row_2(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        out = (0.3 * x).to(torch.bfloat16)
        out[2, 1] = float("nan")
        return out

    noise, cond = torch.randn(5, 6, generator=_gen(0)).half(), torch.zeros(5, 1)
    dpm = sample_dpm_solver_pp(nan_in_row_2, schedule, noise, cond, steps=6)
    ddim = sample_ddim(nan_in_row_2, schedule, noise, cond, steps=6)
    assert dpm.shape == ddim.shape == (5, 6) and dpm.dtype == ddim.dtype == torch.float32
    assert torch.equal(dpm.isnan(), ddim.isnan())
    assert dpm[2].isnan().any() and not dpm[[0, 1, 3, 4]].isnan().any()


def test_clip_x0_bounds_the_output() -> None:
    schedule = NoiseSchedule(100, 1e-4, 0.05)

    def wild(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return -3.0 * x

    out = sample_dpm_solver_pp(wild, schedule, torch.randn(8, 4), torch.zeros(8, 1), clip_x0=1.0)
    assert out.abs().max() <= 1.0
