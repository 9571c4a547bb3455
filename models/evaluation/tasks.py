"""Evaluate a task-conditioned generator on a task zoo: does it make working models for a mask?

For every held-out task of the zoo (never seen in training) and a seeded sample of seen tasks,
the generator samples models for the task's mask; each is run on that task's binary test split
(the zoo's digits test images, labelled by the mask) beside the zoo's trained checkpoints of the
same task. Plain accuracy flatters imbalanced masks (a mask with one positive class is 90%
negative), so every set also reports:

- the **majority baseline**: the accuracy of always predicting the task's majority class (the
  majority of its training labels), which any useful model must beat;
- **balanced accuracy**: the mean of the per-class recalls (0.5 = chance for every mask);
- the **nearest-task baseline**: the zoo's trained models of the seen task(s) whose mask is
  closest in Hamming distance, run on this task; it is what retrieval without a generator
  gets, so a generator beating it on held-out tasks has learned more than a lookup.

With ``swap_tensors``, every generated model is also scored once per tensor with that one
tensor taken from the task's first trained checkpoint: the tensor whose swap recovers the
most accuracy is the part of the model the generator gets wrong (on the digits task zoo,
``fc1.weight``: docs/benchmarks, "Task-conditioned generation").

Reports are plain JSON-safe dicts with accuracies as fractions; ``rpg evaluate`` (``models.cli.evaluate``) prints them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.diffusion.samplers import SamplerName
from models.errors import EvaluationError
from models.evaluation.metrics import task_direction
from models.evaluation.novelty import check_generated
from models.generator import Generator
from models.zoo import digits
from models.zoo.store import Zoo, ZooCheckpoint, ZooError
from models.zoo.tasks import binary_labels, mask_bits, mask_name

__all__ = [
    "Task",
    "balanced_accuracy",
    "evaluate_tasks",
    "majority_baseline",
    "predict",
    "task_direction",
    "zoo_tasks",
]

# Called with (tasks done, tasks total) after each task.
TaskProgress = Callable[[int, int], None]
# Called per task with (mask, generated, trained, x_test, binary y_test); its dict joins the
# task's entry (``task_baselines.TaskBaselines`` is one).
TaskScores = Callable[
    [Sequence[int], Sequence[Mapping[str, Tensor]], Sequence[Mapping[str, Tensor]], Tensor, Tensor],
    dict[str, Any],
]


@dataclass(frozen=True)
class Task:
    """One task of a zoo: its mask, whether it is held out, and its trained checkpoints."""

    mask: tuple[int, ...]
    heldout: bool
    checkpoints: list[ZooCheckpoint] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The mask as ten 0/1 characters, class 0 first."""
        return mask_name(self.mask)


def zoo_tasks(zoo: Zoo) -> list[Task]:
    """The zoo's checkpoints grouped by task mask, in zoo order.

    A task is held out when its checkpoints are; a task with both kinds is an error (its
    "unseen" checkpoints would have been seen).
    """
    if zoo.condition.get("kind") != "vector":
        raise EvaluationError(
            f"zoo {zoo.path} is not task-conditioned (condition kind "
            f"{zoo.condition.get('kind')!r}); evaluate generated folders with --generated instead"
        )
    groups: dict[tuple[int, ...], list[ZooCheckpoint]] = {}
    for c in zoo.checkpoints:
        try:
            key = mask_bits(c.condition or [])
        except ValueError as e:
            raise EvaluationError(f"{c.file}: {e}; task evaluation needs 0/1 class masks") from e
        groups.setdefault(key, []).append(c)
    tasks = []
    for key, ckpts in groups.items():
        flags = {c.heldout for c in ckpts}
        if len(flags) > 1:
            raise EvaluationError(
                f"task {mask_name(key)} has held-out and training checkpoints in {zoo.path}; "
                "flag all checkpoints of a task alike (rebuild the zoo)"
            )
        tasks.append(Task(mask=key, heldout=flags.pop(), checkpoints=ckpts))
    return tasks


# ---------------------------------------------------------------------------- metrics


