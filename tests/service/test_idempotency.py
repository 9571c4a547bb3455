"""Idempotency-Key on POST /generate: replays, reuse with another body, concurrent duplicates."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.service.conftest import GatewayFactory, LiveGateway, assert_problem
from worker.queue import queue_depth

BODY = {"architecture": "digits-mlp", "num_samples": 2}


def post(gateway: LiveGateway, body: object, key: str, **headers: str) -> httpx.Response:
    return gateway.http.post("/generate", json=body, headers={"Idempotency-Key": key, **headers})


def test_retry_with_same_body_returns_the_same_job(gateway: LiveGateway) -> None:
    first = post(gateway, BODY, "order-1")
    assert first.status_code == 202
    assert "idempotent-replayed" not in first.headers
    again = post(gateway, BODY, "order-1")
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    # The random seed drawn for the first request is the job's seed: nothing re-drawn.
    assert again.json()["request"]["seed"] == first.json()["request"]["seed"]
    assert queue_depth(gateway.redis) == 1


def test_same_request_with_defaults_spelled_out_is_the_same_body(gateway: LiveGateway) -> None:
    first = post(gateway, {"architecture": "digits-mlp"}, "k")
    again = post(gateway, {"architecture": "digits-mlp", "num_samples": 1, "dtype": "float32"}, "k")
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]


def test_same_key_with_a_different_body_is_422(gateway: LiveGateway) -> None:
    first = post(gateway, BODY, "order-2")
    assert first.status_code == 202
    problem = assert_problem(post(gateway, {**BODY, "num_samples": 3}, "order-2"), 422)
    assert "different request body" in problem["detail"]
    assert queue_depth(gateway.redis) == 1


def test_different_keys_make_different_jobs(gateway: LiveGateway) -> None:
    first = post(gateway, BODY, "a").json()["id"]
    second = post(gateway, BODY, "b").json()["id"]
    plain = gateway.http.post("/generate", json=BODY).json()["id"]
    assert len({first, second, plain}) == 3
    assert queue_depth(gateway.redis) == 3


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "ünïcode"])
def test_malformed_keys_are_400(gateway: LiveGateway, key: str) -> None:
    headers = {b"Idempotency-Key": key.encode()}  # raw UTF-8 bytes on the wire
    response = gateway.http.post("/generate", json=BODY, headers=headers)
    assert "Idempotency-Key" in assert_problem(response, 400)["detail"]
    assert gateway.rq_keys() == []


def test_concurrent_duplicates_create_one_job(gateway: LiveGateway) -> None:
    barrier = threading.Barrier(8)
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            barrier.wait()
            response = client.post("/generate", json=BODY, headers={"Idempotency-Key": "race"})
        with lock:
            results.append(response)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.json()["id"] for r in results}) == 1
    assert sorted(r.status_code for r in results) == [200] * 7 + [202]
    assert queue_depth(gateway.redis) == 1


def test_keys_are_scoped_per_api_key(gateway_factory: GatewayFactory) -> None:
    from service.auth import new_key

    alice, alice_entry = new_key("alice")
    bob, bob_entry = new_key("bob")
    gateway = gateway_factory(api_key_hashes=[alice_entry, bob_entry])
    a = post(gateway, BODY, "shared", Authorization=f"Bearer {alice}")
    b = post(gateway, {**BODY, "num_samples": 1}, "shared", Authorization=f"Bearer {bob}")
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


def test_a_refused_request_frees_its_key(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(max_queue_depth=1)
    assert gateway.http.post("/generate", json=BODY).status_code == 202
    assert_problem(post(gateway, BODY, "after-full"), 503)
    gateway.redis.delete(*gateway.redis.keys("rq:queue:*"))  # the queue drains
    retried = post(gateway, BODY, "after-full")
    assert retried.status_code == 202  # a new job, not a replay of the refused attempt


def test_invalid_body_with_a_key_stores_nothing(gateway: LiveGateway) -> None:
    assert_problem(post(gateway, {"architecture": "nope"}, "k1"), 422)
    assert list(gateway.redis.scan_iter("rpg:idempotency:*")) == []
    assert post(gateway, BODY, "k1").status_code == 202
