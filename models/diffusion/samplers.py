"""Samplers: turn noise into tokens with a trained denoiser (DDPM, DDIM, DPM-Solver++(2M)).

Each sampler is a pure function of (denoiser, schedule, noise, condition, generator) plus two
optional callables: `should_stop()`, checked before every denoiser step (True ends the loop
with `SamplingStopped`), and `on_progress(fraction)`, called after every denoiser step with
the fraction of this call's steps done (rising to 1.0). No IO, no global state, no global RNG. All randomness comes from `generator` (on the device of
`noise`), so a fixed generator state gives the same bits on the same device. They never
switch the denoiser between train and eval mode and never touch grad mode: the caller
decides (sampling with BatchNorm wants `eval()` and `torch.no_grad()`).

The update arithmetic runs in float32 whatever the denoiser computes in (e.g. bf16
autocast): the schedule coefficients are read once as float64 Python numbers and the state
`x` stays float32 throughout. The result is float32.

Notation: `a_t` = alphas_cumprod[t] (alpha-bar in Ho et al. 2020, alpha in Song et al. 2021),
`b_t = 1 - a_t`, `eps` the predicted noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from models.diffusion.schedule import NoiseSchedule
from models.diffusion.timesteps import SolverSpacing, Spacing, ddim_timesteps, logsnr_timesteps
from models.errors import SamplingStopped
from models.sampler_names import SAMPLERS, SamplerName, samplers_for

__all__ = [
    "SAMPLERS",
    "SAMPLER_FUNCTIONS",
    "Denoiser",
    "OnProgress",
    "RowGenerators",
    "SamplerName",
    "ShouldStop",
    "SolverSpacing",
    "Spacing",
    "ddim_timesteps",
    "logsnr_timesteps",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpm_solver_pp",
]

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
"""`denoiser(x_t (N, D), t (N,) int64, cond (N, C)) -> predicted noise (N, D)`."""
ShouldStop = Callable[[], bool]
"""Checked before every denoiser step; returning True stops sampling (`SamplingStopped`)."""
OnProgress = Callable[[float], None]
"""Called after every denoiser step with the fraction done (0..1, never decreasing)."""

RowGenerators = Sequence[tuple[int, torch.Generator]]
"""`[(rows, generator), ...]`: consecutive row ranges of `noise`, each drawing its fresh noise
from its own generator (e.g. the tokens of one generated model), rows summing to N."""

"""Every sampler name, in one place: CLIs, requests and validation read this tuple."""

# Seed of the private generator used when the caller passes none: results stay
# deterministic, and torch's global RNG is never consumed.
_DEFAULT_SEED = 0


def sample_ddpm(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    noise: Tensor,
    cond: Tensor,
    *,
    generator: torch.Generator | RowGenerators | None = None,
    clip_x0: float | None = None,
    should_stop: ShouldStop | None = None,
    on_progress: OnProgress | None = None,
) -> Tensor:
    """Ancestral sampling of Ho et al. (2020), Algorithm 2, through all T steps.

    `noise (N, D)` is x_T; `cond (N, C)` one condition per row. Each step draws fresh noise
    from `generator` (none at the last step): one generator, or one per row range
    (`RowGenerators`); `generator=None` uses a private generator with a fixed seed. `clip_x0` clamps the predicted x0 to `[-clip_x0, clip_x0]` before
    it enters the posterior mean. Returns x_0 `(N, D)` float32.
    """
    _check_inputs(noise, cond, clip_x0)
    gens = _resolve_generators(generator, noise)
    c_x0_from_xt = _as_floats(schedule.sqrt_recip_alphas_cumprod)
    c_x0_from_eps = _as_floats(schedule.sqrt_recipm1_alphas_cumprod)
    c_mean_x0 = _as_floats(schedule.posterior_mean_coef1)
    c_mean_xt = _as_floats(schedule.posterior_mean_coef2)
    variance = _as_floats(schedule.posterior_variance)

    x = noise.to(torch.float32)
    total = schedule.num_timesteps
    for t in range(total - 1, -1, -1):
        # 1. predict the noise in x_t
        _check_stop(should_stop, total - 1 - t, total)
        eps = _predict(denoiser, x, t, cond)
        # 2. predicted x0 from x_t = sqrt(a_t) x0 + sqrt(b_t) eps (Ho et al. eq. 4, solved
        #    for x0 as in eq. 15)
        x0 = c_x0_from_xt[t] * x - c_x0_from_eps[t] * eps
        # 3. optionally clip it to the data range
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        # 4. mean of the posterior q(x_{t-1} | x_t, x0) (eq. 7); without clipping it equals
        #    eq. 11's mu_theta(x_t, t)
        mean = c_mean_x0[t] * x0 + c_mean_xt[t] * x
        # 5. add noise with the posterior variance beta-tilde_t (eq. 7; sigma_t^2 = beta-tilde
        #    in Algorithm 2); it is 0 at t = 0, where the mean is the answer
        x = mean + math.sqrt(variance[t]) * _randn(gens, x) if t > 0 else mean
        if on_progress is not None:
            on_progress((total - t) / total)
    return x


def sample_ddim(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    noise: Tensor,
    cond: Tensor,
    *,
    steps: int = 50,
    eta: float = 0.0,
    spacing: Spacing = "trailing",
    generator: torch.Generator | RowGenerators | None = None,
    clip_x0: float | None = None,
    should_stop: ShouldStop | None = None,
    on_progress: OnProgress | None = None,
) -> Tensor:
    """DDIM sampling of Song et al. (2021), eq. 12, over `steps` timesteps.

    `noise (N, D)` is x_T; `cond (N, C)` one condition per row. `eta = 0` is deterministic
    (the generator is not used); `eta = 1` with `steps = T` is DDPM with variance
    beta-tilde. The timesteps are `ddim_timesteps(T, steps, spacing)`; the last step goes to
    `a = 1`, i.e. returns the predicted x0. `clip_x0` clamps the predicted x0 (and the
    noise is re-derived from it, so both terms of eq. 12 agree). Returns x_0 `(N, D)` float32.
    """
    _check_inputs(noise, cond, clip_x0)
    if not (isinstance(eta, (int, float)) and not isinstance(eta, bool)):
        raise TypeError(f"eta must be a number, got {eta!r}")
    if not (math.isfinite(eta) and eta >= 0.0):
        raise ValueError(f"eta must be a finite number >= 0 (0: deterministic DDIM), got {eta}")
    timesteps = ddim_timesteps(schedule.num_timesteps, steps, spacing)
    gens = _resolve_generators(generator, noise) if eta > 0 else None
    alphas_cumprod = _as_floats(schedule.alphas_cumprod)

    x = noise.to(torch.float32)
    for i, t in enumerate(timesteps):
        # 1. the previous timestep of the subsequence; after the last one comes a "step -1"
        #    with a = 1 (clean data), so the final output is the predicted x0
        is_last = i == len(timesteps) - 1
        a_t = alphas_cumprod[t]
        a_prev = 1.0 if is_last else alphas_cumprod[timesteps[i + 1]]
        b_t = 1.0 - a_t
        # 2. predict the noise in x_t
        _check_stop(should_stop, i, len(timesteps))
        eps = _predict(denoiser, x, t, cond)
        # 3. "predicted x0" of eq. 12: (x_t - sqrt(b_t) eps) / sqrt(a_t)
        x0 = (x - math.sqrt(b_t) * eps) / math.sqrt(a_t)
        # 4. optionally clip x0, and re-derive eps from it so both terms of eq. 12 agree
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(b_t)
        # 5. sigma_t(eta) of eq. 16: sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
        variance = (1.0 - a_prev) / b_t * (1.0 - a_t / a_prev)
        sigma = eta * math.sqrt(max(variance, 0.0))
        # 6. "direction pointing to x_t" of eq. 12; the clamp guards eta > 1
        direction = math.sqrt(max(1.0 - a_prev - sigma**2, 0.0)) * eps
        # 7. x_{t-1} without the random term: sqrt(a_prev) * predicted x0 + direction
        x = math.sqrt(a_prev) * x0 + direction
        # 8. the random term sigma_t * z (eq. 12); sigma is 0 on the last step (a_prev = 1)
        if gens is not None and not is_last:
            x = x + sigma * _randn(gens, x)
        if on_progress is not None:
            on_progress((i + 1) / len(timesteps))
    return x


def sample_dpm_solver_pp(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    noise: Tensor,
    cond: Tensor,
    *,
    steps: int = 15,
    spacing: SolverSpacing = "trailing",
    generator: torch.Generator | RowGenerators | None = None,
    clip_x0: float | None = None,
    should_stop: ShouldStop | None = None,
    on_progress: OnProgress | None = None,
) -> Tensor:
    """DPM-Solver++(2M) of Lu et al. (2022, arXiv:2211.01095), Algorithm 2, over `steps`
    denoiser evaluations: the multistep second-order solver of the diffusion ODE in its
    data-prediction form, with the data prediction derived from the predicted noise.

    Deterministic: no noise is drawn after `noise` (x_T), so `generator` is accepted for a
    uniform signature and never used. The timesteps are `ddim_timesteps(T, steps, spacing)`
    like DDIM's (default `"trailing"`), or `logsnr_timesteps(schedule, steps)` for
    `spacing="logsnr"`. Log-SNR spacing is the more accurate with an exact noise predictor,
    but its first steps jump far from pure noise, where a trained denoiser's data prediction
    is poorest, and the multistep extrapolation carries that error on: with 5 steps it gave
    digits-cnn models at chance accuracy where "trailing" gave 0.93-0.98 (docs/benchmarks, "Samplers").
    The first step is first order (there is no earlier prediction yet) and so
    is the last, which goes to clean data (`a = 1`, lambda = +inf) and returns the final data
    prediction, as DDIM does. `clip_x0` clamps each data prediction. Returns x_0 `(N, D)`
    float32. Notation: alpha_t = sqrt(a_t), sigma_t = sqrt(1 - a_t), lambda_t = log(alpha_t /
    sigma_t) (half the log-SNR).
    """
    _check_inputs(noise, cond, clip_x0)
    if spacing == "logsnr":
        timesteps = logsnr_timesteps(schedule, steps)
    else:
        timesteps = ddim_timesteps(schedule.num_timesteps, steps, spacing)
    if generator is not None:
        _resolve_generators(generator, noise)  # same validation as the other samplers
    alphas_cumprod = _as_floats(schedule.alphas_cumprod)

    def lam(a: float) -> float:
        return 0.5 * (math.log(a) - math.log1p(-a))  # log(sqrt(a) / sqrt(1 - a))

    x = noise.to(torch.float32)
    prev_x0: Tensor | None = None
    prev_h = 0.0
    for i, t in enumerate(timesteps):
        a_t = alphas_cumprod[t]
        alpha_t, sigma_t = math.sqrt(a_t), math.sqrt(1.0 - a_t)
        # 1. predict the noise in x_t
        _check_stop(should_stop, i, len(timesteps))
        eps = _predict(denoiser, x, t, cond)
        # 2. data prediction from the noise prediction: x_theta(x_t, t) = (x_t - sigma_t eps)
        #    / alpha_t (the paper's conversion for noise-prediction models)
        x0 = (x - sigma_t * eps) / alpha_t
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        if i == len(timesteps) - 1:
            # 3'. last step, to clean data: sigma = 0 and h = +inf, where the first-order
            #     update of step 5 (e^(-h) = 0, alpha = 1) is exactly the data prediction
            x = x0
        else:
            a_next = alphas_cumprod[timesteps[i + 1]]
            alpha_next, sigma_next = math.sqrt(a_next), math.sqrt(1.0 - a_next)
            # 3. step size in half-log-SNR: h_i = lambda_{t_i} - lambda_{t_(i-1)}
            h = lam(a_next) - lam(a_t)
            if prev_x0 is None:
                # 4a. first step, first order: DPM-Solver++1 (Algorithm 2's first line), which
                #     is DDIM with eta = 0
                d = x0
            else:
                # 4b. multistep second order (Algorithm 2's loop): r_i = h_(i-1) / h_i and
                #     D_i = (1 + 1 / (2 r_i)) x_theta(i-1) - 1 / (2 r_i) x_theta(i-2)
                half_inv_r = 0.5 * h / prev_h
                d = (1.0 + half_inv_r) * x0 - half_inv_r * prev_x0
            # 5. Algorithm 2's update:
            #    x_{t_i} = (sigma_{t_i} / sigma_{t_(i-1)}) x - alpha_{t_i} (e^(-h_i) - 1) D_i
            x = (sigma_next / sigma_t) * x - (alpha_next * math.expm1(-h)) * d
            prev_x0, prev_h = x0, h
        if on_progress is not None:
            on_progress((i + 1) / len(timesteps))
    return x


SAMPLER_FUNCTIONS: dict[SamplerName, Callable[..., Tensor]] = {
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "dpm-solver++": sample_dpm_solver_pp,
}
"""Sampler by name: `SAMPLER_FUNCTIONS[name](denoiser, schedule, noise, cond, **options)`
(the epsilon objective's; the flow objective's are in `flow.py`)."""
assert tuple(SAMPLER_FUNCTIONS) == samplers_for("epsilon")


def _check_stop(should_stop: ShouldStop | None, done: int, total: int) -> None:
    if should_stop is not None and should_stop():
        raise SamplingStopped(f"sampling stopped by the caller after {done} of {total} steps")


def _predict(denoiser: Denoiser, x: Tensor, t: int, cond: Tensor) -> Tensor:
    # One timestep for the whole call, expanded (stride 0): a denoiser may embed it once.
    timesteps = torch.full((1,), t, dtype=torch.long, device=x.device).expand(x.shape[0])
    eps = denoiser(x, timesteps, cond)
    if eps.shape != x.shape:
        raise ValueError(
            f"the denoiser returned shape {tuple(eps.shape)} for input {tuple(x.shape)}; "
            "it must predict the noise, one value per input value"
        )
    return eps.to(torch.float32)


def _as_floats(table: Tensor) -> list[float]:
    # One host copy per sampling run; per-step coefficients are then plain Python floats
    # (no device sync inside the loop, float64 arithmetic on the scalars).
    return table.detach().to("cpu", torch.float64).tolist()


def _check_inputs(noise: Tensor, cond: Tensor, clip_x0: float | None) -> None:
    if noise.ndim != 2:
        raise ValueError(f"noise must be (N, token_size), got shape {tuple(noise.shape)}")
    if not noise.is_floating_point():
        raise TypeError(f"noise must be floating point, got dtype {noise.dtype}")
    if cond.ndim != 2 or cond.shape[0] != noise.shape[0]:
        raise ValueError(
            f"cond must be (N={noise.shape[0]}, cond_dim): one condition row per noise row, "
            f"got shape {tuple(cond.shape)}"
        )
    if cond.device != noise.device:
        raise ValueError(
            f"noise is on {noise.device} but cond is on {cond.device}; move both to one device"
        )
    if clip_x0 is not None and not (math.isfinite(clip_x0) and clip_x0 > 0):
        raise ValueError(f"clip_x0 must be a positive finite number or None, got {clip_x0}")


def _resolve_generators(
    generator: torch.Generator | RowGenerators | None, noise: Tensor
) -> list[tuple[int, torch.Generator]]:
    """`[(rows, generator), ...]` covering all rows of `noise`, each on noise's device."""
    num_rows = noise.shape[0]
    if generator is None:
        gen = torch.Generator(device=noise.device)
        gen.manual_seed(_DEFAULT_SEED)
        return [(num_rows, gen)]
    ranges = [(num_rows, generator)] if isinstance(generator, torch.Generator) else list(generator)
    for rows, gen in ranges:
        _check_generator_device(gen, noise)
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"each row range needs a positive int row count, got {rows!r}")
    if sum(rows for rows, _ in ranges) != num_rows:
        raise ValueError(
            f"the generators' row ranges cover {sum(rows for rows, _ in ranges)} rows but noise "
            f"has {num_rows}; give one (rows, generator) pair per consecutive row range"
        )
    return ranges


def _randn(gens: list[tuple[int, torch.Generator]], like: Tensor) -> Tensor:
    """Standard normal noise shaped like `like` (float32), each row range from its generator."""
    if len(gens) == 1:
        return torch.randn(
            like.shape, generator=gens[0][1], device=like.device, dtype=torch.float32
        )
    parts = [
        torch.randn((rows, *like.shape[1:]), generator=gen, device=like.device, dtype=torch.float32)
        for rows, gen in gens
    ]
    return torch.cat(parts)  # (N, D)


def _check_generator_device(generator: torch.Generator, noise: Tensor) -> None:
    gen_device = torch.device(generator.device)
    index_unknown = gen_device.index is None or noise.device.index is None
    if gen_device.type != noise.device.type or not (
        index_unknown or gen_device.index == noise.device.index
    ):
        raise ValueError(
            f"the generator is on {gen_device} but noise is on {noise.device}; "
            f"create it with torch.Generator(device=noise.device)"
        )
