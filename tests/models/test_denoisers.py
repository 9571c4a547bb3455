"""Denoiser kinds: the mlp denoiser's shapes and conditioning, configs old and new, and the
plan's FLOPs against `FlopCounterMode` over a real sampling call for every kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.cli.plan import make_plan
from models.config import PRESETS, DenoiserConfig, DiffusionConfig, RPGConfig
from models.diffusion import denoiser_from_config
from models.diffusion.mlp_denoiser import MLPDenoiser
from models.generator import Generator
from models.rpg import RPGModel
from models.training.data import fit_tokenizer
from models.training.options import TrainConfig, build_model_config
from models.zoo.store import load_zoo


def test_mlp_denoiser_shapes_and_separable_conditioning() -> None:
    torch.manual_seed(0)
    den = MLPDenoiser(48, 16, width=32, depth=2, mlp_ratio=2, time_dim=8)
    x, cond = torch.randn(10, 48), torch.randn(10, 16)
    t = torch.randint(0, 1000, (10,))
    assert den(x, t, cond).shape == (10, 48)
    # One time for all tokens, expanded (stride 0): embedded once, same result as per token.
    shared = torch.full((1,), 250.0).expand(10)
    assert den.time_terms(shared).shape == (1, den.num_modulations)
    assert torch.allclose(den(x, shared, cond), den(x, torch.full((10,), 250.0), cond), atol=1e-6)
    # The split samplers use: condition terms once, then the token path per step.
    terms = den.condition_terms(cond)
    assert torch.equal(den.forward_terms(x, t, terms), den(x, t, cond))
    # Each token's output depends on its own prototype only.
    other = cond.clone()
    other[0] += 1.0
    changed = (den(x, t, other) != den(x, t, cond)).any(dim=1)
    assert changed.tolist() == [True] + [False] * 9


def test_mlp_denoiser_rejects_bad_shapes_with_the_expected_shape() -> None:
    den = MLPDenoiser(48, 16, width=32, depth=1)
    with pytest.raises(ValueError, match="token_size=48"):
        den(torch.randn(4, 40), torch.zeros(4), torch.randn(4, 16))
    with pytest.raises(ValueError, match="cond_dim=16"):
        den(torch.randn(4, 48), torch.zeros(4), torch.randn(4, 8))
    with pytest.raises(ValueError, match="width must be a positive int"):
        MLPDenoiser(48, 16, width=0)


def test_configs_name_their_kind_and_objective_and_old_ones_mean_unet_epsilon() -> None:
    config = RPGConfig(
        denoiser=DenoiserConfig(kind="mlp", width=64, depth=2),
        diffusion=DiffusionConfig(objective="flow"),
    )
    assert RPGConfig.from_dict(config.to_dict()) == config
    old = config.to_dict()
    for key in ("kind", "width", "depth", "mlp_ratio"):
        del old["denoiser"][key]
    del old["diffusion"]["objective"]
    legacy = RPGConfig.from_dict(old)
    assert (legacy.denoiser.kind, legacy.diffusion.objective) == ("unet", "epsilon")
    with pytest.raises(ValueError, match="denoiser kind must be one of \\['unet', 'mlp'\\]"):
        DenoiserConfig(kind="transformer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="objective must be one of"):
        DiffusionConfig(objective="v")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown field"):
        RPGConfig.from_dict(config.to_dict() | {"denoiser": {"kind": "mlp", "widht": 3}})


def test_denoiser_from_config_builds_each_kind() -> None:
    mlp = RPGConfig(token_size=32, denoiser=DenoiserConfig(kind="mlp", width=16, depth=1))
    assert isinstance(denoiser_from_config(mlp, 8), MLPDenoiser)
    assert not isinstance(denoiser_from_config(RPGConfig(token_size=32), 8), MLPDenoiser)


def test_presets_without_an_mlp_recipe_say_so() -> None:
    assert PRESETS["tiny"].mlp is not None
    assert PRESETS["small"].mlp is None
    with pytest.raises(ValueError, match="no recipe for the mlp denoiser; use --denoiser unet"):
        PRESETS["small"].recipe(False, "mlp")


def _untrained_generator(zoo_path: Path, denoiser: str, objective: str | None = None) -> Generator:
    """A generator built exactly as `rpg train --denoiser KIND` would build it (untrained:
    FLOPs do not depend on the weights)."""
    zoo = load_zoo(zoo_path).training_zoo()
    files = zoo.files()
    tokenizer = fit_tokenizer(files[:1], token_size=256, granularity="tensor")
    options = TrainConfig(denoiser=denoiser, objective=objective)  # type: ignore[arg-type]
    config, _ = build_model_config(zoo, tokenizer.num_parameters, options, 1)
    torch.manual_seed(0)
    model = RPGModel(config, tokenizer.positions())
    return Generator(model, tokenizer, {"name": "flops"})


@pytest.mark.parametrize(
    ("denoiser", "objective"), [("unet", None), ("mlp", None), ("mlp", "epsilon"), ("unet", "flow")]
)
def test_plan_flops_match_flop_counter_over_a_real_sampling_call(
    tiny_zoo: Path, denoiser: str, objective: str | None
) -> None:
    plan = make_plan(tiny_zoo, denoiser=denoiser, objective=objective)
    sample = plan["sample"]
    generator = _untrained_generator(tiny_zoo, denoiser, objective)
    assert generator.model.config.diffusion.objective == plan["objective"]
    with FlopCounterMode(display=False) as counter:
        generator.sample(num_samples=1, seed=0, sampler=sample["sampler"], steps=sample["steps"])
    measured = counter.get_total_flops()
    assert abs(sample["flops_per_model"] - measured) <= 0.3 * measured, (
        sample["flops_per_model"],
        measured,
    )


def test_an_mlp_flow_bundle_round_trips_and_samples_deterministically(
    tiny_zoo: Path, tmp_path: Path
) -> None:
    from models.training import train

    options = TrainConfig(
        steps=3, d_model=32, d_state=16, token_size=256, progress=False, save_every=0
    )
    train(tiny_zoo, tmp_path / "gen", options)  # the tiny preset's default kind: mlp + flow
    generator = Generator.from_pretrained(tmp_path / "gen")
    assert generator.config["defaults"] == {"sampler": "flow-midpoint", "steps": 4}
    assert isinstance(generator.model.denoiser, MLPDenoiser)
    first = generator.sample(2, seed=3, sampler="flow-midpoint", steps=4)
    again = generator.sample(2, seed=3, sampler="flow-midpoint", steps=4)
    generator.save_pretrained(tmp_path / "copy")
    reloaded = Generator.from_pretrained(tmp_path / "copy").sample(
        2, seed=3, sampler="flow-midpoint", steps=4
    )
    for a, b, c in zip(first, again, reloaded, strict=True):
        assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    generator.build_module().load_state_dict(first[0], strict=True)
    with pytest.raises(ValueError, match="trained with the 'flow' objective"):
        generator.sample(1, seed=3, sampler="dpm-solver++", steps=4)


def test_bench_denoiser_reports_both_kinds_and_their_ratios(tiny_zoo: Path) -> None:
    from models.bench.denoiser import run_denoiser_bench

    report = run_denoiser_bench(tiny_zoo, steps=1, repeats=1)
    unet, mlp = report["kinds"]["unet"], report["kinds"]["mlp"]
    assert (unet["sampler"], mlp["sampler"]) == ("dpm-solver++", "flow-midpoint")
    assert unet["generated_parameters"] == mlp["generated_parameters"] == 9_610
    # per step at the tiny preset: ~75M FLOP per 256-value token for the U-Net, ~1.8M for mlp
    assert report["ratios"]["flops_unet_over_mlp"] > 10
    assert unet["flops_per_step"] == pytest.approx(39 * 75.9e6, rel=0.05)
