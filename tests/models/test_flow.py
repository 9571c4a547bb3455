"""Rectified flow: the loss, and the samplers against the exact flow of a Gaussian."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from models.diffusion.flow import flow_loss, flow_times, sample_flow_euler, sample_flow_midpoint
from models.diffusion.objective import check_sampler
from models.sampler_names import SAMPLERS, objective_error, samplers_for

T = 1000  # the denoiser sees s * T


def gaussian_x0_predictor(mu: float, sigma: float):  # type: ignore[no-untyped-def]
    """E[x0 | x_s] for x0 ~ N(mu, sigma^2) per value, x_s = (1 - s) x0 + s eps: the exact
    data prediction, so the samplers' only error is their discretization."""

    def predict(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        s = (t / T).unsqueeze(1).double()  # (N, 1)
        var = (1 - s) ** 2 * sigma**2 + s**2
        return (mu + (1 - s) * sigma**2 / var * (x.double() - (1 - s) * mu)).float()

    return predict


def exact_flow(noise: Tensor, mu: float, sigma: float) -> Tensor:
    # The flow ODE of a Gaussian is affine: x_s = (1 - s) mu + sqrt((1 - s)^2 sigma^2 + s^2) z
    return mu + sigma * noise


@pytest.fixture
def noise() -> Tensor:
    return torch.randn(64, 16, generator=torch.Generator().manual_seed(0))


def test_many_euler_steps_follow_the_exact_flow(noise: Tensor) -> None:
    predict = gaussian_x0_predictor(mu=0.7, sigma=0.3)
    cond = torch.zeros(64, 1)
    out = sample_flow_euler(predict, noise, cond, steps=400, num_timesteps=T)
    assert (out - exact_flow(noise, 0.7, 0.3)).abs().max() < 1e-2  # first order: ~2.4 / steps


def test_midpoint_beats_euler_at_equal_evaluations(noise: Tensor) -> None:
    predict = gaussian_x0_predictor(mu=0.7, sigma=0.3)
    cond = torch.zeros(64, 1)
    exact = exact_flow(noise, 0.7, 0.3)
    euler = (sample_flow_euler(predict, noise, cond, steps=4, num_timesteps=T) - exact).abs()
    midpoint = (sample_flow_midpoint(predict, noise, cond, steps=4, num_timesteps=T) - exact).abs()
    assert midpoint.max() < 0.25 * euler.max()  # measured: 0.10 against 0.50
    eight = sample_flow_midpoint(predict, noise, cond, steps=8, num_timesteps=T)
    assert (eight - exact).abs().max() < 0.02  # second order: 12x closer for 2x the steps
    fine = sample_flow_midpoint(predict, noise, cond, steps=100, num_timesteps=T)
    assert (fine - exact).abs().max() < 1e-3


def test_a_point_mass_is_reached_in_one_step(noise: Tensor) -> None:
    predict = gaussian_x0_predictor(mu=-1.25, sigma=0.0)
    out = sample_flow_euler(predict, noise, torch.zeros(64, 1), steps=1, num_timesteps=T)
    assert torch.allclose(out, torch.full_like(noise, -1.25))


@pytest.mark.parametrize(("steps", "evaluations"), [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)])
def test_midpoint_counts_denoiser_evaluations_honestly(
    noise: Tensor, steps: int, evaluations: int
) -> None:
    seen: list[float] = []
    progress: list[float] = []

    def counting(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        assert t.stride(0) == 0  # one time for the call, expanded: embedded once
        seen.append(float(t[0]) / T)
        return torch.zeros_like(x)

    sample_flow_midpoint(
        counting, noise, torch.zeros(64, 1), steps=steps, num_timesteps=T,
        on_progress=progress.append,
    )  # fmt: skip
    assert len(seen) == evaluations
    assert seen[0] == 1.0 and seen == sorted(seen, reverse=True)
    assert progress[-1] == 1.0 and progress == sorted(progress)
    if steps == 4:
        assert seen == [1.0, 0.75, 0.5, 0.25]  # two midpoint intervals, 1 -> 0.5 -> 0


def test_flow_times_and_bad_steps() -> None:
    assert flow_times(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError, match="positive int"):
        sample_flow_euler(lambda x, t, c: x, torch.zeros(2, 3), torch.zeros(2, 1), steps=0)


def test_flow_loss_is_masked_and_zero_for_the_exact_predictor() -> None:
    x0 = torch.randn(32, 8)
    x0[:, -3:] = float("nan")  # padding
    clean = torch.nan_to_num(x0)

    def oracle(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return clean.clone()

    loss = flow_loss(oracle, x0, torch.zeros(32, 1), num_timesteps=T)
    assert loss.item() == 0.0
    zero = flow_loss(lambda x, t, c: torch.zeros_like(x), x0, torch.zeros(32, 1), num_timesteps=T)
    assert math.isclose(zero.item(), float(clean[:, :-3].square().mean()), rel_tol=1e-5)


def test_samplers_of_the_other_objective_are_refused_in_one_line() -> None:
    assert set(samplers_for("epsilon")) | set(samplers_for("flow")) == set(SAMPLERS)
    assert objective_error("flow-midpoint", "flow") is None
    message = objective_error("ddim", "flow")
    assert message is not None and "\n" not in message and "flow-midpoint" in message
    with pytest.raises(ValueError, match="choose one of \\['ddim'"):
        check_sampler("flow-euler", "epsilon")
    with pytest.raises(ValueError, match="unknown sampler"):
        check_sampler("euler", "flow")
