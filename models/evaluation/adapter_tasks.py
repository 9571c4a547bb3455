"""Evaluate a generator of LoRA adapters on the ``digits-lora-tasks`` zoo, task by task.

For every held-out task (a new combination of a seen transform and a seen label shift) and a
seeded sample of seen tasks, each method's adapters are merged into the base and scored on the
task's test split (its transform of the digits test images, its shifted labels):

- ``base``: the base network alone (no adapter);
- ``trained``: the zoo's own adapters of the task (the target);
- ``multitask``: one adapter trained on all seen tasks at once (stored in the zoo);
- ``nearest_seen``: the adapters of the seen task(s) whose embedding is nearest (L2; all ties);
- ``regressor``: an MLP mapping the embedding straight to the weights, trained on the same
  checkpoints with the generator's budget (``models.evaluation.regressor``);
- ``generated``: adapters the generator samples for the task's embedding;
- ``mismatched``: adapters the generator samples for another task's embedding (one whose
  transform and label shift both differ), scored on this task.

Each set reports the mean over tasks of every method (``<method>_mean``) and the standard
deviation over tasks (``<method>_std``), plus ``gap_closed``: the share of the base-to-trained
gap the generated adapters close.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.adapters.merge import AdaptedModule
from models.errors import EvaluationError
from models.evaluation.regressor import fit_regressor, regressed_state_dict
from models.evaluation.tasks import predict
from models.generator import Generator
from models.sampler_names import SamplerName
from models.zoo import digits
from models.zoo.lora_tasks import LoraTask, all_tasks, check_dataset, task_data, task_from_embedding
from models.zoo.store import Zoo, ZooCheckpoint, ZooError

__all__ = ["METHODS", "evaluate_adapter_tasks"]

METHODS = (
    "base", "trained", "multitask", "nearest_seen", "regressor", "generated", "mismatched",
)  # fmt: skip


@dataclass
class _Task:
    task: LoraTask
    heldout: bool
    checkpoints: list[ZooCheckpoint]


def _tasks(zoo: Zoo) -> list[_Task]:
    groups: dict[LoraTask, list[ZooCheckpoint]] = {}
    for c in zoo.checkpoints:
        try:
            groups.setdefault(task_from_embedding(c.condition or []), []).append(c)
        except ValueError as e:
            raise EvaluationError(f"{c.file}: {e}") from e
    out = []
    for task, ckpts in groups.items():
        flags = {c.heldout for c in ckpts}
        if len(flags) > 1:
            raise EvaluationError(f"task {task.name} is held out in some checkpoints only")
        out.append(_Task(task, flags.pop(), ckpts))
    return out


def _seed(seed: int, *parts: int) -> int:
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1, np.uint32)[0])


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def _summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_tasks": len(entries)}
    for m in METHODS:
        values = [e[m] for e in entries if e.get(m) is not None]
        out[f"{m}_mean"], out[f"{m}_std"] = _stats(values)
    base, trained, gen = out["base_mean"], out["trained_mean"], out["generated_mean"]
    gap = None if None in (base, trained, gen) else trained - base
    out["gap_closed"] = None if not gap else (gen - base) / gap
    out["per_task"] = entries
    return out


def evaluate_adapter_tasks(
    zoo: Zoo,
    generator: Generator,
    *,
    samples_per_task: int = 4,
    seen_tasks: int = 8,
    sampler: SamplerName = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The report (JSON-safe) of ``generator`` on an adapter task zoo: see the module."""
    if not zoo.is_adapter_zoo or zoo.condition.get("kind") != "vector":
        raise EvaluationError(f"zoo {zoo.path} is not a task-conditioned adapter zoo")
    if not generator.is_adapter or generator.condition_spec.get("dim") != zoo.condition["dim"]:
        raise EvaluationError(
            f"generator {generator.name!r} does not make adapters for this zoo's "
            f"{zoo.condition['dim']}-value task embeddings; train one on it (rpg train)"
        )
    if samples_per_task < 1 or seen_tasks < 0:
        raise EvaluationError("need samples_per_task >= 1 and seen_tasks >= 0")
    try:
        check_dataset(zoo.dataset or {})
        split = digits.split_from_spec(zoo.dataset or {})
        base = zoo.adapter_base()
        module = base.build_module()
        base_sd = base.state_dict()
        scorer = AdaptedModule(module, base_sd, base.layout(module), base.spec)
    except (ValueError, ZooError) as e:
        raise EvaluationError(f"cannot rebuild the tasks of zoo {zoo.path}: {e}") from e
    tasks = _tasks(zoo)
    heldout = [t for t in tasks if t.heldout]
    training = [t for t in tasks if not t.heldout]
    if not heldout or not training:
        raise EvaluationError(f"zoo {zoo.path} needs held-out and training tasks")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    picked = sorted(rng.choice(len(training), size=min(seen_tasks, len(training)), replace=False))
    seen = [training[i] for i in picked]
    multitask = None
    if "multitask" in zoo.extras:
        multitask = zoo.read(zoo.path / zoo.extras["multitask"])

    # The regressor: the same training checkpoints, normalized as the generator sees them.
    tok = generator.tokenizer
    train_ckpts = [c for t in training for c in t.checkpoints]
    emb = torch.tensor([c.condition for c in train_ckpts], dtype=torch.float32)
    vec = torch.stack([tok.normalized_vector(zoo.read(zoo.path / c.file)) for c in train_ckpts])
    budget = generator.config.get("training", {})
    regressor = fit_regressor(
        emb,
        vec,
        steps=int(budget.get("steps") or 3000),
        batch_size=int(budget.get("batch_size") or 32),
        seed=_seed(seed, 4),
    )

    def scores(sds: Sequence[dict[str, Tensor]], x: Tensor, y: Tensor) -> float:
        preds = predict(scorer, sds, x)  # (n, N)
        return float((preds == y).float().mean())

    def sample(embedding: list[float], key: int) -> list[dict[str, Tensor]]:
        return generator.sample(
            samples_per_task, condition=embedding, seed=_seed(seed, 5, key),
            sampler=sampler, steps=steps, eta=eta,
        )  # fmt: skip

    everything = [t.task for t in tasks]

    def evaluate(entry: _Task, index: int) -> dict[str, Any]:
        task = entry.task
        _, _, x, y = task_data(split, task)
        module.load_state_dict(base_sd, strict=True)
        base_acc = float((predict(module, [base_sd], x)[0] == y).float().mean())
        own = [zoo.read(zoo.path / c.file) for c in entry.checkpoints]
        others = [t for t in training if t.task != task]
        emb_t = torch.tensor(task.embedding())
        dist = [float((torch.tensor(t.task.embedding()) - emb_t).norm()) for t in others]
        near = [t for t, d in zip(others, dist, strict=True) if d == min(dist)]
        near_sds = [zoo.read(zoo.path / c.file) for t in near for c in t.checkpoints]
        pick = np.random.default_rng(_seed(seed, 6, index))
        unlike = [t for t in everything if t.transform != task.transform and t.shift != task.shift]
        other = unlike[int(pick.integers(len(unlike)))]
        key = all_tasks().index(task)
        return {
            "task": task.name,
            "heldout": entry.heldout,
            "embedding": task.embedding(),
            "base": base_acc,
            "trained": scores(own, x, y),
            "multitask": None if multitask is None else scores([multitask], x, y),
            "nearest_seen": scores(near_sds, x, y),
            "nearest_seen_tasks": [t.task.name for t in near],
            "regressor": scores([regressed_state_dict(regressor, tok, emb_t)], x, y),
            "generated": scores(sample(task.embedding(), key), x, y),
            "mismatched": scores(sample(other.embedding(), key + 1000), x, y),
            "mismatched_with": other.name,
        }

    todo = [("heldout", t) for t in heldout] + [("seen", t) for t in seen]
    entries: dict[str, list[dict[str, Any]]] = {"heldout": [], "seen": []}
    for done, (kind, entry) in enumerate(todo, start=1):
        entries[kind].append(evaluate(entry, done))
        if progress is not None:
            progress(done, len(todo))
    return {
        "tasks": {kind: _summary(items) for kind, items in entries.items()},
        "zoo_path": str(zoo.path),
        "architecture": (zoo.architecture or {}).get("name"),
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
            "regressor": {"steps": int(budget.get("steps") or 3000),
                          "batch_size": int(budget.get("batch_size") or 32)},
            "accuracy": "fraction of the task's test split, every adapter merged into the base",
        },
    }  # fmt: skip