def majority_baseline(y_train: Tensor, y_test: Tensor) -> float:
    """Test accuracy of always predicting the majority class of ``y_train`` (binary 0/1).

    A tie goes to the negative class (0).
    """
    majority = int(2 * int(y_train.sum()) > len(y_train))
    return float((y_test == majority).sum()) / len(y_test)


def balanced_accuracy(pred: Tensor, y: Tensor) -> float:
    """Mean recall over the classes present in ``y`` (chance level: 1 / number of classes)."""
    recalls = [float((pred[y == c] == c).float().mean()) for c in torch.unique(y).tolist()]
    return statistics.fmean(recalls)


@torch.no_grad()
def predict(module: nn.Module, state_dicts: Sequence[Mapping[str, Tensor]], x: Tensor) -> Tensor:
    """Predicted classes ``(len(state_dicts), len(x))`` int64: argmax logits, eval mode, no grad."""
    was_training = module.training
    module.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: thread sync would cost more than the matmul
    try:
        preds = []
        for sd in state_dicts:
            module.load_state_dict(sd, strict=True)
            preds.append(module(x).argmax(dim=1))
    finally:
        torch.set_num_threads(threads)
        module.train(was_training)
    return torch.stack(preds)


# ---------------------------------------------------------------------------- evaluation


def _scores(preds: Tensor, y: Tensor) -> tuple[list[float], list[float]]:
    accs = [float((p == y).sum()) / len(y) for p in preds]
    return accs, [balanced_accuracy(p, y) for p in preds]


def _training_average(zoo: Zoo, training: Sequence[Task]) -> dict[str, Tensor]:
    """float64 mean of every float tensor over the training tasks (one checkpoint each)."""
    total: dict[str, Tensor] = {}
    for task in training:
        state = zoo.read(zoo.path / task.checkpoints[0].file)
        for name, value in state.items():
            if value.is_floating_point():
                total[name] = total.get(name, 0) + value.double()
    return {name: value / len(training) for name, value in total.items()}


def _sample_seed(seed: int, mask: Sequence[int]) -> int:
    """Sampling seed of a task: the same task gets the same models in every report."""
    value = sum(b << c for c, b in enumerate(mask))
    return int(np.random.SeedSequence([seed, 2, value]).generate_state(1, np.uint32)[0])


def _nearest_tasks(task: Task, seen: Sequence[Task]) -> list[Task]:
    """The seen tasks (other than ``task``) at the smallest Hamming distance from it."""
    others = [t for t in seen if t.mask != task.mask]
    if not others:
        return []
    dist = [sum(a != b for a, b in zip(t.mask, task.mask, strict=True)) for t in others]
    return [t for t, d in zip(others, dist, strict=True) if d == min(dist)]


def _check_generator(zoo: Zoo, generator: Generator) -> None:
    spec, arch = generator.condition_spec, zoo.architecture or {}
    if spec.get("kind") != "vector" or spec.get("dim") != zoo.condition.get("dim"):
        raise EvaluationError(
            f"generator {generator.name!r} has condition {spec}, but zoo {zoo.path} is "
            f"conditioned on {zoo.condition.get('dim')}-bit masks; train one on this zoo "
            "(`rpg train ZOO --out BUNDLE`)"
        )
    theirs = generator.architecture
    if (theirs.get("builder"), theirs.get("kwargs")) != (arch.get("builder"), arch.get("kwargs")):
        raise EvaluationError(
            f"generator {generator.name!r} makes {theirs.get('builder')} {theirs.get('kwargs')}, "
            f"but zoo {zoo.path} holds {arch.get('builder')} {arch.get('kwargs')}; evaluate a "
            "generator trained on this zoo"
        )


