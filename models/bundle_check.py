"""A bundle's config.json checked against its weights before any real module is built.

config.json says how large the network is (`d_model`, layers, token size, the tokenizer's
layout); model.safetensors says how large it is. A bundle from elsewhere can lie in the first,
and building what it claims (a d_model of 8000 is gigabytes) before noticing is the attack.
So the network is first built on PyTorch's `meta` device (shapes only, no memory), its
parameter count bounded by `FileLimits`, and every shape and dtype it implies compared with
the weights' header (read without loading a tensor). Only a bundle whose config describes its
weights exactly gets built for real.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.bundle import WEIGHTS_NAME, BundleError
from models.config import RPGConfig
from models.errors import UnsafeFileError
from models.limits import DEFAULT_LIMITS, FileLimits
from models.rpg import RPGModel
from models.safefiles import SafetensorsHeader, read_safetensors_header
from models.tokenizer import ParameterTokenizer

__all__ = ["CheckedBundle", "CheckedConfig", "check_bundle", "check_config"]

# safetensors dtype names of the torch dtypes a generator's state dict holds.
_TORCH_TO_SAFETENSORS = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.bool: "BOOL",
}


@dataclass(frozen=True)
class CheckedConfig:
    """What `check_config` read: the tokenizer, the network's config and its state's shapes."""

    tokenizer: ParameterTokenizer
    model_config: RPGConfig
    # Name -> (shape, safetensors dtype) of the state dict config.json implies.
    expected: dict[str, tuple[tuple[int, ...], str]]


@dataclass(frozen=True)
class CheckedBundle(CheckedConfig):
    """`CheckedConfig` plus the weights' header it was compared with."""

    header: SafetensorsHeader


# How many modules a config may ask for: building modules costs Python objects even on the
# meta device, and the presets stay far below (2 layers, 5-7 denoiser channels, T = 1000).
MAX_LAYERS = 256
MAX_DENOISER_CHANNELS = 64
MAX_TIMESTEPS = 100_000


def _structure(model_config: RPGConfig, where: Path) -> None:
    """Bound the counts that decide how many modules (not how large) the network has."""
    counts = {
        "backbone.num_layers": (model_config.backbone.num_layers, MAX_LAYERS),
        "denoiser.channels": (len(model_config.denoiser.channels), MAX_DENOISER_CHANNELS),
        "diffusion.num_timesteps": (model_config.diffusion.num_timesteps, MAX_TIMESTEPS),
    }
    for field, (value, bound) in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= bound:
            raise BundleError(f"{where}: model {field} is {value!r}; expected 1..{bound}")


def _tokenizer(config: dict[str, Any], where: Path, limits: FileLimits) -> ParameterTokenizer:
    try:
        tokenizer = ParameterTokenizer.from_dict(config["tokenizer"])
    except Exception as exc:  # any failure to parse untrusted JSON is this bundle's fault
        raise BundleError(f"{where}: 'tokenizer' is malformed ({_first_line(exc)})") from None
    if tokenizer.num_parameters > limits.max_target_parameters:
        raise BundleError(
            f"{where}: the tokenizer describes a {tokenizer.num_parameters}-parameter target, "
            f"more than RPG_MAX_TARGET_PARAMETERS={limits.max_target_parameters}"
        )
    if tokenizer.num_tokens > limits.max_tokens:
        raise BundleError(
            f"{where}: the tokenizer describes {tokenizer.num_tokens} tokens, more than "
            f"RPG_MAX_TOKENS={limits.max_tokens}"
        )
    return tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _expected_state(
    model_config: RPGConfig, tokenizer: ParameterTokenizer, where: Path, limits: FileLimits
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, safetensors dtype) of the state dict config.json implies (meta build)."""
    positions = tokenizer.positions()  # (num_tokens, 2), bounded by max_tokens above
    try:
        with torch.device("meta"):
            model = RPGModel(model_config, positions.to("meta"))
    except Exception as exc:  # the values are untrusted: any failure is this config's fault
        raise BundleError(f"{where}: 'model' cannot be built ({_first_line(exc)})") from None
    tensors = [*model.parameters(), *model.buffers()]
    total = sum(t.numel() for t in tensors)
    if total > limits.max_generator_parameters:
        raise BundleError(
            f"{where}: config.json implies a generator of {total} parameters and buffers, more "
            f"than RPG_MAX_GENERATOR_PARAMETERS={limits.max_generator_parameters}"
        )
    return {
        name: (tuple(t.shape), _TORCH_TO_SAFETENSORS.get(t.dtype, str(t.dtype)))
        for name, t in model.state_dict().items()
    }


def check_config(
    directory: Path, config: dict[str, Any], limits: FileLimits = DEFAULT_LIMITS
) -> CheckedConfig:
    """Check config.json alone: its tokenizer and model parse, and what they imply stays
    within `limits` (the network is built on the meta device only). A gateway, which never
    reads weights, checks this much; `BundleError` (one line) otherwise."""
    where = directory / "config.json"
    tokenizer = _tokenizer(config, where, limits)
    try:
        model_config = RPGConfig.from_dict(config["model"])
        _structure(model_config, where)
    except BundleError:
        raise
    except Exception as exc:  # any failure to parse untrusted JSON is this bundle's fault
        raise BundleError(f"{where}: 'model' is malformed ({_first_line(exc)})") from None
    if model_config.token_size != tokenizer.token_size:
        raise BundleError(
            f"{where}: model token_size {model_config.token_size} differs from the tokenizer's "
            f"{tokenizer.token_size}"
        )
    return CheckedConfig(
        tokenizer, model_config, _expected_state(model_config, tokenizer, where, limits)
    )


def check_bundle(
    directory: Path, config: dict[str, Any], limits: FileLimits = DEFAULT_LIMITS
) -> CheckedBundle:
    """Check that config.json describes model.safetensors exactly, building nothing real.

    Raises `BundleError` with one line naming the first disagreement (a missing or extra
    tensor, a shape or dtype) or the limit a size exceeds.
    """
    checked = check_config(directory, config, limits)
    where = directory / "config.json"
    try:
        header = read_safetensors_header(directory / WEIGHTS_NAME, limits)
    except UnsafeFileError as exc:
        raise BundleError(str(exc)) from None
    expected = checked.expected
    found = header.shapes()
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in expected]
    if missing or extra:
        raise BundleError(
            f"{directory / WEIGHTS_NAME} does not match {where}: missing tensors {missing[:3]}, "
            f"unexpected tensors {extra[:3]}"
        )
    for name, (shape, dtype) in expected.items():
        if found[name] != (shape, dtype):
            raise BundleError(
                f"{directory / WEIGHTS_NAME} does not match {where}: config.json implies "
                f"{name!r} of shape {list(shape)} {dtype}, the weights hold "
                f"{list(found[name][0])} {found[name][1]} (numel {math.prod(found[name][0])})"
            )
    return CheckedBundle(checked.tokenizer, checked.model_config, expected, header)
