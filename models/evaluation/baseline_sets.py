"""Score the Zeng et al. 2025 baselines (``models.evaluation.baselines``) like generated models.

``score_baselines`` builds each baseline set from the zoo and hands it to a scoring callable
(``models.evaluation.novelty`` passes one that returns the same dict as its ``generated`` set:
accuracy, max IoU of wrong predictions with any zoo checkpoint, min L2 to the zoo). Every set
is compared with the whole zoo, as generated models are: a noised copy's nearest checkpoint is
usually the one it came from, which is the point of the baseline.

Sets (keys of the ``baselines`` dict of a report):

- ``noise``: one noised copy per zoo checkpoint, sigma matched to the generated mean accuracy
  by bisection; adds ``sigma``, ``matched_accuracy`` and ``sigma_search`` (every sigma tried);
- ``average_2`` / ``average_4`` / ``average_8``: as many models as were generated, each the mean
  of k random checkpoints (k capped at the zoo size; the set records the ``k`` used);
- ``gaussian``: as many models as were generated, every value drawn from its zoo normal.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.evaluation.baselines import (
    AVERAGE_KS,
    SIGMA_RANGE,
    averages,
    bisect_sigma,
    float_buffer_names,
    gaussian_samples,
    noised_copies,
    tensor_stds,
)

__all__ = [
    "BASELINE_KEYS",
    "BISECTION_ITERATIONS",
    "ScoreSet",
    "baseline_key",
    "baseline_settings",
    "score_baselines",
]

BISECTION_ITERATIONS = 10
# Scores a named set of state dicts against the zoo; returns a novelty-set dict (see novelty).
ScoreSet = Callable[[Sequence[str], Sequence[Mapping[str, Tensor]]], dict[str, Any]]


def baseline_key(kind: str, k: int | None = None) -> str:
    """The report key of a baseline set: ``noise``, ``average_<k>``, ``gaussian``."""
    return f"average_{k}" if kind == "average" else kind


BASELINE_KEYS: tuple[str, ...] = (
    "noise",
    *(baseline_key("average", k) for k in AVERAGE_KS),
    "gaussian",
)


def baseline_settings() -> dict[str, Any]:
    """How the baseline sets are made, for a report's ``settings`` (JSON-safe)."""
    return {
        "paper": "Zeng et al. 2025, arXiv 2506.07998",
        "sigma_range": list(SIGMA_RANGE),
        "sigma_unit": "each tensor's std over all its values in the zoo",
        "bisection_iterations": BISECTION_ITERATIONS,
        "average_ks": list(AVERAGE_KS),
        "compared_with": "the whole zoo (noised copies include their source checkpoint)",
        "float_buffers": "noise: the source's; averages and gaussian: the mean of those used",
    }


def _generator(seed: int, stream: int) -> torch.Generator:
    """An independent, reproducible stream per baseline (the noise rows use streams 0, 1, ...)."""
    value = int(np.random.SeedSequence([seed, 100 + stream]).generate_state(1, np.uint32)[0])
    return torch.Generator().manual_seed(value)


def _noise_set(
    zoo: Sequence[Mapping[str, Tensor]],
    zoo_names: Sequence[str],
    target: float,
    score: ScoreSet,
    seed: int,
    buffers: set[str],
    iterations: int,
) -> dict[str, Any]:
    stds = tensor_stds(zoo, buffers)
    scored: dict[float, dict[str, Any]] = {}

    def accuracy_at(sigma: float) -> float:
        # The same seed at every sigma: one noise direction per checkpoint, only its length
        # changes, so accuracy falls smoothly with sigma and the bisection brackets cleanly.
        sds = noised_copies(zoo, sigma, stds, _generator(seed, 0))
        names = [f"{z}+noise({sigma:.4g}x std)" for z in zoo_names]
        scored[sigma] = score(names, sds)
        return float(scored[sigma]["summary"]["accuracy"]["mean"])

    sigma, history = bisect_sigma(accuracy_at, target, iterations=iterations)
    return {
        **scored[sigma],
        "sigma": sigma,
        "matched_accuracy": target,
        "sigma_search": [{"sigma": s, "accuracy": a} for s, a in history],
    }


def _unmatched_note(noise: dict[str, Any], target: float) -> str | None:
    """A note when no sigma tried brackets the target: noise cannot reach that accuracy."""
    accs = [h["accuracy"] for h in noise["sigma_search"]]
    got = noise["summary"]["accuracy"]["mean"]
    lo, hi = SIGMA_RANGE
    if all(a < target for a in accs):
        return (
            f"the generated mean accuracy {target:.4f} is above that of every noised set tried "
            f"(sigma {lo:g}..{hi:g}; closest {got:.4f} at sigma {noise['sigma']:.3g}): no noise "
            "level raised the zoo's mean, so the noise baseline is as close as noise gets"
        )
    if all(a >= target for a in accs):
        return (
            f"the generated mean accuracy {target:.4f} is below that of every noised set tried, "
            f"even at sigma {hi:g} (closest {got:.4f}): the noise baseline is the most noise tried"
        )
    return None


def score_baselines(
    zoo: Sequence[Mapping[str, Tensor]],
    num_generated: int,
    target_accuracy: float | None,
    score: ScoreSet,
    *,
    zoo_names: Sequence[str] | None = None,
    seed: int = 0,
    buffers: Collection[str] | None = None,
    iterations: int = BISECTION_ITERATIONS,
) -> tuple[dict[str, Any], list[str]]:
    """The baseline sets (a dict keyed by ``BASELINE_KEYS``) and notes about them.

    ``target_accuracy`` is the generated mean accuracy the noise baseline is matched to; with
    None (no test set) the ``noise`` set is None and a note says why. ``buffers`` names the
    float buffers (default: BatchNorm names), see ``baselines.float_buffer_names``.
    """
    names = list(zoo_names or [f"zoo[{i}]" for i in range(len(zoo))])
    floats = float_buffer_names(zoo[0], buffers)
    notes: list[str] = []
    sets: dict[str, Any] = {}
    if target_accuracy is None:
        sets["noise"] = None
        notes.append("the noise baseline needs accuracy to match (a test set): it is skipped")
    else:
        sets["noise"] = _noise_set(zoo, names, target_accuracy, score, seed, floats, iterations)
        note = _unmatched_note(sets["noise"], target_accuracy)
        if note:
            notes.append(note)
    for stream, k in enumerate(AVERAGE_KS, start=1):
        used = min(k, len(zoo))
        sds = averages(zoo, k, num_generated, _generator(seed, stream))
        key = baseline_key("average", k)
        sets[key] = {**score([f"{key}[{i}]" for i in range(len(sds))], sds), "k": used}
        if used < k:
            notes.append(f"{key}: the zoo has {len(zoo)} checkpoints, so each averages {used}")
    sds = gaussian_samples(zoo, num_generated, _generator(seed, len(AVERAGE_KS) + 1), floats)
    sets["gaussian"] = score([f"gaussian[{i}]" for i in range(len(sds))], sds)
    return sets, notes
