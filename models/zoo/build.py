"""Making zoos: train the built-in digits zoos, or import a user's folder of state dicts.

The task-conditioned ``digits-tasks`` zoo has its own builder (``tasks.build_task_zoo``).

Both write into a staged temp directory that replaces ``out`` only once every checkpoint and
``zoo.json`` are on disk, so an interrupted build never leaves a half zoo behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.errors import UnsafeFileError
from models.safefiles import inside, load_safetensors
from models.zoo import digits
from models.zoo.lora_tasks import LORA_TASK_ZOO_NAME
from models.zoo.store import (
    Zoo,
    ZooCheckpoint,
    ZooError,
    build_module,
    check_consistent,
    load_zoo,
    save_zoo,
    staged_directory,
    write_state_dict,
)
from models.zoo.tasks import TASK_ZOO_NAME, build_task_zoo

__all__ = [
    "DIGITS_ARCHITECTURES",
    "ZOO_KINDS",
    "DigitsKind",
    "build_digits_zoo",
    "build_task_zoo",
    "import_zoo",
]

DigitsKind = Literal["digits-mlp", "digits-cnn", "digits-resnet18", "digits-resnet18-small"]

# name -> architecture spec (the builder is referenced by import path so zoo.json can rebuild it)
DIGITS_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "digits-mlp": {
        "name": "digits-mlp",
        "builder": "models.zoo.digits:mlp",
        "kwargs": {"hidden": 128, "num_classes": 10},
    },
    "digits-cnn": {
        "name": "digits-cnn",
        "builder": "models.zoo.digits:cnn",
        "kwargs": {"channels": [8, 16], "num_classes": 10},
    },
    # The real-size zoo (11.2M parameters, BatchNorm) and its 1.1M-parameter twin for CI.
    "digits-resnet18": {
        "name": "digits-resnet18",
        "builder": "models.zoo.resnet:resnet18",
        "kwargs": {"width": 64, "num_classes": 10, "image_side": 32},
    },
    "digits-resnet18-small": {
        "name": "digits-resnet18-small",
        "builder": "models.zoo.resnet:resnet18",
        "kwargs": {"width": 20, "num_classes": 10, "image_side": 16},
    },
}
# Training recipes that differ from digits.TrainingRecipe(): ResNets converge in a few epochs
# of Adam at 1e-3 (each epoch of the full one costs about 40 s on one CPU thread).
DIGITS_RECIPES: dict[str, digits.TrainingRecipe] = {
    "digits-resnet18": digits.TrainingRecipe(epochs=10, lr=1e-3, batch_size=32),
    "digits-resnet18-small": digits.TrainingRecipe(epochs=10, lr=1e-3, batch_size=32),
}
# Every built-in zoo `rpg zoo build` knows: the unconditional ones, then the task zoo.
ZOO_KINDS: tuple[str, ...] = (*DIGITS_ARCHITECTURES, TASK_ZOO_NAME, LORA_TASK_ZOO_NAME)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_digits_zoo(
    kind: DigitsKind,
    out: Path | str,
    *,
    num_checkpoints: int = 50,
    runs: int = 1,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    recipe: digits.TrainingRecipe | None = None,
) -> Zoo:
    """Train a digits zoo and write it to ``out``; returns the loaded zoo.

    ``num_checkpoints`` are split evenly over ``runs`` independent runs (run ids 0..runs-1),
    each trained with ``digits.train_run`` from ``digits.run_seed(seed, run)``. Every
    checkpoint's accuracy on the fixed test split is recorded. The same arguments give
    byte-identical checkpoint files. ``recipe`` overrides the training recipe (tests use tiny
    ones); it is recorded in the provenance.
    """
    if kind not in DIGITS_ARCHITECTURES:
        hint = "; build it with build_task_zoo" if kind == TASK_ZOO_NAME else ""
        raise ZooError(
            f"unknown digits zoo {kind!r}; choose one of {sorted(DIGITS_ARCHITECTURES)}{hint}"
        )
    spec = DIGITS_ARCHITECTURES[kind]
    recipe = recipe or DIGITS_RECIPES.get(kind) or digits.TrainingRecipe()
    per_run = digits.checkpoints_per_run(num_checkpoints, runs)
    split = digits.load_digits_split()
    build = partial(build_module, spec)
    out = Path(out)
    width = max(3, len(str(num_checkpoints - 1)))
    started = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=runs * (recipe.epochs + 1), desc=f"zoo {kind}", unit="epoch")
    checkpoints: list[ZooCheckpoint] = []
    try:
        with staged_directory(out, overwrite=overwrite) as tmp:
            for run, count in enumerate(per_run):
                trained = digits.train_run(
                    build,
                    split,
                    num_checkpoints=count,
                    seed=digits.run_seed(seed, run),
                    recipe=recipe,
                    on_epoch=None if bar is None else partial(bar.update, 1),
                )
                for state_dict, acc in trained:
                    name = f"ckpt_{len(checkpoints):0{width}d}.safetensors"
                    write_state_dict(state_dict, tmp / name)
                    checkpoints.append(ZooCheckpoint(file=name, accuracy=acc, run=run))
            provenance = {
                "command": f"rpg zoo build {kind} --out {out} --num-checkpoints "
                f"{num_checkpoints} --runs {runs} --seed {seed}",
                "seed": seed,
                "run_seeds": [digits.run_seed(seed, r) for r in range(runs)],
                "checkpoints_per_run": per_run,
                "optimizer": "adam",
                "epochs": recipe.epochs,
                "lr": recipe.lr,
                "batch_size": recipe.batch_size,
                "finetune_lr": recipe.lr * recipe.finetune_lr_factor,
                "finetune_batch_sizes": [
                    recipe.finetune_batch_size(len(split.y_train), c) for c in per_run
                ],
                "torch": torch.__version__,
                "created": _now(),
                "duration_s": round(time.perf_counter() - started, 3),
            }
            save_zoo(
                Zoo(
                    path=tmp,
                    architecture=spec,
                    dataset=digits.dataset_spec(split),
                    condition={"kind": "none"},
                    checkpoints=checkpoints,
                    provenance=provenance,
                )
            )
    finally:
        if bar is not None:
            bar.close()
    return load_zoo(out)


# ---------------------------------------------------------------------------- import

IMPORT_SUFFIXES = (".safetensors", ".pt", ".pth")


def _read_user_state_dict(path: Path) -> dict[str, Tensor]:
    """A flat str -> Tensor mapping from a .safetensors or (weights-only) .pt/.pth file."""
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(inside(path.parent, path.name))
        except UnsafeFileError as e:
            raise ZooError(f"{path.name} is not a readable .safetensors file: {e}") from None

    try:
        # weights_only=True: only tensors and plain containers; never arbitrary pickled objects.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ZooError(
            f"{path.name} cannot be loaded with torch.load(weights_only=True) ({e}); "
            "save only the weights: torch.save(model.state_dict(), path)"
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ZooError(
            f"{path.name} holds a {type(obj).__name__}, expected a state dict (str -> Tensor)"
        )
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ZooError(
                f"{path.name}: entry {k!r} holds a {type(v).__name__}, but a state dict maps "
                "names to tensors only; save model.state_dict() (or {'state_dict': ...})"
            )
    return dict(obj)


def import_zoo(
    src: Path | str,
    out: Path | str,
    builder: str,
    kwargs: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    dataset: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Zoo:
    """Turn a folder of state dicts (``.safetensors``, ``.pt``, ``.pth``) into a zoo at ``out``.

    Every file must load into ``build_module(spec)`` with ``strict=True``; ``.pt`` files are
    read with ``weights_only=True`` and converted to safetensors. ``evaluate`` (optional) maps
    the loaded module to the accuracy recorded for the checkpoint; ``dataset`` is the zoo.json
    entry saying what it was measured on. Each file is its own run (provenance unknown).
    ``name`` (the architecture's name) defaults to the name of ``out``.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ZooError(f"source folder {src} does not exist")
    if out.resolve() == src.resolve():
        # Publishing the zoo would replace (delete) the very files being imported.
        raise ZooError(f"--out must differ from the source folder {src}")
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix in IMPORT_SUFFIXES)
    if not files:
        raise ZooError(f"{src} has no {', '.join(IMPORT_SUFFIXES)} files to import")
    spec = {"name": name or out.resolve().name, "builder": builder, "kwargs": dict(kwargs or {})}
    # The person importing typed this builder: that is trust for this command (and only it;
    # zoo.json records the name, never the trust).
    module = build_module(spec, trust_builders=[builder])
    width = max(3, len(str(len(files) - 1)))
    checkpoints: list[ZooCheckpoint] = []
    with staged_directory(out, overwrite=overwrite) as tmp:
        for i, f in enumerate(files):
            sd = _read_user_state_dict(f)
            try:
                module.load_state_dict(sd, strict=True)
            except RuntimeError as e:
                raise ZooError(
                    f"{f.name} does not fit architecture {builder!r} with kwargs "
                    f"{spec['kwargs']!r}: {e}"
                ) from e
            acc = None if evaluate is None else float(evaluate(module))
            target = f"ckpt_{i:0{width}d}.safetensors"
            write_state_dict(sd, tmp / target, metadata={"source": f.name})
            checkpoints.append(ZooCheckpoint(file=target, accuracy=acc, run=i))
        zoo = Zoo(
            path=tmp,
            architecture=spec,
            dataset=None if dataset is None else dict(dataset),
            condition={"kind": "none"},
            checkpoints=checkpoints,
            provenance={
                "command": "import",
                "source": str(src.resolve()),
                "files": [f.name for f in files],
                "created": _now(),
            },
        )
        check_consistent(zoo.files())
        save_zoo(zoo)
    return load_zoo(out, trust_builders=[builder])
