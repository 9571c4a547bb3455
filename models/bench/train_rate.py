"""Training throughput beside the machine's matmul rate, measured in one process.

``matmul_flops_per_second`` times square float32 matmuls; ``training_rate`` times training
steps of the tiny preset on a zoo and converts them to tokens per second (sequence tokens
through the backbone) and to an estimated FLOP rate: the backbone's weights twice per token
forward, four times backward, twice more where checkpointed pieces recompute the forward, and
the denoiser's per-token FLOPs three times (forward and backward) on the sampled tokens. The
ratio of the two rates says how much of the machine a step uses.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["matmul_flops_per_second", "training_rate"]


def matmul_flops_per_second(size: int = 1024, repeats: int = 5) -> float:
    """Median FLOP/s of ``size`` x ``size`` float32 matmuls on the CPU."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / sorted(times)[len(times) // 2]


def training_rate(zoo_dir: Path, out: Path, *, steps: int, batch_size: int = 8) -> dict[str, Any]:
    """Tokens/s and estimated FLOP/s of tiny-preset training steps on ``zoo_dir`` (CPU)."""
    from models.backbones import backbone_from_config
    from models.training import train
    from models.training.options import TrainConfig, checkpoint_chunk_for

    options = TrainConfig(
        preset="tiny", steps=steps, batch_size=batch_size, save_every=0, progress=False
    )
    result = train(zoo_dir, out, options)
    from models.generator import Generator

    generator = Generator.from_pretrained(out)
    config = generator.model.config
    L = generator.tokenizer.num_tokens
    batch = min(batch_size, generator.config["zoo"]["num_checkpoints"])
    with torch.device("meta"):
        backbone = backbone_from_config(config.backbone)
    backbone_params = sum(p.numel() for p in backbone.parameters())
    pieces = checkpoint_chunk_for(None, batch, L) is not None
    per_token = (8 if pieces else 6) * backbone_params
    channels, T = config.denoiser.channels, config.token_size
    conv = sum(2 * a * b * config.denoiser.kernel_size * T for a, b in itertools.pairwise(channels))
    denoised = generator.config["training"]["diffusion_batch"]
    flops_per_step = batch * L * per_token + 3 * denoised * conv
    seconds_per_step = 1.0 / result.steps_per_second
    return {
        "tokens_per_second": batch * L / seconds_per_step,
        "flops_per_second": flops_per_step / seconds_per_step,
        "seconds_per_step": seconds_per_step,
        "num_tokens": L,
        "batch_size": batch,
    }
