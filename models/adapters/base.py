"""The base network of an adapter zoo or generator: architecture, weights, sha256.

The ``adapter`` section of ``zoo.json`` (and of a bundle's ``config.json``) records::

    {"kind": "lora",
     "peft_config": {... plain LoRA adapter_config.json ...},
     "form": "canonical" | "raw",
     "base": {"architecture": {name, builder, kwargs},
              "weights": "base.safetensors" (inside the folder) | "/absolute/path",
              "sha256": "...", "size_bytes": N, "hub_id": "org/name" | null}}

Base weights under ``COPY_LIMIT`` bytes are copied next to the checkpoints; larger ones are
referenced by absolute path. Whichever it is, the sha256 is checked every time they load,
and the architecture's builder follows the same trust rule as any other
(``models.zoo.architecture``).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from models.adapters.spec import (
    AdapterError,
    LoraTarget,
    adapter_layout,
    parse_peft_config,
)
from models.errors import UnsafeFileError
from models.safefiles import load_safetensors, read_safetensors_header
from models.zoo.architecture import build_module, check_spec

__all__ = [
    "BASE_NAME",
    "COPY_LIMIT",
    "FORMS",
    "AdapterBase",
    "check_section",
    "file_sha256",
    "place_base",
]

BASE_NAME = "base.safetensors"
COPY_LIMIT = 100 * 2**20
FORMS = ("canonical", "raw")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_id_of(name: str | None) -> str | None:
    """``name`` if it reads as a Hub model id (``org/name``), not a local path."""
    if name and _HUB_ID.fullmatch(name) and not name.startswith((".", "/")):
        return name
    return None


def check_section(section: Any, where: str) -> None:
    """Check an ``adapter`` section's form (no file is read, no builder imported)."""
    if not isinstance(section, Mapping) or section.get("kind") != "lora":
        raise AdapterError(f"{where}: 'adapter' must be an object with kind 'lora'")
    parse_peft_config(section.get("peft_config"), f"{where} adapter.peft_config")
    if section.get("form") not in FORMS:
        raise AdapterError(f"{where}: adapter.form must be one of {FORMS}")
    base = section.get("base")
    if not isinstance(base, Mapping):
        raise AdapterError(f"{where}: adapter.base must be an object")
    # Deferred: the zoo package imports this module while it initialises.

    check_spec(base.get("architecture"))
    weights = base.get("weights")
    if not isinstance(weights, str) or not weights:
        raise AdapterError(f"{where}: adapter.base.weights must name the base weights file")
    if not Path(weights).is_absolute() and weights != BASE_NAME:
        raise AdapterError(
            f"{where}: adapter.base.weights is {weights!r}; it is {BASE_NAME!r} (inside the "
            "folder) or an absolute path"
        )
    if not isinstance(base.get("sha256"), str) or not _HEX64.fullmatch(base["sha256"]):
        raise AdapterError(f"{where}: adapter.base.sha256 must be 64 lowercase hex digits")
    hub = base.get("hub_id")
    if hub is not None and hub_id_of(hub) is None:
        raise AdapterError(f"{where}: adapter.base.hub_id {hub!r} is not 'org/name'")


def place_base(weights: Path, folder: Path, *, hub_id: str | None = None) -> dict[str, Any]:
    """Copy (small) or reference (large) base weights for ``folder``; the ``base`` entry's
    weights, sha256, size and hub id (the caller adds the architecture)."""
    weights = Path(weights).resolve()
    if weights.suffix != ".safetensors" or not weights.is_file():
        raise AdapterError(
            f"--base-weights {weights}: must be a .safetensors file (a .bin or .pt would be a "
            "pickle: convert it with safetensors.torch.save_file(model.state_dict(), path))"
        )
    digest = file_sha256(weights)
    size = weights.stat().st_size
    if size < COPY_LIMIT:
        shutil.copyfile(weights, folder / BASE_NAME)
        where = BASE_NAME
    else:
        where = str(weights)
    return {"weights": where, "sha256": digest, "size_bytes": size, "hub_id": hub_id_of(hub_id)}


class AdapterBase:
    """An ``adapter`` section read for use: spec, base architecture and (checked) weights.

    ``root`` is the folder the section came from (zoo or bundle): a relative weights name is
    resolved inside it. ``trust_builders`` is what the person running the command trusts.
    """

    def __init__(
        self, section: Mapping[str, Any], root: Path, *, trust_builders: Iterable[str] = ()
    ) -> None:
        check_section(section, str(root))
        self.section = dict(section)
        self.spec = parse_peft_config(section["peft_config"], "adapter.peft_config")
        self.form = str(section["form"])
        self.base_entry = dict(section["base"])
        self.architecture = dict(self.base_entry["architecture"])
        self.root = root
        self.trust_builders = tuple(trust_builders)

    @property
    def weights_path(self) -> Path:
        """Where the base weights are (inside ``root`` or the recorded absolute path)."""
        name = self.base_entry["weights"]
        return self.root / name if name == BASE_NAME else Path(name)

    @property
    def hub_id(self) -> str | None:
        """The base's Hub id, when it has one (model cards name it as ``base_model``)."""
        return hub_id_of(self.base_entry.get("hub_id"))

    def build_module(self) -> nn.Module:
        """A fresh base module (its builder must be the project's or trusted)."""

        return build_module(self.architecture, trust_builders=self.trust_builders)

    def state_dict(self) -> dict[str, Tensor]:
        """The base weights, after checking their sha256 against the recorded one."""
        path = self.weights_path
        if not path.is_file():
            raise AdapterError(
                f"base weights {path} are missing; the adapter section records them there "
                f"(sha256 {self.base_entry['sha256'][:12]}...)"
            )
        try:  # a safetensors file at all? (checked before reading the whole file to hash it)
            read_safetensors_header(path)
        except UnsafeFileError as e:
            raise AdapterError(f"base weights {path}: not readable safetensors ({e})") from None
        actual = file_sha256(path)
        if actual != self.base_entry["sha256"]:
            raise AdapterError(
                f"base weights {path} have sha256 {actual[:12]}..., but "
                f"{self.base_entry['sha256'][:12]}... was recorded: these adapters were made "
                "for other weights"
            )
        try:
            return load_safetensors(path)
        except UnsafeFileError as e:
            raise AdapterError(f"base weights {path}: not readable safetensors ({e})") from None

    def layout(self, module: nn.Module | None = None) -> list[LoraTarget]:
        """The adapted layers of the base."""
        return adapter_layout(module if module is not None else self.build_module(), self.spec)
