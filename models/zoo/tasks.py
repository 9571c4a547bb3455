"""Binary digits tasks by 10-bit class mask: the paper's unseen-task setup, on scikit-learn digits.

A task is a mask over the ten digit classes; an image is "positive" when its class is in the
mask. All-zero and all-one masks have no negative (or positive) class and are excluded, which
leaves 2^10 - 2 = 1022 tasks. The mask itself is the task embedding the generator sees.

Learnability is the design goal (the paper fine-tunes every task model from ONE pretrained
ViT): one shared base MLP is pretrained on all ten classes with a fixed seed, and every task
model is fine-tuned from it with a two-way head initialised from the mask (positive logit =
mean of the base head rows of the positive classes, negative logit = mean of the others). So
every task model sits in the base's basin and the map mask -> weights is smooth. Each task then
saves K checkpoints through one extra epoch at a small learning rate, like the other zoos.

A seeded set of tasks is held out: their checkpoints are built and stored (flagged
``heldout``) because evaluation compares generated models with them, but generators never train
on them. Training is pure (``pretrain_base``, ``finetune_task``); ``build_task_zoo`` writes.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.zoo import digits
from models.zoo.store import (
    Zoo,
    ZooCheckpoint,
    ZooError,
    load_zoo,
    save_zoo,
    staged_directory,
    write_state_dict,
)

__all__ = [
    "NUM_CLASSES",
    "NUM_TASKS",
    "TASK_ARCHITECTURE",
    "TASK_CONDITION",
    "TASK_ZOO_NAME",
    "TaskRecipe",
    "all_masks",
    "binary_labels",
    "binary_split",
    "build_task_zoo",
    "finetune_task",
    "head_from_mask",
    "mask_bits",
    "mask_name",
    "pretrain_base",
    "select_tasks",
    "task_model",
    "task_seed",
]

NUM_CLASSES = 10
NUM_TASKS = 2**NUM_CLASSES - 2  # every mask but all-zero and all-one
TASK_ZOO_NAME = "digits-tasks"
# hidden=64: 4,290 parameters (the paper's "tiny" regime), i.e. 19 tokens of 256 values
# (16 + 1 + 1 + 1 with tensor granularity), so all 1,022 tasks x 5 checkpoints are ~100 MB of
# tokens. Width matters here: a union of classes is not linearly separable in the base's
# features, and 64 units leave more of them separable than 32 (linear probe 0.92 vs 0.90 mean
# binary accuracy; fine-tuned 0.965 vs 0.95 on a sample of tasks).
HIDDEN = 64
TASK_ARCHITECTURE: dict[str, Any] = {
    "name": TASK_ZOO_NAME,
    "builder": "models.zoo.digits:mlp",
    "kwargs": {"hidden": HIDDEN, "num_classes": 2},
}
TASK_CONDITION: dict[str, Any] = {
    "kind": "vector",
    "dim": NUM_CLASSES,
    "labels": [str(c) for c in range(NUM_CLASSES)],
    "description": "10-bit class mask over the digits 0-9: 1 = the digit is a positive "
    "example of the binary task, 0 = negative (logit 1 = positive, logit 0 = negative)",
}


@dataclass(frozen=True)
class TaskRecipe:
    """How the base is pretrained and each task fine-tuned (Adam).

    ``base`` trains the shared 10-class MLP (``digits.train_run``). Task models fine-tune for
    ``epochs``: the head at ``lr``, the first layer at ``lr * body_lr_factor`` (a small body
    step keeps every task model near the base, so the map mask -> weights stays smooth, while
    still adapting the features: a frozen body loses about 4 points), then save their
    checkpoints through one extra epoch at ``finetune_lr_factor`` times those rates.
    """

    hidden: int = HIDDEN
    base: digits.TrainingRecipe = field(default_factory=digits.TrainingRecipe)
    epochs: int = 10
    lr: float = 1e-2
    body_lr_factor: float = 0.1
    batch_size: int = 32
    finetune_lr_factor: float = 0.05

    def to_json(self) -> dict[str, Any]:
        """The recipe as recorded in zoo.json's provenance."""
        b = self.base
        return {
            "hidden": self.hidden,
            "base": {"epochs": b.epochs, "lr": b.lr, "batch_size": b.batch_size},
            "task": {
                "epochs": self.epochs,
                "lr": self.lr,
                "body_lr": self.lr * self.body_lr_factor,
                "batch_size": self.batch_size,
                "finetune_lr_factor": self.finetune_lr_factor,
            },
        }


# ---------------------------------------------------------------------------- masks


def all_masks() -> list[tuple[int, ...]]:
    """Every valid mask, ordered by its integer value (bit c = class c), all-0/all-1 excluded."""
    return [
        tuple((value >> c) & 1 for c in range(NUM_CLASSES))
        for value in range(1, 2**NUM_CLASSES - 1)
    ]


