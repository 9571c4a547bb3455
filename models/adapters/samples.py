"""Generated adapters on disk: a PEFT folder per sample, or base + adapter merged.

Writing needs no ``peft``: the folder is the adapter config of the zoo (plain LoRA, with the
base's Hub id as ``base_model_name_or_path`` when it has one) and the tensors under PEFT's own
key names, so ``PeftModel.from_pretrained(base, folder)`` loads every tensor it expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from models.adapters.base import hub_id_of
from models.adapters.folder import write_adapter_folder
from models.adapters.merge import merge_adapter, targets_from_keys
from models.adapters.spec import parse_peft_config

__all__ = ["adapter_metadata", "merged_sample", "write_adapter_sample"]


def adapter_metadata(section: Mapping[str, Any], metadata: Mapping[str, str]) -> dict[str, str]:
    """A sample's provenance plus what it adapts: the base's sha256 and the adapter form."""
    return {
        **metadata,
        "adapter": "lora",
        "adapter_form": str(section["form"]),
        "base_sha256": str(section["base"]["sha256"]),
    }


def peft_config_for(section: Mapping[str, Any]) -> dict[str, Any]:
    """The ``adapter_config.json`` written beside every generated adapter."""
    spec = parse_peft_config(section["peft_config"], "adapter.peft_config")
    return spec.to_peft_config(base_model_name_or_path=hub_id_of(section["base"].get("hub_id")))


def write_adapter_sample(
    folder: Path,
    adapter: Mapping[str, Tensor],
    section: Mapping[str, Any],
    metadata: Mapping[str, str],
) -> list[tuple[Path, int]]:
    """Write one PEFT folder; returns (path, parameter count) of its two files, config first."""
    config_path, weights_path = write_adapter_folder(
        folder, peft_config_for(section), adapter, metadata
    )
    return [(config_path, 0), (weights_path, sum(t.numel() for t in adapter.values()))]


def merged_sample(
    adapter: Mapping[str, Tensor], base: Mapping[str, Tensor], section: Mapping[str, Any]
) -> dict[str, Tensor]:
    """Base + adapter as a full state dict of the base architecture."""
    spec = parse_peft_config(section["peft_config"], "adapter.peft_config")
    return merge_adapter(base, adapter, targets_from_keys(list(adapter), base), spec)
