"""The digits task: data, architectures and the zoo training recipe.

Data is scikit-learn's ``load_digits`` (1,797 8x8 grey images, 10 classes, shipped inside the
package, so nothing is downloaded). Pixels are scaled from 0..16 to 0..1 and split once into a
stratified train/test split fixed by a recorded seed.

Both architectures take the flat ``(N, 64)`` features, so one ``accuracy`` helper serves them:

- ``mlp``: 64 -> hidden -> ReLU -> classes (9,610 parameters with the defaults);
- ``cnn``: conv + BatchNorm + ReLU blocks on 1x8x8 images, then a linear head (3,842
  parameters and 48 BatchNorm buffer values with the defaults).

The recipe follows the paper's zoo collection: train to a plateau, then save checkpoints evenly
through one extra epoch at a small learning rate. Training is pure (no files): ``build.py``
writes what it returns.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "DATASET_NAME",
    "DigitsSplit",
    "TrainingRecipe",
    "accuracy",
    "checkpoints_per_run",
    "cnn",
    "dataset_spec",
    "load_digits_split",
    "mlp",
    "run_seed",
    "split_from_spec",
    "train_run",
]

DATASET_NAME = "sklearn-digits"
NUM_FEATURES = 64  # 8 x 8 pixels
IMAGE_SIDE = 8


@dataclass(frozen=True)
class DigitsSplit:
    """A fixed train/test split of the digits data (features in [0, 1], labels 0..9)."""

    x_train: Tensor  # (N_train, 64) float32
    y_train: Tensor  # (N_train,) int64
    x_test: Tensor  # (N_test, 64) float32
    y_test: Tensor  # (N_test,) int64
    test_fraction: float
    seed: int


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> DigitsSplit:
    """Load the digits, scale pixels by 1/16 and split them (stratified, seeded)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    # Imported here so that rebuilding an architecture (`models.zoo.digits:mlp`) in a worker
    # does not pay for importing scikit-learn.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (np.asarray(data.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(data.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return DigitsSplit(
        x_train=torch.from_numpy(np.ascontiguousarray(x_tr)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_tr)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_te)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_te)),
        test_fraction=float(test_fraction),
        seed=int(seed),
    )


def dataset_spec(split: DigitsSplit) -> dict[str, Any]:
    """The ``dataset`` entry of zoo.json describing ``split``."""
    return {
        "name": DATASET_NAME,
        "split": {"test_fraction": split.test_fraction, "seed": split.seed, "stratified": True},
    }


def split_from_spec(spec: Mapping[str, Any]) -> DigitsSplit:
    """Rebuild the split a zoo.json ``dataset`` entry describes (for evaluation)."""
    if spec.get("name") != DATASET_NAME:
        raise ValueError(f"dataset {spec.get('name')!r} is not {DATASET_NAME!r}")
    split = spec.get("split", {})
    if not isinstance(split, Mapping) or split.get("stratified", True) is not True:
        raise ValueError(f"unsupported split {split!r}: only stratified splits are defined")
    return load_digits_split(
        test_fraction=float(split.get("test_fraction", 0.3)), seed=int(split.get("seed", 0))
    )


# ---------------------------------------------------------------------------- architectures


def mlp(hidden: int = 128, num_classes: int = 10) -> nn.Module:
    """64 -> hidden -> ReLU -> num_classes. Defaults: 9,610 parameters."""
    if hidden < 1 or num_classes < 1:
        raise ValueError(f"hidden and num_classes must be >= 1, got {hidden}, {num_classes}")
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(NUM_FEATURES, hidden),
            act=nn.ReLU(),
            fc2=nn.Linear(hidden, num_classes),
        )
    )


class _AsImage(nn.Module):
    """Accept flat (N, 64) features as well as (N, 1, 8, 8) images."""

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)  # (N, 64) -> (N, 1, 8, 8)


def cnn(channels: Sequence[int] = (8, 16), num_classes: int = 10) -> nn.Module:
    """Conv(3x3) + BatchNorm + ReLU blocks, 2x2 max-pool between blocks, then a linear head.

    The spatial size halves after every block but the last: 8x8 -> 4x4 for two blocks. Defaults:
    3,842 parameters (convs have no bias: BatchNorm's shift makes it redundant).
    """
    channels = [int(c) for c in channels]  # JSON kwargs arrive as lists
    if not channels or any(c < 1 for c in channels) or num_classes < 1:
        raise ValueError(f"need positive channels and num_classes, got {channels}, {num_classes}")
    if len(channels) > 4:
        raise ValueError(f"at most 4 conv blocks fit an 8x8 image, got {len(channels)}")
    layers: OrderedDict[str, nn.Module] = OrderedDict(image=_AsImage())
    in_ch = 1
    for i, out_ch in enumerate(channels, start=1):
        layers[f"conv{i}"] = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False)
        layers[f"bn{i}"] = nn.BatchNorm2d(out_ch)
        layers[f"act{i}"] = nn.ReLU()
        if i < len(channels):
            layers[f"pool{i}"] = nn.MaxPool2d(2)
        in_ch = out_ch
    side = IMAGE_SIDE // 2 ** (len(channels) - 1)
    layers["flatten"] = nn.Flatten()  # (N, C, s, s) -> (N, C*s*s)
    layers["head"] = nn.Linear(in_ch * side * side, num_classes)
    return nn.Sequential(layers)


