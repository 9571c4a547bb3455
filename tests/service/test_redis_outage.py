"""The gateway while its Redis is down: 503 + Retry-After, then back to normal by itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import RedisServer

from .conftest import GatewayPool, LiveGateway, assert_problem


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def outage_gateway(
    own_redis: RedisServer, config_bundles: list[Path], tmp_path: Path
) -> Iterator[LiveGateway]:
    pool = GatewayPool(own_redis.url, config_bundles, tmp_path / "data")
    yield pool.start()
    pool.close()


def test_gateway_answers_503_while_redis_is_down_and_recovers(
    own_redis: RedisServer, outage_gateway: LiveGateway
) -> None:
    http = outage_gateway.http
    created = http.post("/generate", json={"architecture": "digits-mlp", "seed": 1})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]

    own_redis.stop()
    for method, path, body in (
        ("GET", f"/jobs/{job_id}", None),
        ("POST", "/generate", {"architecture": "digits-mlp"}),
        ("POST", f"/jobs/{job_id}/cancel", None),
    ):
        began = time.monotonic()
        response = http.request(method, path, json=body)
        problem = assert_problem(response, 503)
        assert problem["type"].endswith("job-store-unavailable")
        assert int(response.headers["Retry-After"]) >= 1
        assert time.monotonic() - began < 10, f"{method} {path} hung while Redis was down"
    assert http.get("/healthz").status_code == 200  # the process itself is alive
    assert http.get("/readyz").json()["checks"]["redis"].startswith("unreachable")

    own_redis.start()  # same port and AOF: the job is still there
    deadline = time.monotonic() + 15
    # (no worker runs here, so /readyz stays 503 for that reason alone)
    while (
        http.get("/readyz").json()["checks"]["redis"] != "ok"
        or http.get(f"/jobs/{job_id}").status_code != 200
    ):
        assert time.monotonic() < deadline, "the gateway did not recover by itself"
        time.sleep(0.1)
    assert http.get(f"/jobs/{job_id}").json()["status"] == "queued"
    again = http.post("/generate", json={"architecture": "digits-mlp"})
    assert again.status_code == 202, again.text


def test_no_503_once_redis_is_back(own_redis: RedisServer, outage_gateway: LiveGateway) -> None:
    # Fill the gateway's connection pools, restart Redis, then a burst of requests: every
    # pooled connection is stale now, and none of the requests may fail for it.
    def burst() -> list[int]:
        def post(_: int) -> int:
            with httpx.Client(base_url=outage_gateway.url, timeout=10) as client:
                return client.post("/generate", json={"architecture": "digits-mlp"}).status_code

        with ThreadPoolExecutor(max_workers=20) as pool:
            return list(pool.map(post, range(20)))

    assert burst() == [202] * 20
    own_redis.stop()
    time.sleep(0.5)
    own_redis.start()
    assert burst() == [202] * 20
