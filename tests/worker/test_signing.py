"""HMAC URL signing and the gateway's path resolution for the local backend."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from worker.signing import (
    SignatureError,
    SignatureExpiredError,
    SignatureInvalidError,
    StorageKeyError,
    resolve_local_path,
    sign,
    signed_url,
    verify,
)

SECRET = "0123456789abcdef-test-secret"
KEY = "jobs/abc123/sample_000.safetensors"
NOW = 1_700_000_000


def _query(url: str) -> tuple[str, str, str]:
    """(key, expires, sig) exactly as the gateway would read them from the URL."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, strict_parsing=True)
    assert parts.path.startswith("/files/")
    return parts.path[len("/files/") :], query["expires"][0], query["sig"][0]


def test_sign_is_hmac_sha256_of_key_newline_expires() -> None:
    # Independent computation of the documented formula.
    expected = hmac.new(SECRET.encode(), f"{KEY}\n{NOW}".encode(), hashlib.sha256).hexdigest()
    assert sign(KEY, NOW, SECRET) == expected
    assert sign(KEY, NOW, SECRET.encode()) == expected


def test_signed_url_round_trip() -> None:
    url = signed_url("http://gw.example:8000/", KEY, SECRET, ttl_s=60, now=NOW)
    assert url.startswith(f"http://gw.example:8000/files/{KEY}?")
    key, expires, sig = _query(url)
    assert key == KEY
    assert int(expires) == NOW + 60
    verify(key, expires, sig, SECRET, now=NOW + 59)
    verify(key, int(expires), sig, SECRET, now=NOW + 60)  # valid through the expiry second


@pytest.mark.parametrize(
    "field, value",
    [
        ("key", "jobs/abc123/sample_001.safetensors"),
        ("key", "jobs/other/sample_000.safetensors"),
        ("expires", str(NOW + 61)),
        ("expires", f"0{NOW + 60}x"),
        ("expires", "-1"),
        ("expires", ""),
        ("sig", "0" * 64),
        ("sig", ""),
        ("sig", "zz"),
        ("sig", "é" * 64),
    ],
)
def test_tampering_is_invalid(field: str, value: str) -> None:
    key, expires, sig = _query(signed_url("http://gw", KEY, SECRET, ttl_s=60, now=NOW))
    parts = {"key": key, "expires": expires, "sig": sig, field: value}
    with pytest.raises(SignatureInvalidError):
        verify(parts["key"], parts["expires"], parts["sig"], SECRET, now=NOW)


def test_flipped_signature_character_is_invalid() -> None:
    key, expires, sig = _query(signed_url("http://gw", KEY, SECRET, ttl_s=60, now=NOW))
    flipped = ("1" if sig[0] == "0" else "0") + sig[1:]
    with pytest.raises(SignatureInvalidError):
        verify(key, expires, flipped, SECRET, now=NOW)
    with pytest.raises(SignatureInvalidError):
        verify(key, expires, sig.upper(), SECRET, now=NOW)


def test_other_secret_is_invalid() -> None:
    key, expires, sig = _query(signed_url("http://gw", KEY, SECRET, ttl_s=60, now=NOW))
    with pytest.raises(SignatureInvalidError):
        verify(key, expires, sig, SECRET + "x", now=NOW)


def test_expired_is_expired_and_both_are_signature_errors() -> None:
    key, expires, sig = _query(signed_url("http://gw", KEY, SECRET, ttl_s=60, now=NOW))
    with pytest.raises(SignatureExpiredError) as info:
        verify(key, expires, sig, SECRET, now=NOW + 61)
    assert isinstance(info.value, SignatureError)
    assert issubclass(SignatureInvalidError, SignatureError)


def test_forged_and_expired_reports_invalid_not_expired() -> None:
    with pytest.raises(SignatureInvalidError):
        verify(KEY, str(NOW), "a" * 64, SECRET, now=NOW + 1000)


def test_constant_time_compare_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    key, expires, sig = _query(signed_url("http://gw", KEY, SECRET, ttl_s=60, now=NOW))
    verify(key, expires, sig, SECRET, now=NOW)
    with pytest.raises(SignatureInvalidError):
        verify(key, expires, "f" * 64, SECRET, now=NOW)
    assert [b for _, b in calls] == [sig, "f" * 64]


def test_signing_refuses_empty_secret_and_bad_ttl() -> None:
    with pytest.raises(ValueError, match="secret"):
        sign(KEY, NOW, "")
    with pytest.raises(ValueError, match="ttl_s"):
        signed_url("http://gw", KEY, SECRET, ttl_s=0, now=NOW)
    with pytest.raises(StorageKeyError):
        signed_url("http://gw", "../etc/passwd", SECRET, ttl_s=60, now=NOW)


def test_resolve_local_path_inside_root(tmp_path: Path) -> None:
    path = resolve_local_path(tmp_path, KEY)
    assert path == (tmp_path / "files" / KEY).resolve()


@pytest.mark.parametrize(
    "key",
    ["../x", "/etc/passwd", "a/../../b", "a/./b", "a//b", "a/", "", "a\\..\\b", ".hidden", "a b"],
)
def test_resolve_local_path_refuses_traversal_and_bad_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(StorageKeyError):
        resolve_local_path(tmp_path, key)


def test_resolve_local_path_refuses_symlink_escaping_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not serve")
    root = tmp_path / "data" / "files"
    root.mkdir(parents=True)
    os.symlink(outside, root / "jobs")
    os.symlink(outside / "secret.txt", root / "leak.txt")
    with pytest.raises(StorageKeyError, match="outside"):
        resolve_local_path(tmp_path / "data", "jobs/secret.txt")
    with pytest.raises(StorageKeyError, match="outside"):
        resolve_local_path(tmp_path / "data", "leak.txt")


def test_resolve_local_path_allows_symlink_within_root(tmp_path: Path) -> None:
    root = tmp_path / "files"
    (root / "real").mkdir(parents=True)
    (root / "real" / "a.bin").write_bytes(b"x")
    os.symlink(root / "real", root / "alias")
    assert resolve_local_path(tmp_path, "alias/a.bin") == (root / "real" / "a.bin").resolve()