@torch.no_grad()
def accuracy(module: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction (0..1) of rows of ``x`` whose argmax logit equals ``y``; eval mode, no grad.

    The module's train/eval mode is restored afterwards.
    """
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"need as many labels as inputs (> 0), got {len(x)} and {len(y)}")
    was_training = module.training
    module.eval()
    try:
        pred = module(x).argmax(dim=1)
    finally:
        module.train(was_training)
    return float((pred == y).sum().item()) / len(y)


# ---------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainingRecipe:
    """How one run is trained: Adam to a plateau, then one extra epoch at a small lr.

    ``finetune_lr_factor`` scales ``lr`` in the extra epoch. The extra epoch's batch size is
    shrunk where needed so that there are at least ``min_steps_per_checkpoint`` minibatches
    between two checkpoints.
    """

    epochs: int = 40
    lr: float = 3e-3
    batch_size: int = 32
    finetune_lr_factor: float = 0.05
    min_steps_per_checkpoint: int = 2

    def finetune_batch_size(self, num_train: int, num_checkpoints: int) -> int:
        """Batch size of the extra epoch for ``num_checkpoints`` checkpoints."""
        per = num_train // (num_checkpoints * self.min_steps_per_checkpoint)
        return max(1, min(self.batch_size, per))


def checkpoints_per_run(num_checkpoints: int, runs: int) -> list[int]:
    """Split ``num_checkpoints`` over ``runs`` as evenly as possible (earlier runs get more)."""
    if runs < 1 or num_checkpoints < runs:
        raise ValueError(
            f"need runs >= 1 and at least one checkpoint per run, got "
            f"{num_checkpoints} checkpoints for {runs} runs"
        )
    base, extra = divmod(num_checkpoints, runs)
    return [base + (1 if r < extra else 0) for r in range(runs)]


def run_seed(seed: int, run: int) -> int:
    """The seed of run ``run`` of a zoo built with ``seed`` (independent streams per run)."""
    # SeedSequence mixes (seed, run) so that run 1 of seed 0 is not run 0 of seed 1.
    return int(np.random.SeedSequence([seed, run]).generate_state(1, dtype=np.uint32)[0])


def _state_dict_copy(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def train_run(
    builder: Callable[[], nn.Module],
    split: DigitsSplit,
    *,
    num_checkpoints: int,
    seed: int,
    recipe: TrainingRecipe | None = None,
    on_epoch: Callable[[], None] | None = None,
) -> list[tuple[dict[str, Tensor], float]]:
    """Train one run and return ``num_checkpoints`` (state dict, test accuracy) pairs.

    Deterministic given ``seed``: initialisation uses ``torch.manual_seed(seed)`` inside a
    forked RNG (the caller's global RNG is untouched) and shuffling its own generator. It runs
    single-threaded, because CPU reductions may differ across thread counts.
    ``on_epoch`` is called after every epoch (``recipe.epochs + 1`` times), e.g. for progress.
    """
    recipe = recipe or TrainingRecipe()
    if num_checkpoints < 1:
        raise ValueError(f"num_checkpoints must be >= 1, got {num_checkpoints}")
    n = len(split.y_train)
    ft_batch = recipe.finetune_batch_size(n, num_checkpoints)
    ft_steps = math.ceil(n / ft_batch)
    if ft_steps < num_checkpoints:
        raise ValueError(
            f"{num_checkpoints} checkpoints need at least as many minibatches, but one epoch of "
            f"{n} samples has {ft_steps}; save fewer checkpoints per run or use more runs"
        )
    # Checkpoint after these (1-based) minibatch counts of the extra epoch, the last at its end.
    save_at = {(i + 1) * ft_steps // num_checkpoints for i in range(num_checkpoints)}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = builder()
        shuffle = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
        loss_fn = nn.CrossEntropyLoss()

        def epoch(batch_size: int, after_step: Callable[[int], None] | None = None) -> None:
            model.train()
            order = torch.randperm(n, generator=shuffle)
            for step, start in enumerate(range(0, n, batch_size), start=1):
                idx = order[start : start + batch_size]
                opt.zero_grad(set_to_none=True)
                loss_fn(model(split.x_train[idx]), split.y_train[idx]).backward()
                opt.step()
                if after_step is not None:
                    after_step(step)
            if on_epoch is not None:
                on_epoch()

        for _ in range(recipe.epochs):
            epoch(recipe.batch_size)

        # Keep Adam's moments: the extra epoch continues the same optimisation, only slower.
        for group in opt.param_groups:
            group["lr"] = recipe.lr * recipe.finetune_lr_factor
        saved: list[tuple[dict[str, Tensor], float]] = []

        def maybe_save(step: int) -> None:
            if step in save_at:
                acc = accuracy(model, split.x_test, split.y_test)
                saved.append((_state_dict_copy(model), acc))

        epoch(ft_batch, maybe_save)
    finally:
        torch.set_num_threads(threads)
    assert len(saved) == num_checkpoints  # save_at has exactly num_checkpoints distinct steps
    return saved
