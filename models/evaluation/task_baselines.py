"""The Zeng et al. 2025 baselines on a task zoo, one task at a time.

A task-conditioned generator is asked for models of one task, so each evaluated task (held out
or seen) is its own small zoo: **the task's trained checkpoints are the reference**. For every
task, the generated models and the baselines built from those checkpoints (noise matched to
the task's generated mean accuracy, averages of k, per-value Gaussian; see
``models.evaluation.baseline_sets``) are scored on the task's binary test split: accuracy, max
IoU of wrong predictions with any of the task's checkpoints, min L2 to them in the normalized
space of a tokenizer fitted on them.

What that means differs by kind: for a **seen** task the checkpoints are what the generator
trained on, so these are the memorization baselines of the paper; for a **held-out** task the
generator never saw them, so the baselines are an oracle (they start from the answer) and
show how close to the task's real models the generated ones come, not whether they are copies.

``TaskBaselines`` is the per-task callable ``evaluate_tasks(extra_scores=...)`` runs;
``summarize_task_baselines`` pools its per-task sets into ``report["baselines"]``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from models.evaluation.baseline_sets import BASELINE_KEYS, score_baselines
from models.evaluation.metrics import summary_stats
from models.evaluation.novelty import normalized_vectors, novelty_set, wrong_predictions
from models.tokenizer import ParameterTokenizer

__all__ = ["TaskBaselines", "summarize_task_baselines"]

_SETS = ("generated", *BASELINE_KEYS)


class TaskBaselines:
    """Scores one task's generated models and baselines against the task's checkpoints."""

    def __init__(self, module: nn.Module, *, seed: int = 0) -> None:
        self.module = module
        self.seed = seed
        self.buffers = dict(module.named_buffers())

    def __call__(
        self,
        mask: Sequence[int],
        generated: Sequence[Mapping[str, Tensor]],
        trained: Sequence[Mapping[str, Tensor]],
        x: Tensor,
        y: Tensor,
    ) -> dict[str, Any]:
        """``{"baselines": {set key: novelty set}, "baseline_notes": [...]}`` for one task;
        ``y`` holds the task's binary test labels."""
        tokenizer = ParameterTokenizer.fit(trained)
        ref_wrong = wrong_predictions(self.module, trained, x, y)
        ref_vectors = normalized_vectors(tokenizer, trained)[0]

        def score(names: Sequence[str], sds: Sequence[Mapping[str, Tensor]]) -> dict[str, Any]:
            wrong = wrong_predictions(self.module, sds, x, y)
            vectors = normalized_vectors(tokenizer, sds)[0]
            return novelty_set(names, wrong, vectors, ref_wrong, ref_vectors, [None] * len(sds))

        gen = score([f"generated[{i}]" for i in range(len(generated))], generated)
        value = sum(b << c for c, b in enumerate(mask))  # one stream per task, as sampling has
        seed = int(np.random.SeedSequence([self.seed, 4, value]).generate_state(1, np.uint32)[0])
        sets, notes = score_baselines(
            trained,
            len(generated),
            gen["summary"]["accuracy"]["mean"],
            score,
            zoo_names=[f"trained[{i}]" for i in range(len(trained))],
            seed=seed,
            buffers=self.buffers,
        )
        return {"baselines": {"generated": gen, **sets}, "baseline_notes": notes}


def _pooled(sets: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One set's figures over all tasks: every model's accuracy, max IoU and min L2 pooled."""

    def pool(field: str) -> list[float | None]:
        return [v for s in sets for v in s[field]]

    return {
        "n": sum(s["n"] for s in sets),
        "n_tasks": len(sets),
        "summary": {
            "accuracy": summary_stats(pool("accuracy")),
            "max_iou": summary_stats(pool("max_iou")),
            "min_l2": summary_stats(pool("min_l2")),
        },
    }


def summarize_task_baselines(report: dict[str, Any]) -> dict[str, Any]:
    """``report["baselines"]`` of a task report whose entries carry ``TaskBaselines`` output:
    for ``heldout`` and ``seen``, each of ``generated`` and the baseline keys pooled over the
    tasks (``n`` models, ``n_tasks``, ``summary``); ``noise`` adds the per-task ``sigma``
    summary; ``reference`` says what each task's sets are compared with."""
    out: dict[str, Any] = {}
    for kind in ("heldout", "seen"):
        entries = [e for e in report["tasks"][kind]["per_task"] if "baselines" in e]
        if not entries:
            out[kind] = None
            continue
        pooled = {
            key: _pooled([e["baselines"][key] for e in entries if e["baselines"][key]])
            for key in _SETS
        }
        sigmas = [e["baselines"]["noise"]["sigma"] for e in entries if e["baselines"]["noise"]]
        pooled["noise"]["sigma"] = summary_stats(sigmas)
        pooled["noise"]["sigma_mean_log"] = (
            float(np.exp(statistics.fmean(np.log(sigmas)))) if sigmas else None
        )
        for key in BASELINE_KEYS:
            if key.startswith("average_"):
                pooled[key]["k"] = max(e["baselines"][key]["k"] for e in entries)
        out[kind] = pooled
    out["reference"] = (
        "each task's own trained checkpoints: for seen tasks what the generator trained on "
        "(memorization baselines), for held-out tasks models it never saw (an oracle)"
    )
    return out
