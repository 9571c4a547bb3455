"""Model zoos: the checkpoints RPG generators learn from.

- ``store``: the on-disk format (``.safetensors`` + ``zoo.json``), ``load_zoo``, ``save_zoo``;
- ``architecture``: ``build_module`` (architecture spec -> ``nn.Module``), the project's
  builders and the trust rule for any other (``--trust-builder``);
- ``digits``: the built-in task (scikit-learn digits), its architectures and training recipe;
- ``build``: ``build_digits_zoo`` and ``import_zoo`` (a user's folder of state dicts);
- ``cli``: ``rpg zoo build|import|show``.

Importing this package does not import scikit-learn (only loading the digits data does).
"""

from __future__ import annotations

from models.zoo.architecture import PROJECT_BUILDERS, build_module
from models.zoo.build import DIGITS_ARCHITECTURES, build_digits_zoo, import_zoo
from models.zoo.errors import UntrustedBuilderError, ZooError
from models.zoo.store import Zoo, ZooCheckpoint, load_zoo, save_zoo

__all__ = [
    "DIGITS_ARCHITECTURES",
    "PROJECT_BUILDERS",
    "UntrustedBuilderError",
    "Zoo",
    "ZooCheckpoint",
    "ZooError",
    "build_digits_zoo",
    "build_module",
    "import_zoo",
    "load_zoo",
    "save_zoo",
]
