"""Sizing a generator before training it: parameter counts, memory and FLOPs (`rpg plan`).

Counts come from instantiating the model on PyTorch's ``meta`` device (shapes only, no
memory). ``official_parameter_count`` counts the official code's model for a preset
(NUS-HPC-AI-Lab/Recurrent-Parameter-Generation: ``model/mamba.py``, ``model/denoiser.py``,
``model/__init__.py`` and the configuration file the preset names), written out from those
files' layer shapes; ``mamba_ssm.Mamba2``'s shapes are our ``Mamba2``'s, so it is counted by
instantiating ours.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from models.backbones import Mamba2, backbone_from_config
from models.config import PRESETS, BackboneKind, Preset, RPGConfig
from models.diffusion import denoiser_from_config

__all__ = ["count_parameters", "official_parameter_count", "preset_parameter_count"]


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(config: RPGConfig, num_tokens: int = 1) -> int:
    """Trainable parameters of ``RPGModel(config, positions)`` for ``num_tokens`` tokens.

    The backbone and denoiser are built on the ``meta`` device (no memory); the small parts
    (embeddings, condition MLP) are counted from their shapes, as ``RPGModel`` builds them.
    """
    d = config.backbone.d_model
    with torch.device("meta"):
        backbone = backbone_from_config(config.backbone)
        denoiser = denoiser_from_config(config, backbone.d_output)
    total = _numel(backbone) + _numel(denoiser) + config.num_permutation_states * d
    if config.condition_dim:
        total += config.condition_dim * d + d + d * d + d  # Linear, SiLU, Linear
        if config.condition_mode == "gate":
            total += d + 1
    if config.mean_head:
        total += (backbone.d_output + 1) * config.token_size  # Linear(d_output, token_size)
    if config.position == "learned":
        total += num_tokens * d
    return total


def preset_parameter_count(name: str, *, backbone: BackboneKind = "mamba") -> int:
    """Our generator's parameter count for preset ``name`` (unconditional, one permutation
    state, ``num_layers=2``), as ``rpg train`` builds it."""
    from models.config import BackboneConfig, DenoiserConfig

    preset = PRESETS[name]
    config = RPGConfig(
        token_size=preset.token_size,
        backbone=BackboneConfig(
            kind=backbone,
            d_model=preset.d_model,
            num_layers=2,
            options={"d_state": preset.d_state} if backbone == "mamba" else {},
            residual=preset.residual,
            d_output=preset.d_output,
        ),
        denoiser=DenoiserConfig(channels=preset.channels, cond_projection=preset.cond_projection),
    )
    return count_parameters(config)


def _official_unet(channels: tuple[int, ...], model_dim: int, condition_dim: int) -> int:
    """``ConditionalUNet`` (official model/denoiser.py): timestep MLP 256 -> m -> m, one shared
    condition ``Linear(condition_dim, m)``, convs with bias, BatchNorm after every conv whose
    output has more than one channel."""
    kernel = 7
    time = 256 * model_dim + model_dim + model_dim * model_dim + model_dim
    cond = condition_dim * model_dim + model_dim
    convs = sum(c_in * c_out * kernel + c_out for c_in, c_out in itertools.pairwise(channels))
    norms = sum(2 * c for c in channels[1:] if c != 1)
    return time + cond + convs + norms


def official_parameter_count(preset: Preset) -> int:
    """The official code's generator for the configuration ``preset.official`` names.

    Two bare ``Mamba2`` layers (d_conv 4, expand 2, headdim 64); with ``post_d_model`` the
    second is built at that width with an input projection from ``d_model`` channels
    (``VaryMambaModel``); the ``ConditionalUNet`` above with ``condition_dim`` = the Mamba
    output width; ``to_condition = Linear(1, d_model)``; one permutation embedding row.
    """
    width = preset.d_output or preset.d_model
    with torch.device("meta"):
        first = Mamba2(preset.d_model, d_state=preset.d_state)
        second = Mamba2(width, d_state=preset.d_state)
        second.in_proj = nn.Linear(preset.d_model, second.in_proj.out_features, bias=False)
    mamba = _numel(first) + _numel(second)
    unet = _official_unet(preset.channels, preset.token_size, width)
    return mamba + unet + 2 * preset.d_model + preset.d_model


# ---------------------------------------------------------------------------- memory and FLOPs

# Calibrated on this project's CPU host (docs/benchmarks "Planning"): the `rpg` process before any
# tensor, and the ratio of peak RSS to the backbone's live bytes per checkpointed piece
# (glibc keeps the freed temporaries of one piece mapped while the next piece runs).
RUNTIME_BYTES = 230 * 2**20
ALLOCATOR_FACTOR = 7.5
# The same ratio for a backbone run whole (no pieces): one pass's temporaries, nothing kept
# across pieces. Calibrated on the compact preset's step (docs/benchmarks/real-size.md).
WHOLE_PASS_ALLOCATOR_FACTOR = 3.0
CUDA_ALLOCATOR_FACTOR = 1.3  # an assumption, not yet measured (no GPU in this project's CI)
# Sampling on a CPU: the `rpg sample` process before the bundle (it imports more than `rpg
# train` has at its first tensor), and the ratio of peak RSS to the live bytes of sampling's
# temporaries (glibc keeps the freed ones mapped). Measured on this host with `rpg sample -n 1`
# of tiny digits bundles (329-347 MiB) and of the ResNet-18 bundle (1.14 GiB):
# docs/benchmarks/real-size.md "ResNet-18".
SAMPLE_RUNTIME_BYTES = 300 * 2**20
SAMPLE_ALLOCATOR_FACTOR = 1.75
FLOAT = 4  # bytes: training and float32 sampling


@dataclass(frozen=True)
class Workload:
    """What a plan is computed for: the zoo's shape and the run's settings."""

    num_checkpoints: int
    num_tokens: int  # L
    config: RPGConfig
    batch_size: int
    micro_batch: int
    diffusion_batch: int
    checkpoint_chunk: int | None
    ema: bool
    resident: bool  # encoded zoo kept in memory
    sample_steps: int
    sample_chunk: int = 1024  # tokens per denoiser call when sampling
    device_type: str = "cpu"  # "cuda": bf16 autocast, the caching allocator, no unfolded convs
    # Rows a pass runs through the backbone: one per distinct (permutation id, condition) of the
    # micro-batch (RPGModel runs shared rows once). None: micro_batch (every row distinct).
    backbone_rows: int | None = None

    @property
    def rows(self) -> int:
        """Backbone rows per pass (at most the micro-batch)."""
        return min(self.micro_batch, self.backbone_rows or self.micro_batch)


def _mamba_token_floats(config: RPGConfig) -> int:
    """Floats a Mamba2 layer keeps per token for backward (what autograd saves)."""
    d = config.backbone.d_model
    opts = {"d_state": 128, "expand": 2, "headdim": 64, "ngroups": 1, "chunk_size": 64}
    opts.update({k: v for k, v in config.backbone.options.items() if k in opts})
    d_inner = opts["expand"] * d
    heads = d_inner // opts["headdim"]
    state = opts["ngroups"] * opts["d_state"]
    in_proj = 2 * d_inner + 2 * state + heads
    conv = d_inner + 2 * state
    # in_proj out, conv out + SiLU, x*dt, y, gated norm (2), out; the scan's q x q blocks per
    # head (decays, scores, their exp and cumsum); residual norm and sum.
    return in_proj + 2 * conv + 4 * d_inner + 4 * opts["chunk_size"] * heads + 4 * d


def _backbone_token_floats(config: RPGConfig) -> int:
    d = config.backbone.d_model
    per_layer = _mamba_token_floats(config) if config.backbone.kind == "mamba" else 12 * d
    return config.backbone.num_layers * per_layer


def _denoiser_token_floats(config: RPGConfig, device_type: str = "cpu") -> int:
    """Floats per token in the denoiser: activations and gradients of every layer, and on CPU
    the conv's unfolded input (kernel x widest input) that oneDNN's backward works on."""
    if config.denoiser.kind == "mlp":
        return 2 * _mlp_token_floats(config)  # activations and their gradients
    channels = config.denoiser.channels
    widest = max(channels) * config.denoiser.kernel_size if device_type == "cpu" else 0
    return config.token_size * (2 * sum(channels) + 2 * widest)


def _mlp_token_floats(config: RPGConfig) -> int:
    """Floats per token the mlp denoiser keeps: input, prototype terms, and per block the
    normalized, modulated, hidden (before and after GELU) and output activations."""
    den = config.denoiser
    width, hidden = den.width, den.mlp_ratio * den.width
    modulations = 2 * (den.depth + 1) * width
    return 2 * config.token_size + width + modulations + den.depth * (3 * width + 2 * hidden)


def train_memory(work: Workload, parameters: int) -> dict[str, int]:
    """Predicted peak memory of a training step, by part (bytes; "peak_bytes" the total)."""
    config, L, T = work.config, work.num_tokens, work.config.token_size
    d = config.backbone.d_model
    pass_tokens = work.rows * (work.checkpoint_chunk or L)
    # On CUDA (not measured here yet): bf16 activations, PyTorch's caching allocator.
    on_cpu = work.device_type == "cpu"
    factor = ALLOCATOR_FACTOR if work.checkpoint_chunk else WHOLE_PASS_ALLOCATOR_FACTOR
    factor = factor if on_cpu else CUDA_ALLOCATOR_FACTOR
    act = FLOAT if on_cpu else FLOAT // 2
    backbone = pass_tokens * _backbone_token_floats(config) * act * factor
    if work.checkpoint_chunk is None:  # inputs and prototypes of the whole batch, and grads
        backbone += 4 * work.rows * L * d * FLOAT
    # the position table and its float64 construction, per sequence position
    backbone += 4 * L * d * FLOAT
    denoiser = work.diffusion_batch * _denoiser_token_floats(config, work.device_type) * act
    parts = {
        "runtime_bytes": RUNTIME_BYTES,
        "weights_bytes": parameters * FLOAT,
        "gradients_bytes": parameters * FLOAT,
        "optimizer_bytes": 2 * parameters * FLOAT,  # AdamW's two moments
        "ema_bytes": parameters * FLOAT if work.ema else 0,
        "zoo_bytes": work.num_checkpoints * L * T * FLOAT if work.resident else 2 * L * T * FLOAT,
        "batch_bytes": work.micro_batch * L * T * FLOAT,
        "activation_bytes": int(backbone + denoiser),
    }
    parts["peak_bytes"] = sum(parts.values())
    return parts


def sample_memory(work: Workload, parameters: int) -> dict[str, int]:
    """Predicted peak memory of sampling one model in float32 (bytes, by part)."""
    config, L, T = work.config, work.num_tokens, work.config.token_size
    d_out = config.backbone.d_output or config.backbone.d_model
    # Inference keeps nothing for backward: one layer's temporaries over the sequence; the
    # widest conv's input and output per token value (on CPU also its unfolded input).
    kernel = config.denoiser.kernel_size if work.device_type == "cpu" else 0
    widest = max(config.denoiser.channels) * (kernel + 2)
    backbone = L * (_backbone_token_floats(config) // config.backbone.num_layers) * FLOAT
    cpu = work.device_type == "cpu"
    factor = SAMPLE_ALLOCATOR_FACTOR if cpu else 1.0
    # inference: one layer's input, output and unfolded input per token of a chunk
    per_chunk_token = T * widest if config.denoiser.kind == "unet" else _mlp_token_floats(config)
    temporaries = {
        "prototypes_bytes": L * d_out * FLOAT + backbone,
        "tokens_bytes": 3 * L * T * FLOAT,  # noise, output, decoded float64 per tensor
        "denoiser_bytes": min(work.sample_chunk, L) * per_chunk_token * FLOAT,
    }
    parts = {
        "runtime_bytes": SAMPLE_RUNTIME_BYTES if cpu else RUNTIME_BYTES,
        "weights_bytes": parameters * FLOAT,
        # the bundle's tensors as read, alive while the module copies them in
        "loading_bytes": parameters * FLOAT,
        **{name: int(factor * size) for name, size in temporaries.items()},
    }
    parts["peak_bytes"] = sum(parts.values())
    return parts


def sample_flops(work: Workload, backbone_parameters: int) -> int:
    """Multiply-adds x 2 to generate one model: the backbone once, the denoiser per step."""
    L = work.num_tokens
    per_step, per_token_once, per_call = denoiser_flops(work.config)
    calls = -(-L // work.sample_chunk)  # denoiser calls per step for one model
    backbone = 2 * backbone_parameters * L  # every backbone weight once per token
    once = L * per_token_once
    return backbone + once + work.sample_steps * (L * per_step + calls * per_call)


def denoiser_flops(config: RPGConfig) -> tuple[int, int, int]:
    """(per token per step, per token once per sampling call, per call per step): the
    denoiser's multiply-adds x 2 as `torch.utils.flop_counter.FlopCounterMode` counts them
    (matrix products and convolutions; norms and activations are not counted).

    U-Net: every conv and every per-layer projection of the prototype and the time, per
    token and step. mlp: the token path per token and step; the prototype terms once per
    token (samplers compute them once, `objective.run_sampler`); the time terms once per call.
    """
    den, T = config.denoiser, config.token_size
    d_out = config.backbone.d_output or config.backbone.d_model
    if den.kind == "mlp":
        W, hidden = den.width, den.mlp_ratio * den.width
        modulations = 2 * (den.depth + 1) * W
        per_step = 2 * (2 * T * W + den.depth * 2 * W * hidden)
        once = 2 * d_out * (W + modulations)
        per_call = 2 * (den.time_dim * W + W * modulations)
        return per_step, once, per_call
    channels, kernel = den.channels, den.kernel_size
    convs = sum(2 * c_in * c_out * kernel * T for c_in, c_out in itertools.pairwise(channels))
    layers = len(channels) - 1
    projections = 2 * T * (den.time_dim * layers)
    projections += 2 * T * d_out * (layers if den.cond_projection == "per_layer" else 1)
    time_mlp = 2 * 2 * den.time_dim * den.time_dim  # its two Linear layers, per token
    return convs + projections + time_mlp, 0, 0
