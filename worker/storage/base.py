"""The storage interface every backend implements, its settings, errors and key rules.

Exceptions (one hierarchy; every backend raises only these):

    StorageError                      base: an upload or URL could not be made (IO, network, remote refusal)
    ├── StorageKeyError(ValueError)   a key breaks the key rules, or would resolve outside the storage root
    └── StorageConfigError(ValueError) settings are missing or wrong, or an optional dependency is missing

Keys are relative POSIX paths such as ``jobs/<job_id>/sample_000.safetensors``: segments
separated by single ``/``, each starting with a letter, digit or ``_`` and made of letters,
digits, ``.``, ``_`` and ``-``. So no ``..``, no absolute paths, no backslashes, no empty
segments, no hidden files, and nothing that needs URL quoting.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "HubSettings",
    "LocalSettings",
    "PutResult",
    "S3Settings",
    "Storage",
    "StorageConfigError",
    "StorageError",
    "StorageKeyError",
    "StorageSettings",
    "validate_key",
]


class StorageError(Exception):
    """An upload or URL could not be made; the message names the backend, key and cause."""


class StorageKeyError(StorageError, ValueError):
    """A storage key breaks the key rules (see the module docstring) or escapes the root."""


class StorageConfigError(StorageError, ValueError):
    """Storage settings are missing or invalid, or the backend's package is not installed."""


MAX_KEY_LENGTH = 512
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")
_KEY_HELP = (
    "keys are relative paths like 'jobs/<job_id>/sample_000.safetensors': segments joined by "
    "single '/', each starting with a letter, digit or '_' and made of letters, digits, '.', '_', '-'"
)


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it follows the key rules, else raise `StorageKeyError`.

    Checked before any filesystem or network use, so a bad key never reaches a backend.
    """
    if not isinstance(key, str):
        raise StorageKeyError(f"storage key must be a str, got {type(key).__name__}; {_KEY_HELP}")
    if not key:
        raise StorageKeyError(f"storage key is empty; {_KEY_HELP}")
    if len(key) > MAX_KEY_LENGTH:
        raise StorageKeyError(
            f"storage key has {len(key)} characters; the limit is {MAX_KEY_LENGTH}. Use shorter names."
        )
    if "\\" in key:
        raise StorageKeyError(f"storage key {key!r} contains a backslash; use '/'. {_KEY_HELP}")
    if key.startswith("/"):
        raise StorageKeyError(f"storage key {key!r} is absolute; drop the leading '/'. {_KEY_HELP}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            shown = "an empty segment" if not segment else f"a {segment!r} segment"
            raise StorageKeyError(f"storage key {key!r} has {shown}; {_KEY_HELP}")
        if not _SEGMENT.fullmatch(segment):
            raise StorageKeyError(
                f"storage key {key!r} has an invalid segment {segment!r}; {_KEY_HELP}"
            )
    return key


def validate_batch(files: Sequence[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Check a whole batch (keys valid and unique, sources are files) before uploading any of it."""
    checked: list[tuple[Path, str]] = []
    seen: set[str] = set()
    for local_path, key in files:
        validate_key(key)
        if key in seen:
            raise StorageKeyError(
                f"storage key {key!r} appears twice in one batch; keys must be unique"
            )
        seen.add(key)
        path = Path(local_path)
        if not path.is_file():
            raise StorageError(f"cannot upload {str(path)!r} as {key!r}: it is not a regular file")
        checked.append((path, key))
    return checked


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks so large files never sit in memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PutResult:
    """What a batch upload produced.

    ``version`` is the revision the URLs are pinned to: the commit id for the ``hub``
    backend, ``None`` for backends without versions. Store it beside the keys (e.g. in the
    job manifest) and pass it back to `Storage.url` from any process.
    """

    keys: tuple[str, ...]
    version: str | None = None


