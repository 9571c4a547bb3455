"""The local backend: atomic writes under <data_dir>/files and signed gateway URLs."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from worker.signing import SignatureInvalidError, resolve_local_path, verify
from worker.storage import (
    LocalSettings,
    PutResult,
    StorageConfigError,
    StorageError,
    StorageKeyError,
    StorageSettings,
    make_storage,
)
from worker.storage.local import LocalStorage

SECRET = "local-test-secret-0123456789"


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    settings = LocalSettings(
        data_dir=tmp_path / "data", secret=SECRET, public_base_url="http://gw.test:8000/"
    )
    built = make_storage(StorageSettings(backend="local", local=settings))
    assert isinstance(built, LocalStorage)
    return built


def _source(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_put_writes_bytes_under_files_root(storage: LocalStorage, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several copy blocks
    storage.put(_source(tmp_path, "a.bin", data), "jobs/j1/sample_000.safetensors")
    stored = tmp_path / "data" / "files" / "jobs" / "j1" / "sample_000.safetensors"
    assert stored.read_bytes() == data
    assert stat.S_IMODE(stored.stat().st_mode) == 0o644


def test_put_replaces_atomically_and_leaves_no_temp_file(
    storage: LocalStorage, tmp_path: Path
) -> None:
    key = "jobs/j1/sample_000.safetensors"
    storage.put(_source(tmp_path, "old.bin", b"old"), key)
    storage.put(_source(tmp_path, "new.bin", b"new contents"), key)
    folder = tmp_path / "data" / "files" / "jobs" / "j1"
    assert sorted(p.name for p in folder.iterdir()) == ["sample_000.safetensors"]
    assert (folder / "sample_000.safetensors").read_bytes() == b"new contents"


def test_failed_copy_leaves_neither_temp_nor_partial_file(
    storage: LocalStorage, tmp_path: Path
) -> None:
    folder = tmp_path / "data" / "files" / "jobs" / "j2"
    source = _source(tmp_path, "a.bin", b"abc")
    # os.replace onto a non-empty directory fails after the temp file was written and synced.
    (folder / "target" / "occupied").mkdir(parents=True)
    with pytest.raises(StorageError, match="could not write"):
        storage.put(source, "jobs/j2/target")
    assert [p.name for p in folder.iterdir()] == ["target"]
    assert [p.name for p in (folder / "target").iterdir()] == ["occupied"]


def test_url_is_signed_and_points_at_the_gateway(storage: LocalStorage, tmp_path: Path) -> None:
    key = "jobs/j1/sample_000.safetensors"
    storage.put(_source(tmp_path, "a.bin", b"weights"), key)
    url = storage.url(key)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "gw.test:8000", f"/files/{key}")
    query = parse_qs(parts.query)
    # What the gateway does with the request:
    verify(key, query["expires"][0], query["sig"][0], SECRET)
    assert resolve_local_path(tmp_path / "data", key).read_bytes() == b"weights"
    with pytest.raises(SignatureInvalidError):
        verify("jobs/j1/other.safetensors", query["expires"][0], query["sig"][0], SECRET)


def test_put_many_puts_each_and_has_no_version(storage: LocalStorage, tmp_path: Path) -> None:
    files = [
        (_source(tmp_path, f"s{i}.bin", bytes([i]) * 10), f"jobs/j3/sample_{i:03d}.safetensors")
        for i in range(3)
    ]
    result = storage.put_many(files, message="ignored", generation={"seed": 1})
    assert result == PutResult(keys=tuple(k for _, k in files), version=None)
    for i, (_, key) in enumerate(files):
        assert (tmp_path / "data" / "files" / key).read_bytes() == bytes([i]) * 10
    with pytest.raises(StorageError, match="no versions"):
        storage.url(files[0][1], version="abc")


def test_put_many_validates_whole_batch_first(storage: LocalStorage, tmp_path: Path) -> None:
    good = (_source(tmp_path, "g.bin", b"g"), "jobs/j4/good.bin")
    with pytest.raises(StorageKeyError):
        storage.put_many([good, (good[0], "jobs/../evil.bin")])
    with pytest.raises(StorageKeyError, match="twice"):
        storage.put_many([good, good])
    assert not (tmp_path / "data" / "files" / "jobs" / "j4").exists()


@pytest.mark.parametrize(
    "key",
    [
        "../escape.bin",
        "/abs/path.bin",
        "a/../../b",
        "a\\b",
        "a//b",
        "trailing/",
        "",
        "jobs/.hidden",
        "jobs/sp ace",
        "jobs/ümlaut",
        "jobs/q?x=1",
        "x" * 600,
    ],
)
def test_bad_keys_rejected(storage: LocalStorage, tmp_path: Path, key: str) -> None:
    source = _source(tmp_path, "a.bin", b"a")
    with pytest.raises(StorageKeyError, match="key"):
        storage.put(source, key)
    with pytest.raises(StorageKeyError):
        storage.url(key)
    assert not (tmp_path / "data" / "files").exists() or not any(
        (tmp_path / "data" / "files").rglob("*")
    )


def test_put_refuses_symlinked_folder_out_of_root(storage: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "data" / "files"
    root.mkdir(parents=True)
    os.symlink(outside, root / "jobs")
    with pytest.raises(StorageKeyError, match="outside"):
        storage.put(_source(tmp_path, "a.bin", b"a"), "jobs/x.bin")
    assert list(outside.iterdir()) == []


def test_missing_source_is_a_storage_error(storage: LocalStorage, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not a regular file"):
        storage.put(tmp_path / "nope.bin", "jobs/a.bin")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"secret": "short"}, "at least 16"),
        ({"url_ttl_s": 0}, "url_ttl_s"),
        ({"public_base_url": "gw:8000"}, "public_base_url"),
    ],
)
def test_bad_settings_rejected(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"data_dir": tmp_path, "secret": SECRET}
    settings = LocalSettings(**{**base, **kwargs})  # type: ignore[arg-type]
    with pytest.raises(StorageConfigError, match=match):
        make_storage(StorageSettings(backend="local", local=settings))


def test_factory_needs_the_chosen_section() -> None:
    with pytest.raises(StorageConfigError, match=r"StorageSettings\.local"):
        make_storage(StorageSettings(backend="local"))
    with pytest.raises(StorageConfigError, match="unknown storage backend"):
        make_storage(StorageSettings(backend="ftp"))  # type: ignore[arg-type]


def test_delete_many_removes_the_files_and_their_folder(
    storage: LocalStorage, tmp_path: Path
) -> None:
    keys = [f"jobs/j1/sample_{i:03d}.safetensors" for i in range(2)]
    storage.put_many([(_source(tmp_path, f"s{i}", b"x" * (i + 1)), k) for i, k in enumerate(keys)])
    storage.put(_source(tmp_path, "other", b"other"), "jobs/j2/sample_000.safetensors")
    folder = resolve_local_path(tmp_path / "data", keys[0]).parent
    assert folder.is_dir()
    storage.delete_many(keys)
    assert not folder.exists()
    assert resolve_local_path(tmp_path / "data", "jobs/j2/sample_000.safetensors").is_file()
    storage.delete_many(keys)  # again: nothing left to delete is fine
    with pytest.raises(StorageKeyError):
        storage.delete_many(["../escape"])


def test_delete_many_removes_an_adapter_jobs_sample_folders_too(
    storage: LocalStorage, tmp_path: Path
) -> None:
    keys = [
        f"jobs/j3/sample_000/{name}"
        for name in ("adapter_config.json", "adapter_model.safetensors")
    ]
    storage.put_many([(_source(tmp_path, f"a{i}", b"x"), k) for i, k in enumerate(keys)])
    job_folder = resolve_local_path(tmp_path / "data", keys[0]).parent.parent
    assert job_folder.is_dir()
    storage.delete_many(keys)
    assert not job_folder.exists() and job_folder.parent.is_dir()  # jobs/ stays
