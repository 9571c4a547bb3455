"""Time and capacity of a planned training run (`rpg plan`): FLOPs per step, the step time those
FLOPs take at a throughput calibrated on this project's CPU host, and whether the generator is
large enough for its target.

The FLOP count is from shapes (multiply-adds x 2), part by part: the backbone's weights on
every token of every distinct row, its SSD scan, the denoiser on the drawn tokens and the mean
head. Forward counts once, backward twice (once where a layer's input needs no gradient), a
checkpointed piece's recomputed forward once more. Step time = each part's FLOPs / that part's throughput (FLOP/s) as measured on the
calibration host: the parts run at very different rates on a CPU (the backbone's big matmuls
near the machine's peak, the denoiser's narrow convolutions far below it), so one rate for
the step would be off by the mix. No IO here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from models.config import RPGConfig
from models.plan import Workload, denoiser_flops

__all__ = [
    "CPU_THROUGHPUT",
    "MIN_CAPACITY_RATIO",
    "Capacity",
    "Throughput",
    "capacity",
    "step_seconds",
    "train_step_flops",
]


@dataclass(frozen=True)
class Throughput:
    """FLOP/s of each part of a training step on one machine, and where that was measured."""

    backbone: float
    unet: float  # the U-Net denoiser (narrow convolutions)
    mlp: float  # the mlp denoiser (matrix products)
    other: float  # mean head, embeddings
    overhead_s: float  # per step: optimizer, EMA, batch gathering, Python
    source: str


# Measured on this project's CPU host with one torch thread while the other core ran other
# jobs (`OMP_NUM_THREADS=1 rpg bench step-time Z`, the compact preset's parts on the
# digits-resnet18-small zoo, and with `--denoiser unet` for the U-Net (widths 1, 8, 16, 8, 1)):
# docs/benchmarks/real-size.md "Calibration". ``overhead_s`` is an estimate (AdamW and EMA
# over ~10M weights), not measured apart.
CPU_THROUGHPUT = Throughput(
    backbone=31e9,
    unet=7.1e9,
    mlp=35e9,
    other=35e9,
    overhead_s=0.05,
    source="measured on the project's 2-core CPU host, one thread",
)

# Below this ratio of generator to target parameters the generator has fewer weights than the
# values it must produce per model (the paper's published runs are at 13x-166x).
MIN_CAPACITY_RATIO = 1.0


def _scan_flops_per_token(config: RPGConfig) -> int:
    """The chunked SSD scan of one Mamba2 layer, per token (forward): intra-chunk scores and
    their product with x, chunk states and their read-out (ssd_chunked)."""
    opts = {"d_state": 128, "expand": 2, "chunk_size": 64, "ngroups": 1}
    opts.update({k: v for k, v in config.backbone.options.items() if k in opts})
    d_inner = opts["expand"] * config.backbone.d_model
    q, n = opts["chunk_size"], opts["ngroups"] * opts["d_state"]
    return 2 * q * n + 2 * q * d_inner + 4 * n * d_inner


def denoiser_token_flops(config: RPGConfig, cond_dim: int) -> int:
    """Forward FLOPs of the denoiser on one training token. mlp: its token path, prototype
    terms and time terms (``models.plan.denoiser_flops``). U-Net, as
    ``ConvUNetDenoiser.forward`` runs it: its convolutions, the time MLP, and per layer the
    time and the condition projection to ``token_size`` values (a shared condition
    projection is applied at every layer too)."""
    if config.denoiser.kind == "mlp":
        # in training every token has its own prototype and time: all three terms per token
        return sum(denoiser_flops(config))
    channels, T = config.denoiser.channels, config.token_size
    kernel, time_dim = config.denoiser.kernel_size, config.denoiser.time_dim
    convs = sum(2 * c_in * c_out * kernel * T for c_in, c_out in itertools.pairwise(channels))
    layers = len(channels) - 1
    projections = 2 * T * (time_dim + cond_dim) * layers
    time_mlp = 2 * 2 * time_dim * time_dim  # its two Linear layers
    return convs + projections + time_mlp


def _no_input_grad_flops(config: RPGConfig, d_out: int) -> int:
    """Per token, the forward FLOPs of the mlp denoiser's layers whose input needs no gradient
    (their backward computes the weights' gradient only): the noisy token's projection, the
    time MLP's first layer and, with a mean head (the denoiser reads detached prototypes),
    the prototype terms. 0 for the U-Net (a few percent there)."""
    if config.denoiser.kind != "mlp":
        return 0
    den = config.denoiser
    modulations = 2 * (den.depth + 1) * den.width
    prototype_terms = 2 * d_out * (den.width + modulations) if config.mean_head else 0
    return 2 * config.token_size * den.width + 2 * den.time_dim * den.width + prototype_terms


def train_step_flops(work: Workload, backbone_parameters: int) -> dict[str, int]:
    """FLOPs of one training step, by part ("total" the sum)."""
    config, L = work.config, work.num_tokens
    passes = -(-work.batch_size // work.micro_batch)  # ceil
    d_out = config.backbone.d_output or config.backbone.d_model
    # forward 1x, backward 2x, and the recomputed forward of checkpointed pieces
    factor = 4 if work.checkpoint_chunk else 3
    scan = _scan_flops_per_token(config) if config.backbone.kind == "mamba" else 0
    per_token = 2 * backbone_parameters + config.backbone.num_layers * scan
    backbone = factor * passes * work.rows * L * per_token
    denoiser = work.diffusion_batch * (
        3 * denoiser_token_flops(config, d_out) - _no_input_grad_flops(config, d_out)
    )
    other = 6 * work.diffusion_batch * d_out * config.token_size if config.mean_head else 0
    parts = {"backbone": backbone, "denoiser": denoiser, "other": other}
    parts["total"] = sum(parts.values())
    return parts


def step_seconds(flops: dict[str, int], rate: Throughput, config: RPGConfig) -> float:
    """Predicted seconds of one training step of ``config`` at ``rate``."""
    denoiser_rate = rate.mlp if config.denoiser.kind == "mlp" else rate.unet
    return (
        flops["backbone"] / rate.backbone
        + flops["denoiser"] / denoiser_rate
        + flops["other"] / rate.other
        + rate.overhead_s
    )


@dataclass(frozen=True)
class Capacity:
    """How large the generator is for what it must produce.

    ``ratio``: generator parameters / target parameters. ``head_rank``: with a mean head, the
    token means it reads from the prototypes lie in a space of at most d_output + 1
    dimensions, so it can reproduce the zoo's L x T matrix of token means only when that is
    at least min(L, T) (``needed_rank``); without one, the denoiser's condition projection
    from the prototypes has the same bound on what it passes to each token.
    """

    generator_parameters: int
    target_parameters: int
    ratio: float
    head_rank: int
    needed_rank: int

    @property
    def short(self) -> bool:
        """True when either measure says the generator is too small."""
        return self.ratio < MIN_CAPACITY_RATIO or self.head_rank < self.needed_rank


def capacity(
    config: RPGConfig, generator_parameters: int, target_parameters: int, num_tokens: int
) -> Capacity:
    """The generator's capacity for a target of ``target_parameters`` in ``num_tokens`` tokens."""
    d_out = config.backbone.d_output or config.backbone.d_model
    return Capacity(
        generator_parameters=generator_parameters,
        target_parameters=target_parameters,
        ratio=generator_parameters / max(1, target_parameters),
        head_rank=d_out + 1,
        needed_rank=min(num_tokens, config.token_size),
    )
