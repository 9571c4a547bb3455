"""End to end over real HTTP: gateway (uvicorn thread) + in-process RQ worker + real Redis.

POST /generate, run the worker, poll, download the signed URLs, check the hashes, and load
the weights into the architecture with strict=True. Slow: needs the trained `tiny_bundle`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from safetensors.torch import load as load_safetensors

from models.zoo.store import build_module
from service.settings import GatewaySettings as Settings
from tests.service.conftest import SECRET, GatewayPool, LiveGateway, assert_problem
from worker.registry import GeneratorCache, discover_generators
from worker.runtime import run_worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def warm_cache(tiny_bundle: Path) -> GeneratorCache:
    cache = GeneratorCache(discover_generators([str(tiny_bundle)]), device="cpu")
    cache.warm()
    return cache


@pytest.fixture
def live(redis_url: str, tiny_bundle: Path, tmp_path: Path) -> Iterator[LiveGateway]:
    pool = GatewayPool(redis_url, [tiny_bundle], tmp_path / "data")
    yield pool.start(heartbeat_interval_s=0.2, progress_interval_s=0.0, job_timeout_s=120)
    pool.close()


def work(gateway: LiveGateway, cache: GeneratorCache) -> bool:
    """Run a burst worker (main thread, as RQ's timeouts need) with the gateway's settings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    connection = redis.Redis.from_url(gateway.settings.redis_url or "")
    try:
        settings: Settings = gateway.settings
        return run_worker(settings, burst=True, connection=connection, cache=cache)
    finally:
        connection.close()
        torch.set_num_threads(threads)


def test_generate_poll_download_and_load_strictly(
    live: LiveGateway, warm_cache: GeneratorCache
) -> None:
    created = live.http.post("/generate", json={"architecture": "digits-mlp", "num_samples": 2})
    assert created.status_code == 202
    job_url = created.headers["location"]
    assert work(live, warm_cache)

    job = live.http.get(job_url).json()
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0
    assert job["started_at"] and job["finished_at"]
    files = job["result"]["files"]
    assert len(files) == 2
    spec = live.app.state.gateway.catalog.get("digits-mlp").config["architecture"]
    digests = []
    tensors = []
    for entry in files:
        assert entry["url"].startswith(live.url + "/files/")
        download = live.http.get(entry["url"])
        assert download.status_code == 200
        assert len(download.content) == entry["size_bytes"]
        assert hashlib.sha256(download.content).hexdigest() == entry["sha256"]
        digests.append(entry["sha256"])
        weights = load_safetensors(download.content)
        tensors.append(weights)
        module = build_module(spec)
        module.load_state_dict(weights, strict=True)
        assert sum(t.numel() for t in weights.values()) == entry["num_parameters"]
    assert digests[0] != digests[1]

    # Ranged download of a real result.
    first = live.http.get(files[0]["url"], headers={"Range": "bytes=0-7"})
    assert first.status_code == 206 and len(first.content) == 8

    # Finished: cancel is a conflict; metrics saw the job finish exactly once.
    assert_problem(live.http.post(f"{job_url}/cancel"), 409)
    live.http.get(job_url)
    metrics = live.http.get("/metrics").text
    assert 'rpg_jobs_finished_total{status="succeeded"} 1.0' in metrics

    # The returned request (seed filled in) replays to the same weights (the files differ
    # only in their metadata, which names the job).
    replay = {k: v for k, v in job["request"].items() if k != "owner"}
    again = live.http.post("/generate", json=replay)
    assert again.status_code == 202
    assert work(live, warm_cache)
    replayed = live.http.get(again.headers["location"]).json()
    for entry, original in zip(replayed["result"]["files"], tensors, strict=True):
        weights = load_safetensors(live.http.get(entry["url"]).content)
        assert weights.keys() == original.keys()
        assert all(torch.equal(weights[name], original[name]) for name in weights)


def test_output_dtype_is_honoured(live: LiveGateway, warm_cache: GeneratorCache) -> None:
    created = live.http.post("/generate", json={"architecture": "digits-mlp", "dtype": "bfloat16"})
    assert work(live, warm_cache)
    job = live.http.get(created.headers["location"]).json()
    weights = load_safetensors(live.http.get(job["result"]["files"][0]["url"]).content)
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.bfloat16}


def test_cancel_a_running_job(live: LiveGateway, warm_cache: GeneratorCache) -> None:
    body = {"architecture": "digits-mlp", "num_samples": 16, "sampler": "ddpm"}
    job_url = live.http.post("/generate", json=body).headers["location"]
    seen: dict[str, Any] = {}

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = live.http.get(job_url).json()
            if job["status"] == "running":
                seen["ready"] = live.http.get("/readyz").status_code
                response = live.http.post(f"{job_url}/cancel")
                seen["status"] = response.status_code
                seen["job"] = response.json()
                return
            time.sleep(0.02)

    canceler = threading.Thread(target=cancel_when_running)
    canceler.start()
    start = time.monotonic()
    work(live, warm_cache)
    canceler.join()
    assert seen["ready"] == 200  # a worker was alive
    assert seen["status"] == 202
    assert seen["job"]["cancel_requested"] is True
    job = live.http.get(job_url).json()
    assert job["status"] == "canceled", job
    assert job["error"]["type"] == "Canceled"
    assert job["progress"] < 1.0
    assert time.monotonic() - start < 30


def test_worker_and_gateway_share_the_signing_secret(live: LiveGateway) -> None:
    assert live.settings.resolved_signing_secret() == SECRET
