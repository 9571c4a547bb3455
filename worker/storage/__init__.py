"""Storage backends for generated files: ``local`` (default), ``s3`` and ``hub``.

Build one with `make_storage`; all backends follow `Storage` and raise only `StorageError`
and its subclasses (hierarchy in `worker.storage.base`). The ``s3`` and ``hub`` modules
import their optional packages (boto3, huggingface_hub) only when chosen.
"""

from __future__ import annotations

from worker.storage.base import (
    HubSettings,
    LocalSettings,
    PutResult,
    S3Settings,
    Storage,
    StorageConfigError,
    StorageError,
    StorageKeyError,
    StorageSettings,
    validate_key,
)

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
    "make_storage",
    "validate_key",
]


def make_storage(settings: StorageSettings) -> Storage:
    """The backend ``settings.backend`` names, built from its section of ``settings``."""
    backend = settings.backend
    if backend == "local":
        if settings.local is None:
            raise StorageConfigError(
                "storage backend 'local' needs StorageSettings.local (data_dir and URL secret)"
            )
        from worker.storage.local import LocalStorage

        return LocalStorage(settings.local)
    if backend == "s3":
        if settings.s3 is None:
            raise StorageConfigError(
                "storage backend 's3' needs StorageSettings.s3 (at least the bucket name)"
            )
        from worker.storage.s3 import S3Storage

        return S3Storage(settings.s3)
    if backend == "hub":
        if settings.hub is None:
            raise StorageConfigError(
                "storage backend 'hub' needs StorageSettings.hub (at least repo_id)"
            )
        from worker.storage.hub import HubStorage

        return HubStorage(settings.hub)
    raise StorageConfigError(f"unknown storage backend {backend!r}; choose 'local', 's3' or 'hub'")
