"""Samples of one `Generator.sample` call share denoiser calls (one token stream, chunked)
while sample i stays the same bits whatever num_samples and the chunking around it are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from models.generator import Generator
from models.rpg import MIN_DENOISER_ROWS


@pytest.fixture(scope="module")
def generator(tiny_bundle: Path) -> Generator:
    return Generator.from_pretrained(tiny_bundle)


def _same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("chunk_size", [7, 17, 50])
def test_sample_i_same_bits_whatever_num_samples_and_chunk_neighbours(
    generator: Generator, chunk_size: int
) -> None:
    # eta > 0: every step draws fresh noise, which must come from sample i's own generator
    kwargs: dict[str, Any] = {"seed": 4, "steps": 2, "eta": 0.5, "chunk_size": chunk_size}
    one = generator.sample(1, **kwargs)
    three = generator.sample(3, **kwargs)
    four = generator.sample(4, **kwargs)
    assert _same(one[0], three[0]) and _same(one[0], four[0])
    assert _same(three[1], four[1]) and _same(three[2], four[2])
    assert not torch.equal(four[2]["fc1.weight"], four[3]["fc1.weight"])


class _Spy:
    def __init__(self, module: torch.nn.Module, method: str) -> None:
        self.module, self.method = module, method
        self.original = getattr(module, method)
        self.calls: list[tuple[int, ...]] = []

    def __enter__(self) -> _Spy:
        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(tuple(args[0].shape))
            return self.original(*args, **kwargs)

        setattr(self.module, self.method, spy)
        return self

    def __exit__(self, *exc: object) -> None:
        delattr(self.module, self.method)


def test_samples_share_denoiser_calls_and_rows_stay_within_the_chunk(
    generator: Generator,
) -> None:
    length = generator.tokenizer.num_tokens
    with _Spy(generator.model.denoiser, "forward") as spy:
        generator.sample(4, seed=0, steps=3, chunk_size=4 * length)
    assert spy.calls == [(4 * length, generator.tokenizer.token_size)] * 3  # one call per step

    chunk = length + 5  # chunks straddle two models
    with _Spy(generator.model.denoiser, "forward") as spy:
        generator.sample(3, seed=0, steps=2, chunk_size=chunk)
    rows = [shape[0] for shape in spy.calls]
    assert len(rows) == 2 * -(-3 * length // chunk)
    assert max(rows) == chunk and min(rows) >= MIN_DENOISER_ROWS


def test_prototypes_one_model_at_a_time(generator: Generator) -> None:
    with _Spy(generator.model, "prototypes") as spy:
        generator.sample(5, seed=0, steps=2, chunk_size=3 * generator.tokenizer.num_tokens)
    assert spy.calls == [(1,)] * 5  # (B=1,) permutation ids: each model's once


def test_dpm_solver_samples_load_and_repeat_bit_for_bit(generator: Generator) -> None:
    a = generator.sample(2, seed=8, sampler="dpm-solver++", steps=5)
    b = generator.sample(2, seed=8, sampler="dpm-solver++", steps=5)
    assert all(_same(x, y) for x, y in zip(a, b, strict=True))
    assert all(torch.isfinite(v).all() for v in a[0].values())
    with pytest.raises(ValueError, match="eta applies to the ddim sampler only"):
        generator.sample(1, seed=8, sampler="dpm-solver++", steps=5, eta=0.5)
