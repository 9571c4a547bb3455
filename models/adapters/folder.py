"""PEFT adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors``.

Reading is defensive, since folders come from elsewhere: only those two names inside the
folder are opened, neither may be a symlink or anything but a regular file, both have size
limits, the config is bounded JSON and the weights' header is checked before any tensor is read
(both through ``models.safefiles``), and tensors are read with safetensors only. A folder that
holds only ``adapter_model.bin`` (a pickle) is refused with the conversion to run; it is never
unpickled.

Writing (``write_adapter_folder``) builds the folder under a temporary name beside the target
and renames it into place, so a reader sees no folder or a whole one.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor

from models.adapters.spec import AdapterError, LoraSpec, parse_peft_config
from models.errors import UnsafeFileError
from models.fileio import atomic_write_text, save_safetensors
from models.limits import DEFAULT_LIMITS
from models.safefiles import load_safetensors, read_json

__all__ = [
    "CONFIG_NAME",
    "MAX_CONFIG_BYTES",
    "MAX_WEIGHTS_BYTES",
    "WEIGHTS_NAME",
    "is_adapter_folder",
    "read_adapter_config",
    "read_adapter_folder",
    "write_adapter_folder",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
MAX_CONFIG_BYTES = 1 << 20  # a LoRA config is a few KB
MAX_WEIGHTS_BYTES = 8 << 30  # rank-64 adapters of 70B models stay far below


def _regular_file(folder: Path, name: str, limit: int) -> Path:
    """``folder/name`` if it is a regular file (not a symlink) within ``limit`` bytes."""
    path = folder / name
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise AdapterError(f"{folder}: no {name}") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise AdapterError(f"{path}: must be a regular file inside the folder, not a link")
    if info.st_size > limit:
        raise AdapterError(f"{path}: {info.st_size} bytes, over the limit of {limit}")
    return path


def is_adapter_folder(path: Path) -> bool:
    """Whether ``path`` is a directory (not a link) holding an ``adapter_config.json``."""
    return path.is_dir() and not path.is_symlink() and (path / CONFIG_NAME).is_file()


def read_adapter_config(folder: Path) -> tuple[dict[str, Any], LoraSpec]:
    """The folder's config document and the ``LoraSpec`` it describes (checked)."""
    path = _regular_file(folder, CONFIG_NAME, MAX_CONFIG_BYTES)
    try:
        doc = read_json(path, replace(DEFAULT_LIMITS, max_json_bytes=MAX_CONFIG_BYTES))
    except UnsafeFileError as e:
        raise AdapterError(str(e)) from None
    return doc, parse_peft_config(doc, str(path))


def read_adapter_folder(folder: Path | str) -> tuple[LoraSpec, dict[str, Tensor]]:
    """``(spec, tensors)`` of a PEFT LoRA folder; never unpickles anything."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        raise AdapterError(f"{folder}: not an adapter folder (a directory, not a link)")
    _, spec = read_adapter_config(folder)
    if not (folder / WEIGHTS_NAME).exists() and (folder / PICKLE_NAME).exists():
        raise AdapterError(
            f"{folder}: holds {PICKLE_NAME} (a pickle, which is never loaded here); convert it "
            "with PEFT: PeftModel.from_pretrained(base, folder).save_pretrained(out, "
            "safe_serialization=True), or safetensors.torch.save_file(state_dict, "
            f"'{WEIGHTS_NAME}')"
        )
    path = _regular_file(folder, WEIGHTS_NAME, MAX_WEIGHTS_BYTES)
    try:
        tensors = load_safetensors(path)
    except UnsafeFileError as e:
        raise AdapterError(f"{path}: not a readable .safetensors file ({e})") from None
    return spec, tensors


def write_adapter_folder(
    folder: Path,
    config: Mapping[str, Any],
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str],
) -> tuple[Path, Path]:
    """Write ``folder/adapter_config.json`` and ``folder/adapter_model.safetensors``.

    Built in a temporary sibling and renamed into place (an existing ``folder`` is
    replaced), so no reader ever sees half a folder. Returns (config path, weights path).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        tmp.chmod(0o755)
        save_safetensors(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            tmp / WEIGHTS_NAME,
            {"format": "pt", **metadata},
        )
        atomic_write_text(tmp / CONFIG_NAME, json.dumps(dict(config), indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder / CONFIG_NAME, folder / WEIGHTS_NAME
