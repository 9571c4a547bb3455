"""Bundles trained before denoiser kinds and objectives existed load and sample as before.

tests/data/legacy-unet-epsilon was trained with main at 2281619 (U-Net, epsilon prediction,
no `denoiser.kind` or `diffusion.objective` in its config.json) by
tests/data/make_legacy_bundle.py, which also wrote the sha256 of its samples then. Same
seed and settings must give the same bits today (same CPU kind: the golden hashes are CPU
float32 results).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.generator import Generator
from tests.data.make_legacy_bundle import BUNDLE, CASES, GOLDEN, samples_sha256


def test_the_legacy_config_names_no_kind_and_no_objective() -> None:
    config = json.loads((BUNDLE / "config.json").read_text())
    assert "kind" not in config["model"]["denoiser"]
    assert "objective" not in config["model"]["diffusion"]


@pytest.mark.parametrize(("sampler", "steps"), CASES)
def test_legacy_bundle_samples_the_same_bits(sampler: str, steps: int) -> None:
    generator = Generator.from_pretrained(Path(BUNDLE))
    assert generator.model.config.denoiser.kind == "unet"
    assert generator.model.config.diffusion.objective == "epsilon"
    samples = generator.sample(num_samples=2, seed=7, sampler=sampler, steps=steps)  # type: ignore[arg-type]
    golden = json.loads(GOLDEN.read_text())
    assert samples_sha256(samples) == golden[f"{sampler}-{steps}"]
