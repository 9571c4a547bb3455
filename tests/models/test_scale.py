"""Real-size training: bounded memory (pieces, streaming), paper presets, the ResNet zoo."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.backbones import build_backbone
from models.config import PRESETS, BackboneConfig, DenoiserConfig, RPGConfig
from models.generator import Generator
from models.plan import count_parameters, official_parameter_count, preset_parameter_count
from models.rpg import RPGModel
from models.tokenizer import ParameterTokenizer
from models.training import TrainConfig, train
from models.training.data import ZooTokens, fit_tokenizer
from models.training.options import checkpoint_chunk_for
from models.zoo import digits
from models.zoo.build import build_digits_zoo
from models.zoo.resnet import resnet18
from models.zoo.store import load_zoo

FAST = {
    "d_model": 32,
    "d_state": 16,
    "channels": (1, 8, 16, 8, 1),
    "token_size": 256,
    "progress": False,
    "save_every": 0,
}


def _grads(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])


@pytest.mark.parametrize("kind", ["mamba", "lstm", "transformer"])
def test_checkpointed_pieces_match_the_whole_sequence(kind: str) -> None:
    """Pieces with the recurrent state carried across: same outputs and gradients."""
    torch.manual_seed(0)
    options = {"d_state": 8} if kind == "mamba" else {}
    net = build_backbone(kind, d_model=32, num_layers=2, **options).double()
    x = torch.randn(3, 200, 32, dtype=torch.float64, requires_grad=True)
    whole = net(x)
    whole.square().sum().backward()
    expected, expected_x = _grads(net), x.grad.clone()  # type: ignore[union-attr]
    net.zero_grad()
    x.grad = None
    pieces = net(x, checkpoint_chunk=64)
    pieces.square().sum().backward()
    torch.testing.assert_close(pieces, whole, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(_grads(net), expected, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(x.grad, expected_x, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("kind", ["mamba", "lstm"])
def test_loss_on_selected_prototypes_matches_full_prototypes(kind: str) -> None:
    """RPGModel.forward with checkpoint_chunk computes only the sampled tokens' prototypes."""
    torch.manual_seed(0)
    config = RPGConfig(
        token_size=16,
        condition_dim=3,
        num_permutation_states=3,
        backbone=BackboneConfig(
            kind=kind, d_model=32, options={"d_state": 8} if kind == "mamba" else {}
        ),
        denoiser=DenoiserConfig(channels=(1, 4, 1)),
    )
    positions = torch.stack([torch.zeros(150, dtype=torch.long), torch.arange(150)], dim=1)
    model = RPGModel(config, positions).double()
    tokens = torch.randn(4, 150, 16, dtype=torch.float64)
    ids, cond = torch.tensor([0, 1, 2, 1]), torch.randn(4, 3, dtype=torch.float64)
    results = []
    for chunk in (None, 64, 150):
        model.zero_grad()
        rng = torch.Generator().manual_seed(1)
        loss = model(tokens, ids, cond, diffusion_batch=50, generator=rng, checkpoint_chunk=chunk)
        loss.backward()
        results.append((loss.detach(), _grads(model)))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads, results[0][1], rtol=1e-7, atol=1e-10)


def test_streaming_fit_equals_fit_on_a_list_and_batches_match(
    tiny_zoo: Path,
) -> None:
    zoo = load_zoo(tiny_zoo)
    files = zoo.files()
    listed = ParameterTokenizer.fit([load_file(f) for f in files], token_size=64)
    streamed = fit_tokenizer(files, token_size=64, granularity="tensor")
    assert streamed.to_dict() == listed.to_dict()
    resident = ZooTokens(files, streamed)
    on_disk = ZooTokens(files, streamed, resident_bytes=0)
    assert resident.resident and not on_disk.resident
    torch.testing.assert_close(
        resident.batch([3, 0, 3]), on_disk.batch([3, 0, 3]), rtol=0, atol=0, equal_nan=True
    )


def test_checkpoint_chunk_is_automatic_only_for_long_sequences() -> None:
    assert checkpoint_chunk_for(None, 8, 40) is None  # the digits zoos: unchanged
    assert checkpoint_chunk_for(None, 8, 43_708) == 512  # ResNet-18 at token size 256
    assert checkpoint_chunk_for(0, 8, 43_708) is None
    assert checkpoint_chunk_for(100, 1, 10) == 100