def mask_bits(mask: Sequence[float]) -> tuple[int, ...]:
    """A mask as a tuple of ten 0/1 ints; anything else is rejected with the fix."""
    bits = tuple(int(v) for v in mask)
    if len(bits) != NUM_CLASSES or any(
        b not in (0, 1) or b != v for b, v in zip(bits, mask, strict=True)
    ):
        raise ValueError(
            f"a task mask is {NUM_CLASSES} values of 0 or 1 (class c positive = 1), got {list(mask)}"
        )
    return bits


def _mask_value(mask: Sequence[float]) -> int:
    return sum(b << c for c, b in enumerate(mask_bits(mask)))


def mask_name(mask: Sequence[float]) -> str:
    """The mask as ten 0/1 characters, class 0 first, e.g. ``"0100110001"``."""
    return "".join(str(b) for b in mask_bits(mask))


def select_tasks(
    num_tasks: int, holdout: int, seed: int
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """``(training, heldout)`` masks, each sorted; ``num_tasks`` counts both.

    One seeded permutation of all masks is cut into held-out tasks first, then training tasks,
    so the held-out set depends only on ``(holdout, seed)``: zoos with more or fewer training
    tasks are evaluated on the same unseen tasks.
    """
    if not 1 <= holdout < num_tasks <= NUM_TASKS:
        raise ZooError(
            f"need 1 <= holdout < tasks <= {NUM_TASKS}, got holdout={holdout}, tasks={num_tasks}; "
            "hold out fewer tasks or build more"
        )
    masks = all_masks()
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x7A5C])).permutation(len(masks))
    heldout = sorted((masks[i] for i in order[:holdout]), key=_mask_value)
    training = sorted((masks[i] for i in order[holdout:num_tasks]), key=_mask_value)
    return training, heldout


def binary_labels(y: Tensor, mask: Sequence[float]) -> Tensor:
    """int64 labels: 1 where the class of ``y`` is in ``mask``, else 0."""
    return torch.tensor(mask_bits(mask), dtype=torch.int64)[y]


def binary_split(split: digits.DigitsSplit, mask: Sequence[float]) -> digits.DigitsSplit:
    """``split`` with its labels replaced by the task's binary labels (same images)."""
    return replace(
        split, y_train=binary_labels(split.y_train, mask), y_test=binary_labels(split.y_test, mask)
    )


def task_seed(seed: int) -> int:
    """The shuffling seed of every task of a zoo built with ``seed``.

    Deliberately the same for all tasks: two tasks then see their minibatches in the same
    order and differ only through their labels, which keeps the map mask -> weights smooth.
    """
    return digits.run_seed(seed, 1)


# ---------------------------------------------------------------------------- models


def pretrain_base(
    split: digits.DigitsSplit, *, seed: int, recipe: TaskRecipe | None = None
) -> tuple[dict[str, Tensor], float]:
    """Train the shared 10-class base MLP; returns its state dict and 10-class test accuracy."""
    recipe = recipe or TaskRecipe()
    build = partial(digits.mlp, hidden=recipe.hidden, num_classes=NUM_CLASSES)
    ((state, acc),) = digits.train_run(
        build, split, num_checkpoints=1, seed=digits.run_seed(seed, 0), recipe=recipe.base
    )
    return state, acc


def head_from_mask(weight: Tensor, bias: Tensor, mask: Sequence[float]) -> tuple[Tensor, Tensor]:
    """A two-way head from the base's 10-way head ``(10, H)``, ``(10,)``: rows (negative, positive).

    The positive logit is the mean of the positive classes' logits, the negative one the mean of
    the others', so the task model starts as a sensible classifier and depends smoothly on the
    mask.
    """
    m = torch.tensor(mask_bits(mask), dtype=weight.dtype)  # (10,)
    if m.numel() != weight.shape[0] or not 0 < float(m.sum()) < m.numel():
        raise ValueError(f"a task needs positive and negative classes, got mask {list(mask)}")
    select = torch.stack([(1 - m) / (1 - m).sum(), m / m.sum()])  # (2, 10) row-normalised
    return select @ weight, select @ bias  # (2, H), (2,)


def task_model(base: dict[str, Tensor], mask: Sequence[float], hidden: int = HIDDEN) -> nn.Module:
    """The task's starting point: the base's first layer plus the mask-initialised head."""
    weight, bias = head_from_mask(base["fc2.weight"], base["fc2.bias"], mask)
    module = digits.mlp(hidden=hidden, num_classes=2)
    state = OrderedDict(base)
    state["fc2.weight"], state["fc2.bias"] = weight, bias
    module.load_state_dict(state, strict=True)
    return module


