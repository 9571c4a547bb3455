"""What the OpenAPI document states about auth, names and headers follows the deployment."""

from __future__ import annotations

import re
from typing import Any

from service.auth import new_key

from .conftest import GatewayFactory


def operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for ops in doc["paths"].values() for op in ops.values()]


def test_without_keys_no_auth_is_declared(gateway_factory: GatewayFactory) -> None:
    doc = gateway_factory().http.get("/openapi.json").json()
    assert "securitySchemes" not in doc["components"]
    for operation in operations(doc):
        assert "security" not in operation
        assert "401" not in operation["responses"]


def test_with_keys_bearer_auth_and_401_are_declared(gateway_factory: GatewayFactory) -> None:
    _, entry = new_key("alice")
    doc = gateway_factory(api_key_hashes=[entry]).http.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    generate = doc["paths"]["/generate"]["post"]
    assert generate["security"] == [{"HTTPBearer": []}]
    assert "WWW-Authenticate" in generate["responses"]["401"]["headers"]
    assert "security" not in doc["paths"]["/healthz"]["get"]


def test_generate_body_names_served_generators_and_limits(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = gateway_factory(max_num_samples=4, max_steps=200)
    doc = gateway.http.get("/openapi.json").json()
    body = doc["components"]["schemas"]["GenerateRequest"]
    assert body["properties"]["architecture"]["enum"] == ["digits-cond", "digits-mlp"]
    assert body["properties"]["num_samples"]["maximum"] == 4
    by_name: dict[str, list[dict[str, Any]]] = {}
    for variant in body["anyOf"]:
        by_name.setdefault(variant["properties"]["architecture"]["const"], []).append(variant)
    # digits-mlp: unconditional; its full DDPM schedule (1000) is above max_steps: DDIM only.
    (plain,) = by_name["digits-mlp"]
    assert plain["properties"]["task_embedding"] == {"type": "null"}
    assert plain["properties"]["steps"]["anyOf"][0]["maximum"] == 200
    # digits-cond: a 10-number embedding, or a task naming classes; never both.
    embedding = [v for v in by_name["digits-cond"] if "task_embedding" in v["required"]]
    assert embedding[0]["properties"]["task_embedding"]["minItems"] == 10
    assert embedding[0]["properties"]["task_embedding"]["maxItems"] == 10
    assert any("task" in v["required"] for v in by_name["digits-cond"])
    for example in body["examples"]:
        assert gateway.http.post("/generate", json=example).status_code == 202


def test_idempotency_key_pattern_is_stated(gateway_factory: GatewayFactory) -> None:
    doc = gateway_factory().http.get("/openapi.json").json()
    (header,) = [
        p for p in doc["paths"]["/generate"]["post"]["parameters"] if p["name"] == "Idempotency-Key"
    ]
    pattern = re.compile(header["schema"]["pattern"])
    assert pattern.fullmatch("a-UUID_like.key:123")
    assert not pattern.fullmatch("has space") and not pattern.fullmatch("")
    assert not pattern.fullmatch("x" * 256)


def test_405_allow_lists_every_method_of_the_path(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory()
    response = gateway.http.request("OPTIONS", "/jobs/0123456789abcdef0123456789abcdef")
    assert response.status_code == 405
    allowed = {method.strip() for method in response.headers["Allow"].split(",")}
    assert {"GET", "DELETE"} <= allowed and "OPTIONS" not in allowed


def test_event_stream_schema_describes_one_event(gateway_factory: GatewayFactory) -> None:
    doc = gateway_factory().http.get("/openapi.json").json()
    content = doc["paths"]["/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    event = content["text/event-stream"]["schema"]
    assert event["required"] == ["data"]
    assert event["properties"]["data"]["contentSchema"]["$ref"].endswith("/JobPublic")


def test_webhook_events_filter_requires_a_webhook_in_the_document(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = gateway_factory()
    body = gateway.http.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]
    assert "webhook_events_filter" in body["dependentSchemas"]
    response = gateway.http.post(
        "/generate", json={"architecture": "digits-mlp", "webhook_events_filter": ["completed"]}
    )
    assert response.status_code == 422
