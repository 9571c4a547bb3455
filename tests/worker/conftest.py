"""Fixtures for worker tests: settings pointing at the test Redis, a warm generator cache,
and an in-process burst worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import torch

from worker.registry import GeneratorCache, discover_generators
from worker.settings import Settings

SECRET = "test-secret-0123456789abcdef"


# The reaper reaps nothing while Redis is younger than its restart grace (a heartbeat TTL plus
# the reconnect wait: 2.6 s with these tests' 0.2 s heartbeats); a session's fresh server is
# given that long before the first test uses it.
FRESH_SERVER_S = 3


@pytest.fixture
def connection(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the (flushed) test Redis, at least FRESH_SERVER_S seconds old."""
    client = redis.Redis.from_url(redis_url)
    while int(client.info("server")["uptime_in_seconds"]) < FRESH_SERVER_S:
        time.sleep(0.1)
    yield client
    client.close()


@pytest.fixture
def make_settings(redis_url: str, tiny_bundle: Path, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for one test: test Redis, `tiny_bundle`, local storage under tmp_path,
    fast heartbeats and progress; keyword arguments override fields."""

    def build(**overrides: object) -> Settings:
        fields: dict[str, object] = {
            "redis_url": redis_url,
            "data_dir": tmp_path / "data",
            "generators": [str(tiny_bundle)],
            "signing_secret": SECRET,
            "heartbeat_interval_s": 0.2,
            "progress_interval_s": 0.0,
            "job_timeout_s": 60,
        }
        fields.update(overrides)
        return Settings(**fields)  # type: ignore[arg-type]

    return build


@pytest.fixture(scope="session")
def warm_cache(tiny_bundle: Path) -> GeneratorCache:
    """The tiny generator, loaded once for the whole session (as a worker keeps it)."""
    cache = GeneratorCache(discover_generators([str(tiny_bundle)]), device="cpu")
    cache.warm()
    return cache


@pytest.fixture
def run_burst(
    connection: redis.Redis, warm_cache: GeneratorCache
) -> Iterator[Callable[[Settings], bool]]:
    """Run an in-process worker until the queues are empty (main thread: job timeouts use
    SIGALRM). One torch thread keeps timings steady on a shared CPU."""
    from worker.runtime import run_worker

    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def run(settings: Settings) -> bool:
        return run_worker(settings, burst=True, connection=connection, cache=warm_cache)

    yield run
    torch.set_num_threads(threads)