def test_training_from_disk_in_pieces_and_micro_batches(tiny_zoo: Path, tmp_path: Path) -> None:
    """Streaming the zoo changes nothing; pieces change only rounding; micro-batches train."""
    base = {"steps": 3, "seed": 1, "batch_size": 4, **FAST}
    whole = train(tiny_zoo, tmp_path / "a", TrainConfig(**base))  # type: ignore[arg-type]
    train(tiny_zoo, tmp_path / "b", TrainConfig(resident_bytes=0, **base))  # type: ignore[arg-type]
    pieces = train(tiny_zoo, tmp_path / "c", TrainConfig(checkpoint_chunk=16, **base))  # type: ignore[arg-type]
    micro = train(tiny_zoo, tmp_path / "d", TrainConfig(micro_batch=1, **base))  # type: ignore[arg-type]
    a, b, c = (load_file(tmp_path / n / "model.safetensors") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Same first loss; after that Adam may amplify rounding of near-zero gradients (<= lr).
    assert pieces.losses[0] == pytest.approx(whole.losses[0], rel=1e-5)
    for k in a:
        torch.testing.assert_close(c[k], a[k], rtol=0, atol=3 * 4e-3)
    assert len(micro.losses) == 3 and all(loss > 0 for loss in micro.losses)


@pytest.mark.parametrize("name", ["small", "base", "large"])
def test_paper_presets_are_within_ten_percent_of_the_official_configuration(name: str) -> None:
    ours, official = preset_parameter_count(name), official_parameter_count(PRESETS[name])
    assert 0.9 <= ours / official <= 1.1, (name, ours, official)


@pytest.mark.parametrize("mean_head", [False, True])
def test_parameter_count_matches_a_built_model(mean_head: bool) -> None:
    config = RPGConfig(
        condition_dim=10, condition_mode="gate", num_permutation_states=3, mean_head=mean_head
    )
    positions = torch.stack([torch.zeros(5, dtype=torch.long), torch.arange(5)], dim=1)
    model = RPGModel(config, positions)
    assert count_parameters(config, 5) == sum(p.numel() for p in model.parameters())


def test_bare_stack_with_a_wider_last_layer() -> None:
    """The official large configuration: Mamba2 at 48 channels feeding one at 64, no norms."""
    net = build_backbone(
        "mamba", d_model=48, num_layers=2, residual=False, d_output=64, d_state=8, headdim=16
    )
    assert net.d_output == 64
    assert net(torch.randn(2, 70, 48)).shape == (2, 70, 64)
    y = net(torch.randn(2, 70, 48, requires_grad=True), checkpoint_chunk=32)
    assert y.shape == (2, 70, 64)
    with pytest.raises(ValueError, match="residual=False"):
        build_backbone("mamba", d_model=48, residual=True, d_output=64, headdim=16)


def test_preset_sampler_is_the_bundle_default(tiny_zoo: Path, tmp_path: Path) -> None:
    train(tiny_zoo, tmp_path / "g", TrainConfig(steps=1, preset="tiny", **FAST))  # type: ignore[arg-type]
    generator = Generator.from_pretrained(tmp_path / "g")
    tiny = PRESETS["tiny"]
    assert generator.config["defaults"] == {"sampler": tiny.sampler, "steps": tiny.sampler_steps}
    assert generator.config["training"]["ema_decay"] == tiny.ema_decay


def test_resnet18_sizes() -> None:
    assert sum(p.numel() for p in resnet18().parameters()) == 11_172_810
    small = resnet18(width=20, image_side=16)
    assert sum(p.numel() for p in small.parameters()) == 1_094_390
    assert small(torch.rand(3, 64)).shape == (3, 10)
    with pytest.raises(ValueError, match="multiple of 8"):
        resnet18(image_side=20)


def test_small_resnet_zoo_builds_and_scores(tmp_path: Path) -> None:
    recipe = digits.TrainingRecipe(epochs=1, lr=1e-3, batch_size=64)
    zoo = build_digits_zoo(
        "digits-resnet18-small", tmp_path / "z", num_checkpoints=2, recipe=recipe, progress=False
    )
    assert len(zoo) == 2
    module = zoo.build_module()
    module.load_state_dict(load_file(zoo.files()[0]), strict=True)
    assert any(k.endswith("running_var") for k in module.state_dict())
    assert all(a is not None and a > 0.2 for a in zoo.accuracies())  # far above chance


@pytest.mark.slow
def test_bench_scale_small_runs_end_to_end(tmp_path: Path) -> None:
    from models.bench.scale import run_scale

    report = run_scale(
        tmp_path,
        small=True,
        num_checkpoints=2,
        steps=2,
        num_samples=1,
        ddim_steps=2,
        device="cpu",
        preset="tiny",
    )
    assert report["zoo"]["checkpoints"] == 2 and report["plan"]["preset"] == "tiny"
    assert 0.0 <= report["generated"]["mean"] <= 1.0 and report["times"]["train_s"] > 0
    assert report["memory"]["peak_rss_gib"] > 0


def test_resume_is_bit_exact_with_pieces_streaming_and_micro_batches(
    tiny_zoo: Path, tmp_path: Path
) -> None:
    options = {
        "steps": 6,
        "seed": 2,
        "batch_size": 4,
        "micro_batch": 2,
        "checkpoint_chunk": 16,
        "resident_bytes": 0,
        **FAST,
    }
    train(tiny_zoo, tmp_path / "straight", TrainConfig(**options))  # type: ignore[arg-type]
    train(tiny_zoo, tmp_path / "split", TrainConfig(stop_at_step=3, **options))  # type: ignore[arg-type]
    train(tiny_zoo, tmp_path / "split", TrainConfig(resume=True, **options))  # type: ignore[arg-type]
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rpg_model_with_the_official_large_layout_trains_and_samples() -> None:
    """Bare Mamba stack widening to d_output, shared condition projection (toy sizes)."""
    config = RPGConfig(
        token_size=16,
        backbone=BackboneConfig(
            d_model=48, residual=False, d_output=64, options={"d_state": 8, "headdim": 16}
        ),
        denoiser=DenoiserConfig(channels=(1, 4, 1), cond_projection="shared"),
    )
    positions = torch.stack([torch.zeros(40, dtype=torch.long), torch.arange(40)], dim=1)
    model = RPGModel(config, positions)
    assert count_parameters(config, 40) == sum(p.numel() for p in model.parameters())
    ids = torch.zeros(2, dtype=torch.long)
    loss = model(torch.randn(2, 40, 16), ids, diffusion_batch=20, checkpoint_chunk=16)
    loss.backward()
    model.eval()
    out = model.sample_tokens(torch.randn(1, 40, 16), ids[:1], steps=2)
    assert out.shape == (1, 40, 16) and bool(torch.isfinite(out).all())
