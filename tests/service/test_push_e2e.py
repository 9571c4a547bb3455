"""Push end to end, with real jobs: webhooks (signed, delivered by `rpg webhooks` to a real
local receiver), the event stream while a worker samples, `Prefer: wait` answered with the
finished job, and `DELETE` making the files' URLs stop working."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from service.client import Client
from tests.service.conftest import GatewayFactory, GatewayPool, LiveGateway, assert_problem
from tests.service.test_client import work
from tests.worker.webhook_receiver import Receiver
from worker.registry import GeneratorCache, discover_generators

SECRET = "whsec_" + base64.b64encode(b"push-e2e-secret-0123456789abcdef").decode()


# ---------------------------------------------------------------------------- fast: the fields


def test_webhook_fields_are_checked(gateway_factory: GatewayFactory) -> None:
    strict = gateway_factory()
    body = {"architecture": "digits-mlp", "webhook": "http://127.0.0.1:9/hook"}
    problem = assert_problem(strict.http.post("/generate", json=body), 422)
    assert problem["errors"][0]["field"] == "webhook"
    assert "RPG_WEBHOOK_ALLOW_PRIVATE" in problem["errors"][0]["message"]
    metadata = {"architecture": "digits-mlp", "webhook": "https://169.254.169.254/x"}
    assert "metadata" in assert_problem(strict.http.post("/generate", json=metadata), 422)["detail"]
    lonely = {"architecture": "digits-mlp", "webhook_events_filter": ["start"]}
    assert (
        assert_problem(strict.http.post("/generate", json=lonely), 422)["errors"][0]["field"]
        == "webhook_events_filter"
    )
    unknown = {**body, "webhook_events_filter": ["finished"]}
    assert_problem(strict.http.post("/generate", json=unknown), 422)
    assert strict.redis.keys("rq:job:*") == []  # nothing was queued

    local = gateway_factory(webhook_allow_private=True)
    ok = local.http.post(
        "/generate", json={**body, "webhook_events_filter": ["completed", "start", "start"]}
    )
    assert ok.status_code == 202, ok.text
    request = ok.json()["request"]
    assert request["webhook"] == body["webhook"]
    assert request["webhook_events_filter"] == ["start", "completed"]
    default = local.http.post("/generate", json=body).json()["request"]
    assert default["webhook_events_filter"] == ["completed"]


# ---------------------------------------------------------------------------- slow: real jobs


@pytest.fixture(scope="module")
def warm_cache(tiny_bundle: Path) -> GeneratorCache:
    cache = GeneratorCache(discover_generators([str(tiny_bundle)]), device="cpu")
    cache.warm()
    return cache


@pytest.fixture
def live(redis_url: str, tiny_bundle: Path, tmp_path: Path) -> Iterator[LiveGateway]:
    pool = GatewayPool(redis_url, [tiny_bundle], tmp_path / "data")
    yield pool.start(
        progress_interval_s=0.0,
        job_timeout_s=120,
        webhook_allow_private=True,
        webhook_secret=SECRET,
        # progress is written at every denoiser step: space the webhook events so a job's
        # deliveries stay within the recorded window (worker.webhooks.MAX_RECORDED)
        webhook_progress_interval_s=0.2,
        webhook_backoff_s=1.0,
        webhook_retries=1,
    )
    pool.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def deliver_with_the_cli(live: LiveGateway) -> None:
    """`rpg webhooks --burst`: the real command delivers what is queued."""
    env = {
        **os.environ,
        "RPG_REDIS_URL": live.settings.redis_url or "",
        "RPG_DATA_DIR": str(live.settings.data_dir),
        "RPG_WEBHOOK_SECRET": SECRET,
        "RPG_WEBHOOK_ALLOW_PRIVATE": "true",
        "RPG_WEBHOOK_TIMEOUT_S": "2",
    }
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "webhooks", "--burst"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        out["value"] = target()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


@pytest.mark.slow
def test_webhooks_and_events_follow_a_real_job(
    live: LiveGateway, warm_cache: GeneratorCache, receiver: Receiver
) -> None:
    dead = Receiver(statuses=[500]).start()  # a receiver that always fails
    try:
        with Client(live.url) as client:
            job = client.submit("digits-mlp", num_samples=2, seed=1, steps=6)
            followed = live.http.post(
                "/generate",
                json={
                    "architecture": "digits-mlp",
                    "num_samples": 4,
                    "steps": 400,  # long enough for the stream to see it move
                    "webhook": receiver.url,
                    "webhook_events_filter": ["start", "progress", "completed"],
                },
            ).json()
            failing = live.http.post(
                "/generate", json={"architecture": "digits-mlp", "webhook": dead.url}
            ).json()
            reader, streamed = in_thread(lambda: list(client.events(followed)))
            waiter, waited = in_thread(lambda: client.wait(job, timeout=60))
            work(live, warm_cache)
            reader.join(timeout=60)
            waiter.join(timeout=60)
            assert waited["value"]["status"] == "succeeded"  # Client.wait over the stream

            events = streamed["value"]
            statuses = [doc["status"] for _, doc in events]
            assert statuses[0] == "queued" and statuses[-1] == "succeeded"
            assert "running" in statuses
            progress = [doc["progress"] for _, doc in events]
            assert progress == sorted(progress) and len(set(progress)) >= 4, progress
            assert [event_id for event_id, _ in events] == sorted(e for e, _ in events)

            deliver_with_the_cli(live)
            got = receiver.wait_for(3)
            kinds = [Webhook(SECRET).verify(r.body, r.headers)["status"] for r in got]
            assert kinds[0] == "running" and kinds[-1] == "succeeded"
            final = Webhook(SECRET).verify(got[-1].body, got[-1].headers)
            assert [f["sha256"] for f in final["result"]["files"]] == [
                f["sha256"] for f in client.get(followed)["result"]["files"]
            ]
            record = client.get(followed)["webhook_deliveries"]
            assert {r["event"] for r in record} == {"start", "progress", "completed"}
            assert all(r["status_code"] == 204 for r in record)
            assert len(record) == len(got)

            # The failing receiver changed nothing for its job, nor for cancel or health.
            assert client.get(failing)["status"] == "succeeded"
            failed = client.get(failing)["webhook_deliveries"]
            assert [(r["event"], r["status_code"]) for r in failed] == [("completed", 500)]
            assert live.http.get("/healthz").status_code == 200
    finally:
        dead.stop()


@pytest.mark.slow
def test_prefer_wait_answers_with_the_finished_job(
    live: LiveGateway, warm_cache: GeneratorCache
) -> None:
    poster, answer = in_thread(
        lambda: httpx.post(
            f"{live.url}/generate",
            json={"architecture": "digits-mlp", "steps": 4},
            headers={"Prefer": "wait=30"},
            timeout=60,
        )
    )
    deadline = time.monotonic() + 30
    while not live.rq_keys() and time.monotonic() < deadline:  # until the job is queued
        time.sleep(0.02)
    work(live, warm_cache)
    poster.join(timeout=60)
    response = answer["value"]
    assert response.status_code == 200, response.text
    assert response.headers["Preference-Applied"] == "wait=30"
    assert response.json()["status"] == "succeeded" and response.json()["result"]["files"]
    assert response.headers["Location"] == f"/jobs/{response.json()['id']}"


@pytest.mark.slow
def test_delete_removes_the_files(live: LiveGateway, warm_cache: GeneratorCache) -> None:
    with Client(live.url) as client:
        job = client.submit("digits-mlp", num_samples=2, steps=4)
        work(live, warm_cache)
        done = client.get(job)
        urls = [f["url"] for f in done["result"]["files"]]
        assert all(httpx.get(url).status_code == 200 for url in urls)
        assert live.http.delete(f"/jobs/{job['id']}").status_code == 204
        assert all(httpx.get(url).status_code == 404 for url in urls)
        assert_problem(live.http.get(f"/jobs/{job['id']}"), 404)
        folder = live.settings.data_dir / "files" / "jobs" / job["id"]
        assert not folder.exists()