def _set_summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(values: list[float]) -> float | None:
        return statistics.fmean(values) if values else None

    gen = [a for e in entries for a in e["generated"]["accuracy"]]
    gen_bal = [a for e in entries for a in e["generated"]["balanced_accuracy"]]
    trained = [a for e in entries for a in e["trained"]["accuracy"]]
    trained_bal = [a for e in entries for a in e["trained"]["balanced_accuracy"]]
    nearest = [e["nearest_task"]["mean"] for e in entries if e["nearest_task"]["mean"] is not None]
    gen_mean, trained_mean = mean(gen), mean(trained)
    swapped = [e["with_trained_tensor"] for e in entries if "with_trained_tensor" in e]
    directions = [e["task_direction"] for e in entries if "task_direction" in e]
    return {
        "n_tasks": len(entries),
        "n_generated": len(gen),
        "generated_mean": gen_mean,
        "generated_median": statistics.median(gen) if gen else None,
        "generated_min": min(gen) if gen else None,
        "generated_max": max(gen) if gen else None,
        "generated_balanced_mean": mean(gen_bal),
        "trained_mean": trained_mean,
        "trained_min": min(trained) if trained else None,
        "trained_balanced_mean": mean(trained_bal),
        "majority_baseline_mean": mean([e["majority_baseline"] for e in entries]),
        "nearest_task_mean": mean(nearest),
        "gap": None if gen_mean is None or trained_mean is None else trained_mean - gen_mean,
        # swap_tensors: mean accuracy with one tensor from the task's trained checkpoint
        "with_trained_tensor_mean": {
            name: statistics.fmean(e[name] for e in swapped) for name in swapped[0]
        }
        if swapped
        else None,
        # swap_tensors: how much of each tensor's task-specific part the generator reproduces
        "task_direction_mean": {
            name: {
                key: statistics.fmean(d[name][key] for d in directions)
                for key in ("slope", "cosine")
            }
            for name in directions[0]
        }
        if directions
        else None,
        # Tasks whose generated models are no better than always saying the majority class.
        "tasks_at_or_below_majority": sum(
            e["generated"]["mean"] <= e["majority_baseline"] for e in entries
        ),
        "per_task": entries,
    }


