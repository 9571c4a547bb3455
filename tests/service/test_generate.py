"""POST /generate: accepted requests, and every kind of bad input (a problem, nothing enqueued)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.service.conftest import GatewayFactory, LiveGateway, assert_problem
from worker.queue import queue_depth


def post(gateway: LiveGateway, body: Any, **kwargs: Any) -> httpx.Response:
    return gateway.http.post("/generate", json=body, **kwargs)


def test_accepted_request_returns_job_with_location_and_filled_defaults(
    gateway: LiveGateway,
) -> None:
    response = post(gateway, {"architecture": "digits-mlp", "num_samples": 2})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["progress"] == 0.0
    assert job["created_at"].endswith("Z")
    assert job["result"] is None and job["error"] is None
    request = job["request"]
    assert request["architecture"] == "digits-mlp"
    assert request["num_samples"] == 2
    assert isinstance(request["seed"], int) and 0 <= request["seed"] < 2**63
    assert request["sampler"] == "ddim" and request["steps"] == 50  # the bundle's defaults
    assert request["dtype"] == "float32"
    assert queue_depth(gateway.redis) == 1
    # The job is readable at its Location.
    again = gateway.http.get(response.headers["location"])
    assert again.status_code == 200
    assert again.json()["id"] == job["id"]


def test_random_seeds_differ_and_explicit_seed_is_kept(gateway: LiveGateway) -> None:
    seeds = {
        post(gateway, {"architecture": "digits-mlp"}).json()["request"]["seed"] for _ in range(3)
    }
    assert len(seeds) == 3
    job = post(gateway, {"architecture": "digits-mlp", "seed": 0}).json()
    assert job["request"]["seed"] == 0


def test_ddpm_uses_the_full_schedule(gateway: LiveGateway) -> None:
    job = post(gateway, {"architecture": "digits-mlp", "sampler": "ddpm", "steps": 3}).json()
    timesteps = gateway.app.state.gateway.catalog.get("digits-mlp").num_timesteps
    assert job["request"]["sampler"] == "ddpm"
    assert job["request"]["steps"] == timesteps


def test_task_classes_map_to_a_mask(gateway: LiveGateway) -> None:
    response = post(
        gateway, {"architecture": "digits-cond", "task": {"positive_classes": ["0", 3]}}
    )
    assert response.status_code == 202, response.text
    assert response.json()["request"]["task_embedding"] == [1.0, 0, 0, 1.0, 0, 0, 0, 0, 0, 0]


def test_task_embedding_accepted_with_the_right_dimension(gateway: LiveGateway) -> None:
    embedding = [0.5] * 10
    response = post(gateway, {"architecture": "digits-cond", "task_embedding": embedding})
    assert response.status_code == 202, response.text
    assert response.json()["request"]["task_embedding"] == embedding


MLP = {"architecture": "digits-mlp"}
COND = {"architecture": "digits-cond"}

# (body, field paths that must be reported, words the detail must contain)
BAD_BODIES: list[tuple[str, Any, list[str], list[str]]] = [
    ("missing architecture", {}, ["architecture"], ["missing"]),
    ("unknown field", {**MLP, "temperature": 1.0}, ["temperature"], ["unknown field"]),
    (
        "unknown architecture",
        {"architecture": "resnet-9000"},
        ["architecture"],
        ["digits-mlp", "digits-cond"],
    ),
    ("architecture wrong type", {"architecture": 3}, ["architecture"], []),
    ("num_samples as string", {**MLP, "num_samples": "2"}, ["num_samples"], []),
    ("num_samples as float", {**MLP, "num_samples": 2.0}, ["num_samples"], []),
    ("num_samples as bool", {**MLP, "num_samples": True}, ["num_samples"], []),
    ("num_samples zero", {**MLP, "num_samples": 0}, ["num_samples"], []),
    ("num_samples over limit", {**MLP, "num_samples": 17}, ["num_samples"], ["at most 16"]),
    ("negative seed", {**MLP, "seed": -1}, ["seed"], []),
    ("huge seed", {**MLP, "seed": 2**64}, ["seed"], []),
    ("unknown sampler", {**MLP, "sampler": "euler"}, ["sampler"], []),
    ("zero steps", {**MLP, "steps": 0}, ["steps"], []),
    ("steps over limit", {**MLP, "steps": 5000}, ["steps"], ["at most"]),
    ("negative eta", {**MLP, "eta": -0.1}, ["eta"], []),
    ("eta with ddpm", {**MLP, "sampler": "ddpm", "eta": 0.5}, ["eta"], ["ddim"]),
    ("unknown dtype", {**MLP, "dtype": "int8"}, ["dtype"], []),
    (
        "embedding for unconditional",
        {**MLP, "task_embedding": [1.0] * 10},
        ["task_embedding"],
        ["unconditional"],
    ),
    ("missing embedding", COND, ["task_embedding"], ["10"]),
    (
        "wrong dimension",
        {**COND, "task_embedding": [1.0] * 8},
        ["task_embedding"],
        ["8 values", "expects 10"],
    ),
    ("embedding not numbers", {**COND, "task_embedding": ["a"] * 10}, ["task_embedding[0]"], []),
    ("embedding not a list", {**COND, "task_embedding": 1.0}, ["task_embedding"], []),
    (
        "both task forms",
        {**COND, "task_embedding": [1.0] * 10, "task": {"positive_classes": ["1"]}},
        ["task"],
        ["not both"],
    ),
    (
        "unknown class",
        {**COND, "task": {"positive_classes": ["cat"]}},
        ["task.positive_classes[0]"],
        ["cat"],
    ),
    (
        "every class positive",
        {**COND, "task": {"positive_classes": [str(i) for i in range(10)]}},
        ["task.positive_classes"],
        ["negative"],
    ),
    ("empty classes", {**COND, "task": {"positive_classes": []}}, ["task.positive_classes"], []),
    (
        "unknown task field",
        {**COND, "task": {"classes": ["1"]}},
        ["task.classes"],
        ["unknown field"],
    ),
    ("body is a list", [MLP], ["(body)"], ["JSON object"]),
    ("body is a string", "digits-mlp", ["(body)"], []),
]


@pytest.mark.parametrize(
    ("body", "fields", "words"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
def test_bad_body_is_a_422_problem_and_enqueues_nothing(
    gateway: LiveGateway, body: Any, fields: list[str], words: list[str]
) -> None:
    problem = assert_problem(post(gateway, body), 422)
    reported = [error["field"] for error in problem["errors"]]
    for field in fields:
        assert field in reported, problem
    for word in words:
        assert word in problem["detail"], problem
    assert queue_depth(gateway.redis) == 0
    assert gateway.rq_keys() == []


NON_FINITE_RAW = [
    (
        "NaN literal",
        '{"architecture": "digits-cond", "task_embedding": [NaN, 0,0,0,0,0,0,0,0,0]}',
        "task_embedding[0]",
    ),
    (
        "Infinity literal",
        '{"architecture": "digits-cond", "task_embedding": [0, Infinity,0,0,0,0,0,0,0,0]}',
        "task_embedding[1]",
    ),
    (
        "-Infinity literal",
        '{"architecture": "digits-cond", "task_embedding": [0,0,-Infinity,0,0,0,0,0,0,0]}',
        "task_embedding[2]",
    ),
    (
        "overflowing number",
        '{"architecture": "digits-cond", "task_embedding": [0,0,0,1e400,0,0,0,0,0,0]}',
        "task_embedding[3]",
    ),
    ("NaN eta", '{"architecture": "digits-mlp", "eta": NaN}', "eta"),
]


@pytest.mark.parametrize(
    ("raw", "field"), [c[1:] for c in NON_FINITE_RAW], ids=[c[0] for c in NON_FINITE_RAW]
)
def test_non_finite_numbers_are_rejected(gateway: LiveGateway, raw: str, field: str) -> None:
    # Python's json module would accept these literals; the gateway must not.
    assert json.loads(raw)  # the premise: a lenient parser takes this body
    response = gateway.http.post(
        "/generate", content=raw, headers={"content-type": "application/json"}
    )
    problem = assert_problem(response, 422)
    assert field in [e["field"] for e in problem["errors"]]
    assert "finite" in problem["detail"]
    assert gateway.rq_keys() == []


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        ('{"architecture": "digits-mlp"', "application/json", 400),
        ("architecture=digits-mlp", "application/x-www-form-urlencoded", 415),
        ('{"architecture": "digits-mlp"}', "text/plain", 415),
        ('{"architecture": "digits-mlp"}', None, 415),
        ("", "application/json", 400),
    ],
    ids=["truncated json", "form body", "text/plain", "no content type", "empty body"],
)
def test_malformed_or_non_json_bodies(
    gateway: LiveGateway, content: str, content_type: str | None, status: int
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = gateway.http.post("/generate", content=content.encode(), headers=headers)
    problem = assert_problem(response, status)
    assert "JSON" in problem["detail"]
    assert gateway.rq_keys() == []


def test_problem_json_content_type_accepts_json_suffix(gateway: LiveGateway) -> None:
    response = gateway.http.post(
        "/generate",
        content=b'{"architecture": "digits-mlp"}',
        headers={"content-type": "application/vnd.rpg+json; charset=utf-8"},
    )
    assert response.status_code == 202


def test_oversize_body_by_content_length(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(max_body_bytes=1024)
    body = {"architecture": "digits-cond", "task_embedding": [0.123456789] * 200}
    problem = assert_problem(post(gateway, body), 413)
    assert "1024 bytes" in problem["detail"]
    assert gateway.rq_keys() == []


def test_oversize_body_streamed_without_content_length(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(max_body_bytes=1024)
    sent: list[int] = []

    def chunks() -> Any:  # a generator body makes httpx use chunked transfer encoding
        for _ in range(64):
            sent.append(1)
            yield b" " * 512

    response = gateway.http.post(
        "/generate", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413)
    assert gateway.rq_keys() == []


def test_lying_content_length_is_still_capped(gateway_factory: GatewayFactory) -> None:
    import socket

    gateway = gateway_factory(max_body_bytes=1024)
    host, port = gateway.url.removeprefix("http://").split(":")
    body = b'{"architecture": "digits-mlp", "pad": "' + b"x" * 4000 + b'"}'
    # Declares 100 bytes but keeps sending; the server reads only what was declared, so the
    # body it sees is truncated JSON: never enqueued, never a 500.
    request = (
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\nConnection: close\r\n\r\n" + body
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert status in (400, 413, 422)
    assert gateway.rq_keys() == []


def test_queue_full_is_503_with_retry_after(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(max_queue_depth=2)
    for _ in range(2):
        assert post(gateway, MLP).status_code == 202
    response = post(gateway, MLP)
    problem = assert_problem(response, 503)
    assert int(response.headers["retry-after"]) > 0
    assert "retry" in problem["detail"]
    assert queue_depth(gateway.redis) == 2


def test_a_sampler_of_the_other_objective_is_a_problem_and_nothing_is_enqueued(
    gateway_factory: GatewayFactory, config_bundles: list[Any], tmp_path: Any
) -> None:
    from tests.service.conftest import write_config_bundle

    bundle = write_config_bundle(tmp_path / "flow", name="digits-flow", condition={"kind": "none"})
    config = json.loads((bundle / "config.json").read_text())
    config["model"]["denoiser"]["kind"] = "mlp"
    config["model"]["diffusion"]["objective"] = "flow"
    config["defaults"] = {"sampler": "flow-midpoint", "steps": 4}
    (bundle / "config.json").write_text(json.dumps(config))
    live = gateway_factory(generators=[str(bundle), *map(str, config_bundles)])
    flow = {"architecture": "digits-flow"}
    accepted = post(live, flow)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["request"]["sampler"] == "flow-midpoint"
    depth = queue_depth(live.redis)
    for body in (
        {**flow, "sampler": "ddim"},
        {"architecture": "digits-mlp", "sampler": "flow-euler"},
    ):
        problem = assert_problem(post(live, body), 422)
        assert "objective" in problem["detail"] and "\n" not in problem["detail"]
    assert queue_depth(live.redis) == depth
