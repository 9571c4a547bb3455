"""Sequence backbones of RPG: map (b, L, d_model) embeddings to (b, L, d_model) prototypes.

>>> import torch
>>> net = build_backbone("mamba", d_model=64, num_layers=2, d_state=16)
>>> net(torch.randn(1, 100, 64)).shape
torch.Size([1, 100, 64])

Kinds (``BACKBONES``): ``mamba`` (the paper's default: Mamba2, chunked SSD scan,
``mamba_ssm``-compatible parameters), ``lstm``, ``transformer``, ``gmlp``. Each is a stack of
pre-norm residual blocks ``x + mixer(norm(x))`` with a final norm; every kind also takes
``norm`` ("rmsnorm" | "layernorm") and ``norm_eps``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from torch import nn

from models.backbones.blocks import BackboneStack, CommonOptions, PlainBlock, ResidualBlock
from models.backbones.gmlp import GMLPOptions, build_gmlp
from models.backbones.lstm import LSTMOptions, build_lstm
from models.backbones.mamba2 import (
    HAS_FUSED_KERNEL,
    Mamba2,
    MambaOptions,
    RMSNormGated,
    build_mamba,
)
from models.backbones.ssd import ssd_chunked, ssd_recurrent
from models.backbones.transformer import TransformerOptions, build_transformer
from models.config import BackboneConfig, BackboneKind

__all__ = [
    "BACKBONES",
    "HAS_FUSED_KERNEL",
    "BackboneKind",
    "BackboneStack",
    "Mamba2",
    "RMSNormGated",
    "ResidualBlock",
    "backbone_from_config",
    "build_backbone",
    "ssd_chunked",
    "ssd_recurrent",
]


_REGISTRY: dict[str, tuple[type[CommonOptions], Callable[[int, int, Any], BackboneStack]]] = {
    "mamba": (MambaOptions, build_mamba),
    "lstm": (LSTMOptions, build_lstm),
    "transformer": (TransformerOptions, build_transformer),
    "gmlp": (GMLPOptions, build_gmlp),
}
BACKBONES: tuple[str, ...] = tuple(_REGISTRY)


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise ValueError(f"unknown backbone kind {kind!r}; valid kinds: {', '.join(BACKBONES)}")


def backbone_from_config(config: BackboneConfig) -> BackboneStack:
    """The backbone a saved `BackboneConfig` describes (what `RPGModel` builds)."""
    return build_backbone(
        config.kind,
        d_model=config.d_model,
        num_layers=config.num_layers,
        residual=config.residual,
        d_output=config.d_output,
        **config.options,
    )


def build_backbone(
    kind: BackboneKind | str,
    *,
    d_model: int,
    num_layers: int = 2,
    residual: bool = True,
    d_output: int | None = None,
    **options: Any,
) -> BackboneStack:
    """Build a backbone: ``forward(x (b, L, d_model)) -> (b, L, d_output or d_model)``.

    ``options`` are kind-specific (the fields of each kind's options dataclass); an unknown
    kind or option raises ``ValueError`` naming the valid ones. ``residual=False`` stacks the bare mixers
    with no norms, as the official RPG code does; ``d_output`` (mamba only, without
    residuals) widens the last layer to that many channels (the official "post_d_model":
    its input projection reads ``d_model`` channels).
    """
    _check_kind(kind)
    for name, value in (("d_model", d_model), ("num_layers", num_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    options_cls, builder = _REGISTRY[kind]
    valid = options_cls.names()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for backbone {kind!r}; "
            f"valid options: {', '.join(valid)}"
        )
    stack = builder(d_model, num_layers, options_cls(**options))
    if residual:
        if d_output is not None and d_output != d_model:
            raise ValueError(
                f"d_output={d_output} needs residual=False: a residual block keeps its width"
            )
        return stack
    layers: list[nn.Module] = [PlainBlock(cast(nn.Module, layer.mixer)) for layer in stack.layers]
    if d_output is not None and d_output != d_model:
        if kind != "mamba":
            raise ValueError(f"d_output is only supported by the mamba backbone, not {kind!r}")
        mixer_kwargs = {k: v for k, v in options.items() if k not in CommonOptions.names()}
        last = Mamba2(d_output, **mixer_kwargs)
        # Reads the previous layer's d_model channels (the official VaryMambaModel's layout).
        last.in_proj = nn.Linear(d_model, last.in_proj.out_features, bias=False)
        layers[-1] = PlainBlock(last)
    plain = BackboneStack(kind, d_model, layers, nn.Identity())
    plain.d_output = d_output or d_model
    return plain
