"""Generator bundles on disk: `config.json` + `model.safetensors`. No pickle anywhere.

A bundle is what workers load. It is a directory (local, or a Hugging Face Hub repo named
`hf://org/repo[@revision]`) holding a versioned `config.json` and the weights in safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import Tensor

from models.fileio import atomic_write, save_safetensors

BUNDLE_FORMAT = "rpg-generator"
BUNDLE_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HF_PREFIX = "hf://"


class BundleError(ValueError):
    """A bundle is missing, malformed or of an unsupported format version."""


def resolve_bundle(path: str | os.PathLike[str]) -> Path:
    """A local directory for `path`: itself, or a Hub snapshot for `hf://org/repo[@rev]`.

    Hub downloads go through huggingface_hub's cache and honour `HF_HUB_OFFLINE`.
    """
    text = os.fspath(path)
    if text.startswith(HF_PREFIX):
        repo, _, revision = text[len(HF_PREFIX) :].partition("@")
        if repo.count("/") != 1:
            raise BundleError(f"{text!r}: expected hf://org/repo or hf://org/repo@revision")
        try:
            from huggingface_hub import snapshot_download
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BundleError(
                "loading hf:// bundles needs huggingface_hub: pip install 'rpg-service[hub]'"
            ) from exc
        local = snapshot_download(
            repo,
            revision=revision or None,
            # base.safetensors: an adapter generator's base, when small enough to travel along
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "base.safetensors"],
        )
        return Path(local)
    local_path = Path(text)
    if not local_path.is_dir():
        raise BundleError(
            f"{text}: not a directory; a bundle is a directory with {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    return local_path


def read_config(directory: Path) -> dict[str, Any]:
    """Read and check a bundle's config.json (format name and version)."""
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise BundleError(
            f"{directory}: missing {CONFIG_NAME}; is this a generator bundle (rpg train --out ...)?"
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{config_path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{config_path}: not an RPG generator config (expected format {BUNDLE_FORMAT!r})"
        )
    version = config.get("version")
    if version != BUNDLE_VERSION:
        raise BundleError(
            f"{config_path}: bundle format version {version!r} is not supported by this release "
            f"(supports {BUNDLE_VERSION}); upgrade rpg-service or re-export the bundle"
        )
    return config


def read_weights(directory: Path) -> dict[str, Tensor]:
    """The bundle's weights, loaded with safetensors (never pickle)."""
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise BundleError(f"{directory}: missing {WEIGHTS_NAME}")
    return load_file(weights_path)


def weights_digest(directory: Path) -> str:
    """sha256 of the weights file: part of the generator id stamped on every generated file."""
    digest = hashlib.sha256()
    with open(directory / WEIGHTS_NAME, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(directory: Path, config: dict[str, Any], weights: dict[str, Tensor]) -> None:
    """Write a bundle so that readers never see a half-written file (temp + rename per file).

    The weights go first and the config last, so a directory with a config always has the
    weights that config describes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    full = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, **config}
    tensors = {name: t.detach().contiguous().cpu() for name, t in weights.items()}
    save_safetensors(tensors, directory / WEIGHTS_NAME, {"format": "pt"})
    atomic_write(
        directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(full, indent=2) + "\n")
    )
