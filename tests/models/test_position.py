"""PositionEmbedding: shapes, what the fixed tables encode, persistence and validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from models.position import PositionEmbedding, sinusoidal_embedding
from models.tokenizer import ParameterTokenizer


def tokenizer_positions() -> Tensor:
    """Positions of a small real layout: 3 tensors with 3, 1 and 2 tokens."""
    state_dict = {
        "a.weight": torch.randn(5, 4),  # 20 values -> 3 tokens of 8
        "a.bias": torch.randn(5),  # 1 token
        "b.weight": torch.randn(16),  # 2 tokens
        "b.num_batches_tracked": torch.tensor(1),  # passthrough: no tokens
    }
    return ParameterTokenizer.fit([state_dict], token_size=8).positions()


def row_of(positions: Tensor, tensor_index: int, token_index: int) -> int:
    matches = ((positions[:, 0] == tensor_index) & (positions[:, 1] == token_index)).nonzero()
    return int(matches[0, 0])


@pytest.mark.parametrize("kind", ["2d", "1d", "learned"])
def test_shape_and_dtype(kind: str) -> None:
    positions = tokenizer_positions()
    table = PositionEmbedding(positions, 16, kind=kind)()  # type: ignore[arg-type]
    assert table.shape == (6, 16) and table.dtype == torch.float32
    assert torch.isfinite(table).all()


def test_2d_halves_encode_tensor_and_token_index() -> None:
    positions = tokenizer_positions()
    table = PositionEmbedding(positions, 16)()
    first, second = table[:, :8], table[:, 8:]
    same_tensor = row_of(positions, 0, 0), row_of(positions, 0, 2)
    same_token = row_of(positions, 0, 1), row_of(positions, 2, 1)
    # tokens of one tensor share the first half and differ in the second
    assert torch.equal(first[same_tensor[0]], first[same_tensor[1]])
    assert not torch.allclose(second[same_tensor[0]], second[same_tensor[1]])
    # the same token index in two tensors shares the second half only
    assert torch.equal(second[same_token[0]], second[same_token[1]])
    assert not torch.allclose(first[same_token[0]], first[same_token[1]])
    assert len({tuple(row.tolist()) for row in table}) == table.shape[0], "rows are distinct"


def test_2d_values_are_sin_cos_of_the_indices() -> None:
    positions = torch.tensor([[0, 0], [1, 3]])
    table = PositionEmbedding(positions, 8)()
    # quarter 0: sin(tensor * w), quarter 1: cos(tensor * w), then the same for the token;
    # the first frequency is 1, the second 10000 ** (-1/2) = 0.01
    expected_origin = torch.tensor([0.0, 0.0, 1.0, 1.0] * 2)
    expected = [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]
    expected += [math.sin(3), math.sin(0.03), math.cos(3), math.cos(0.03)]
    torch.testing.assert_close(table[0], expected_origin)
    torch.testing.assert_close(table[1], torch.tensor(expected))


def test_1d_uses_the_flat_token_index() -> None:
    positions = tokenizer_positions()
    table = PositionEmbedding(positions, 12, kind="1d")()
    other_layout = torch.stack([torch.arange(6), torch.zeros(6, dtype=torch.long)], dim=1)
    assert torch.equal(table, PositionEmbedding(other_layout, 12, kind="1d")())
    torch.testing.assert_close(table, sinusoidal_embedding(torch.arange(6), 12))
    assert math.isclose(float(table[4, 0]), math.sin(4), abs_tol=1e-6)


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_fixed_tables_are_deterministic_and_not_saved(kind: str) -> None:
    positions = tokenizer_positions()
    module = PositionEmbedding(positions, 8, kind=kind)  # type: ignore[arg-type]
    assert torch.equal(module(), PositionEmbedding(positions, 8, kind=kind)())  # type: ignore[arg-type]
    assert module.state_dict() == {}, "fixed tables are rebuilt, never checkpointed"
    assert list(module.parameters()) == []
    assert [name for name, _ in module.named_buffers()] == ["table"]
    assert module.to(torch.float64)().dtype == torch.float64, "buffers follow .to()"


def test_learned_is_a_small_parameter() -> None:
    positions = tokenizer_positions()
    torch.manual_seed(0)
    module = PositionEmbedding(positions, 32, kind="learned")
    assert isinstance(module.table, nn.Parameter) and module.table.requires_grad
    assert list(module.state_dict()) == ["table"]
    assert 0 < float(module().detach().std()) < 0.1
    torch.manual_seed(0)
    assert torch.equal(module(), PositionEmbedding(positions, 32, kind="learned")())
    module().sum().backward()
    assert module.table.grad is not None


def test_validation_errors() -> None:
    positions = tokenizer_positions()
    with pytest.raises(ValueError, match=r"divisible by 4.*use e\.g\. 8"):
        PositionEmbedding(positions, 6)
    with pytest.raises(ValueError, match="even dim, got 5; use 6"):
        PositionEmbedding(positions, 5, kind="1d")
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        PositionEmbedding(positions, 0, kind="learned")
    with pytest.raises(ValueError, match="kind must be one of"):
        PositionEmbedding(positions, 8, kind="3d")  # type: ignore[arg-type]
    for bad in [positions.float(), positions[:, :1], positions[:, 0]]:
        with pytest.raises(ValueError, match=r"integer tensor of shape \(num_tokens, 2\)"):
            PositionEmbedding(bad, 8)
    with pytest.raises(ValueError, match="non-negative"):
        PositionEmbedding(-positions - 1, 8)
    with pytest.raises(ValueError, match="even dim >= 2"):
        sinusoidal_embedding(torch.arange(3), 3)
