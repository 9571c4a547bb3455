"""Generator bundles and sampling: save/load round trip, determinism, conditions, no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from models.bundle import BundleError, read_config
from models.errors import SamplingStopped
from models.generator import ConditionError, Generator, derive_seed
from models.sampling_io import cast_floats, write_samples
from models.zoo.store import build_module


@pytest.fixture(scope="module")
def generator(tiny_bundle: Path) -> Generator:
    return Generator.from_pretrained(tiny_bundle)


def test_bundle_layout_and_config(tiny_bundle: Path) -> None:
    assert sorted(
        p.name for p in tiny_bundle.iterdir() if not p.name.startswith("training_state")
    ) == [
        "config.json",
        "model.safetensors",
    ]
    # readable by a gateway or worker running as another user
    assert all(
        (tiny_bundle / name).stat().st_mode & 0o777 == 0o644
        for name in ("config.json", "model.safetensors")
    )
    config = read_config(tiny_bundle)
    assert config["format"] == "rpg-generator" and config["version"] == 1
    assert config["architecture"]["builder"] == "models.zoo.digits:mlp"
    assert config["condition"] == {"kind": "none"}
    assert config["defaults"] == {"sampler": "dpm-solver++", "steps": 8}
    assert config["training"]["completed_steps"] == 20
    assert config["zoo"]["num_checkpoints"] == 6


def test_samples_load_strictly_into_the_architecture(generator: Generator) -> None:
    (sample,) = generator.sample(1, seed=3, steps=5)
    module = build_module(generator.architecture)
    module.load_state_dict(sample, strict=True)
    assert all(torch.isfinite(v).all() for v in sample.values())
    assert generator.num_parameters == sum(p.numel() for p in module.parameters())


def test_same_seed_same_bits_and_index_independence(generator: Generator) -> None:
    a = generator.sample(3, seed=11, steps=5)
    b = generator.sample(3, seed=11, steps=5)
    single = generator.sample(1, seed=11, steps=5)
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    # sample 0 of a 3-sample request equals a 1-sample request with the same seed
    assert all(torch.equal(a[0][k], single[0][k]) for k in a[0])
    # different samples of one request differ
    assert not torch.equal(a[0]["fc1.weight"], a[1]["fc1.weight"])


def test_ddpm_is_deterministic_too(generator: Generator) -> None:
    a = generator.sample(1, seed=5, sampler="ddpm")
    b = generator.sample(1, seed=5, sampler="ddpm")
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])


def test_derive_seed_separates_neighbouring_requests() -> None:
    assert derive_seed(5, 1) != derive_seed(6, 0)
    assert 0 <= derive_seed(2**62, 10) < 2**63


def test_save_pretrained_round_trip(generator: Generator, tmp_path: Path) -> None:
    generator.save_pretrained(tmp_path / "copy")
    loaded = Generator.from_pretrained(tmp_path / "copy")
    assert loaded.generator_id == generator.generator_id  # same weights, same digest
    a = generator.sample(1, seed=1, steps=4)[0]
    b = loaded.sample(1, seed=1, steps=4)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bundle_errors(tmp_path: Path, tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        Generator.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"missing config\.json"):
        Generator.from_pretrained(tmp_path / "empty")
    bad = tmp_path / "future"
    bad.mkdir()
    config = json.loads((tiny_bundle / "config.json").read_text())
    config["version"] = 99
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="version 99 is not supported"):
        Generator.from_pretrained(bad)


def test_unconditional_generator_rejects_condition(generator: Generator) -> None:
    with pytest.raises(ConditionError, match="unconditional"):
        generator.sample(1, condition=[1.0, 0.0], seed=0)


def test_condition_validation_for_vector_spec(generator: Generator) -> None:
    spec = {"kind": "vector", "dim": 3, "labels": ["cat", "dog", "car"]}
    conditional = Generator(
        generator.model, generator.tokenizer, {**generator.config, "condition": spec}
    )
    assert conditional.make_condition([1, 0, 1]).tolist() == [1.0, 0.0, 1.0]
    assert conditional.make_condition({"positive_classes": ["dog"]}).tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ConditionError, match=r"has 2 values; generator .* expects 3"):
        conditional.make_condition([1, 0])
    with pytest.raises(ConditionError, match="finite"):
        conditional.make_condition([1, float("nan"), 0])
    with pytest.raises(ConditionError, match="unknown class 'bird'"):
        conditional.make_condition({"positive_classes": ["bird"]})
    with pytest.raises(ConditionError, match="every class"):
        conditional.make_condition({"positive_classes": ["cat", "dog", "car"]})
    with pytest.raises(ConditionError, match="is conditional"):
        conditional.make_condition(None)


def test_progress_after_every_denoiser_step_and_never_back(generator: Generator) -> None:
    seen: list[float] = []
    generator.sample(2, seed=0, steps=3, chunk_size=8, on_progress=seen.append)
    num_chunks = -(-2 * generator.tokenizer.num_tokens // 8)
    assert len(seen) == num_chunks * 3  # one call per denoiser step of every chunk
    assert seen == sorted(seen) and seen[-1] == 1.0 and 0.0 < seen[0] < 0.2


def test_should_stop_ends_sampling_before_the_next_denoiser_step(generator: Generator) -> None:
    calls: list[int] = []
    original = generator.model.denoiser.forward

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    checks = 0

    def stop_after_four_checks() -> bool:
        nonlocal checks
        checks += 1
        return checks > 4

    generator.model.denoiser.forward = counting  # type: ignore[method-assign]
    try:
        with pytest.raises(SamplingStopped, match="stopped by the caller after"):
            generator.sample(1, seed=0, steps=10, should_stop=stop_after_four_checks)
        assert len(calls) == 4
        calls.clear()
        with pytest.raises(SamplingStopped):
            generator.sample(1, seed=0, sampler="ddpm", should_stop=lambda: True)
        assert calls == []
    finally:
        del generator.model.denoiser.forward
    assert not generator.model.training


def test_bf16_compute_runs_and_stays_close(generator: Generator) -> None:
    full = generator.sample(1, seed=2, steps=5)[0]
    half = generator.sample(1, seed=2, steps=5, dtype="bfloat16")[0]
    assert all(half[k].dtype == full[k].dtype for k in full)
    diff = (half["fc1.weight"] - full["fc1.weight"]).abs().max()
    assert torch.isfinite(half["fc1.weight"]).all() and diff < 0.5 * full["fc1.weight"].abs().max()


def test_write_samples_metadata_and_dtype(generator: Generator, tmp_path: Path) -> None:
    samples = generator.sample(2, seed=9, steps=3)
    paths = write_samples(
        samples,
        tmp_path,
        generator=generator,
        seed=9,
        sampler="ddim",
        steps=3,
        job_id="j1",
        dtype="float16",
    )
    assert [p.name for p in paths] == ["sample_000.safetensors", "sample_001.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with safe_open(paths[1], framework="pt") as handle:
        meta = handle.metadata()
        assert handle.get_tensor("fc1.weight").dtype == torch.float16
    assert meta["format"] == "pt"
    assert meta["generator"] == generator.generator_id
    assert json.loads(meta["architecture"]) == generator.architecture
    assert (meta["seed"], meta["sampler"], meta["steps"], meta["job_id"]) == (
        "9",
        "ddim",
        "3",
        "j1",
    )
    assert meta["sample_index"] == "1" and meta["condition"] == "null"
    with pytest.raises(ValueError, match="dtype must be one of"):
        cast_floats(samples[0], "int8")


def test_sample_i_does_not_depend_on_num_samples(generator: Generator) -> None:
    three = generator.sample(3, seed=21, steps=4)
    five = generator.sample(5, seed=21, steps=4)
    for index in range(3):
        assert all(torch.equal(three[index][k], five[index][k]) for k in three[index])
