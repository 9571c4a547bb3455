"""Training LoRA adapters on a frozen base, in plain PyTorch (``peft`` is not needed).

An adapter adds ``scaling * B @ A`` to each targeted weight; ``A`` starts like an
``nn.Linear`` weight (uniform, bound 1/sqrt(fan_in)) and ``B`` at zero, as PEFT initialises
them, so training starts from the base. The forward pass runs the base module with the
merged weights (``torch.func.functional_call``), so any architecture works. Pure: tensors in,
tensors out, single-threaded and seeded like the other zoo recipes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from models.adapters.spec import LoraTarget

__all__ = ["LoraRecipe", "train_adapter"]

# One batch: (inputs, labels) drawn with the given generator.
BatchFn = Callable[[torch.Generator], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class LoraRecipe:
    """How an adapter trains: Adam at ``lr`` for ``steps`` minibatches of ``batch_size``."""

    r: int = 4
    lora_alpha: float = 8.0
    steps: int = 400
    lr: float = 1e-2
    batch_size: int = 64

    @property
    def scaling(self) -> float:
        """``lora_alpha / r`` (plain LoRA)."""
        return self.lora_alpha / self.r


def train_adapter(
    module: nn.Module,
    base: Mapping[str, Tensor],
    targets: Sequence[LoraTarget],
    batches: BatchFn,
    *,
    seed: int,
    recipe: LoraRecipe,
) -> dict[str, Tensor]:
    """Train one adapter and return its state dict (PEFT key names, float32)."""
    g = torch.Generator().manual_seed(seed)
    factors: dict[str, Tensor] = {}
    for t in targets:
        fan_in = math.prod(t.weight_shape[1:])
        bound = 1.0 / math.sqrt(fan_in)
        a = (torch.rand(t.a_shape(recipe.r), generator=g) * 2 - 1) * bound
        factors[t.a_key] = a.requires_grad_()
        factors[t.b_key] = torch.zeros(t.b_shape(recipe.r), requires_grad=True)
    frozen = {k: v.detach() for k, v in base.items()}
    opt = torch.optim.Adam(list(factors.values()), lr=recipe.lr)
    loss_fn = nn.CrossEntropyLoss()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: thread sync costs more than the matmuls
    was_training = module.training
    module.train()
    try:
        for _ in range(recipe.steps):
            x, y = batches(g)
            params = dict(frozen)
            for t in targets:
                r = recipe.r
                update = factors[t.b_key].reshape(-1, r) @ factors[t.a_key].reshape(r, -1)
                params[t.weight_key] = frozen[t.weight_key] + recipe.scaling * update.reshape(
                    t.weight_shape
                )
            loss = loss_fn(functional_call(module, params, (x,)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
        module.train(was_training)
    return {k: v.detach().clone().contiguous() for k, v in factors.items()}


def uniform_batches(x: Tensor, y: Tensor, batch_size: int) -> BatchFn:
    """Minibatches drawn uniformly (with replacement) from one dataset."""

    def draw(g: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, len(y), (batch_size,), generator=g)
        return x[idx], y[idx]

    return draw


def mixed_batches(datasets: Sequence[tuple[Tensor, Tensor]], batch_size: int) -> BatchFn:
    """Minibatches drawn across several datasets (each example from a random one)."""
    xs = torch.stack([d[0] for d in datasets])  # (D, N, F)
    ys = torch.stack([d[1] for d in datasets])  # (D, N)

    def draw(g: torch.Generator) -> tuple[Tensor, Tensor]:
        which = torch.randint(0, xs.shape[0], (batch_size,), generator=g)
        idx = torch.randint(0, xs.shape[1], (batch_size,), generator=g)
        return xs[which, idx], ys[which, idx]

    return draw
