"""Per-client rate limit for ``POST /generate``, kept in Redis so it holds across gateway replicas.

The limiter is GCRA (the generic cell rate algorithm, a leaky bucket stored as one
timestamp): a client may send ``per_minute`` requests at once, then one every
``60 / per_minute`` seconds. It runs as one Lua script, so concurrent requests on many
replicas never double-spend, and it reads Redis's clock, so replicas need not agree on time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis
import redis.asyncio

__all__ = ["RateDecision", "RateLimiter"]

# KEYS[1] = bucket key; ARGV[1] = microseconds between requests; ARGV[2] = burst (requests
# at once). Returns {allowed (0/1), microseconds until a request would be allowed}.
# Times are microseconds in Lua doubles: exact up to 2^53 us (about 285 years of unix time).
_GCRA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, 0}
"""


@dataclass(frozen=True)
class RateDecision:
    """Whether a request may proceed and, if not, how long to wait (whole seconds)."""

    allowed: bool
    retry_after_s: int


class RateLimiter:
    """``per_minute`` requests per client identity, shared by every gateway on one Redis."""

    def __init__(
        self,
        client: redis.Redis,
        per_minute: int,
        *,
        prefix: str = "rpg:ratelimit:",
        async_client: redis.asyncio.Redis | None = None,
    ):
        if per_minute < 1:
            raise ValueError(f"per_minute must be >= 1, got {per_minute}")
        self.per_minute = per_minute
        self.prefix = prefix
        self._interval_us = max(1, round(60_000_000 / per_minute))
        self._script = client.register_script(_GCRA)
        # The gateway counts on its event loop (no thread hop per request) when it has one.
        self._async_script = async_client.register_script(_GCRA) if async_client else None

    def hit(self, identity: str) -> RateDecision:
        """Count one request by ``identity`` (an API key name or a client address)."""
        allowed, wait_us = self._script(
            keys=[self.prefix + identity], args=[self._interval_us, self.per_minute]
        )
        return self._decision(allowed, wait_us)

    async def hit_async(self, identity: str) -> RateDecision:
        """`hit` on the async client (falls back to `hit` when there is none)."""
        if self._async_script is None:
            return self.hit(identity)
        allowed, wait_us = await self._async_script(
            keys=[self.prefix + identity], args=[self._interval_us, self.per_minute]
        )
        return self._decision(allowed, wait_us)

    @staticmethod
    def _decision(allowed: object, wait_us: object) -> RateDecision:
        if int(str(allowed)):
            return RateDecision(True, 0)
        return RateDecision(False, max(1, math.ceil(int(str(wait_us)) / 1_000_000)))
