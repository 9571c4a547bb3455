"""A job whose webhook cannot be delivered because no webhook sender (`rpg webhooks`) is alive
says so, and `/readyz` reports the senders without making the gateway unready. Real HTTP,
real Redis, the real sender heartbeat and, in the slow test, a real job and `rpg webhooks`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import GatewayFactory, GatewayPool, LiveGateway
from tests.service.test_client import work
from tests.worker.webhook_receiver import Receiver
from worker.registry import GeneratorCache, discover_generators
from worker.runtime import Heartbeat
from worker.webhook_senders import SenderHeartbeat, live_senders

HOOK = "http://127.0.0.1:9/hook"  # nothing listens: these tests never deliver there


@pytest.fixture
def worker_alive(gateway_factory: GatewayFactory) -> Iterator[LiveGateway]:
    gateway = gateway_factory(webhook_allow_private=True)
    heartbeat = Heartbeat(
        gateway.redis, gateway.settings, "w1", lambda: {"hostname": "h", "pid": 1}
    )
    heartbeat.start()
    yield gateway
    heartbeat.stop()


def test_without_a_sender_the_job_and_readyz_say_so(worker_alive: LiveGateway) -> None:
    gateway = worker_alive
    job = gateway.http.post("/generate", json={"architecture": "digits-mlp", "webhook": HOOK})
    plain = gateway.http.post("/generate", json={"architecture": "digits-mlp"}).json()
    warning = gateway.http.get(f"/jobs/{job.json()['id']}").json()["webhook_warning"]
    assert "no webhook sender is running (start `rpg webhooks`)" in warning
    assert gateway.http.get(f"/jobs/{plain['id']}").json()["webhook_warning"] is None

    ready = gateway.http.get("/readyz")
    assert ready.status_code == 200  # generation does not need the sender
    assert ready.json()["checks"]["webhooks"].startswith("no sender alive")

    sender = SenderHeartbeat(gateway.redis, interval_s=0.2)
    sender.start()
    try:
        assert gateway.http.get(f"/jobs/{job.json()['id']}").json()["webhook_warning"] is None
        assert gateway.http.get("/readyz").json()["checks"]["webhooks"] == "1 sender(s) live"
    finally:
        sender.stop()
    assert live_senders(gateway.redis) == []  # a clean stop is not a death to wait out
    assert gateway.http.get(f"/jobs/{job.json()['id']}").json()["webhook_warning"] == warning


def test_a_sender_that_stops_beating_counts_as_gone(worker_alive: LiveGateway) -> None:
    sender = SenderHeartbeat(worker_alive.redis, interval_s=0.1)
    sender.beat()  # one beat, then silence, as after kill -9
    assert live_senders(worker_alive.redis) == [sender.name]
    worker_alive.redis.pexpire(f"rpg:webhook-sender:{sender.name}", 1)
    checks = worker_alive.http.get("/readyz").json()["checks"]
    assert live_senders(worker_alive.redis) == []
    assert checks["webhooks"].startswith("no sender alive")
    SenderHeartbeat(worker_alive.redis, interval_s=0.1).beat()  # a new sender prunes the dead
    assert sender.name.encode() not in worker_alive.redis.smembers("rpg:webhook-senders")


@pytest.mark.slow
def test_a_finished_jobs_waiting_webhook_is_named_until_a_sender_delivers_it(
    redis_url: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    pool = GatewayPool(redis_url, [tiny_bundle], tmp_path / "data")
    receiver = Receiver().start()
    try:
        live = pool.start(webhook_allow_private=True, job_timeout_s=120)
        cache = GeneratorCache(discover_generators([str(tiny_bundle)]), device="cpu")
        body = {"architecture": "digits-mlp", "steps": 4, "webhook": receiver.url}
        job = live.http.post("/generate", json=body).json()
        work(live, cache)
        done = live.http.get(f"/jobs/{job['id']}").json()
        assert done["status"] == "succeeded" and done["webhook_deliveries"] == []
        assert done["webhook_warning"].startswith("1 webhook event(s) of this job wait")

        env = {
            **os.environ,
            "RPG_REDIS_URL": redis_url,
            "RPG_DATA_DIR": str(tmp_path / "data"),
            "RPG_WEBHOOK_ALLOW_PRIVATE": "true",
        }
        sent = subprocess.run(
            [sys.executable, "-m", "service.cli", "webhooks", "--burst"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        receiver.wait_for(1)
        after = live.http.get(f"/jobs/{job['id']}").json()
        assert [d["status_code"] for d in after["webhook_deliveries"]] == [204]
        assert after["webhook_warning"] is None  # delivered: nothing waits any more
        assert live_senders(live.redis) == []  # the sender's heartbeat left with it
    finally:
        receiver.stop()
        pool.close()
