"""/healthz, /readyz (Redis + live worker), /metrics, /architectures, /docs and error bodies."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.conftest import RedisServer
from tests.service.conftest import GatewayFactory, LiveGateway, assert_problem
from worker.runtime import Heartbeat


def test_healthz_needs_nothing(gateway: LiveGateway) -> None:
    response = gateway.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_fails_without_workers(gateway: LiveGateway) -> None:
    response = gateway.http.get("/readyz")
    problem = assert_problem(response, 503)
    assert problem["failed"] == ["workers"]
    assert problem["checks"]["redis"] == "ok"
    assert "no live worker" in problem["detail"]
    assert "retry-after" in response.headers


def test_readyz_passes_with_a_live_worker(gateway: LiveGateway) -> None:
    settings = gateway.settings.model_copy(update={"heartbeat_interval_s": 0.2})
    heartbeat = Heartbeat(
        gateway.redis, settings, "test-worker", lambda: {"hostname": "h", "pid": 1}
    )
    heartbeat.start()
    try:
        response = gateway.http.get("/readyz")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "ready"
        assert body["checks"]["redis"] == "ok" and body["checks"]["workers"] == "1 live"
        # webhook senders are reported, not required (tests/service/test_webhook_sender.py)
        assert body["checks"]["webhooks"].startswith("no sender alive: 0 delivery(ies) queued")
    finally:
        heartbeat.stop()
    assert gateway.http.get("/readyz").status_code == 503


def test_readyz_and_errors_with_redis_down(gateway: LiveGateway, redis_server: RedisServer) -> None:
    redis_server.stop()
    try:
        start = time.monotonic()
        response = gateway.http.get("/readyz")
        assert time.monotonic() - start < 5  # the probe does not retry for ages
        problem = assert_problem(response, 503)
        assert problem["failed"] == ["redis"]
        assert problem["checks"]["redis"].startswith("unreachable")
        assert gateway.http.get("/healthz").status_code == 200  # liveness needs no Redis
        down = gateway.http.post("/generate", json={"architecture": "digits-mlp"})
        assert "Redis" in assert_problem(down, 503)["detail"]
        assert_problem(gateway.http.get("/jobs/ffffffffffffffffffffffffffffffff"), 503)
        metrics = gateway.http.get("/metrics")
        assert metrics.status_code == 200
        assert "rpg_redis_up 0.0" in metrics.text
    finally:
        redis_server.start()
    assert gateway.http.post("/generate", json={"architecture": "digits-mlp"}).status_code == 202


def _sample(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of one sample in Prometheus text (0.0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.fullmatch(r"([a-zA-Z_:]+)(\{.*\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if labels is None or all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def test_metrics_count_requests_by_route_template_and_status(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = gateway_factory()
    ok = {"method": "POST", "route": "/generate", "status": "202"}
    bad = {"method": "POST", "route": "/generate", "status": "422"}
    for _ in range(3):
        job = gateway.http.post("/generate", json={"architecture": "digits-mlp"}).json()
    gateway.http.post("/generate", json={"architecture": "nope"})
    gateway.http.get(f"/jobs/{job['id']}")
    gateway.http.get("/no/such/path")
    text = gateway.http.get("/metrics").text
    assert _sample(text, "rpg_http_requests_total", ok) == 3
    assert _sample(text, "rpg_http_requests_total", bad) == 1
    job_route = {"method": "GET", "route": "/jobs/{job_id}", "status": "200"}
    assert _sample(text, "rpg_http_requests_total", job_route) == 1
    assert _sample(text, "rpg_http_requests_total", {"route": "unmatched", "status": "404"}) == 1
    assert job["id"] not in text  # ids never become labels
    assert _sample(text, "rpg_http_request_duration_seconds_count", ok) == 3
    assert _sample(text, "rpg_queue_depth") == 3
    assert _sample(text, "rpg_live_workers") == 0
    assert _sample(text, "rpg_redis_up") == 1


def test_metrics_record_a_finished_job_once(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory()
    job = gateway.http.post("/generate", json={"architecture": "digits-mlp"}).json()
    gateway.http.post(f"/jobs/{job['id']}/cancel")
    for _ in range(3):
        gateway.http.get(f"/jobs/{job['id']}")
    text = gateway.http.get("/metrics").text
    assert _sample(text, "rpg_jobs_finished_total", {"status": "canceled"}) == 1
    assert _sample(text, "rpg_job_duration_seconds_count", {"status": "canceled"}) == 1
    assert _sample(text, "rpg_queue_depth") == 0


def test_architectures_lists_generators_and_limits(gateway: LiveGateway) -> None:
    from models.zoo.digits import mlp

    body = gateway.http.get("/architectures").json()
    by_name = {entry["name"]: entry for entry in body["architectures"]}
    assert sorted(by_name) == ["digits-cond", "digits-mlp"]
    plain = by_name["digits-mlp"]
    assert plain["num_parameters"] == sum(p.numel() for p in mlp().parameters())
    assert plain["condition"] == {"kind": "none"}
    assert plain["defaults"] == {"sampler": "ddim", "steps": 50}
    assert plain["architecture"]["builder"] == "models.zoo.digits:mlp"
    assert plain["zoo_accuracy_mean"] == pytest.approx(0.9)
    assert plain["num_timesteps"] == 1000
    assert by_name["digits-cond"]["condition"]["dim"] == 10
    assert body["limits"]["max_num_samples"] == gateway.settings.max_num_samples


def test_openapi_documents_the_body_and_problem_errors(gateway: LiveGateway) -> None:
    assert gateway.http.get("/docs").status_code == 200
    doc: dict[str, Any] = gateway.http.get("/openapi.json").json()
    operation = doc["paths"]["/generate"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    name = ref.rsplit("/", 1)[-1]
    schema = doc["components"]["schemas"][name]
    assert {
        "architecture",
        "task_embedding",
        "num_samples",
        "seed",
        "sampler",
        "steps",
        "eta",
        "dtype",
    } <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    assert "application/problem+json" in operation["responses"]["422"]["content"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nowhere", 404), ("DELETE", "/generate", 405), ("GET", "/generate", 405)],
)
def test_http_errors_are_problems(
    gateway: LiveGateway, method: str, path: str, status: int
) -> None:
    assert_problem(gateway.http.request(method, path), status)


def test_unexpected_errors_are_a_500_problem_without_a_trace(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = gateway_factory()

    class Exploding:
        def get(self, name: str) -> None:
            raise RuntimeError("secret internal detail")

    monkeypatch.setattr(gateway.app.state.gateway, "catalog", Exploding())
    response = gateway.http.post("/generate", json={"architecture": "digits-mlp"})
    problem = assert_problem(response, 500)
    assert "secret internal detail" not in response.text
    assert "logged" in problem["detail"]
    text = gateway.http.get("/metrics").text
    assert _sample(text, "rpg_http_requests_total", {"route": "/generate", "status": "500"}) == 1
    assert gateway.rq_keys() == []
