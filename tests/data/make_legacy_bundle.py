"""How tests/data/legacy-unet-epsilon was made (kept as the record; do not re-run it on purpose).

The bundle and its golden hashes were written with the code of main at 2281619, before the
denoiser kinds and the flow objective existed: a U-Net, epsilon-prediction generator whose
config.json has no `denoiser.kind` and no `diffusion.objective`. `test_legacy_bundle.py`
checks that today's code still loads it and samples the same bits.

    OMP_NUM_THREADS=1 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python tests/data/make_legacy_bundle.py

It ran on an AVX2 CPU; the test samples with oneDNN capped at AVX2 so that the hashes hold on
CPUs with AVX-512 too (their convolution kernels round differently).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch

from models.generator import Generator
from models.training import TrainConfig, train
from models.zoo.build import build_digits_zoo

HERE = Path(__file__).parent
BUNDLE = HERE / "legacy-unet-epsilon"
GOLDEN = HERE / "legacy-unet-epsilon.golden.json"

# (sampler, steps): every sampler of the time, few steps each, so the test stays fast.
CASES = [("ddim", 5), ("dpm-solver++", 4), ("ddpm", 1000)]


def samples_sha256(samples: list[dict[str, torch.Tensor]]) -> str:
    """sha256 over every tensor of every sample: name, dtype, shape and raw bytes, in order."""
    digest = hashlib.sha256()
    for state in samples:
        for name, tensor in state.items():
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        zoo = Path(tmp) / "zoo"
        build_digits_zoo("digits-mlp", zoo, num_checkpoints=4, runs=2, seed=0, progress=False)
        options = TrainConfig(
            steps=30, d_model=32, d_state=8, channels=(1, 4, 8, 4, 1), token_size=32,
            progress=False, save_every=0, name="legacy-digits-mlp",
        )  # fmt: skip
        out = Path(tmp) / "bundle"
        train(zoo, out, options)
        if BUNDLE.exists():
            shutil.rmtree(BUNDLE)
        BUNDLE.mkdir()
        for name in ("config.json", "model.safetensors"):  # not the resumable training state
            shutil.copy(out / name, BUNDLE / name)
    generator = Generator.from_pretrained(BUNDLE)
    golden = {
        f"{sampler}-{steps}": samples_sha256(
            generator.sample(num_samples=2, seed=7, sampler=sampler, steps=steps)  # type: ignore[arg-type]
        )
        for sampler, steps in CASES
    }
    GOLDEN.write_text(json.dumps(golden, indent=2) + "\n")
    print(json.dumps(golden, indent=2))


if __name__ == "__main__":
    main()
