"""`Gateway`: everything a gateway process builds once from `GatewaySettings` and shares per request."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import redis
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from models.limits import FileLimits
from service.auth import ApiKeyring
from service.catalog import Catalog
from service.idempotency import IdempotencyStore
from service.metrics import GatewayMetrics, QueueState
from service.ratelimit import RateLimiter
from service.settings import GatewaySettings
from worker.queue import live_workers, queue_depth, read_job_stats
from worker.queue.keys import redis_url
from worker.queue.operations import AsyncSubmitter
from worker.registry import SkippedGenerator, survey_generators
from worker.storage import Storage, make_storage

__all__ = ["Gateway", "build_gateway"]

PROBE_TIMEOUT_S = 1.0

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """The gateway's long-lived objects (one per process)."""

    settings: GatewaySettings
    redis: Redis
    aredis: AsyncRedis  # the same server, for the hot path on the event loop
    submitter: AsyncSubmitter  # POST /generate's enqueue, on the event loop
    probe: Redis  # fails fast (no retries, short timeouts): /readyz and /metrics
    catalog: Catalog
    keyring: ApiKeyring
    limiter: RateLimiter
    idempotency: IdempotencyStore
    metrics: GatewayMetrics
    storage: Storage
    signing_secret: str | None
    # Configured bundles this gateway does not serve, and why (`/readyz` lists them).
    skipped_generators: tuple[SkippedGenerator, ...] = ()

    def queue_state(self) -> tuple[int, int]:
        """(queued jobs, live workers), read through the fast-failing client."""
        depth, workers, _ = _queue_state(self.probe, self.settings)
        return depth, workers

    def close(self) -> None:
        """Release Redis connections."""
        self.probe.close()
        self.redis.close()

    async def aclose(self) -> None:
        """Release the async client's connections (on the loop that used them)."""
        await self.aredis.aclose()


def _queue_state(probe: redis.Redis, settings: GatewaySettings) -> QueueState:
    return (
        queue_depth(probe),
        len(live_workers(probe, settings=settings)),
        read_job_stats(probe),
    )


def _probe_client(client: redis.Redis) -> redis.Redis:
    """A client to the same server that gives up at once: a health check must not hang."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(
        socket_timeout=PROBE_TIMEOUT_S,
        socket_connect_timeout=PROBE_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )
    return redis.Redis(
        connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    )


def build_gateway(settings: GatewaySettings) -> Gateway:
    """Connect to Redis, read the generator configs and the keys, make the storage backend.

    Raises on bad configuration (malformed key hashes, two bundles with one name) so a
    misconfigured gateway stops at start instead of failing requests. A bundle that cannot
    be served (a file from elsewhere: malformed, over a limit, config and weights that
    disagree) is skipped, logged and listed by `/readyz`; the others are served.
    """
    keyring = ApiKeyring.parse(list(settings.api_key_hashes))
    survey = survey_generators(settings.generators, FileLimits.from_settings(settings))
    for entry in survey.skipped:
        log.error("generator %s skipped: %s", entry.path, entry.reason)
    catalog = Catalog.from_sources(survey.sources)
    storage = make_storage(settings.storage_settings())
    secret = settings.resolved_signing_secret() if settings.storage == "local" else None
    url = redis_url(settings)
    client = redis.Redis.from_url(url)
    # redis.asyncio retries only the errors named in retry_on_error (none by default): after a
    # Redis restart every pooled connection is stale, and each request that drew one got a
    # 503 although Redis was back. One quick retry on a fresh connection fixes that.
    aclient = AsyncRedis.from_url(
        url,
        retry=AsyncRetry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    probe = _probe_client(client)
    return Gateway(
        settings=settings,
        redis=client,
        aredis=aclient,
        submitter=AsyncSubmitter(client, aclient),
        probe=probe,
        catalog=catalog,
        keyring=keyring,
        limiter=RateLimiter(client, settings.rate_limit_per_minute, async_client=aclient),
        idempotency=IdempotencyStore(client, ttl_s=settings.idempotency_ttl_s),
        metrics=GatewayMetrics(partial(_queue_state, probe, settings)),
        storage=storage,
        signing_secret=secret,
        skipped_generators=survey.skipped,
    )
