"""Unconditional adapter zoos in ``rpg evaluate --zoo Z --generated DIR``: read generated PEFT
folders, and score adapters by merging each into the zoo's base.

The novelty report is unchanged (its L2 distances are in the adapters' own normalized space);
accuracy and wrong-prediction sets come from the base with each adapter merged in, and the
report gains a ``base`` row: the base network alone, which an adapter should beat.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from models.adapters.folder import is_adapter_folder, read_adapter_folder
from models.adapters.merge import AdaptedModule
from models.adapters.spec import AdapterError
from models.errors import EvaluationError
from models.zoo.store import Zoo, ZooError

__all__ = ["adapter_scorer", "has_adapter_folders", "load_generated_adapters"]


def has_adapter_folders(path: Path) -> bool:
    """Whether ``path`` holds PEFT adapter folders (``rpg sample`` of an adapter generator)."""
    return path.is_dir() and any(is_adapter_folder(p) for p in path.iterdir())


def load_generated_adapters(path: Path, zoo: Zoo) -> tuple[list[str], list[dict[str, Tensor]]]:
    """Folder names and adapter tensors of every PEFT folder in ``path``, checked against the
    zoo's adapter config (same rank, alpha and targets)."""
    base = zoo.adapter_base()
    folders = sorted(p for p in path.iterdir() if is_adapter_folder(p))
    names, tensors = [], []
    for folder in folders:
        try:
            spec, sd = read_adapter_folder(folder)
        except AdapterError as e:
            raise EvaluationError(str(e)) from e
        if not spec.same_adapter(base.spec):
            raise EvaluationError(
                f"{folder.name}: adapter config (r {spec.r}, alpha {spec.lora_alpha:g}, targets "
                f"{spec.target_modules!r}) differs from the zoo's (r {base.spec.r}, alpha "
                f"{base.spec.lora_alpha:g}, targets {base.spec.target_modules!r})"
            )
        names.append(folder.name)
        tensors.append(sd)
    return names, tensors


def adapter_scorer(zoo: Zoo) -> AdaptedModule:
    """The zoo's base (weights checked) as a module that takes adapters in load_state_dict."""
    try:
        base = zoo.adapter_base()
        module = base.build_module()
        return AdaptedModule(module, base.state_dict(), base.layout(module), base.spec)
    except (AdapterError, ZooError) as e:
        raise EvaluationError(str(e)) from e
