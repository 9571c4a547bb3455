"""The mean head: each token's mean regressed from its prototype, the denoiser on the residual."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from models.config import BackboneConfig, DenoiserConfig, RPGConfig
from models.diffusion import masked_mse
from models.generator import Generator
from models.rpg import RPGModel, draw_tokens
from models.tokenizer import ParameterTokenizer


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _config(mean_head: bool) -> RPGConfig:
    return RPGConfig(
        token_size=16,
        condition_dim=3,
        mean_head=mean_head,
        backbone=BackboneConfig(d_model=32, options={"d_state": 8}),
        denoiser=DenoiserConfig(channels=(1, 4, 8, 4, 1)),
    )


def _pair() -> tuple[RPGModel, RPGModel]:
    """The same network without and with a mean head (the head as initialised: zero)."""
    positions = torch.tensor([[0, 0], [0, 1], [1, 0]])
    torch.manual_seed(0)
    plain = RPGModel(_config(False), positions)
    headed = RPGModel(_config(True), positions)
    missing = headed.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["mean_head.bias", "mean_head.weight"]
    return plain, headed


def _tokens() -> Tensor:
    tokens = torch.randn(2, 3, 16, generator=_gen(1))
    tokens[:, 2, 10:] = float("nan")  # padding of the last tensor's token
    return tokens


def test_masked_mse_counts_real_values_only() -> None:
    target = torch.randn(4, 6, generator=_gen(2))
    target[1, 3:] = float("nan")
    pred = torch.randn(4, 6, generator=_gen(3))
    real = ~np.isnan(target.numpy())
    expected = ((pred.numpy() - np.nan_to_num(target.numpy())) ** 2)[real].mean()
    assert masked_mse(pred, target).item() == pytest.approx(expected, rel=1e-6)
    assert masked_mse(pred, torch.full((4, 6), float("nan"))).item() == 0.0
    with pytest.raises(ValueError, match="must match"):
        masked_mse(pred, target[:, :5])
    # Row weights: row i's real values count weights[i] times.
    weights = torch.tensor([1.0, 4.0, 0.5, 2.0])
    err = np.where(real, (pred.numpy() - np.nan_to_num(target.numpy())) ** 2, 0.0)
    w = weights.numpy()[:, None]
    weighted = (err * w).sum() / (real * w).sum()
    assert masked_mse(pred, target, weights).item() == pytest.approx(weighted, rel=1e-6)
    assert masked_mse(pred, target, torch.ones(4)).item() == pytest.approx(expected, rel=1e-6)


def test_config_round_trips_and_older_bundles_have_no_mean_head() -> None:
    data = _config(True).to_dict()
    assert RPGConfig.from_dict(data).mean_head is True
    del data["mean_head"]  # a bundle written before the field existed
    assert RPGConfig.from_dict(data).mean_head is False


def test_training_loss_is_regression_plus_diffusion_on_the_residual() -> None:
    plain, headed = _pair()
    tokens, ids, cond = _tokens(), torch.zeros(2, dtype=torch.long), torch.ones(2, 3)
    base = plain(tokens, ids, cond, diffusion_batch=6, generator=_gen(5))
    # With a zero head the residual is the tokens themselves: the same diffusion loss, plus
    # the regression error of predicting 0.
    loss = headed(tokens, ids, cond, diffusion_batch=6, generator=_gen(5))
    flat = tokens.reshape(-1, 16)
    zero = masked_mse(torch.zeros_like(flat), flat)
    assert loss.item() == pytest.approx(base.item() + zero.item(), rel=1e-6)
    # The head and the backbone learn from the regression alone (the residual's target and
    # the denoiser's prototypes are detached); the denoiser from the diffusion loss alone.
    assert headed.mean_head is not None
    learned_by_regression = [headed.mean_head.weight, *headed.backbone.parameters()]
    regression = masked_mse(headed.mean_head(headed.prototypes(ids, cond).reshape(-1, 32)), flat)
    expected = torch.autograd.grad(regression, learned_by_regression)
    loss.backward()
    for param, grad in zip(learned_by_regression, expected, strict=True):
        assert param.grad is not None
        torch.testing.assert_close(param.grad, grad)
    plain_loss = plain(tokens, ids, cond, diffusion_batch=6, generator=_gen(5))
    plain_loss.backward()
    for (name, a), b in zip(
        headed.denoiser.named_parameters(), plain.denoiser.parameters(), strict=True
    ):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_the_regression_undoes_the_token_weighting_of_the_draw() -> None:
    plain, headed = _pair()
    tokens, ids, cond = _tokens(), torch.zeros(2, dtype=torch.long), torch.ones(2, 3)
    odds = torch.tensor([0.5, 0.5, 1.0])  # tokens 0 and 1 are one tensor, token 2 another
    options = {"diffusion_batch": 9, "token_weights": odds}
    base = plain(tokens, ids, cond, generator=_gen(6), **options)
    loss = headed(tokens, ids, cond, generator=_gen(6), **options)
    idx = draw_tokens(2, 3, 9, odds, _gen(6), tokens.device)  # the draw forward makes
    drawn = tokens.reshape(-1, 16)[idx]
    regression = masked_mse(torch.zeros_like(drawn), drawn, 1.0 / odds[idx % 3])
    assert loss.item() == pytest.approx(base.item() + regression.item(), rel=1e-6)


def test_sampling_adds_the_mean_to_the_denoised_residual() -> None:
    plain, headed = _pair()
    assert headed.mean_head is not None
    shift = torch.linspace(-2.0, 2.0, 16)
    with torch.no_grad():
        headed.mean_head.bias.copy_(shift)  # weight 0: the mean is `shift` for every token
    noise, ids, cond = torch.randn(2, 3, 16, generator=_gen(7)), torch.zeros(2, dtype=torch.long), torch.ones(2, 3)  # fmt: skip
    plain.eval(), headed.eval()
    for sampler in ("ddim", "dpm-solver++"):
        out = plain.sample_tokens(noise, ids, cond, sampler=sampler, steps=4, chunk_size=4)
        shifted = headed.sample_tokens(noise, ids, cond, sampler=sampler, steps=4, chunk_size=4)
        assert torch.equal(shifted, out + shift), sampler


def test_a_mean_head_bundle_saves_loads_and_samples_the_same(tmp_path: Path) -> None:
    states = [{"w": torch.randn(3, 5, generator=_gen(i)), "b": torch.randn(5, generator=_gen(9 + i))} for i in range(4)]  # fmt: skip
    tokenizer = ParameterTokenizer.fit(states, token_size=16)
    config = RPGConfig(
        token_size=16,
        mean_head=True,
        backbone=BackboneConfig(d_model=32, options={"d_state": 8}),
        denoiser=DenoiserConfig(channels=(1, 4, 1)),
    )
    torch.manual_seed(0)
    model = RPGModel(config, tokenizer.positions())
    assert model.mean_head is not None
    with torch.no_grad():
        model.mean_head.weight.normal_(std=0.1)
    generator = Generator(model, tokenizer, {"name": "toy", "architecture": None})
    generator.save_pretrained(tmp_path / "bundle")
    loaded = Generator.from_pretrained(tmp_path / "bundle")
    assert loaded.model.config.mean_head and loaded.model.mean_head is not None
    a = generator.sample(2, seed=3, sampler="ddim", steps=3)
    b = loaded.sample(2, seed=3, sampler="ddim", steps=3)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)
