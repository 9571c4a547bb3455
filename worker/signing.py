"""HMAC-signed, expiring download URLs for the ``local`` storage backend.

A URL ``{base}/files/{key}?expires=<unix>&sig=<hex>`` carries
``sig = HMAC-SHA256(secret, f"{key}\\n{expires}")`` in lowercase hex. The worker signs
(`signed_url`); the gateway serves ``GET /files/{key}`` with exactly two calls::

    verify(key, expires, sig, secret)        # raises SignatureError: 403 (or 410 when expired)
    path = resolve_local_path(data_dir, key)  # raises StorageKeyError: 404; then open `path`

Exceptions::

    SignatureError                 base: the URL does not grant access
    ├── SignatureInvalidError      missing, malformed or wrong signature (tampered key/expires/sig)
    └── SignatureExpiredError      authentic but past its expiry time
    StorageKeyError                (from worker.storage) the key is malformed or escapes the files root
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from pathlib import Path

from worker.storage.base import StorageKeyError, validate_key

__all__ = [
    "SignatureError",
    "SignatureExpiredError",
    "SignatureInvalidError",
    "StorageKeyError",
    "files_root",
    "resolve_local_path",
    "sign",
    "signed_url",
    "verify",
]

_HEX_SIG = re.compile(r"[0-9a-f]{64}")
# Unix seconds as plain digits: no sign, no spaces, no exponent, bounded so int() stays cheap.
_EXPIRES = re.compile(r"[0-9]{1,12}")


class SignatureError(Exception):
    """A signed URL does not grant access."""


class SignatureInvalidError(SignatureError):
    """The signature is missing, malformed, or does not match the key and expiry."""


class SignatureExpiredError(SignatureError):
    """The signature is authentic but its expiry time has passed."""


def _secret_bytes(secret: str | bytes) -> bytes:
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise ValueError("the URL signing secret is empty; set a long random secret")
    return raw


def sign(key: str, expires: int, secret: str | bytes) -> str:
    """Hex HMAC-SHA256 of ``f"{key}\\n{expires}"`` under ``secret``."""
    message = f"{key}\n{int(expires)}".encode()
    return hmac.new(_secret_bytes(secret), message, hashlib.sha256).hexdigest()


def signed_url(
    base_url: str, key: str, secret: str | bytes, ttl_s: int, now: float | None = None
) -> str:
    """``{base_url}/files/{key}?expires=..&sig=..``, valid for ``ttl_s`` seconds from ``now``.

    Keys follow the storage key rules, so they need no URL quoting.
    """
    validate_key(key)
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s}")
    issued = time.time() if now is None else now
    expires = int(issued) + int(ttl_s)
    return f"{base_url.rstrip('/')}/files/{key}?expires={expires}&sig={sign(key, expires, secret)}"


def verify(
    key: str, expires: int | str, sig: str, secret: str | bytes, now: float | None = None
) -> None:
    """Return if ``sig`` authorizes ``key`` until ``expires``; raise `SignatureError` otherwise.

    ``expires`` and ``sig`` may come straight from the query string. The signature is
    checked (in constant time) before the expiry, so a forged URL never learns whether its
    time has passed.
    """
    if isinstance(expires, str):
        if not _EXPIRES.fullmatch(expires):
            raise SignatureInvalidError("'expires' must be a unix time in whole seconds")
        expires_at = int(expires)
    elif isinstance(expires, int) and not isinstance(expires, bool) and expires >= 0:
        expires_at = expires
    else:
        raise SignatureInvalidError("'expires' must be a unix time in whole seconds")
    if not isinstance(sig, str) or not _HEX_SIG.fullmatch(sig):
        raise SignatureInvalidError("'sig' must be 64 lowercase hex characters")
    expected = sign(key, expires_at, secret)
    if not hmac.compare_digest(expected, sig):
        raise SignatureInvalidError("signature does not match this file and expiry time")
    current = time.time() if now is None else now
    if current > expires_at:
        raise SignatureExpiredError("this download link has expired; ask the API for a fresh one")


def files_root(data_dir: str | Path) -> Path:
    """The directory that holds the ``local`` backend's files: ``<data_dir>/files``."""
    return Path(data_dir) / "files"


def resolve_local_path(data_dir: str | Path, key: str) -> Path:
    """The absolute path of ``key`` under ``<data_dir>/files``, refusing any escape.

    The key must follow the storage key rules; the path is then fully resolved (symlinks
    included) and must stay inside the resolved files root, so neither ``..`` nor a
    symlink pointing outside can reach other files. The file need not exist: callers check.
    """
    validate_key(key)
    root = files_root(data_dir).resolve()
    try:
        candidate = (root / key).resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops raise one or the other by version
        raise StorageKeyError(f"storage key {key!r} cannot be resolved: {exc}") from exc
    if not candidate.is_relative_to(root):
        raise StorageKeyError(
            f"storage key {key!r} resolves outside the files root {str(root)!r} (a symlink?); refused"
        )
    return candidate
