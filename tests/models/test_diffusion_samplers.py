"""Tests for the DDPM / DDIM samplers.

The golden checks use an oracle denoiser that returns the exact noise for a known x0. With
it, a correct sampler started from x_T ~ q(x_T | x0) keeps every intermediate x_t
distributed as q(x_t | x0) = N(sqrt(a_t) x0, (1 - a_t) I) (Ho et al. eq. 4 / Song et al.
Lemma 1) and ends at x0; a wrong mean or variance coefficient breaks the first property.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from models.diffusion import (
    SAMPLER_FUNCTIONS,
    SAMPLERS,
    ConvUNetDenoiser,
    NoiseSchedule,
    ddim_timesteps,
    sample_ddim,
    sample_ddpm,
)
from models.errors import SamplingStopped

T = 100
BETA_END = 0.05  # at T = 100 this brings a_{T-1} to about 0.08: close to pure noise


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _alphas_cumprod64() -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(1e-4, BETA_END, T, dtype=np.float64))


class _Oracle:
    """Returns the exact noise of x_t w.r.t. a known x0, and records what it saw."""

    def __init__(self, x0: Tensor) -> None:
        self.x0 = x0.double()
        self.ac = torch.from_numpy(_alphas_cumprod64())
        self.seen: list[tuple[int, Tensor]] = []

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        assert torch.all(t == t[0])
        step = int(t[0])
        self.seen.append((step, x.clone()))
        a = self.ac[step]
        return ((x.double() - a.sqrt() * self.x0) / (1 - a).sqrt()).float()


def _start_from_q(x0: Tensor, seed: int, step: int = T - 1) -> Tensor:
    a = _alphas_cumprod64()[step]
    return math.sqrt(a) * x0 + math.sqrt(1 - a) * torch.randn(x0.shape, generator=_gen(seed))


SAMPLER_CASES: list[tuple[str, Callable[..., Tensor], dict[str, Any]]] = [
    ("ddpm", sample_ddpm, {}),
    ("ddim-eta0-10", sample_ddim, {"steps": 10, "eta": 0.0}),
    ("ddim-eta0-7-leading", sample_ddim, {"steps": 7, "spacing": "leading"}),
    ("ddim-eta0.5-20-uniform", sample_ddim, {"steps": 20, "eta": 0.5, "spacing": "uniform"}),
    ("ddim-eta1-full", sample_ddim, {"steps": T, "eta": 1.0}),
    ("ddim-eta1-1step", sample_ddim, {"steps": 1, "eta": 1.0}),
]


@pytest.mark.parametrize(
    ("name", "sampler", "kwargs"), SAMPLER_CASES, ids=[c[0] for c in SAMPLER_CASES]
)
def test_oracle_recovers_x0_and_keeps_marginals(
    name: str, sampler: Callable[..., Tensor], kwargs: dict[str, Any]
) -> None:
    schedule = NoiseSchedule(T, 1e-4, BETA_END)
    n, d = 2000, 8
    x0 = torch.rand(n, d, generator=_gen(1)) * 2 - 1
    expected_steps = (
        list(range(T - 1, -1, -1))
        if sampler is sample_ddpm
        else ddim_timesteps(T, kwargs["steps"], kwargs.get("spacing", "trailing"))
    )
    oracle = _Oracle(x0)
    # start from q(x_t | x0) at the first visited step ("leading" may start below T - 1)
    noise = _start_from_q(x0, 2, expected_steps[0])
    out = sampler(oracle, schedule, noise, torch.zeros(n, 3), generator=_gen(3), **kwargs)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
    assert [step for step, _ in oracle.seen] == expected_steps
    ac = _alphas_cumprod64()
    for step, x_t in oracle.seen:
        # standardized residual of x_t under q(x_t | x0): must be N(0, 1)
        z = (x_t.double() - math.sqrt(ac[step]) * x0.double()) / math.sqrt(1 - ac[step])
        assert abs(z.mean().item()) < 0.03, (step, z.mean().item())
        assert abs(z.std().item() - 1.0) < 0.03, (step, z.std().item())


def test_ddim_eta0_follows_one_noise_direction() -> None:
    # With exact noise, deterministic DDIM moves along x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps
    # for one fixed eps (the "direction pointing to x_t" of eq. 12).
    schedule = NoiseSchedule(T, 1e-4, BETA_END)
    x0 = torch.rand(16, 4, generator=_gen(1)) * 2 - 1
    oracle = _Oracle(x0)
    sample_ddim(
        oracle, schedule, torch.randn(16, 4, generator=_gen(2)), torch.zeros(16, 1), steps=12
    )
    eps = [oracle(x, torch.full((16,), step), torch.zeros(16, 1)) for step, x in oracle.seen[:12]]
    for e in eps[1:]:
        torch.testing.assert_close(e, eps[0], atol=2e-5, rtol=1e-5)


def test_clip_x0_bounds_the_output() -> None:
    schedule = NoiseSchedule(T, 1e-4, BETA_END)
    x0 = torch.rand(64, 8, generator=_gen(1)) * 6 - 3  # outside [-1, 1]
    cond = torch.zeros(64, 1)
    for sampler, kwargs in ((sample_ddpm, {}), (sample_ddim, {"steps": 10, "eta": 0.3})):
        noise = _start_from_q(x0, 2)
        out = sampler(_Oracle(x0), schedule, noise, cond, generator=_gen(3), clip_x0=1.0, **kwargs)
        torch.testing.assert_close(out, x0.clamp(-1, 1), atol=1e-4, rtol=0)
        # clipping a range that already holds x0 changes nothing
        wide = sampler(_Oracle(x0), schedule, noise, cond, generator=_gen(3), clip_x0=4.0, **kwargs)
        torch.testing.assert_close(wide, x0, atol=1e-4, rtol=0)


# Model-based tests use a shorter chain: they check plumbing, not the equations.
T_SHORT = 30


def _tiny_model() -> ConvUNetDenoiser:
    torch.manual_seed(0)
    model = ConvUNetDenoiser(8, 3, (1, 4, 8, 4, 1), kernel_size=3, time_dim=8)
    out_conv = model.convs[-1]
    assert isinstance(out_conv, torch.nn.Conv1d)
    with torch.no_grad():  # a visible output, so samplers do more than pass noise along
        out_conv.weight.mul_(10.0)
    for _ in range(2):
        model(torch.randn(32, 8), torch.randint(0, T_SHORT, (32,)), torch.randn(32, 3))
    return model.eval()


@pytest.mark.parametrize(
    ("sampler", "kwargs"),
    [(sample_ddpm, {}), (sample_ddim, {"steps": 10, "eta": 0.7}), (sample_ddim, {"steps": 10})],
)
def test_samplers_deterministic_given_generator(
    sampler: Callable[..., Tensor], kwargs: dict[str, Any]
) -> None:
    schedule, model = NoiseSchedule(T_SHORT, 1e-4, 0.2), _tiny_model()
    noise, cond = torch.randn(20, 8, generator=_gen(0)), torch.randn(20, 3, generator=_gen(1))
    global_state = torch.get_rng_state()
    with torch.no_grad():
        a = sampler(model, schedule, noise, cond, generator=_gen(5), **kwargs)
        b = sampler(model, schedule, noise, cond, generator=_gen(5), **kwargs)
        c = sampler(model, schedule, noise, cond, generator=_gen(6), **kwargs)
        d = sampler(model, schedule, noise, cond, **kwargs)  # private generator: still fixed
        e = sampler(model, schedule, noise, cond, **kwargs)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG is never used
    assert torch.equal(noise, torch.randn(20, 8, generator=_gen(0)))  # input left intact
    assert torch.equal(a, b) and torch.equal(d, e)
    assert torch.isfinite(a).all()
    if kwargs.get("eta", 0.0) == 0.0 and sampler is sample_ddim:
        assert torch.equal(a, c)  # eta = 0: nothing random
    else:
        assert (a - c).abs().max().item() > 1e-3


def test_ddim_eta0_does_not_touch_the_generator() -> None:
    schedule, model = NoiseSchedule(T_SHORT, 1e-4, 0.2), _tiny_model()
    gen = _gen(9)
    state = gen.get_state()
    with torch.no_grad():
        sample_ddim(model, schedule, torch.randn(5, 8), torch.randn(5, 3), steps=5, generator=gen)
    assert torch.equal(gen.get_state(), state)


def test_ddim_full_steps_eta1_follows_the_ddpm_path() -> None:
    # Same equations and the same noise draws in the same order: the same path.
    schedule, model = NoiseSchedule(T_SHORT, 1e-4, 0.2), _tiny_model()
    noise, cond = torch.randn(50, 8, generator=_gen(0)), torch.randn(50, 3, generator=_gen(1))
    with torch.no_grad():
        ddpm = sample_ddpm(model, schedule, noise, cond, generator=_gen(2))
        ddim = sample_ddim(model, schedule, noise, cond, steps=T_SHORT, eta=1.0, generator=_gen(2))
    assert ddpm.abs().mean().item() > 0.1
    torch.testing.assert_close(ddim, ddpm, atol=1e-4, rtol=1e-4)


def test_ddim_full_steps_eta1_matches_ddpm_in_distribution() -> None:
    # Data: x0 ~ N(mu, SD^2) per value, mu given by the condition. The Bayes-optimal noise
    # predictor is then known in closed form:
    #   E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a SD^2 + 1 - a).
    big_t, sd = 100, 0.5
    schedule = NoiseSchedule(big_t, 1e-4, 0.2)  # a_{T-1} ~ 5e-5: x_T is pure noise
    ac = schedule.alphas_cumprod.double()

    def optimal(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        a = ac[t][:, None]
        mu = cond[:, :1].double()
        return ((1 - a).sqrt() * (x.double() - a.sqrt() * mu) / (a * sd**2 + 1 - a)).float()

    n = 10_000
    cond = torch.randn(n, 2, generator=_gen(0)) * 2
    noise = torch.randn(n, 4, generator=_gen(1))

    def residual(sampler: Callable[..., Tensor], seed: int, **kwargs: Any) -> Tensor:
        return sampler(optimal, schedule, noise, cond, generator=_gen(seed), **kwargs) - cond[:, :1]

    ddpm = residual(sample_ddpm, 2)
    ddim = residual(sample_ddim, 3, steps=big_t, eta=1.0)
    ddim_det = residual(sample_ddim, 4, steps=20, eta=0.0)
    # both sample roughly the data distribution (loose: T = 100 is a coarse chain) ...
    for r in (ddpm, ddim):
        assert abs(r.mean().item()) < 0.01
        assert r.std().item() == pytest.approx(sd, rel=0.1)
    # ... and each other's, closely (independent seeds)
    assert ddim.mean().item() == pytest.approx(ddpm.mean().item(), abs=0.01)
    assert ddim.std().item() == pytest.approx(ddpm.std().item(), rel=0.02)
    # the comparison is sharp enough to tell a different sampler apart
    assert ddim_det.std().item() != pytest.approx(ddpm.std().item(), rel=0.03)


def test_samplers_respect_caller_mode_and_grad() -> None:
    schedule, model = NoiseSchedule(T_SHORT, 1e-4, 0.2), _tiny_model()
    noise, cond = torch.randn(4, 8), torch.randn(4, 3)
    for name, sampler in SAMPLER_FUNCTIONS.items():
        kwargs: dict[str, Any] = {"generator": _gen(0)} | ({} if name == "ddpm" else {"steps": 5})
        model.eval()
        with torch.no_grad():
            assert not sampler(model, schedule, noise, cond, **kwargs).requires_grad
        assert not model.training
        out = sampler(model, schedule, noise, cond, **kwargs)
        assert out.requires_grad  # grad mode is the caller's choice
        model.train()
        with torch.no_grad():
            sampler(model, schedule, noise, cond, **kwargs)
        assert model.training


def test_low_precision_denoiser_output_still_float32() -> None:
    schedule = NoiseSchedule(T, 1e-4, BETA_END)

    def bf16_model(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return (0.5 * x).to(torch.bfloat16)

    noise = torch.randn(6, 8, generator=_gen(0)).half()
    for sampler in SAMPLER_FUNCTIONS.values():
        out = sampler(bf16_model, schedule, noise, torch.zeros(6, 1), generator=_gen(1))
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("spacing", ["uniform", "trailing", "leading"])
@pytest.mark.parametrize("big_t", [10, 50, 1000, 997])
def test_ddim_timesteps_properties(spacing: str, big_t: int) -> None:
    for steps in sorted({1, 2, 3, 7, big_t // 3, big_t - 1, big_t}):
        ts = ddim_timesteps(big_t, steps, spacing)  # type: ignore[arg-type]
        assert len(ts) == steps
        assert all(a > b for a, b in itertools.pairwise(ts)), ts
        assert ts[-1] >= 0 and ts[0] <= big_t - 1
        if spacing in ("trailing", "uniform"):
            assert ts[0] == big_t - 1
        if spacing == "uniform" and steps > 1:
            assert ts[-1] == 0
        if spacing == "leading":
            assert ts[-1] == 0 and len({a - b for a, b in itertools.pairwise(ts)}) <= 1
        if steps == big_t:
            assert ts == list(range(big_t - 1, -1, -1))


def test_ddim_timesteps_known_values() -> None:
    trailing = ddim_timesteps(1000, 50, "trailing")
    assert trailing[:3] == [999, 979, 959] and trailing[-1] == 19
    assert ddim_timesteps(1000, 3, "leading") == [666, 333, 0]
    assert ddim_timesteps(1000, 4, "uniform") == [999, 666, 333, 0]
    assert ddim_timesteps(10, 3, "trailing") == [9, 6, 2]  # round(10, 6.67, 3.33) - 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 0}, ValueError, "between 1 and"),
        ({"steps": T + 1}, ValueError, "between 1 and"),
        ({"steps": 2.5}, TypeError, "steps must be an int"),
        ({"eta": -0.1}, ValueError, "eta must be"),
        ({"eta": float("nan")}, ValueError, "eta must be"),
        ({"spacing": "linear"}, ValueError, "unknown spacing"),
        ({"clip_x0": 0.0}, ValueError, "clip_x0"),
    ],
)
def test_ddim_validates_options(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    schedule = NoiseSchedule(T)
    with pytest.raises(error, match=match):
        sample_ddim(
            _Oracle(torch.zeros(2, 4)), schedule, torch.zeros(2, 4), torch.zeros(2, 1), **kwargs
        )


@pytest.mark.parametrize("sampler", list(SAMPLER_FUNCTIONS.values()))
def test_samplers_validate_shapes(sampler: Callable[..., Tensor]) -> None:
    schedule = NoiseSchedule(T)
    oracle = _Oracle(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="one condition row per noise row"):
        sampler(oracle, schedule, torch.zeros(2, 4), torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"noise must be \(N, token_size\)"):
        sampler(oracle, schedule, torch.zeros(2, 4, 1), torch.zeros(2, 1))

    def wrong_shape(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return x[:, :-1]

    with pytest.raises(ValueError, match="denoiser returned shape"):
        sampler(wrong_shape, schedule, torch.zeros(2, 4), torch.zeros(2, 1))


def test_sampler_names_in_one_place() -> None:
    from models.diffusion.objective import FLOW_SAMPLER_FUNCTIONS

    assert tuple(SAMPLER_FUNCTIONS) + tuple(FLOW_SAMPLER_FUNCTIONS) == SAMPLERS


STEP_CASES: list[tuple[str, dict[str, Any], int]] = [
    ("ddpm", {}, T),
    ("ddim", {"steps": 7, "eta": 0.5}, 7),
    ("dpm-solver++", {"steps": 6}, 6),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "num_steps"), STEP_CASES, ids=[c[0] for c in STEP_CASES]
)
def test_progress_after_every_step_and_stop_before_the_next(
    name: str, kwargs: dict[str, Any], num_steps: int
) -> None:
    sampler = SAMPLER_FUNCTIONS[name]  # type: ignore[index]
    schedule = NoiseSchedule(T, 1e-4, BETA_END)
    oracle = _Oracle(torch.zeros(3, 4))
    seen: list[float] = []
    sampler(
        oracle, schedule, torch.randn(3, 4), torch.zeros(3, 1), on_progress=seen.append, **kwargs
    )
    assert seen == [(i + 1) / num_steps for i in range(num_steps)]
    assert len(oracle.seen) == num_steps

    checks: list[int] = []

    def stop_at_third_check() -> bool:
        checks.append(1)
        return len(checks) == 3

    oracle = _Oracle(torch.zeros(3, 4))
    seen.clear()
    with pytest.raises(SamplingStopped, match="after 2 of"):
        sampler(
            oracle,
            schedule,
            torch.randn(3, 4),
            torch.zeros(3, 1),
            should_stop=stop_at_third_check,
            on_progress=seen.append,
            **kwargs,
        )
    assert len(oracle.seen) == 2 and len(seen) == 2  # no denoiser call after the stop


@pytest.mark.parametrize(("sampler", "kwargs"), [(sample_ddpm, {}), (sample_ddim, {"eta": 0.8})])
def test_row_generators_give_each_row_range_its_own_noise(
    sampler: Callable[..., Tensor], kwargs: dict[str, Any]
) -> None:
    schedule = NoiseSchedule(T_SHORT, 1e-4, 0.2)

    def oracle(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:  # row-wise, any batch size
        return 0.3 * x + cond

    noise, cond = torch.randn(7, 4, generator=_gen(0)), torch.randn(7, 1, generator=_gen(3))
    if sampler is sample_ddim:
        kwargs = {**kwargs, "steps": 6}
    both = sampler(oracle, schedule, noise, cond, generator=[(3, _gen(1)), (4, _gen(2))], **kwargs)
    first = sampler(oracle, schedule, noise[:3], cond[:3], generator=_gen(1), **kwargs)
    second = sampler(oracle, schedule, noise[3:], cond[3:], generator=_gen(2), **kwargs)
    assert torch.equal(both, torch.cat([first, second]))
    with pytest.raises(ValueError, match="cover 6 rows but noise has 7"):
        sampler(oracle, schedule, noise, cond, generator=[(3, _gen(1)), (3, _gen(2))], **kwargs)
    with pytest.raises(ValueError, match="positive int row count"):
        sampler(oracle, schedule, noise, cond, generator=[(0, _gen(1)), (7, _gen(2))], **kwargs)
