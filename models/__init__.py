"""RPG: recurrent diffusion for neural-network parameter generation, in pure PyTorch.

Public surface: `ParameterTokenizer` (state dict <-> tokens), `Generator` (a trained RPG model
with its tokenizer and config; `from_pretrained`, `save_pretrained`, `sample`).

The root holds the pipeline: `tokenizer` (+ `tokenizer_layout`), `position`, `backbones/`,
`diffusion/`, `rpg` (the network), `generator`, `bundle`, `config`. Sub-packages: `zoo`
(checkpoints to learn from), `training`, `evaluation`, `cli` (the `rpg` subcommands) and
`bench` (benchmarks and checks).

The names are imported on first use, so torch-free modules of this package (such as
`models.request_check`) load without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from models.errors import SamplingStopped
from models.sampler_names import SAMPLERS, SamplerName

if TYPE_CHECKING:
    from models.generator import ConditionError, Generator
    from models.tokenizer import ParameterTokenizer

__all__ = [
    "SAMPLERS",
    "ConditionError",
    "Generator",
    "ParameterTokenizer",
    "SamplerName",
    "SamplingStopped",
]

_HOMES = {
    "ConditionError": "models.generator",
    "Generator": "models.generator",
    "ParameterTokenizer": "models.tokenizer",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
