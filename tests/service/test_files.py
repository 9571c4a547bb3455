"""GET /files/{key}: signed, expiring downloads of the local backend; tampering, traversal, Range."""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.service.conftest import SECRET, GatewayFactory, LiveGateway, assert_problem
from worker.signing import sign, signed_url

KEY = "jobs/abc123/sample_000.safetensors"


@pytest.fixture
def stored(gateway: LiveGateway) -> bytes:
    """A file stored by the local backend under KEY (random bytes)."""
    content = os.urandom(10_000)
    path = Path(gateway.settings.data_dir) / "files" / KEY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return content


def url_for(gateway: LiveGateway, key: str = KEY, ttl_s: int = 60, now: float | None = None) -> str:
    """The path + query a worker would hand out."""
    full = signed_url(gateway.url, key, SECRET, ttl_s, now=now)
    parts = urlsplit(full)
    return f"{parts.path}?{parts.query}"


def test_signed_download_streams_the_file(gateway: LiveGateway, stored: bytes) -> None:
    response = gateway.http.get(url_for(gateway))
    assert response.status_code == 200
    assert response.content == stored
    assert response.headers["content-type"] == "application/octet-stream"
    assert "sample_000.safetensors" in response.headers["content-disposition"]
    assert response.headers["accept-ranges"] == "bytes"


def test_head_gives_the_size(gateway: LiveGateway, stored: bytes) -> None:
    response = gateway.http.head(url_for(gateway))
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(stored)
    assert response.content == b""


def test_single_range_is_206(gateway: LiveGateway, stored: bytes) -> None:
    response = gateway.http.get(url_for(gateway), headers={"Range": "bytes=100-199"})
    assert response.status_code == 206
    assert response.content == stored[100:200]
    assert response.headers["content-range"] == f"bytes 100-199/{len(stored)}"
    suffix = gateway.http.get(url_for(gateway), headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206
    assert suffix.content == stored[-10:]


def test_unsatisfiable_range_is_416(gateway: LiveGateway, stored: bytes) -> None:
    response = gateway.http.get(url_for(gateway), headers={"Range": f"bytes={len(stored) + 5}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(stored)}"


def _tamper(url: str, part: str) -> str:
    path, query = url.split("?")
    params = {k: v[0] for k, v in parse_qs(query).items()}
    if part == "sig":
        params["sig"] = ("0" if params["sig"][0] != "0" else "1") + params["sig"][1:]
    elif part == "expires":
        params["expires"] = str(int(params["expires"]) + 3600)
    elif part == "key":
        path = path.replace("sample_000", "sample_001")
    elif part == "no-sig":
        params.pop("sig")
    elif part == "no-query":
        return path
    elif part == "upper-sig":
        params["sig"] = params["sig"].upper()
    return f"{path}?{'&'.join(f'{k}={v}' for k, v in params.items())}"


@pytest.mark.parametrize("part", ["sig", "expires", "key", "no-sig", "no-query", "upper-sig"])
def test_tampered_or_missing_signature_is_403(
    gateway: LiveGateway, stored: bytes, part: str
) -> None:
    other = Path(gateway.settings.data_dir) / "files" / KEY.replace("sample_000", "sample_001")
    other.write_bytes(b"secret")
    problem = assert_problem(gateway.http.get(_tamper(url_for(gateway), part)), 403)
    assert "signature is not valid" in problem["detail"]


def test_expired_link_is_410_with_a_clear_problem(gateway: LiveGateway, stored: bytes) -> None:
    old = url_for(gateway, ttl_s=10, now=time.time() - 100)
    problem = assert_problem(gateway.http.get(old), 410)
    assert "expired" in problem["detail"]
    assert "GET /jobs" in problem["detail"]


def test_signed_url_for_a_missing_file_is_404(gateway: LiveGateway) -> None:
    assert_problem(gateway.http.get(url_for(gateway, key="jobs/none/sample_000.safetensors")), 404)


@pytest.mark.parametrize(
    "raw_path",
    [
        "/files/../signing_secret",
        "/files/%2e%2e/signing_secret",
        "/files/jobs/..%2F..%2Fsigning_secret",
        "/files//etc/passwd",
        "/files/.hidden",
    ],
)
def test_path_traversal_is_refused_even_when_signed(gateway: LiveGateway, raw_path: str) -> None:
    import socket
    from urllib.parse import unquote

    secret_file = Path(gateway.settings.data_dir) / "signing_secret"
    secret_file.parent.mkdir(parents=True, exist_ok=True)
    secret_file.write_text("top secret")
    key = unquote(raw_path.removeprefix("/files/"))
    expires = int(time.time()) + 60
    # Even a correct signature over the escaping key must not reach the file.
    target = f"{raw_path}?expires={expires}&sig={sign(key, expires, SECRET)}"
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection(
        (host, int(port)), timeout=10
    ) as sock:  # raw: no client-side normalisation
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert status in (400, 403, 404)
    assert b"top secret" not in reply


def test_files_are_not_served_for_other_backends(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(storage="s3", s3_bucket="bucket")
    problem = assert_problem(gateway.http.get(f"/files/{KEY}?expires=1&sig={'0' * 64}"), 404)
    assert "s3" in problem["detail"]