def evaluate_tasks(
    zoo: Zoo,
    generator: Generator,
    *,
    samples_per_task: int = 10,
    seen_tasks: int = 20,
    sampler: SamplerName = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    seed: int = 0,
    swap_tensors: bool = False,
    progress: TaskProgress | None = None,
    extra_scores: TaskScores | None = None,
) -> dict[str, Any]:
    """The task report of ``generator`` on ``zoo`` (JSON-safe; accuracies are fractions).

    Every held-out task and ``seen_tasks`` training tasks (a sample seeded by ``seed``) get
    ``samples_per_task`` generated models each (``eta``: DDIM noise, 0 = deterministic).
    Keys: ``tasks`` (``heldout`` and ``seen``, each with ``n_tasks``, ``generated_mean`` /
    ``_median`` / ``_min`` / ``_max``, ``generated_balanced_mean``, ``trained_mean`` / ``_min`` / ``_balanced_mean``,
    ``majority_baseline_mean``, ``nearest_task_mean``, ``gap``, ``with_trained_tensor_mean``
    (``swap_tensors`` only, else None), ``per_task``), ``settings``, ``zoo_path``,
    ``generator``, ``num_test``.
    """
    if samples_per_task < 1 or seen_tasks < 0:
        raise EvaluationError(
            f"need samples_per_task >= 1 and seen_tasks >= 0, got {samples_per_task}, {seen_tasks}"
        )
    tasks = zoo_tasks(zoo)
    _check_generator(zoo, generator)
    heldout = [t for t in tasks if t.heldout]
    training = [t for t in tasks if not t.heldout]
    if not heldout:
        raise EvaluationError(
            f"zoo {zoo.path} has no held-out tasks; rebuild it with --holdout so that unseen "
            "tasks can be evaluated"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    picked = sorted(rng.choice(len(training), size=min(seen_tasks, len(training)), replace=False))
    seen = [training[i] for i in picked]
    if zoo.dataset is None:
        raise EvaluationError(f"zoo {zoo.path} names no dataset, so tasks have no test split")
    try:
        split = digits.split_from_spec(zoo.dataset)
        module = zoo.build_module()
    except (ValueError, ZooError) as e:
        raise EvaluationError(f"cannot rebuild the tasks of zoo {zoo.path}: {e}") from e
    reference = zoo.read(zoo.path / tasks[0].checkpoints[0].file)
    average = _training_average(zoo, training) if swap_tensors else {}

    def evaluate(task: Task) -> dict[str, Any]:
        y_test = binary_labels(split.y_test, task.mask)
        y_train = binary_labels(split.y_train, task.mask)
        generated = generator.sample(
            samples_per_task,
            condition=[float(b) for b in task.mask],
            seed=_sample_seed(seed, task.mask),
            sampler=sampler,
            steps=steps,
            eta=eta,
        )
        names = [f"{task.name}/sample_{i:03d}" for i in range(samples_per_task)]
        check_generated(names, generated, reference)
        gen_acc, gen_bal = _scores(predict(module, generated, split.x_test), y_test)
        trained_sds = [zoo.read(zoo.path / c.file) for c in task.checkpoints]
        tr_acc, tr_bal = _scores(predict(module, trained_sds, split.x_test), y_test)
        near = _nearest_tasks(task, training)
        near_sds = [zoo.read(zoo.path / c.file) for t in near for c in t.checkpoints]
        near_acc = _scores(predict(module, near_sds, split.x_test), y_test)[0] if near_sds else []
        extra: dict[str, Any] = {}
        if extra_scores is not None:
            extra.update(extra_scores(task.mask, generated, trained_sds, split.x_test, y_test))
        if swap_tensors:
            own = trained_sds[0]
            extra["with_trained_tensor"] = {
                name: statistics.fmean(
                    _scores(
                        predict(module, [{**g, name: own[name]} for g in generated], split.x_test),
                        y_test,
                    )[0]
                )
                for name, value in module.state_dict().items()  # the architecture's order
                if value.is_floating_point()
            }
            extra["task_direction"] = {
                name: task_direction(
                    [g[name] for g in generated], [t[name] for t in trained_sds], average[name]
                )
                for name in module.state_dict()  # the architecture's order
                if name in average
            }
        return {
            "task": task.name,
            "mask": list(task.mask),
            "positive_classes": [c for c, b in enumerate(task.mask) if b],
            "heldout": task.heldout,
            "positive_fraction": float(y_test.float().mean()),
            "majority_baseline": majority_baseline(y_train, y_test),
            "generated": {
                "accuracy": gen_acc,
                "balanced_accuracy": gen_bal,
                "mean": statistics.fmean(gen_acc),
                "min": min(gen_acc),
                "balanced_mean": statistics.fmean(gen_bal),
            },
            "trained": {
                "files": [c.file for c in task.checkpoints],
                "accuracy": tr_acc,
                "balanced_accuracy": tr_bal,
                "mean": statistics.fmean(tr_acc),
                "balanced_mean": statistics.fmean(tr_bal),
            },
            "nearest_task": {
                "tasks": [t.name for t in near],
                "hamming": None
                if not near
                else sum(a != b for a, b in zip(near[0].mask, task.mask, strict=True)),
                "mean": statistics.fmean(near_acc) if near_acc else None,
            },
            **extra,
        }

    entries: dict[str, list[dict[str, Any]]] = {"heldout": [], "seen": []}
    todo = [("heldout", t) for t in heldout] + [("seen", t) for t in seen]
    for done, (kind, task) in enumerate(todo, start=1):
        entries[kind].append(evaluate(task))
        if progress is not None:
            progress(done, len(todo))
    arch = zoo.architecture or {}
    return {
        "tasks": {kind: _set_summary(items) for kind, items in entries.items()},
        "zoo_path": str(zoo.path),
        "architecture": arch.get("name", arch.get("builder")),
        "generator": generator.generator_id,
        "num_test": len(split.y_test),
        "num_training_tasks": len(training),
        "settings": {
            "samples_per_task": samples_per_task,
            "seen_tasks": len(seen),
            "sampler": sampler,
            "steps": steps,
            "eta": eta,
            "seed": seed,
            "swap_tensors": swap_tensors,
            "accuracy": "fraction of the task's binary test split (digits test images)",
            "majority_baseline": "always predict the majority class of the task's training labels",
            "nearest_task": "trained checkpoints of the closest seen task(s) by Hamming distance",
        },
    }