class Storage(Protocol):
    """Where generated files go and how clients fetch them.

    Backends subclass this protocol explicitly to inherit the default `put_many`.
    """

    name: str

    def put(self, local_path: Path, key: str) -> None:
        """Upload one file under ``key`` (e.g. ``jobs/<job_id>/sample_000.safetensors``)."""
        ...

    def url(self, key: str, *, version: str | None = None) -> str:
        """A URL a client can GET for ``key``: signed and expiring where the backend supports it.

        ``version`` is the `PutResult.version` of the upload; backends without versions
        accept only ``None``.
        """
        ...

    def put_many(
        self,
        files: Sequence[tuple[Path, str]],
        *,
        message: str = "",
        generation: Mapping[str, Any] | None = None,
    ) -> PutResult:
        """Upload a job's files as one unit; `url` works for each key afterwards.

        ``message`` describes the upload (the hub's commit message); ``generation`` holds
        the settings that produced the files (the hub writes them into the model card).
        The default puts each file in turn and ignores both.
        """
        checked = validate_batch(files)
        for local_path, key in checked:
            self.put(local_path, key)
        return PutResult(keys=tuple(key for _, key in checked))

    def delete_many(self, keys: Sequence[str], *, version: str | None = None) -> None:
        """Remove a job's files (all of ``keys``, as uploaded together); missing ones are fine.

        Afterwards `url` no longer serves them (for ``hub``: see `HubStorage.delete_many`).
        """
        ...


def refuse_version(backend: str, version: str | None) -> None:
    """Raise if a version is passed to a backend that keeps none (a sign of mixed-up backends)."""
    if version is not None:
        raise StorageError(
            f"the {backend!r} backend keeps no versions but got version={version!r}; this key was "
            "probably uploaded through another backend (e.g. 'hub'): configure that backend to serve it"
        )


# --- settings: plain dataclasses, filled from the process's one Settings object ----------------


@dataclass(frozen=True)
class LocalSettings:
    """Options of the ``local`` backend.

    Files live under ``<data_dir>/files/<key>``; URLs are
    ``{public_base_url}/files/{key}?expires=<unix>&sig=<hex>``, served by the gateway.
    ``secret`` must be shared by workers and gateway (at least 16 characters).
    """

    data_dir: Path
    secret: str
    public_base_url: str = "http://127.0.0.1:8000"
    url_ttl_s: int = 3600


@dataclass(frozen=True)
class S3Settings:
    """Options of the ``s3`` backend (AWS S3, MinIO and other S3-compatible stores).

    ``endpoint_url`` is where the worker talks to the store (``None``: AWS); URLs are
    signed for ``public_endpoint_url`` (``None``: the same as ``endpoint_url``), the address
    clients use. Credentials left ``None`` come from boto3's default chain (env, config
    files, instance roles). MinIO needs ``addressing_style="path"``.
    """

    bucket: str
    endpoint_url: str | None = None
    public_endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    key_prefix: str = ""
    url_ttl_s: int = 3600
    create_bucket: bool = False


@dataclass(frozen=True)
class HubSettings:
    """Options of the ``hub`` backend (the Hugging Face Hub or a compatible server).

    ``endpoint`` ``None`` means ``HF_ENDPOINT`` or https://huggingface.co; ``token`` ``None``
    means ``HF_TOKEN`` or the saved login. Files go to ``<path_prefix>/<key>`` in ``repo_id``
    on branch ``revision``; URLs are pinned to each upload's commit. Private repos need a
    token to download, so clients of a private repo must authenticate themselves.
    """

    repo_id: str
    endpoint: str | None = None
    token: str | None = None
    repo_type: Literal["model", "dataset"] = "model"
    private: bool = False
    create_repo: bool = True
    revision: str = "main"
    path_prefix: str = ""
    library_name: str = "pytorch"
    tags: tuple[str, ...] = ("rpg", "generated-weights")


@dataclass(frozen=True)
class StorageSettings:
    """Which backend to use and its options; only the chosen backend's section is read."""

    backend: Literal["local", "s3", "hub"] = "local"
    local: LocalSettings | None = None
    s3: S3Settings | None = None
    hub: HubSettings | None = None
