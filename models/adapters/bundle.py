"""The ``adapter`` section of a generator bundle, and the base weights that travel with it.

A generator trained on an adapter zoo records the zoo's adapter section in its config.json
(so sampling, evaluation and serving know to write PEFT folders). Base weights the zoo holds
(small ones) are copied into the bundle as ``base.safetensors``, so a bundle can merge
(``rpg sample --merge``) wherever it is moved; large ones stay referenced by absolute path.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from models.adapters.base import BASE_NAME
from models.zoo.store import Zoo

__all__ = ["bundle_section", "copy_base"]


def bundle_section(zoo: Zoo) -> dict[str, Any] | None:
    """The adapter section for a bundle trained on ``zoo`` (None for whole-network zoos)."""
    if zoo.adapter is None:
        return None
    section = dict(zoo.adapter)
    section["base"] = dict(section["base"])
    return section


def copy_base(zoo: Zoo, out: Path) -> None:
    """Put the zoo's base weights into the bundle at ``out`` when the zoo holds them."""
    if zoo.adapter is None or zoo.adapter["base"]["weights"] != BASE_NAME:
        return
    out.mkdir(parents=True, exist_ok=True)
    target = out / BASE_NAME
    if not target.is_file():
        tmp = out / f".{BASE_NAME}.tmp"
        shutil.copyfile(zoo.path / BASE_NAME, tmp)
        tmp.replace(target)
