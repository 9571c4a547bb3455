"""The memorization baselines of Zeng et al. 2025 ("Generative Modeling of Weights:
Generalization or Memorization?", arXiv 2506.07998): models anyone can make from a zoo without a
generator. A generator that only matches them has learned nothing they do not already give.

- **noise**: each zoo checkpoint plus N(0, (sigma * s_t)^2) on every float parameter of tensor
  t, where s_t is the std of tensor t's values over the whole zoo (``tensor_stds``); sigma is
  chosen by ``bisect_sigma`` so that the noised set is as accurate as the generated one;
- **average of k**: the elementwise mean of k distinct random zoo checkpoints (``averages``);
- **per-value Gaussian**: every value drawn from the normal fitted to that value across the zoo
  (``gaussian_samples``).

Floating-point buffers (BatchNorm ``running_mean`` / ``running_var``) are never noised or
drawn: noised copies keep their source's buffers; averages and Gaussian samples get the mean
buffers of the checkpoints they come from (a mean of positive variances stays positive).
Integer tensors (``num_batches_tracked``) are copied from the first checkpoint used.

``add_noise`` makes the fixed-sigma noise rows of every report (raw weight units, buffers
noised too: the older, cruder reference, kept so reports stay comparable).

Pure functions: state dicts in, state dicts out, randomness only from an explicit
``torch.Generator``; no files, no models. Scoring the sets is ``models.evaluation.baseline_sets``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence

import torch
from torch import Tensor

from models.errors import EvaluationError

__all__ = [
    "AVERAGE_KS",
    "SIGMA_RANGE",
    "add_noise",
    "averages",
    "bisect_sigma",
    "float_buffer_names",
    "gaussian_samples",
    "noised_copies",
    "tensor_stds",
]

AVERAGE_KS: tuple[int, ...] = (2, 4, 8)
# sigma (in units of each tensor's zoo std) is searched on a log scale between these: 1e-4 of a
# tensor's spread changes no prediction of a digits model; 1.0 can leave a small binary-task
# MLP at 0.8 accuracy, so the top is far enough above to match even a failed generator.
SIGMA_RANGE: tuple[float, float] = (1e-4, 100.0)
# Noised running variances are clamped here (add_noise): BatchNorm divides by sqrt(var + eps)
# and the tokenizer log-transforms them, so they must stay positive.
_VAR_FLOOR = 1e-6
# BatchNorm buffers by name, when no module is at hand to list its buffers.
_BUFFER_SUFFIXES = ("running_mean", "running_var")

StateDict = Mapping[str, Tensor]


def add_noise(
    state_dict: Mapping[str, Tensor], sigma: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """A copy of ``state_dict`` with N(0, sigma^2) added to every float tensor (raw weights).

    Float parameters and float buffers are noised, except ``num_batches_tracked`` (a counter);
    integer tensors are copied. BatchNorm ``running_var`` is clamped to stay positive.
    """
    out: dict[str, Tensor] = {}
    for name, t in state_dict.items():
        if not t.is_floating_point() or name.endswith("num_batches_tracked"):
            out[name] = t.detach().clone()
            continue
        noise = torch.randn(t.shape, generator=generator, dtype=torch.float32) * sigma
        noised = t.detach().to(torch.float32) + noise
        if name.endswith("running_var"):
            noised = noised.clamp_min(_VAR_FLOOR)
        out[name] = noised.to(t.dtype)
    return out


def float_buffer_names(reference: StateDict, buffers: Collection[str] | None = None) -> set[str]:
    """The float tensors of ``reference`` that are buffers, not parameters.

    ``buffers`` (e.g. ``dict(module.named_buffers())``) names them when a module is at hand;
    otherwise names ending in ``running_mean`` / ``running_var`` are taken as buffers.
    """
    names = {n for n in reference if n.endswith(_BUFFER_SUFFIXES)} if buffers is None else buffers
    return {n for n in names if n in reference and reference[n].is_floating_point()}


def _noisable(reference: StateDict, buffers: set[str]) -> list[str]:
    return [n for n, t in reference.items() if t.is_floating_point() and n not in buffers]


def tensor_stds(zoo: Sequence[StateDict], buffers: set[str]) -> dict[str, float]:
    """Per float parameter: the std of all its values in all zoo checkpoints (one number).

    Accumulated in float64 one checkpoint at a time, so a large zoo never sits in memory twice.
    """
    if not zoo:
        raise EvaluationError("the zoo is empty; baselines need at least one checkpoint")
    stds = {}
    for name in _noisable(zoo[0], buffers):
        total = squares = 0.0
        count = 0
        for sd in zoo:
            t = sd[name].detach().double()
            total += float(t.sum())
            squares += float(t.square().sum())
            count += t.numel()
        mean = total / count
        stds[name] = math.sqrt(max(squares / count - mean * mean, 0.0))
    return stds


def noised_copies(
    zoo: Sequence[StateDict],
    sigma: float,
    stds: Mapping[str, float],
    generator: torch.Generator,
) -> list[dict[str, Tensor]]:
    """Each zoo checkpoint with N(0, (sigma * stds[t])^2) added to every tensor t in ``stds``.

    Tensors not in ``stds`` (buffers, integers) are copied unchanged from their checkpoint.
    Reseed ``generator`` the same way to get the same noise direction for another sigma.
    """
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise EvaluationError(f"sigma must be finite and >= 0, got {sigma}")
    out = []
    for sd in zoo:
        copy: dict[str, Tensor] = {}
        for name, t in sd.items():
            if name not in stds:
                copy[name] = t.detach().clone()
                continue
            unit = torch.randn(t.shape, generator=generator, dtype=torch.float32)
            copy[name] = (t.detach().float() + unit * (sigma * stds[name])).to(t.dtype)
        out.append(copy)
    return out


def _mean_of(sds: Sequence[StateDict]) -> dict[str, Tensor]:
    """Elementwise float64-accumulated mean of every float tensor; others from ``sds[0]``."""
    out: dict[str, Tensor] = {}
    for name, t in sds[0].items():
        if not t.is_floating_point():
            out[name] = t.detach().clone()
            continue
        total = torch.zeros(t.shape, dtype=torch.float64)
        for sd in sds:
            total += sd[name].detach().double()
        out[name] = (total / len(sds)).to(t.dtype)
    return out


def averages(
    zoo: Sequence[StateDict], k: int, n: int, generator: torch.Generator
) -> list[dict[str, Tensor]]:
    """``n`` models, each the mean of ``min(k, len(zoo))`` distinct random zoo checkpoints.

    Parameters and float buffers alike are averaged (a mean of variances stays positive).
    """
    if k < 1 or n < 1:
        raise EvaluationError(f"need k >= 1 and n >= 1 for averages, got k={k}, n={n}")
    if not zoo:
        raise EvaluationError("the zoo is empty; baselines need at least one checkpoint")
    k = min(k, len(zoo))
    out = []
    for _ in range(n):
        picked = torch.randperm(len(zoo), generator=generator)[:k].tolist()
        out.append(_mean_of([zoo[i] for i in picked]))
    return out


def gaussian_samples(
    zoo: Sequence[StateDict], n: int, generator: torch.Generator, buffers: set[str]
) -> list[dict[str, Tensor]]:
    """``n`` models whose every parameter value is drawn from N(mean, std^2) of that value
    across the zoo (population std; 0 for a one-checkpoint zoo). Float buffers are the zoo mean.
    """
    if n < 1:
        raise EvaluationError(f"need n >= 1 Gaussian samples, got {n}")
    mean = _mean_of(zoo)
    std: dict[str, Tensor] = {}
    for name in _noisable(zoo[0], buffers):
        squares = torch.zeros(zoo[0][name].shape, dtype=torch.float64)
        for sd in zoo:
            squares += sd[name].detach().double().square()
        # population variance E[x^2] - E[x]^2, clamped: rounding can leave it at -1e-20
        var = squares / len(zoo) - mean[name].double().square()
        std[name] = var.clamp_min(0.0).sqrt().float()
    out = []
    for _ in range(n):
        sample: dict[str, Tensor] = {}
        for name, t in mean.items():
            if name in std:
                unit = torch.randn(t.shape, generator=generator, dtype=torch.float32)
                sample[name] = (t.float() + unit * std[name]).to(t.dtype)
            else:
                sample[name] = t.clone()
        out.append(sample)
    return out


def bisect_sigma(
    accuracy_at: Callable[[float], float],
    target: float,
    *,
    low: float = SIGMA_RANGE[0],
    high: float = SIGMA_RANGE[1],
    iterations: int = 10,
) -> tuple[float, list[tuple[float, float]]]:
    """The sigma whose accuracy is closest to ``target``, searched on a log scale.

    ``accuracy_at(sigma)`` must fall (loosely) as sigma grows. Each of ``iterations`` steps
    scores the geometric midpoint of ``[low, high]`` and keeps the half that brackets the
    target; the answer is the scored sigma whose accuracy came closest (ties: the larger
    sigma, the most novel noise at that accuracy: the stronger baseline). Returns it with every ``(sigma, accuracy)`` scored, in order. A target above the
    accuracy near ``low`` ends at ``low``'s end of the range, one below it near ``high``.
    """
    if not (0 < low < high and math.isfinite(high)):
        raise EvaluationError(f"need 0 < low < high, finite, got low={low}, high={high}")
    if iterations < 1:
        raise EvaluationError(f"need at least one bisection iteration, got {iterations}")
    history: list[tuple[float, float]] = []
    lo, hi = math.log(low), math.log(high)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        sigma = math.exp(mid)
        acc = accuracy_at(sigma)
        history.append((sigma, acc))
        if acc >= target:
            lo = mid  # still as accurate as the target: more noise is allowed
        else:
            hi = mid
    best = min(history, key=lambda h: (abs(h[1] - target), -h[0]))
    return best[0], history
