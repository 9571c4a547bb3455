"""Generator bundles on disk: `config.json` + `model.safetensors`. No pickle anywhere.

A bundle is what workers load. It is a directory (local, or a Hugging Face Hub repo named
`hf://org/repo[@revision]`) holding a versioned `config.json` and the weights in safetensors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from models.errors import UnsafeFileError
from models.fileio import atomic_write, save_safetensors
from models.limits import DEFAULT_LIMITS, FileLimits
from models.safefiles import load_safetensors, read_json

BUNDLE_FORMAT = "rpg-generator"
BUNDLE_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HF_PREFIX = "hf://"
# config.json's record of the weights' sha256, written at save time and checked at load.
DIGEST_KEY = "weights_sha256"
HEX = frozenset("0123456789abcdef")


class BundleError(ValueError):
    """A bundle is missing, malformed or of an unsupported format version."""


def _hub_download(repo: str, revision: str | None) -> Path:
    """The snapshot folder of one commit of a Hub bundle repo, with only the bundle's files.

    The config is fetched first and names the commit (its snapshot folder is the commit
    id); the weights are then fetched at that commit, never at the branch again, so a push
    between the two downloads cannot pair one commit's config with another's weights.
    """
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BundleError(
            "loading hf:// bundles needs huggingface_hub: pip install 'rpg-service[hub]'"
        ) from exc
    where = f"hf://{repo}" + (f"@{revision}" if revision else "")
    try:
        config_path = Path(hf_hub_download(repo, CONFIG_NAME, revision=revision or None))
        commit = config_path.parent.name
        hf_hub_download(repo, WEIGHTS_NAME, revision=commit)
        # An adapter generator's base, when small enough to travel along.
        with contextlib.suppress(EntryNotFoundError):
            hf_hub_download(repo, "base.safetensors", revision=commit)
    except Exception as exc:  # network, auth, missing repo or file: say which bundle failed
        raise BundleError(
            f"{where}: could not fetch the bundle from the Hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); check the repo id and revision, "
            "HF_TOKEN, or set HF_HUB_OFFLINE=1 to use the local cache"
        ) from None
    return config_path.parent


def parse_hub_id(text: str) -> tuple[str, str | None]:
    """``hf://org/repo[@revision]`` -> ``("org/repo", revision or None)``."""
    repo, _, revision = text[len(HF_PREFIX) :].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise BundleError(f"{text!r}: expected hf://org/repo or hf://org/repo@revision")
    return repo, revision or None


def resolve_bundle(path: str | os.PathLike[str]) -> Path:
    """A local directory for `path`: itself, or a Hub snapshot for `hf://org/repo[@rev]`.

    Hub downloads go through huggingface_hub's cache, honour `HF_HUB_OFFLINE`, and are
    pinned to one commit (`pinned_source` says which).
    """
    text = os.fspath(path)
    if text.startswith(HF_PREFIX):
        return _hub_download(*parse_hub_id(text))
    local_path = Path(text)
    if not local_path.is_dir():
        raise BundleError(
            f"{text}: not a directory; a bundle is a directory with {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    return local_path


def pinned_source(source: str, directory: Path) -> str:
    """``hf://org/repo@<commit>`` for a Hub source resolved to ``directory`` (its snapshot
    folder is named after the commit); a local source unchanged."""
    if not source.startswith(HF_PREFIX):
        return source
    repo, _ = parse_hub_id(source)
    return f"{HF_PREFIX}{repo}@{directory.name}"


def read_config(directory: Path, limits: FileLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Read and check a bundle's config.json (bounded JSON; format name and version)."""
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise BundleError(
            f"{directory}: missing {CONFIG_NAME}; is this a generator bundle (rpg train --out ...)?"
        )
    try:
        config = read_json(config_path, limits)
    except UnsafeFileError as exc:
        raise BundleError(str(exc)) from None
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
    digest = config.get(DIGEST_KEY)
    if digest is not None and not (
        isinstance(digest, str) and len(digest) == 64 and all(c in HEX for c in digest)
    ):
        raise BundleError(f"{config_path}: {DIGEST_KEY!r} must be 64 hex digits, got {digest!r}")
    return config


def read_weights(directory: Path, limits: FileLimits = DEFAULT_LIMITS) -> dict[str, Tensor]:
    """The bundle's weights, header checked, loaded with safetensors (never pickle)."""
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise BundleError(f"{directory}: missing {WEIGHTS_NAME}")
    try:
        return load_safetensors(
            weights_path, limits, max_parameters=limits.max_generator_parameters
        )
    except UnsafeFileError as exc:
        raise BundleError(str(exc)) from None


def check_digest(directory: Path, config: dict[str, Any], digest: str) -> None:
    """Refuse weights whose sha256 differs from the one config.json recorded at save time
    (bundles saved before the digest was recorded have none and pass)."""
    recorded = config.get(DIGEST_KEY)
    if recorded is not None and recorded != digest:
        raise BundleError(
            f"{directory / WEIGHTS_NAME}: sha256 {digest[:12]}... differs from "
            f"{recorded[:12]}... recorded in {CONFIG_NAME}; the weights were changed or "
            "damaged in transit: download the bundle again"
        )


def file_digest(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(directory: Path) -> str:
    """sha256 of the weights file: part of the generator id stamped on every generated file."""
    return file_digest(directory / WEIGHTS_NAME)


def write_bundle(directory: Path, config: dict[str, Any], weights: dict[str, Tensor]) -> None:
    """Write a bundle so that readers never see a half-written file (temp + rename per file).

    The weights go first and the config last, so a directory with a config always has the
    weights that config describes, and their sha256 (checked at load).
    """
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in weights.items()}
    save_safetensors(tensors, directory / WEIGHTS_NAME, {"format": "pt"})
    full = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        **config,
        DIGEST_KEY: weights_digest(directory),
    }
    atomic_write(
        directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(full, indent=2) + "\n")
    )
