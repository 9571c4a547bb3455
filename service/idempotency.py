"""``Idempotency-Key`` for ``POST /generate``: a retried request returns the job it created.

Per (owner, key) Redis holds ``{"fingerprint": <sha256 of the request>, "job_id": ...}``:

- first request: ``SET NX`` claims the key (``job_id`` null, short TTL), the job is enqueued,
  then the key records the job id for ``ttl_s``; if enqueueing fails the claim is dropped so
  the client can retry with the same key;
- a retry with the same body: the recorded job (the gateway answers 200, not 202, plus
  ``Idempotent-Replayed: true``); while the first request is still enqueueing, it waits a
  moment for the id (concurrent duplicates all get the same job);
- the same key with a different body: `IdempotencyMismatch` (422).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

import redis

__all__ = [
    "IdempotencyError",
    "IdempotencyInProgress",
    "IdempotencyMismatch",
    "IdempotencyStore",
    "InvalidIdempotencyKey",
    "fingerprint",
]

KEY_PATTERN = r"[\x21-\x7e]{1,255}"  # printable ASCII, no spaces (stated in the OpenAPI doc)
_KEY = re.compile(KEY_PATTERN)


class IdempotencyError(Exception):
    """Base: an ``Idempotency-Key`` cannot be honoured as sent."""


class InvalidIdempotencyKey(IdempotencyError):
    """The header value is empty, too long, or has characters outside printable ASCII."""


class IdempotencyMismatch(IdempotencyError):
    """The key was already used with a different request body."""


class IdempotencyInProgress(IdempotencyError):
    """The first request with this key is still being processed; retry shortly."""


def fingerprint(document: Any) -> str:
    """sha256 of a JSON document in canonical form (sorted keys, no spaces)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyStore:
    """Idempotency records in Redis, scoped by owner."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl_s: int,
        claim_ttl_s: int = 60,
        wait_s: float = 5.0,
        prefix: str = "rpg:idempotency:",
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.claim_ttl_s = claim_ttl_s
        self.wait_s = wait_s
        self.prefix = prefix

    def redis_key(self, owner: str | None, key: str) -> str:
        """Where the record for (owner, key) lives; the key is hashed to bound its size."""
        if not _KEY.fullmatch(key):
            raise InvalidIdempotencyKey(
                "Idempotency-Key must be 1-255 printable ASCII characters without spaces, "
                "e.g. a UUID"
            )
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.prefix}{owner or '-'}:{digest}"

    def begin(self, owner: str | None, key: str, request_fingerprint: str) -> str | None:
        """Claim ``key`` for a new job (None) or return the job id it already names.

        Raises `IdempotencyMismatch` when the key was used for another body and
        `IdempotencyInProgress` when its first request has not finished within ``wait_s``.
        """
        rkey = self.redis_key(owner, key)
        claim = json.dumps({"fingerprint": request_fingerprint, "job_id": None})
        deadline = time.monotonic() + self.wait_s
        while True:
            if self.client.set(rkey, claim, nx=True, ex=self.claim_ttl_s):
                return None
            raw = self.client.get(rkey)
            if raw is None:  # expired or released between SET and GET: try to claim again
                continue
            record = json.loads(raw)
            if record.get("fingerprint") != request_fingerprint:
                raise IdempotencyMismatch(
                    "this Idempotency-Key was already used with a different request body; "
                    "send the original body to get its job, or use a new key for a new request"
                )
            if record.get("job_id"):
                return str(record["job_id"])
            if time.monotonic() > deadline:
                raise IdempotencyInProgress(
                    "the first request with this Idempotency-Key is still being processed; "
                    "retry in a second"
                )
            time.sleep(0.02)

    def complete(self, owner: str | None, key: str, request_fingerprint: str, job_id: str) -> None:
        """Record the job the claimed key created (kept ``ttl_s`` seconds)."""
        record = json.dumps({"fingerprint": request_fingerprint, "job_id": job_id})
        self.client.set(self.redis_key(owner, key), record, ex=self.ttl_s)

    def release(self, owner: str | None, key: str) -> None:
        """Drop a claim whose job could not be created, so the client may retry with the key."""
        self.client.delete(self.redis_key(owner, key))
