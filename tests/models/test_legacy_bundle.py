"""Bundles trained before denoiser kinds and objectives existed load and sample as before.

tests/data/legacy-unet-epsilon was trained with main at 2281619 (U-Net, epsilon prediction,
no `denoiser.kind` or `diffusion.objective` in its config.json) by
tests/data/make_legacy_bundle.py, which also wrote the sha256 of its samples then. Same
seed and settings must give the same bits today. The golden hashes are CPU float32 results
whose convolutions ran in oneDNN's AVX2 kernels (the machine it was made on): on a CPU with
AVX-512, oneDNN picks other kernels and other rounding, so the samples are computed in a
child process with oneDNN capped at AVX2 (`ONEDNN_MAX_CPU_ISA`, read once when it starts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.generator import Generator
from tests.data.make_legacy_bundle import BUNDLE, CASES, GOLDEN

# Prints {"sampler-steps": sha256} for every case, sampled as the golden file was.
_SAMPLE_ALL = """
import json
from pathlib import Path
from models.generator import Generator
from tests.data.make_legacy_bundle import BUNDLE, CASES, samples_sha256
generator = Generator.from_pretrained(Path(BUNDLE))
print(json.dumps({
    f"{sampler}-{steps}": samples_sha256(generator.sample(num_samples=2, seed=7, sampler=sampler, steps=steps))
    for sampler, steps in CASES
}))
"""


def _has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.fixture(scope="module")
def sampled_hashes() -> dict[str, str]:
    if not _has_avx2():
        pytest.skip("the golden hashes are AVX2 float32 results; this CPU has no AVX2")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", _SAMPLE_ALL], check=True, capture_output=True, text=True, env=env
    )
    hashes: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return hashes


def test_the_legacy_config_names_no_kind_and_no_objective() -> None:
    config = json.loads((BUNDLE / "config.json").read_text())
    assert "kind" not in config["model"]["denoiser"]
    assert "objective" not in config["model"]["diffusion"]


def test_the_legacy_bundle_loads_as_a_unet_with_epsilon() -> None:
    generator = Generator.from_pretrained(Path(BUNDLE))
    assert generator.model.config.denoiser.kind == "unet"
    assert generator.model.config.diffusion.objective == "epsilon"


@pytest.mark.parametrize(("sampler", "steps"), CASES)
def test_legacy_bundle_samples_the_same_bits(
    sampler: str, steps: int, sampled_hashes: dict[str, str]
) -> None:
    golden = json.loads(GOLDEN.read_text())
    assert sampled_hashes[f"{sampler}-{steps}"] == golden[f"{sampler}-{steps}"]
