"""The s3 backend against moto's real HTTP server, with presigned URLs checked like a real store.

The worker talks to moto at ``http://127.0.0.1:<moto>``; clients use the public endpoint
``http://localhost:<gate>``, a checking front (tests/worker/s3_gate.py) that verifies the
SigV4 query signature (Host included) and expiry before forwarding to moto.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest

from tests.worker.s3_gate import PresignedGate
from worker.storage import (
    S3Settings,
    StorageConfigError,
    StorageError,
    StorageKeyError,
    StorageSettings,
    make_storage,
)
from worker.storage.s3 import S3Storage

ENV_KEY, ENV_SECRET = "AKIAENVTESTKEY000001", "env-secret-for-tests"
OTHER_KEY, OTHER_SECRET = "AKIAOTHERTESTKEY0002", "settings-secret-for-tests"


@dataclass
class S3Env:
    internal: str
    public: str
    gate: PresignedGate
    bucket: str


# Module scope: the dummy AWS env vars must not leak into other test modules.
@pytest.fixture(scope="module")
def s3_env() -> Iterator[S3Env]:
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        # Dummy credentials through the default chain; never read the user's AWS config.
        mp.setenv("AWS_ACCESS_KEY_ID", ENV_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        _, port = server.get_host_and_port()
        internal = f"http://127.0.0.1:{port}"
        gate = PresignedGate(internal, {ENV_KEY: ENV_SECRET, OTHER_KEY: OTHER_SECRET})
        gate.start()
        admin = boto3.client("s3", endpoint_url=internal, region_name="us-east-1")
        admin.create_bucket(Bucket="rpg-test")
        try:
            yield S3Env(internal, f"http://localhost:{gate.port}", gate, "rpg-test")
        finally:
            gate.stop()
            server.stop()


@pytest.fixture
def gate(s3_env: S3Env) -> Iterator[PresignedGate]:
    s3_env.gate.clock_offset_s = 0.0
    s3_env.gate.refusals.clear()
    yield s3_env.gate
    s3_env.gate.clock_offset_s = 0.0


def _settings(env: S3Env, **overrides: Any) -> S3Settings:
    base = S3Settings(
        bucket=env.bucket,
        endpoint_url=env.internal,
        public_endpoint_url=env.public,
        region="us-east-1",
        addressing_style="path",
        key_prefix="outputs",
        url_ttl_s=600,
    )
    return replace(base, **overrides)


def _storage(env: S3Env, **overrides: Any) -> S3Storage:
    built = make_storage(StorageSettings(backend="s3", s3=_settings(env, **overrides)))
    assert isinstance(built, S3Storage)
    return built


def _upload(storage: S3Storage, tmp_path: Path, size: int = 4096) -> tuple[str, bytes]:
    data = os.urandom(size)
    source = tmp_path / "sample.safetensors"
    source.write_bytes(data)
    key = f"jobs/{uuid.uuid4().hex}/sample_000.safetensors"
    storage.put(source, key)
    return key, data


def test_put_then_download_presigned_url(
    s3_env: S3Env, gate: PresignedGate, tmp_path: Path
) -> None:
    storage = _storage(s3_env)
    key, data = _upload(storage, tmp_path)
    url = storage.url(key)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == s3_env.public
    assert parts.path == f"/{s3_env.bucket}/outputs/{key}"  # path-style addressing
    response = httpx.get(url)
    assert response.status_code == 200, (response.text, gate.refusals)
    assert response.content == data
    assert gate.refusals == []


def test_object_carries_sha256_metadata(s3_env: S3Env, tmp_path: Path) -> None:
    storage = _storage(s3_env)
    key, data = _upload(storage, tmp_path)
    admin = boto3.client("s3", endpoint_url=s3_env.internal, region_name="us-east-1")
    head = admin.head_object(Bucket=s3_env.bucket, Key=f"outputs/{key}")
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert head["ContentLength"] == len(data)


def test_url_is_only_valid_for_the_host_it_was_signed_for(
    s3_env: S3Env, gate: PresignedGate, tmp_path: Path
) -> None:
    storage = _storage(s3_env)
    key, _ = _upload(storage, tmp_path)
    url = storage.url(key)
    # Same server, other spelling of its address: the Host header no longer matches.
    moved = url.replace("http://localhost:", "http://127.0.0.1:", 1)
    assert httpx.get(moved).status_code == 403
    tampered = url.replace("sample_000", "sample_001", 1)
    assert httpx.get(tampered).status_code == 403
    assert gate.refusals == ["SignatureDoesNotMatch", "SignatureDoesNotMatch"]


def test_expired_presigned_url_fails(s3_env: S3Env, gate: PresignedGate, tmp_path: Path) -> None:
    short = _storage(s3_env, url_ttl_s=1)
    key, data = _upload(short, tmp_path)
    url = short.url(key)
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["1"]
    long_url = _storage(s3_env).url(key)  # 600 s
    # The store's clock two seconds later (instead of sleeping): only the 1 s URL is dead.
    gate.clock_offset_s = 2.0
    assert httpx.get(url).status_code == 403
    assert gate.refusals == ["AccessDenied: Request has expired"]
    assert httpx.get(long_url).content == data


def test_credentials_from_settings_override_the_default_chain(
    s3_env: S3Env, gate: PresignedGate, tmp_path: Path
) -> None:
    storage = _storage(s3_env, access_key_id=OTHER_KEY, secret_access_key=OTHER_SECRET)
    key, data = _upload(storage, tmp_path)
    url = storage.url(key)
    credential = parse_qs(urlsplit(url).query)["X-Amz-Credential"][0]
    assert credential.startswith(f"{OTHER_KEY}/")
    assert httpx.get(url).content == data
    env_url = _storage(s3_env).url(key)
    assert parse_qs(urlsplit(env_url).query)["X-Amz-Credential"][0].startswith(f"{ENV_KEY}/")


def test_create_bucket_when_missing(s3_env: S3Env, gate: PresignedGate, tmp_path: Path) -> None:
    bucket = f"fresh-{uuid.uuid4().hex[:12]}"
    with pytest.raises(StorageError, match=bucket):
        _upload(_storage(s3_env, bucket=bucket), tmp_path)
    storage = _storage(s3_env, bucket=bucket, create_bucket=True)
    key, data = _upload(storage, tmp_path)
    assert httpx.get(storage.url(key)).content == data
    # A second worker finds it already there.
    _upload(_storage(s3_env, bucket=bucket, create_bucket=True), tmp_path)


def test_put_many_uploads_each(s3_env: S3Env, gate: PresignedGate, tmp_path: Path) -> None:
    storage = _storage(s3_env, key_prefix="")
    job = uuid.uuid4().hex
    files = []
    for i in range(2):
        path = tmp_path / f"s{i}.bin"
        path.write_bytes(os.urandom(100 + i))
        files.append((path, f"jobs/{job}/sample_{i:03d}.safetensors"))
    result = storage.put_many(files)
    assert result.version is None and result.keys == tuple(k for _, k in files)
    for path, key in files:
        url = storage.url(key)
        assert urlsplit(url).path == f"/{s3_env.bucket}/{key}"
        assert httpx.get(url).content == path.read_bytes()


def test_bad_keys_rejected_before_any_request(s3_env: S3Env, tmp_path: Path) -> None:
    storage = _storage(s3_env)
    source = tmp_path / "a.bin"
    source.write_bytes(b"a")
    for key in ("../x", "/etc/passwd", "a//b", "a\\b"):
        with pytest.raises(StorageKeyError):
            storage.put(source, key)
        with pytest.raises(StorageKeyError):
            storage.url(key)


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        ({"url_ttl_s": 0}, StorageConfigError, "url_ttl_s"),
        ({"url_ttl_s": 8 * 24 * 3600}, StorageConfigError, "7 days"),
        ({"addressing_style": "sideways"}, StorageConfigError, "addressing_style"),
        ({"bucket": ""}, StorageConfigError, "bucket"),
        ({"key_prefix": "../up"}, StorageKeyError, "segment"),
    ],
)
def test_bad_settings_rejected(
    s3_env: S3Env, overrides: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        _storage(s3_env, **overrides)


def test_delete_many_makes_the_urls_fail(
    s3_env: S3Env, gate: PresignedGate, tmp_path: Path
) -> None:
    storage = _storage(s3_env)
    key, data = _upload(storage, tmp_path)
    url = storage.url(key)
    assert httpx.get(url).content == data
    storage.delete_many([key])
    assert httpx.get(url).status_code == 404
    storage.delete_many([key])  # deleting twice is fine