def _state_dict_copy(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def finetune_task(
    base: dict[str, Tensor],
    mask: Sequence[float],
    split: digits.DigitsSplit,
    *,
    num_checkpoints: int,
    seed: int,
    recipe: TaskRecipe | None = None,
) -> list[tuple[dict[str, Tensor], float]]:
    """Fine-tune the base on one task; ``num_checkpoints`` (state dict, binary test accuracy).

    ``split`` is the 10-class split (its labels are mapped here). Deterministic given ``seed``
    (the minibatch order); runs single-threaded, like ``digits.train_run``.
    """
    recipe = recipe or TaskRecipe()
    if num_checkpoints < 1:
        raise ValueError(f"num_checkpoints must be >= 1, got {num_checkpoints}")
    data = binary_split(split, mask)
    n = len(data.y_train)
    ft_batch = max(1, min(recipe.batch_size, n // (2 * num_checkpoints)))
    ft_steps = math.ceil(n / ft_batch)
    # Checkpoint after these (1-based) minibatch counts of the extra epoch, the last at its end.
    save_at = {(i + 1) * ft_steps // num_checkpoints for i in range(num_checkpoints)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = task_model(base, mask, recipe.hidden)
        head = [p for name, p in model.named_parameters() if name.startswith("fc2.")]
        body = [p for name, p in model.named_parameters() if not name.startswith("fc2.")]
        rates = (recipe.lr * recipe.body_lr_factor, recipe.lr)
        opt = torch.optim.Adam([{"params": body, "lr": rates[0]}, {"params": head, "lr": rates[1]}])
        shuffle = torch.Generator().manual_seed(seed)
        loss_fn = nn.CrossEntropyLoss()
        saved: list[tuple[dict[str, Tensor], float]] = []
        for epoch in range(recipe.epochs + 1):
            last = epoch == recipe.epochs
            batch = ft_batch if last else recipe.batch_size
            if last:  # Adam's moments carry over: the extra epoch continues, only slower
                for group, rate in zip(opt.param_groups, rates, strict=True):
                    group["lr"] = rate * recipe.finetune_lr_factor
            model.train()
            order = torch.randperm(n, generator=shuffle)
            for step, start in enumerate(range(0, n, batch), start=1):
                idx = order[start : start + batch]
                opt.zero_grad(set_to_none=True)
                loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
                opt.step()
                if last and step in save_at:
                    acc = digits.accuracy(model, data.x_test, data.y_test)
                    saved.append((_state_dict_copy(model), acc))
    finally:
        torch.set_num_threads(threads)
    return saved


# ---------------------------------------------------------------------------- the zoo


def build_task_zoo(
    out: Path | str,
    *,
    num_tasks: int = NUM_TASKS,
    per_task: int = 5,
    holdout: int = 20,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    recipe: TaskRecipe | None = None,
) -> Zoo:
    """Build the ``digits-tasks`` zoo at ``out``; returns the loaded zoo.

    ``num_tasks`` masks (``holdout`` of them held out, see ``select_tasks``) get ``per_task``
    checkpoints each, all from one base (run id 0: one permutation state). The same arguments
    give byte-identical checkpoint files.
    """
    recipe = recipe or TaskRecipe()
    if per_task < 1:
        raise ZooError(f"--per-task must be >= 1, got {per_task}")
    training, heldout = select_tasks(num_tasks, holdout, seed)
    held = set(heldout)
    tasks = sorted([*training, *heldout], key=_mask_value)
    split = digits.load_digits_split()
    started = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks) + 1, desc=f"zoo {TASK_ZOO_NAME}", unit="task")
    checkpoints: list[ZooCheckpoint] = []
    try:
        with staged_directory(out, overwrite=overwrite) as tmp:
            base, base_acc = pretrain_base(split, seed=seed, recipe=recipe)
            if bar is not None:
                bar.update(1)
            for mask in tasks:
                trained = finetune_task(
                    base,
                    mask,
                    split,
                    num_checkpoints=per_task,
                    seed=task_seed(seed),
                    recipe=recipe,
                )
                for k, (state, acc) in enumerate(trained):
                    name = f"task_{mask_name(mask)}_{k:02d}.safetensors"
                    # No extra metadata: safetensors writes a metadata map in hash order,
                    # so a second key would make the bytes differ from build to build.
                    write_state_dict(state, tmp / name)
                    checkpoints.append(
                        ZooCheckpoint(
                            file=name,
                            accuracy=acc,
                            run=0,
                            condition=[float(v) for v in mask],
                            heldout=mask in held,
                        )
                    )
                if bar is not None:
                    bar.update(1)
            provenance = {
                "command": f"rpg zoo build {TASK_ZOO_NAME} --out {out} --tasks {num_tasks} "
                f"--per-task {per_task} --holdout {holdout} --seed {seed}",
                "seed": seed,
                "num_tasks": len(tasks),
                "checkpoints_per_task": per_task,
                "heldout_tasks": [mask_name(m) for m in heldout],
                "base_accuracy": base_acc,
                "recipe": recipe.to_json(),
                "optimizer": "adam",
                "torch": torch.__version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "duration_s": round(time.perf_counter() - started, 3),
            }
            save_zoo(
                Zoo(
                    path=tmp,
                    architecture=dict(
                        TASK_ARCHITECTURE, kwargs={"hidden": recipe.hidden, "num_classes": 2}
                    ),
                    dataset={**digits.dataset_spec(split), "task": "binary by class mask"},
                    condition=dict(TASK_CONDITION),
                    checkpoints=checkpoints,
                    provenance=provenance,
                )
            )
    finally:
        if bar is not None:
            bar.close()
    return load_zoo(out)
