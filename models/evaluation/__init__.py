"""Evaluating what generators make, against their zoo.

- ``novelty``: accuracy and novelty of generated models (max IoU of wrong predictions, min L2
  to the zoo) beside the zoo and noised copies of it;
- ``metrics``: the statistics and similarity measures those reports use;
- ``tasks``: task-conditioned generators on seen and held-out tasks;
- ``plot``: accuracy against similarity, as a PNG;
- ``task_zoo_stats``: what a task zoo asks of a generator, tensor by tensor
  (``python -m models.evaluation.task_zoo_stats ZOO``).
"""

from __future__ import annotations

from models.errors import EvaluationError
from models.evaluation.metrics import accuracy_summary, iou, iou_matrix, l2_matrix, summary_stats
from models.evaluation.novelty import (
    NOISE_SIGMAS,
    add_noise,
    check_generated,
    evaluate_generated,
    evaluate_state_dicts,
    load_generated_dir,
    noise_set_name,
    wrong_predictions,
)

__all__ = [
    "NOISE_SIGMAS",
    "EvaluationError",
    "accuracy_summary",
    "add_noise",
    "check_generated",
    "evaluate_generated",
    "evaluate_state_dicts",
    "iou",
    "iou_matrix",
    "l2_matrix",
    "load_generated_dir",
    "noise_set_name",
    "summary_stats",
    "wrong_predictions",
]
