"""Abusive clients over real HTTP and raw sockets: huge error bodies, duplicate keys,
disconnects mid-body, slow heads and bodies, idle and excess connections."""

from __future__ import annotations

import json
import logging
import re
import socket
import time

import pytest

from .conftest import GatewayFactory, LiveGateway, assert_problem


def raw_connection(gateway: LiveGateway) -> socket.socket:
    host, port = gateway.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    began = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - began


def requests_counted(gateway: LiveGateway, route: str, status: int) -> float:
    text = gateway.http.get("/metrics").text
    pattern = (
        rf'rpg_http_requests_total\{{method="POST",route="{re.escape(route)}",'
        rf'status="{status}"\}} ([0-9.e+]+)'
    )
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def test_huge_invalid_list_is_refused_at_its_first_bad_item(gateway: LiveGateway) -> None:
    items = ",".join("[]" for _ in range(21_000))  # 63 KB, under the body limit
    body = '{"architecture": "digits-cond", "task_embedding": [' + items + "]}"
    assert len(body) < gateway.settings.max_body_bytes
    response = gateway.http.post(
        "/generate", content=body, headers={"Content-Type": "application/json"}
    )
    problem = assert_problem(response, 422)
    assert [e["field"] for e in problem["errors"]] == ["task_embedding[0]"]
    assert len(response.content) < 2_000
    assert gateway.rq_keys() == []


def test_many_unknown_fields_get_a_capped_error_list(gateway: LiveGateway) -> None:
    fields = ",".join(f'"k{i}": 0' for i in range(6_000))
    body = '{"architecture": "digits-mlp", ' + fields + "}"
    assert len(body) < gateway.settings.max_body_bytes
    response = gateway.http.post(
        "/generate", content=body, headers={"Content-Type": "application/json"}
    )
    problem = assert_problem(response, 422)
    assert [e["field"] for e in problem["errors"]] == [f"k{i}" for i in range(20)]
    assert all(e["message"].startswith("unknown field") for e in problem["errors"])
    assert problem["more_errors"] == 6_000 - 20
    assert "6000 unknown fields" in problem["detail"]
    assert len(response.content) < 8_000
    assert gateway.rq_keys() == []


def test_error_list_past_the_cap_counts_the_rest(gateway: LiveGateway) -> None:
    # 25 distinct schema errors, few enough unknown fields to reach the schema's parser.
    body = {
        "architecture": 1,
        "num_samples": "x",
        "seed": "x",
        "sampler": 1,
        "steps": "x",
        "eta": "x",
        "dtype": 1,
        "task": {"positive_classes": 1},
        **{f"k{i}": 0 for i in range(17)},
    }
    problem = assert_problem(gateway.http.post("/generate", json=body), 422)
    assert len(problem["errors"]) == 20
    assert problem["more_errors"] == 25 - 20
    assert "(and 20 more)" in problem["detail"]


@pytest.mark.parametrize(
    "body",
    [
        '{"architecture": "digits-mlp", "seed": 1, "seed": 2}',
        '{"architecture": "digits-cond", "task": {"positive_classes": ["1"], '
        '"positive_classes": ["2"]}}',
        '{"architecture": "digits-mlp", "architecture": "digits-cond", "bogus": 1}',
    ],
)
def test_duplicate_json_keys_are_refused(gateway: LiveGateway, body: str) -> None:
    response = gateway.http.post(
        "/generate", content=body, headers={"Content-Type": "application/json"}
    )
    problem = assert_problem(response, 400)
    assert problem["type"] == "urn:rpg:problem:duplicate-key"
    assert "more than once" in problem["detail"]
    assert gateway.rq_keys() == []


def test_disconnect_mid_body_is_499_not_500(
    gateway: LiveGateway, caplog: pytest.LogCaptureFixture
) -> None:
    before_499 = requests_counted(gateway, "/generate", 499)
    before_500 = requests_counted(gateway, "/generate", 500)
    caplog.set_level(logging.INFO)
    for _ in range(3):
        sock = raw_connection(gateway)
        sock.sendall(
            b"POST /generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"architecture": "digits-mlp", "seed": '
        )
        time.sleep(0.1)  # let the server start reading the body
        sock.close()
    deadline = time.monotonic() + 5
    while requests_counted(gateway, "/generate", 499) < before_499 + 3:
        assert time.monotonic() < deadline, gateway.http.get("/metrics").text
        time.sleep(0.05)
    assert requests_counted(gateway, "/generate", 500) == before_500
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy]
    assert gateway.rq_keys() == []


def test_slow_request_head_is_closed(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(header_timeout_s=0.5)
    silent = raw_connection(gateway)  # opens and sends nothing
    dripping = raw_connection(gateway)  # sends its head a byte at a time, never finishing
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 100
    began = time.monotonic()
    for byte in head:  # the server hangs up on it part way
        try:
            dripping.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(0.05)
    answer, _ = read_until_closed(dripping, timeout=5)
    assert time.monotonic() - began < 3
    assert answer.startswith(b"HTTP/1.1 408")
    answer, waited = read_until_closed(silent, timeout=5)
    assert answer.startswith(b"HTTP/1.1 408") and waited < 3
    # A prompt client on a kept-alive connection is not affected.
    for _ in range(3):
        assert gateway.http.get("/healthz").status_code == 200
        time.sleep(0.3)


def test_slow_request_body_gets_408_and_closed(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(body_timeout_s=0.5)
    sock = raw_connection(gateway)
    sock.sendall(
        b"POST /generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n" + b'{"architecture"'
    )
    answer, waited = read_until_closed(sock, timeout=5)
    assert waited < 3
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["type"] == "urn:rpg:problem:body-timeout"
    assert gateway.rq_keys() == []


def test_idle_keep_alive_connection_is_closed(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(keep_alive_timeout_s=1)
    sock = raw_connection(gateway)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    answer, waited = read_until_closed(sock, timeout=5)
    assert answer.startswith(b"HTTP/1.1 200")
    assert 0.8 < waited < 3


def test_connections_beyond_the_cap_get_503(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(max_connections=3)
    idle = [raw_connection(gateway) for _ in range(3)]
    time.sleep(0.2)
    sock = raw_connection(gateway)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    answer, _ = read_until_closed(sock, timeout=5)
    assert answer.startswith(b"HTTP/1.1 503")
    for each in idle:
        each.close()
    deadline = time.monotonic() + 5
    while gateway.http.get("/healthz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_endless_request_head_is_refused(gateway_factory: GatewayFactory) -> None:
    # h11 bounds what it buffers of an unfinished head (a complete one is parsed whatever
    # its size, within one read): a head that never ends is cut off, not stored.
    gateway = gateway_factory(max_header_bytes=4096)
    sock = raw_connection(gateway)
    try:
        for _ in range(20):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 1000)
            time.sleep(0.01)
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer, _ = read_until_closed(sock, timeout=5)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert gateway.http.get("/healthz").status_code == 200
