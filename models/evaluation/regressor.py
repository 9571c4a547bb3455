"""The regression baseline for task-conditioned zoos: task embedding -> weights, directly.

A plain MLP (Text-to-LoRA's reconstruction setup) trained with MSE to map each training
checkpoint's task embedding to its weights in the generator's normalized space (the
tokenizer fitted on the training zoo), with the generator's own budget: as many optimizer
steps, of as many checkpoints each. What a generator must beat to show that diffusion adds
something over regression. Pure: tensors in, a module out.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.tokenizer import ParameterTokenizer

__all__ = ["EmbeddingRegressor", "fit_regressor", "regressed_state_dict"]


class EmbeddingRegressor(nn.Module):
    """``(B, dim) -> (B, out)``: two hidden GELU layers."""

    def __init__(self, dim: int, out: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, out),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def fit_regressor(
    embeddings: Tensor,
    targets: Tensor,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    lr: float = 1e-3,
) -> EmbeddingRegressor:
    """Train on ``(N, dim)`` embeddings and ``(N, out)`` targets: Adam, cosine decay, MSE."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EmbeddingRegressor(embeddings.shape[1], targets.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(embeddings)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        idx = torch.randint(0, n, (min(batch_size, n),), generator=g)
        loss = nn.functional.mse_loss(model(embeddings[idx]), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def regressed_state_dict(
    model: EmbeddingRegressor, tokenizer: ParameterTokenizer, embedding: Tensor
) -> dict[str, Tensor]:
    """The state dict the regressor predicts for one ``(dim,)`` embedding."""
    vector = model(embedding[None])[0]  # (out,)
    tokens = torch.full((tokenizer.num_tokens, tokenizer.token_size), float("nan"))
    tokens[tokenizer.padding_mask()] = vector  # normalized_vector's order is token order
    return tokenizer.decode(tokens)
