"""RPG: recurrent diffusion for neural-network parameter generation, in pure PyTorch.

Public surface: `ParameterTokenizer` (state dict <-> tokens), `Generator` (a trained RPG model
with its tokenizer and config; `from_pretrained`, `save_pretrained`, `sample`). Training,
zoos and evaluation live in `models.training`, `models.zoo`, `models.evaluation`.
"""

from models.diffusion.samplers import SAMPLERS, SamplerName
from models.errors import SamplingStopped
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
