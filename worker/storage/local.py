"""The ``local`` backend: files under ``<data_dir>/files``, served by the gateway via signed URLs."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from worker.signing import files_root, resolve_local_path, signed_url
from worker.storage.base import (
    LocalSettings,
    Storage,
    StorageConfigError,
    StorageError,
    refuse_version,
    validate_key,
)

__all__ = ["LocalStorage"]

MIN_SECRET_LENGTH = 16


class LocalStorage(Storage):
    """Stores each key at ``<data_dir>/files/<key>``, written atomically.

    A file appears under its final name only once complete and flushed to disk (copy to a
    hidden temp file in the same directory, fsync, rename), so a reader never sees a
    partial file. `url` returns an HMAC-signed, expiring gateway URL (see `worker.signing`).
    """

    name = "local"

    def __init__(self, settings: LocalSettings) -> None:
        if not settings.secret or len(settings.secret) < MIN_SECRET_LENGTH:
            raise StorageConfigError(
                f"the local storage URL secret must have at least {MIN_SECRET_LENGTH} characters; "
                "generate one with `python -c 'import secrets; print(secrets.token_hex(32))'` and "
                "give the same value to the gateway and every worker"
            )
        if settings.url_ttl_s <= 0:
            raise StorageConfigError(
                f"url_ttl_s must be a positive number of seconds, got {settings.url_ttl_s}"
            )
        if not settings.public_base_url.startswith(("http://", "https://")):
            raise StorageConfigError(
                f"public_base_url must be the gateway's http(s) address as clients see it, "
                f"e.g. 'http://127.0.0.1:8000'; got {settings.public_base_url!r}"
            )
        self._settings = settings
        self.root = files_root(settings.data_dir)

    def put(self, local_path: Path, key: str) -> None:
        """Copy ``local_path`` to ``<data_dir>/files/<key>`` atomically, replacing any old file."""
        validate_key(key)
        source = Path(local_path)
        if not source.is_file():
            raise StorageError(f"cannot store {str(source)!r} as {key!r}: it is not a regular file")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # Resolving after the root exists also refuses keys whose parents are symlinks out.
            destination = resolve_local_path(self._settings.data_dir, key)
            destination.parent.mkdir(parents=True, exist_ok=True)
            _atomic_copy(source, destination)
        except OSError as exc:
            raise StorageError(
                f"local storage could not write {key!r} under {str(self.root)!r}: {exc}"
            ) from exc

    def url(self, key: str, *, version: str | None = None) -> str:
        """A gateway URL for ``key`` that expires after ``url_ttl_s`` seconds."""
        refuse_version(self.name, version)
        validate_key(key)
        return signed_url(
            self._settings.public_base_url, key, self._settings.secret, self._settings.url_ttl_s
        )

    def delete_many(self, keys: Sequence[str], *, version: str | None = None) -> None:
        """Unlink each key's file, then its folder once empty; signed URLs then answer 404."""
        refuse_version(self.name, version)
        folders: set[Path] = set()
        for key in keys:
            validate_key(key)
            path = resolve_local_path(self._settings.data_dir, key)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise StorageError(f"local storage could not delete {key!r}: {exc}") from exc
            # Up to the key's own top folder (jobs/<id>, never jobs/ that other jobs share):
            # an adapter job's files sit one level deeper, in jobs/<id>/sample_000/.
            folders.update(
                p
                for p in path.parents
                if p.is_relative_to(self.root) and len(p.relative_to(self.root).parts) >= 2
            )
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):  # deepest first
            with contextlib.suppress(OSError):  # not empty (other files): keep it
                folder.rmdir()


def _atomic_copy(source: Path, destination: Path) -> None:
    """Copy into a temp file next to ``destination``, fsync it, then rename over it."""
    # The temp name starts with '.', which no valid key segment does: it is never served.
    fd, temp_name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent
    )
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out, length=1024 * 1024)
            out.flush()
            # mkstemp creates 0600; the gateway may run as another user of the same group.
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
        os.replace(temp_name, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_directory(destination.parent)


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself; a no-op where directories cannot be opened (Windows)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
