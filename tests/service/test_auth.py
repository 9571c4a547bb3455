"""API keys (hashed, Bearer), per-key job isolation, and the Redis-backed rate limit."""

from __future__ import annotations

import hashlib
import time

import pytest
import redis

from service.auth import ApiKeyring, KeyringError, new_key
from service.commands import register
from service.ratelimit import RateLimiter
from tests.service.conftest import GatewayFactory, LiveGateway, assert_problem
from worker.queue import queue_depth

MLP = {"architecture": "digits-mlp"}


@pytest.fixture
def keys() -> dict[str, str]:
    """Two fresh keys by name."""
    return {name: new_key(name)[0] for name in ("alice", "bob")}


@pytest.fixture
def secured(gateway_factory: GatewayFactory, keys: dict[str, str]) -> LiveGateway:
    hashes = [f"{name}:{hashlib.sha256(key.encode()).hexdigest()}" for name, key in keys.items()]
    return gateway_factory(api_key_hashes=hashes)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/generate"),
        ("GET", "/jobs/0123456789abcdef"),
        ("POST", "/jobs/0123456789abcdef/cancel"),
        ("GET", "/architectures"),
    ],
)
@pytest.mark.parametrize("credentials", [None, "Bearer wrong-key", "Basic YWxpY2U6eA==", "Bearer"])
def test_protected_endpoints_need_a_valid_key(
    secured: LiveGateway, method: str, path: str, credentials: str | None
) -> None:
    headers = {"Authorization": credentials} if credentials else {}
    response = secured.http.request(method, path, json=MLP, headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert secured.rq_keys() == []


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/docs", "/openapi.json"])
def test_public_endpoints_need_no_key(secured: LiveGateway, path: str) -> None:
    assert secured.http.get(path).status_code == 200


def test_readyz_needs_no_key(secured: LiveGateway) -> None:
    # Not ready (no worker), but it answers the readiness question, not 401.
    assert secured.http.get("/readyz").status_code == 503


def test_a_key_sees_only_its_own_jobs(secured: LiveGateway, keys: dict[str, str]) -> None:
    created = secured.http.post("/generate", json=MLP, headers=bearer(keys["alice"]))
    assert created.status_code == 202
    job_id = created.json()["id"]
    assert secured.http.get(f"/jobs/{job_id}", headers=bearer(keys["alice"])).status_code == 200

    other = secured.http.get(f"/jobs/{job_id}", headers=bearer(keys["bob"]))
    missing = secured.http.get(
        "/jobs/ffffffffffffffffffffffffffffffff", headers=bearer(keys["bob"])
    )
    other_body = assert_problem(other, 404)
    missing_body = assert_problem(missing, 404)
    # Identical apart from the id: nothing tells bob the job exists.
    assert other_body["detail"].replace(job_id, "ID") == missing_body["detail"].replace(
        "ffffffffffffffffffffffffffffffff", "ID"
    )
    assert {k: v for k, v in other_body.items() if k != "detail"} == {
        k: v for k, v in missing_body.items() if k != "detail"
    }

    cancel = secured.http.post(f"/jobs/{job_id}/cancel", headers=bearer(keys["bob"]))
    assert_problem(cancel, 404)
    # bob's cancel did nothing.
    job = secured.http.get(f"/jobs/{job_id}", headers=bearer(keys["alice"])).json()
    assert job["status"] == "queued"


def test_without_keys_the_api_is_open(gateway: LiveGateway) -> None:
    created = gateway.http.post("/generate", json=MLP)
    assert created.status_code == 202
    assert gateway.http.get(created.headers["location"]).status_code == 200


def test_rate_limit_per_key_with_retry_after(
    gateway_factory: GatewayFactory, keys: dict[str, str]
) -> None:
    hashes = [f"{name}:{hashlib.sha256(key.encode()).hexdigest()}" for name, key in keys.items()]
    gateway = gateway_factory(api_key_hashes=hashes, rate_limit_per_minute=3)
    for _ in range(3):
        assert (
            gateway.http.post("/generate", json=MLP, headers=bearer(keys["alice"])).status_code
            == 202
        )
    limited = gateway.http.post("/generate", json=MLP, headers=bearer(keys["alice"]))
    problem = assert_problem(limited, 429)
    retry_after = int(limited.headers["retry-after"])
    assert 1 <= retry_after <= 20  # one request per 20 s at 3 per minute
    assert "3 generation requests per minute" in problem["detail"]
    # Another key has its own budget; reads are not limited.
    assert gateway.http.post("/generate", json=MLP, headers=bearer(keys["bob"])).status_code == 202
    assert gateway.http.get("/architectures", headers=bearer(keys["alice"])).status_code == 200
    assert queue_depth(gateway.redis) == 4


def test_rate_limit_is_shared_by_gateway_replicas(gateway_factory: GatewayFactory) -> None:
    first = gateway_factory(rate_limit_per_minute=4)
    second = gateway_factory(rate_limit_per_minute=4)
    statuses = [
        (first if i % 2 else second).http.post("/generate", json=MLP).status_code for i in range(6)
    ]
    assert statuses.count(202) == 4
    assert statuses.count(429) == 2


def test_rate_limiter_bursts_then_refills(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    limiter = RateLimiter(client, per_minute=120)  # burst 120, then one per 0.5 s
    decisions = [limiter.hit("ip:1.2.3.4") for _ in range(121)]
    assert all(d.allowed for d in decisions[:120])
    assert not decisions[120].allowed and decisions[120].retry_after_s == 1
    assert limiter.hit("ip:5.6.7.8").allowed  # identities are independent
    time.sleep(0.55)
    assert limiter.hit("ip:1.2.3.4").allowed
    assert not limiter.hit("ip:1.2.3.4").allowed
    client.close()


def test_keyring_rejects_malformed_entries() -> None:
    with pytest.raises(KeyringError, match="rpg keys create"):
        ApiKeyring.parse(["alice"])
    with pytest.raises(KeyringError, match="twice"):
        digest = "0" * 64
        ApiKeyring.parse([f"alice:{digest}", f"alice:{digest}"])
    with pytest.raises(KeyringError, match="invalid API key name"):
        ApiKeyring.parse([f"a b:{'0' * 64}"])


def test_bad_key_hashes_stop_the_gateway_at_start(gateway_factory: GatewayFactory) -> None:
    with pytest.raises(KeyringError):
        gateway_factory(api_key_hashes=["alice:not-hex"])


def test_keys_create_prints_a_key_and_its_entry(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["keys", "create", "carol"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    key, entry = lines[1], lines[3]
    name, digest = entry.split(":")
    assert name == "carol"
    assert hashlib.sha256(key.encode()).hexdigest() == digest
    assert ApiKeyring.parse([entry]).identify(key) == "carol"
    assert ApiKeyring.parse([entry]).identify(key + "x") is None
    assert len(key) >= 40
