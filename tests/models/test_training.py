"""Training: the end-to-end tiny run, resume, presets, permutation states, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.config import PRESETS, Recipe, RPGConfig, preset_for
from models.generator import Generator
from models.rpg import draw_tokens
from models.tokenizer import ParameterTokenizer
from models.training import train
from models.training.options import TrainConfig, cosine_lr, permutation_ids, token_weights_for
from models.zoo.digits import accuracy, load_digits_split
from models.zoo.store import load_zoo
from service.cli import main as rpg

FAST = {
    "d_model": 32,
    "d_state": 16,
    "channels": (1, 8, 16, 8, 1),
    "token_size": 256,
    "progress": False,
}


@pytest.mark.slow
def test_end_to_end_tiny_training_learns(tiny_zoo: Path, tmp_path: Path) -> None:
    """A few hundred steps on a zoo made by the test: the loss falls and samples are models."""
    options = TrainConfig(
        steps=300,
        d_model=64,
        d_state=16,
        channels=(1, 16, 32, 16, 1),
        token_size=256,
        lr=1e-2,
        warmup_steps=30,
        diffusion_batch=64,
        save_every=0,
        progress=False,
    )
    result = train(tiny_zoo, tmp_path / "bundle", options)
    assert result.final_loss < 0.5 * result.first_loss, (result.first_loss, result.final_loss)
    generator = Generator.from_pretrained(tmp_path / "bundle")
    zoo = load_zoo(tiny_zoo)
    split = load_digits_split()
    module = zoo.build_module()
    accuracies = []
    for sample in generator.sample(3, seed=0, steps=20):
        module.load_state_dict(sample, strict=True)
        accuracies.append(accuracy(module, split.x_test, split.y_test))
    # Far better than chance (0.1) after 300 small steps; the full-size recipe reaches the
    # zoo's accuracy (README, quality benchmark).
    assert sum(accuracies) / len(accuracies) > 0.3, accuracies


def test_resume_continues_bit_for_bit(tiny_zoo: Path, tmp_path: Path) -> None:
    options = {"steps": 12, "save_every": 0, "seed": 3, **FAST}
    train(tiny_zoo, tmp_path / "straight", TrainConfig(**options))  # type: ignore[arg-type]
    train(tiny_zoo, tmp_path / "split", TrainConfig(stop_at_step=5, **options))  # type: ignore[arg-type]
    assert (
        json.loads((tmp_path / "split" / "config.json").read_text())["training"]["completed_steps"]
        == 5
    )
    result = train(tiny_zoo, tmp_path / "split", TrainConfig(resume=True, **options))  # type: ignore[arg-type]
    assert len(result.losses) == 12
    a = Generator.from_pretrained(tmp_path / "straight").model.state_dict()
    b = Generator.from_pretrained(tmp_path / "split").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_periodic_saves_write_a_loadable_bundle(tiny_zoo: Path, tmp_path: Path) -> None:
    train(tiny_zoo, tmp_path / "b", TrainConfig(steps=6, save_every=3, **FAST))  # type: ignore[arg-type]
    assert (tmp_path / "b" / "training_state.safetensors").is_file()
    Generator.from_pretrained(tmp_path / "b")


def test_permutation_states_by_run_and_checkpoint(tiny_zoo: Path) -> None:
    zoo = load_zoo(tiny_zoo)
    ids, n = permutation_ids(zoo, "run")
    assert n == 2 and sorted(set(ids)) == [0, 1] and len(ids) == 6
    ids, n = permutation_ids(zoo, "checkpoint")
    assert n == 6 and ids == list(range(6))
    with pytest.raises(ValueError, match="'run' or 'checkpoint'"):
        permutation_ids(zoo, "epoch")


def test_cosine_schedule_shape() -> None:
    assert cosine_lr(0, 100, 10) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 10) == pytest.approx(1.0)
    assert cosine_lr(100, 100, 10) == pytest.approx(0.05)
    values = [cosine_lr(s, 100, 10) for s in range(10, 100)]
    assert values == sorted(values, reverse=True)


def test_presets_follow_the_paper_table() -> None:
    assert preset_for(9_610) == "tiny"
    assert preset_for(1_000_000) == "compact"
    assert preset_for(3_000_000) == "medium"
    assert preset_for(20_000_000) == "base"
    assert preset_for(200_000_000) == "large"
    assert (PRESETS["tiny"].d_model, PRESETS["tiny"].d_state, PRESETS["tiny"].token_size) == (
        256,
        32,
        256,
    )
    assert PRESETS["large"].channels == (1, 64, 96, 64, 1)


def test_rpg_config_round_trip_and_validation() -> None:
    config = RPGConfig(token_size=64, condition_dim=10, condition_mode="gate")
    assert RPGConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown field"):
        RPGConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="condition_mode"):
        RPGConfig(condition_mode="sometimes")


def test_cli_train_and_sample(
    tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    code = rpg(["train", str(tiny_zoo), "--out", str(bundle), "--steps", "4", "--token-size", "256",
                "--backbone", "lstm", "--no-progress", "--save-every", "0"])  # fmt: skip
    assert code == 0 and "trained 4 steps" in capsys.readouterr().out
    config = json.loads((bundle / "config.json").read_text())
    assert config["model"]["backbone"]["kind"] == "lstm" and config["training"]["preset"] == "tiny"
    assert config["model"]["denoiser"]["kind"] == "mlp"  # the tiny preset's default kind
    assert config["model"]["diffusion"]["objective"] == "flow"
    assert config["defaults"] == {"sampler": "flow-midpoint", "steps": 4}
    out = tmp_path / "samples"
    code = rpg(["sample", str(bundle), "--out", str(out), "-n", "2", "--seed", "4", "--steps", "3"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "sample_000.safetensors",
        "sample_001.safetensors",
    ]
    code = rpg(["sample", str(bundle), "--out", str(out), "--condition", "[1, 0]"])
    assert code == 2 and "unconditional" in capsys.readouterr().err
    # a sampler of the other objective: one line that names the ones that fit
    code = rpg(["sample", str(bundle), "--out", str(out), "--sampler", "ddim"])
    err = capsys.readouterr().err
    assert code == 2 and "trained with the 'flow' objective" in err and "flow-midpoint" in err


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["zoo"], ["evaluate"]])
def test_help_texts(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        rpg([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: rpg" in capsys.readouterr().out


def test_tensor_weighting_gives_every_tensor_an_equal_share() -> None:
    """The task zoo's layout: a 16-token body tensor and three 1-token head tensors."""
    state = {
        "fc1.weight": torch.randn(64, 64),
        "fc1.bias": torch.randn(64),
        "fc2.weight": torch.randn(2, 64),
        "fc2.bias": torch.randn(2),
    }
    tokenizer = ParameterTokenizer.fit([state], token_size=256)
    length = tokenizer.num_tokens
    assert length == 19
    tensor_of = tokenizer.positions()[:, 0]  # (19,)
    assert token_weights_for(tokenizer, "uniform") is None
    weights = token_weights_for(tokenizer, "tensor")
    assert weights is not None
    torch.testing.assert_close(torch.zeros(4).index_add_(0, tensor_of, weights), torch.ones(4))
    with pytest.raises(ValueError, match="token_weighting"):
        token_weights_for(tokenizer, "by-size")  # type: ignore[arg-type]

    def shares(weights: torch.Tensor | None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        counts = torch.zeros(4)
        for _ in range(100):
            # 8 models x 19 tokens, 64 drawn: more than the batch holds of each head tensor
            index = draw_tokens(8, length, 64, weights, gen, torch.device("cpu"))
            assert index.shape == (64,) and int(index.min()) >= 0 and int(index.max()) < 8 * 19
            counts += torch.bincount(tensor_of[index % length], minlength=4)
        return counts / counts.sum()

    torch.testing.assert_close(shares(weights), torch.full((4,), 0.25), atol=0.02, rtol=0)
    uniform = shares(None)  # the body's 16 of 19 tokens dominate
    assert abs(float(uniform[0]) - 16 / 19) < 0.02 and float(uniform[2]) < 0.08


def test_weighting_default_follows_the_zoo(tiny_zoo: Path, tmp_path: Path) -> None:
    train(tiny_zoo, tmp_path / "b", TrainConfig(steps=2, save_every=0, **FAST))  # type: ignore[arg-type]
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["training"]["token_weighting"] == "uniform"  # unconditional zoo


def test_conditional_zoos_train_with_the_presets_conditional_recipe() -> None:
    tiny = PRESETS["tiny"]
    assert tiny.recipe(conditional=False) == Recipe(
        lr=4e-3, batch_size=8, diffusion_batch=128, steps=1000
    )
    assert tiny.conditional is not None and tiny.recipe(conditional=True) == tiny.conditional
    # presets without one train the same either way
    assert PRESETS["base"].recipe(conditional=True) == PRESETS["base"].recipe(conditional=False)


def test_the_tiny_preset_trains_the_mlp_denoiser_with_flow_by_default() -> None:
    from models.training.options import build_model_config
    from models.zoo.store import Zoo

    zoo = Zoo(Path("."), None, None, {"kind": "none"}, [])
    tiny = PRESETS["tiny"]
    assert tiny.denoiser == "mlp" and tiny.mlp is not None
    config, _ = build_model_config(zoo, 9_610, TrainConfig(), 1)
    assert (config.denoiser.kind, config.diffusion.objective) == ("mlp", "flow")
    assert config.denoiser.width == tiny.mlp.width and config.denoiser.depth == tiny.mlp.depth
    assert tiny.sampling("flow") == ("flow-midpoint", 4)
    # the U-Net stays reachable: by kind, or by naming its widths
    unet, _ = build_model_config(zoo, 9_610, TrainConfig(denoiser="unet"), 1)
    assert (unet.denoiser.kind, unet.diffusion.objective) == ("unet", "epsilon")
    assert tiny.sampling("epsilon") == ("dpm-solver++", 8)
    widths, _ = build_model_config(zoo, 9_610, TrainConfig(channels=(1, 4, 1)), 1)
    assert widths.denoiser.kind == "unet"
    # adapter zoos too (measured: docs/benchmarks/adapters.md)
    adapters = Zoo(Path("."), None, None, {"kind": "none"}, [], adapter={"base": "b"})
    assert build_model_config(adapters, 9_610, TrainConfig(), 1)[0].denoiser.kind == "mlp"
    both, _ = build_model_config(zoo, 9_610, TrainConfig(denoiser="unet", objective="flow"), 1)
    assert both.diffusion.objective == "flow"
    # the paper presets keep the U-Net
    assert all(PRESETS[name].denoiser == "unet" for name in ("small", "base", "large"))
    with pytest.raises(ValueError, match="no recipe for the mlp denoiser"):
        build_model_config(zoo, 9_610, TrainConfig(preset="small", denoiser="mlp"), 1)


def test_the_conditional_recipe_picks_its_denoiser() -> None:
    from models.training.options import build_model_config
    from models.zoo.store import Zoo

    def zoo(condition: dict[str, object]) -> Zoo:
        return Zoo(Path("."), None, None, condition, [])

    tiny = PRESETS["tiny"]
    assert tiny.conditional is not None and tiny.conditional.channels is not None
    task = {"kind": "vector", "dim": 10}
    unet = TrainConfig(denoiser="unet")
    conditional, _ = build_model_config(zoo(task), 4290, unet, 1)
    assert conditional.denoiser.channels == tiny.conditional.channels != tiny.channels
    plain, _ = build_model_config(zoo({"kind": "none"}), 4290, unet, 1)
    assert plain.denoiser.channels == tiny.channels
    override, _ = build_model_config(zoo(task), 4290, TrainConfig(channels=(1, 4, 1)), 1)
    assert override.denoiser.channels == (1, 4, 1)  # an explicit option wins
    # The mean head: on for a conditional zoo, off otherwise, and an explicit option wins.
    assert conditional.mean_head and tiny.conditional.mean_head and not plain.mean_head
    assert build_model_config(zoo(task), 4290, TrainConfig(), 1)[0].mean_head  # mlp kind too
    assert not build_model_config(zoo(task), 4290, TrainConfig(mean_head=False), 1)[0].mean_head
    assert build_model_config(zoo({"kind": "none"}), 4290, TrainConfig(mean_head=True), 1)[
        0
    ].mean_head


def test_default_diffusion_batch_caps_repeats_of_few_tokens() -> None:
    from models.training.options import default_diffusion_batch

    assert default_diffusion_batch(1024, 32, 19) == 1024  # the mask task zoo: unchanged
    assert default_diffusion_batch(128, 8, 25) == 128  # digits-cnn: unchanged
    assert default_diffusion_batch(1024, 32, 4) == 256  # a 4-token adapter zoo: 2 draws each
