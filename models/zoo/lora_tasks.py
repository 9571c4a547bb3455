"""The tasks of the ``digits-lora-tasks`` zoo: an input transform crossed with a label map.

A task shows the digits through one of ``TRANSFORMS`` (identity, flips, rotations, transpose
of the 8x8 image) and asks for the label shifted by one of ``LABEL_SHIFTS`` (class ``y``
answers ``(y + k) mod 10``). Every pair but (identity, +0), which is the base's own task, is a
task: 6 x 6 - 1 = 35. The base network alone is poor on them (a shifted label is always
wrong; a flipped or rotated digit mostly is), and a rank-4 LoRA adapter on both layers of
the base recovers most of it.

The task embedding encodes both parts: a one-hot of the transform followed by a one-hot of
the label shift (12 values). A seeded set of tasks is held out so that every held-out task
is a new combination of parts that seen tasks cover: its transform appears in seen tasks
with other label maps, and its label map with other transforms.

Pure: data and definitions only (training in ``lora_train``, files in ``lora_zoo``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.zoo import digits
from models.zoo.errors import ZooError

__all__ = [
    "EMBEDDING_DIM",
    "LABEL_SHIFTS",
    "LORA_TASK_ZOO_NAME",
    "TRANSFORMS",
    "LoraTask",
    "all_tasks",
    "condition_spec",
    "select_heldout",
    "task_data",
    "task_from_embedding",
]

LORA_TASK_ZOO_NAME = "digits-lora-tasks"
TRANSFORMS: tuple[str, ...] = ("identity", "flip_h", "flip_v", "rot90", "rot180", "transpose")
LABEL_SHIFTS: tuple[int, ...] = (0, 1, 3, 5, 7, 9)
EMBEDDING_DIM = len(TRANSFORMS) + len(LABEL_SHIFTS)
SIDE = 8


def _image(x: Tensor) -> Tensor:
    return x.reshape(-1, SIDE, SIDE)  # (N, 64) -> (N, 8, 8)


_TRANSFORM_FNS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda img: img,
    "flip_h": lambda img: img.flip(2),  # mirror left-right
    "flip_v": lambda img: img.flip(1),  # mirror top-bottom
    "rot90": lambda img: torch.rot90(img, 1, (1, 2)),
    "rot180": lambda img: torch.rot90(img, 2, (1, 2)),
    "transpose": lambda img: img.transpose(1, 2),
}


@dataclass(frozen=True)
class LoraTask:
    """One task: how inputs are transformed and how labels are shifted."""

    transform: str
    shift: int

    @property
    def name(self) -> str:
        """E.g. ``flip_h+3``."""
        return f"{self.transform}+{self.shift}"

    def embedding(self) -> list[float]:
        """One-hot transform, then one-hot label shift (``EMBEDDING_DIM`` values)."""
        vec = [0.0] * EMBEDDING_DIM
        vec[TRANSFORMS.index(self.transform)] = 1.0
        vec[len(TRANSFORMS) + LABEL_SHIFTS.index(self.shift)] = 1.0
        return vec

    def inputs(self, x: Tensor) -> Tensor:
        """``(N, 64)`` digits as this task shows them."""
        return _TRANSFORM_FNS[self.transform](_image(x)).reshape(-1, SIDE * SIDE).contiguous()

    def labels(self, y: Tensor) -> Tensor:
        """The answers this task asks for: ``(y + shift) mod 10``."""
        return (y + self.shift) % 10


def all_tasks() -> list[LoraTask]:
    """Every task, transform-major; (identity, +0) is the base's own task and left out."""
    return [LoraTask(t, s) for t in TRANSFORMS for s in LABEL_SHIFTS if (t, s) != ("identity", 0)]


def task_from_embedding(values: Sequence[float]) -> LoraTask:
    """The task a condition vector names (its two one-hot parts); refuses anything else."""
    vec = [float(v) for v in values]
    nt = len(TRANSFORMS)
    parts = (vec[:nt], vec[nt:])
    if len(vec) != EMBEDDING_DIM or any(sorted(p) != [0.0] * (len(p) - 1) + [1.0] for p in parts):
        raise ValueError(
            f"a {LORA_TASK_ZOO_NAME} embedding is a one-hot of {nt} transforms followed by a "
            f"one-hot of {len(LABEL_SHIFTS)} label shifts, got {vec}"
        )
    return LoraTask(TRANSFORMS[parts[0].index(1.0)], LABEL_SHIFTS[parts[1].index(1.0)])


def condition_spec() -> dict[str, Any]:
    """The zoo's (and generator's) condition spec."""
    return {
        "kind": "vector",
        "dim": EMBEDDING_DIM,
        "labels": [f"transform:{t}" for t in TRANSFORMS] + [f"label+{s}" for s in LABEL_SHIFTS],
        "description": "one-hot input transform of the 8x8 digit (identity, flip_h, flip_v, "
        "rot90, rot180, transpose) followed by one-hot label shift k (class y answers "
        "(y + k) mod 10, k in 0, 1, 3, 5, 7, 9)",
    }


def select_heldout(num_heldout: int, seed: int) -> list[LoraTask]:
    """A seeded set of held-out tasks, each a new combination of parts seen tasks cover.

    Tasks are taken in a seeded order and kept only while every transform and every label
    shift still has at least two seen tasks, so no held-out task has an unseen part.
    """
    tasks = all_tasks()
    if not 1 <= num_heldout <= len(tasks) - len(TRANSFORMS) * 2:
        raise ZooError(
            f"--holdout must be between 1 and {len(tasks) - len(TRANSFORMS) * 2} for "
            f"{LORA_TASK_ZOO_NAME} ({len(tasks)} tasks), got {num_heldout}"
        )
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x10A])).permutation(len(tasks))
    seen_t = {t: sum(task.transform == t for task in tasks) for t in TRANSFORMS}
    seen_s = {s: sum(task.shift == s for task in tasks) for s in LABEL_SHIFTS}
    held: list[LoraTask] = []
    for i in order:
        task = tasks[int(i)]
        if seen_t[task.transform] > 2 and seen_s[task.shift] > 2:
            held.append(task)
            seen_t[task.transform] -= 1
            seen_s[task.shift] -= 1
        if len(held) == num_heldout:
            return held
    raise ZooError(f"cannot hold out {num_heldout} tasks and keep every part seen twice")


def task_data(split: digits.DigitsSplit, task: LoraTask) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of one task."""
    return (
        task.inputs(split.x_train),
        task.labels(split.y_train),
        task.inputs(split.x_test),
        task.labels(split.y_test),
    )


def dataset_spec(split: digits.DigitsSplit) -> dict[str, Any]:
    """The zoo.json ``dataset`` entry: the digits split plus the task definitions."""
    return {
        **digits.dataset_spec(split),
        "task": LORA_TASK_ZOO_NAME,
        "transforms": list(TRANSFORMS),
        "label_shifts": list(LABEL_SHIFTS),
    }


def check_dataset(spec: Mapping[str, Any]) -> None:
    """A zoo's dataset entry must describe these tasks (evaluation rebuilds them from code)."""
    if (
        spec.get("task") != LORA_TASK_ZOO_NAME
        or list(spec.get("transforms", [])) != list(TRANSFORMS)
        or list(spec.get("label_shifts", [])) != list(LABEL_SHIFTS)
    ):
        raise ValueError(
            f"the zoo's dataset is not this version's {LORA_TASK_ZOO_NAME} tasks "
            f"(transforms {list(TRANSFORMS)}, label shifts {list(LABEL_SHIFTS)})"
        )
