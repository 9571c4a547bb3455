"""``rpg zoo build digits-lora-tasks``: one base network, one LoRA adapter per task.

The base is the digits MLP (64 -> 64 -> 10) trained on the ten classes as the other zoos
are. Every task of ``lora_tasks`` (an input transform crossed with a label shift) gets
``per_task`` adapters, each trained from its own seed (its own ``A`` initialisation and batch
order), so the zoo holds independently trained adapters of equal quality: what the canonical
form is for. Adapter ``k`` of every task shares seed ``k`` (a "family", recorded as run ``k``,
so generators give each family a permutation state): within a family, tasks differ only
through their data, as the mask zoo's tasks do (``tasks.task_seed``). One more adapter is trained on all seen tasks at once (the multi-task baseline of
``rpg evaluate``), stored as an extra file. Held-out tasks are stored and flagged, never
trained on by generators.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.adapters.base import BASE_NAME, FORMS, file_sha256
from models.adapters.canonical import canonicalize
from models.adapters.merge import merge_adapter
from models.adapters.spec import LoraSpec, LoraTarget, adapter_layout
from models.zoo import digits
from models.zoo.lora_tasks import (
    LORA_TASK_ZOO_NAME,
    all_tasks,
    condition_spec,
    dataset_spec,
    select_heldout,
    task_data,
)
from models.zoo.lora_train import LoraRecipe, mixed_batches, train_adapter, uniform_batches
from models.zoo.store import (
    Zoo,
    ZooCheckpoint,
    ZooError,
    load_zoo,
    save_zoo,
    staged_directory,
    write_state_dict,
)

__all__ = ["BASE_ARCHITECTURE", "build_lora_task_zoo"]

HIDDEN = 64
BASE_ARCHITECTURE: dict[str, Any] = {
    "name": LORA_TASK_ZOO_NAME,
    "builder": "models.zoo.digits:mlp",
    "kwargs": {"hidden": HIDDEN, "num_classes": 10},
}
MULTITASK_FILE = "multitask.safetensors"
MULTITASK_STEPS_FACTOR = 4  # the multi-task adapter sees 4x one task's steps


def _seed(seed: int, *parts: int) -> int:
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1, dtype=np.uint32)[0])


def build_lora_task_zoo(
    out: Path | str,
    *,
    per_task: int = 4,
    holdout: int = 8,
    seed: int = 0,
    form: str = "canonical",
    progress: bool = True,
    overwrite: bool = False,
    recipe: LoraRecipe | None = None,
) -> Zoo:
    """Build the ``digits-lora-tasks`` zoo at ``out``; returns the loaded zoo.

    The same arguments give byte-identical files. ``form="raw"`` stores the adapters as
    trained instead of in canonical form (the with/without comparison).
    """
    recipe = recipe or LoraRecipe()
    if per_task < 1:
        raise ZooError(f"--per-task must be >= 1, got {per_task}")
    if form not in FORMS:
        raise ZooError(f"--lora-form must be one of {FORMS}, got {form!r}")
    held = set(select_heldout(holdout, seed))
    tasks = all_tasks()
    split = digits.load_digits_split()
    started = time.perf_counter()
    spec = LoraSpec(r=recipe.r, lora_alpha=recipe.lora_alpha, target_modules=("fc1", "fc2"))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks) + 2, desc=f"zoo {LORA_TASK_ZOO_NAME}", unit="task")
    try:
        with staged_directory(out, overwrite=overwrite) as tmp:
            build = partial(digits.mlp, hidden=HIDDEN, num_classes=10)
            ((base, base_acc),) = digits.train_run(
                build, split, num_checkpoints=1, seed=digits.run_seed(seed, 0)
            )
            write_state_dict(base, tmp / BASE_NAME)
            module = build()
            targets = adapter_layout(module, spec)
            if bar is not None:
                bar.update(1)
            checkpoints: list[ZooCheckpoint] = []
            for task in tasks:
                x_tr, y_tr, x_te, y_te = task_data(split, task)
                for k in range(per_task):
                    adapter = train_adapter(
                        module,
                        base,
                        targets,
                        uniform_batches(x_tr, y_tr, recipe.batch_size),
                        # Adapter k of every task starts from the same A and sees the same
                        # batch order: the tasks of one family differ only through their
                        # data, so the map task -> adapter is smooth within it.
                        seed=_seed(seed, 1, k),
                        recipe=recipe,
                    )
                    acc = _accuracy(module, base, adapter, spec, targets, x_te, y_te)
                    stored = canonicalize(adapter, targets) if form == "canonical" else adapter
                    name = f"task_{task.name.replace('+', '_')}_{k:02d}.safetensors"
                    write_state_dict(stored, tmp / name)
                    checkpoints.append(
                        ZooCheckpoint(
                            file=name,
                            accuracy=acc,
                            run=k,  # one family per seed: a permutation state each
                            condition=task.embedding(),
                            heldout=task in held,
                        )
                    )
                if bar is not None:
                    bar.update(1)
            seen = [t for t in tasks if t not in held]
            data = [task_data(split, t)[:2] for t in seen]
            multitask = train_adapter(
                module,
                base,
                targets,
                mixed_batches(data, recipe.batch_size),
                seed=_seed(seed, 2),
                recipe=replace(recipe, steps=recipe.steps * MULTITASK_STEPS_FACTOR),
            )
            stored = canonicalize(multitask, targets) if form == "canonical" else multitask
            write_state_dict(stored, tmp / MULTITASK_FILE)
            if bar is not None:
                bar.update(1)
            section = {
                "kind": "lora",
                "peft_config": spec.to_peft_config(),
                "form": form,
                "base": {
                    "architecture": dict(BASE_ARCHITECTURE),
                    "weights": BASE_NAME,
                    "sha256": file_sha256(tmp / BASE_NAME),
                    "size_bytes": (tmp / BASE_NAME).stat().st_size,
                    "hub_id": None,
                },
            }
            save_zoo(
                Zoo(
                    path=tmp,
                    architecture=dict(BASE_ARCHITECTURE),
                    dataset=dataset_spec(split),
                    condition=condition_spec(),
                    checkpoints=checkpoints,
                    provenance={
                        "command": f"rpg zoo build {LORA_TASK_ZOO_NAME} --out {out} "
                        f"--per-task {per_task} --holdout {holdout} --seed {seed} "
                        f"--lora-form {form}",
                        "seed": seed,
                        "num_tasks": len(tasks),
                        "adapters_per_task": per_task,
                        "heldout_tasks": sorted(t.name for t in held),
                        "base_accuracy": base_acc,
                        "recipe": asdict(recipe),
                        "multitask_steps": recipe.steps * MULTITASK_STEPS_FACTOR,
                        "torch": torch.__version__,
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "duration_s": round(time.perf_counter() - started, 3),
                    },
                    adapter=section,
                    extras={"multitask": MULTITASK_FILE},
                )
            )
    finally:
        if bar is not None:
            bar.close()
    return load_zoo(out)


def _accuracy(
    module: nn.Module,
    base: dict[str, Tensor],
    adapter: dict[str, Tensor],
    spec: LoraSpec,
    targets: list[LoraTarget],
    x: Tensor,
    y: Tensor,
) -> float:
    module.load_state_dict(merge_adapter(base, adapter, targets, spec), strict=True)
    return digits.accuracy(module, x, y)
