"""Training runs the backbone once per distinct (permutation id, condition) of a batch."""

from __future__ import annotations

import pytest
import torch

from models.config import BackboneConfig, DenoiserConfig, RPGConfig
from models.diffusion import diffusion_loss
from models.rpg import RPGModel, distinct_rows, draw_tokens


def _model(kind: str, condition_dim: int) -> RPGModel:
    torch.manual_seed(0)
    config = RPGConfig(
        token_size=16,
        condition_dim=condition_dim,
        num_permutation_states=3,
        backbone=BackboneConfig(
            kind=kind,  # type: ignore[arg-type]
            d_model=32,
            options={"d_state": 8} if kind == "mamba" else {},
        ),
        denoiser=DenoiserConfig(channels=(1, 4, 1)),
    )
    positions = torch.stack([torch.zeros(90, dtype=torch.long), torch.arange(90)], dim=1)
    return RPGModel(config, positions).double()


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_distinct_rows_keep_first_seen_order() -> None:
    ids = torch.tensor([2, 0, 2, 1, 0])
    out, cond, inverse = distinct_rows(ids, None)
    assert out.tolist() == [2, 0, 1] and cond is None
    assert inverse.tolist() == [0, 1, 0, 2, 1]
    condition = torch.tensor([[1.0], [1.0], [0.0], [1.0], [1.0]])
    out, cond, inverse = distinct_rows(torch.tensor([0, 0, 0, 1, 0]), condition)
    assert out.tolist() == [0, 0, 1] and cond is not None and cond.squeeze(1).tolist() == [1, 0, 1]
    assert inverse.tolist() == [0, 0, 1, 2, 0]


@pytest.mark.parametrize("kind", ["mamba", "lstm", "transformer"])
@pytest.mark.parametrize("chunk", [None, 32])
@pytest.mark.parametrize("condition_dim", [0, 3])
def test_deduplicated_loss_and_gradients_match_every_row_through_the_backbone(
    kind: str, chunk: int | None, condition_dim: int
) -> None:
    """The loss of a batch with repeated rows equals the loss computed the plain way: every
    row's prototypes from its own backbone pass, the drawn tokens' rows picked out."""
    model = _model(kind, condition_dim)
    tokens = torch.randn(6, 90, 16, dtype=torch.float64)
    ids = torch.tensor([1, 0, 1, 1, 2, 0])  # 4 repeats of 3 distinct ids
    cond = None
    if condition_dim:
        cond = torch.randn(2, condition_dim, dtype=torch.float64)[torch.tensor([0, 1, 0, 0, 1, 1])]
    rng = torch.Generator().manual_seed(3)
    deduped = model(tokens, ids, cond, diffusion_batch=100, generator=rng, checkpoint_chunk=chunk)
    deduped.backward()
    got = _grads(model)
    model.zero_grad()

    rng = torch.Generator().manual_seed(3)
    idx = draw_tokens(6, 90, 100, None, rng, tokens.device)
    proto = model.prototypes(ids, cond)  # (B, L, D): every row on its own
    cond_rows = proto.reshape(-1, proto.shape[-1])[idx]
    x0 = tokens.reshape(-1, 16)[idx]
    plain = diffusion_loss(model.denoiser, model.schedule, x0, cond_rows, generator=rng)
    plain.backward()
    expected = _grads(model)
    torch.testing.assert_close(deduped, plain, rtol=1e-12, atol=1e-12)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-12)


def test_backbone_sees_only_the_distinct_rows() -> None:
    model = _model("mamba", 0)
    seen: list[int] = []
    model.backbone.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[0]))
    tokens = torch.randn(8, 90, 16, dtype=torch.float64)
    model(tokens, torch.zeros(8, dtype=torch.long), diffusion_batch=64)
    assert seen == [1]
