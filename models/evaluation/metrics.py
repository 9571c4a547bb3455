"""The numbers evaluation reports: summary statistics, similarity between models (IoU of
wrong-prediction sets, L2 distance in normalized parameter space, nearest neighbours), and how
much of a task's own direction generated tensors reproduce. Pure tensor math, no models or files.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from models.errors import EvaluationError

__all__ = [
    "accuracy_summary",
    "iou",
    "iou_matrix",
    "l2_matrix",
    "nearest",
    "summary_stats",
    "task_direction",
]


# ---------------------------------------------------------------------------- statistics


def summary_stats(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"n", "mean", "median", "min", "max"}`` over the finite entries of ``values``.

    None and non-finite entries are skipped (and not counted in ``n``); with nothing left the
    statistics are None.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"n": 0, "mean": None, "median": None, "min": None, "max": None}
    return {
        "n": len(finite),
        "mean": statistics.fmean(finite),
        "median": statistics.median(finite),
        "min": min(finite),
        "max": max(finite),
    }


def accuracy_summary(values: Sequence[float]) -> dict[str, Any]:
    """``summary_stats`` of accuracies, which must be fractions in [0, 1]."""
    bad = [v for v in values if not (isinstance(v, int | float) and 0.0 <= v <= 1.0)]
    if bad:
        raise EvaluationError(f"accuracies must be fractions in [0, 1], got {bad[:3]}")
    return summary_stats(values)


# ---------------------------------------------------------------------------- similarity


def iou(a: Tensor, b: Tensor) -> float:
    """IoU of two boolean masks over the same examples; 1.0 when both are empty."""
    if a.shape != b.shape:
        raise EvaluationError(
            f"masks must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def iou_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU ``(m, k)`` float64 of boolean rows ``a (m, n)`` and ``b (k, n)``."""
    af, bf = a.to(torch.float64), b.to(torch.float64)
    inter = af @ bf.T  # (m, k): counts, exact in float64
    union = af.sum(1, keepdim=True) + bf.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(inter))


def l2_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise Euclidean distances ``(m, k)`` float64 of rows ``a (m, d)`` and ``b (k, d)``."""
    # Without the matrix-product shortcut identical rows are exactly 0 apart.
    return torch.cdist(
        a.to(torch.float64), b.to(torch.float64), compute_mode="donot_use_mm_for_euclid_dist"
    )


def nearest(
    sim: Tensor | None, dist: Tensor, exclude: Sequence[int | None]
) -> tuple[list[float | None], list[int | None], list[float | None], list[int | None]]:
    """Per row: (max IoU, its index, min L2, its index), never choosing column ``exclude[r]``.

    Rows without an allowed column (a one-checkpoint zoo, leave-one-out) or with a non-finite
    distance get None.
    """
    m, k = dist.shape
    allowed = torch.ones(m, k, dtype=torch.bool)
    for r, col in enumerate(exclude):
        if col is not None:
            allowed[r, col] = False
    has_any = allowed.any(1).tolist()
    d = dist.masked_fill(~allowed, math.inf)
    l2_val, l2_idx = d.min(1)
    l2, l2_nearest = _where_valid(l2_val, l2_idx, has_any)
    if sim is None:
        return [None] * m, [None] * m, l2, l2_nearest
    best = sim.masked_fill(~allowed, -math.inf).max(1).values
    ties = (sim == best[:, None]) & allowed
    # Tie-break by distance; finfo.max keeps a tie (even with an inf/NaN distance) ahead of
    # a non-tie (+inf), so the chosen column always has the max IoU.
    big = torch.finfo(d.dtype).max
    iou_idx = torch.nan_to_num(d, nan=big, posinf=big).masked_fill(~ties, math.inf).argmin(1)
    ious, iou_nearest = _where_valid(best, iou_idx, has_any)
    return ious, iou_nearest, l2, l2_nearest


def _where_valid(
    values: Tensor, indices: Tensor, ok: list[bool]
) -> tuple[list[float | None], list[int | None]]:
    """Python lists with None where a row had no candidate or a non-finite value."""
    vals = [
        float(v) if o and math.isfinite(v) else None
        for v, o in zip(values.tolist(), ok, strict=True)
    ]
    idx = [int(i) if v is not None else None for i, v in zip(indices.tolist(), vals, strict=True)]
    return vals, idx


# ---------------------------------------------------------------------------- task zoos


def task_direction(
    generated: Sequence[Tensor], trained: Sequence[Tensor], average: Tensor
) -> dict[str, float]:
    """How much of a task's own deviation from the zoo average the generated tensors reproduce.

    ``d_t`` = mean of the task's trained tensors minus ``average`` (the mean over training
    tasks), ``d_g`` = each generated tensor minus ``average``. ``slope`` = <d_g, d_t> / |d_t|^2
    (1: all of the task-specific part, 0: none, as if the generator ignored the task),
    ``cosine`` = the cosine of d_g and d_t; both averaged over the generated tensors. Accuracy
    can hide a tensor that is only the zoo average: this cannot.
    """
    own = torch.stack([t.double() for t in trained]).mean(0) - average  # d_t
    scale = float(own.square().sum())
    slopes, cosines = [], []
    for g in generated:
        dev = g.double() - average  # d_g
        dot = float((dev * own).sum())
        norm = float(dev.norm() * own.norm())
        slopes.append(dot / scale if scale > 0 else 0.0)
        cosines.append(dot / norm if norm > 0 else 0.0)
    return {"slope": statistics.fmean(slopes), "cosine": statistics.fmean(cosines)}
