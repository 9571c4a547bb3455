"""Optional API keys: ``Authorization: Bearer <key>``, stored only as sha256 hashes.

Operators put ``name:sha256hex`` entries in ``RPG_API_KEY_HASHES`` (``rpg keys create NAME``
prints a fresh key and its entry). With no entries, the API is open and every job has owner
``None``. With entries, every request except the public endpoints needs a key, and the key's
*name* becomes the owner of the jobs it creates: a key sees only its own jobs.

A key is long and random, so one sha256 (no salt, no slow hash) is enough: there is nothing
to brute-force. Each presented key is compared with every stored hash in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = ["ApiKeyring", "KeyringError", "hash_key", "new_key"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
KEY_PREFIX = "rpg_"


class KeyringError(ValueError):
    """An ``RPG_API_KEY_HASHES`` entry is malformed."""


def hash_key(key: str) -> str:
    """Lowercase hex sha256 of a key, as stored in ``RPG_API_KEY_HASHES``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(name: str) -> tuple[str, str]:
    """A fresh random key and its ``name:sha256hex`` entry. Show the key once; store the entry."""
    check_name(name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, f"{name}:{hash_key(key)}"


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid key name (1-64 of letters, digits, '.', '_', '-')."""
    if not _NAME.fullmatch(name):
        raise KeyringError(
            f"invalid API key name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class ApiKeyring:
    """The configured keys: ``(name, sha256 digest)`` pairs."""

    entries: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def parse(cls, lines: list[str]) -> ApiKeyring:
        """From ``["name:sha256hex", ...]``; raises `KeyringError` naming the bad entry."""
        entries: list[tuple[str, bytes]] = []
        names: set[str] = set()
        for position, line in enumerate(lines):
            name, sep, digest = line.strip().partition(":")
            if not sep or not _HEX64.fullmatch(digest.lower()):
                raise KeyringError(
                    f"RPG_API_KEY_HASHES entry {position} is not 'name:sha256hex' (64 hex "
                    "characters); make one with `rpg keys create NAME`"
                )
            check_name(name)
            if name in names:
                raise KeyringError(
                    f"RPG_API_KEY_HASHES names {name!r} twice; give every key its own name"
                )
            names.add(name)
            entries.append((name, bytes.fromhex(digest)))
        return cls(tuple(entries))

    @property
    def enabled(self) -> bool:
        """Whether requests must carry a key."""
        return bool(self.entries)

    def identify(self, key: str) -> str | None:
        """The name of the key, or None when it matches no entry."""
        presented = hashlib.sha256(key.encode("utf-8")).digest()
        found: str | None = None
        # Compare against every entry (no early exit) so timing does not reveal which matched.
        for name, digest in self.entries:
            if hmac.compare_digest(presented, digest):
                found = name
        return found
