"""The hub backend through the real huggingface_hub client against a local Hub double.

The double (tests/worker/hub_double.py) answers "regular" to every preupload request, so
huggingface_hub sends file contents inline in the commit instead of through LFS/Xet.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.worker.hub_double import HubDouble
from worker.storage import (
    HubSettings,
    StorageConfigError,
    StorageError,
    StorageKeyError,
    StorageSettings,
    make_storage,
)
from worker.storage.hub import HubStorage

TOKEN = "hf_test_token_123"


@pytest.fixture(scope="module")
def double() -> Iterator[HubDouble]:
    server = HubDouble(token=TOKEN)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hub(double: HubDouble) -> Iterator[HubDouble]:
    yield double
    assert double.unhandled == [], "huggingface_hub called endpoints the double lacks"


def _settings(double: HubDouble, **overrides: Any) -> HubSettings:
    base = HubSettings(
        repo_id=f"rpg-org/outputs-{uuid.uuid4().hex[:8]}", endpoint=double.url + "/", token=TOKEN
    )
    return replace(base, **overrides)


def _storage(settings: HubSettings) -> HubStorage:
    built = make_storage(StorageSettings(backend="hub", hub=settings))
    assert isinstance(built, HubStorage)
    return built


def _job_files(tmp_path: Path, job: str, count: int = 3) -> list[tuple[Path, str]]:
    files = []
    for i in range(count):
        path = tmp_path / f"{job}-{i}.safetensors"
        path.write_bytes(os.urandom(200 + i))
        files.append((path, f"jobs/{job}/sample_{i:03d}.safetensors"))
    return files


def _front_matter_and_body(card: str) -> tuple[dict[str, Any], str]:
    assert card.startswith("---\n")
    _, meta, body = card.split("---\n", 2)
    return yaml.safe_load(meta), body


def test_put_many_is_one_commit_with_card_and_pinned_urls(hub: HubDouble, tmp_path: Path) -> None:
    settings = _settings(hub)
    storage = _storage(settings)
    files = _job_files(tmp_path, "job1")
    generation = {"architecture": "digits-mlp", "seed": 7, "steps": 20, "note": "a ``` b"}
    result = storage.put_many(files, message="job job1: 3 samples", generation=generation)

    repo = hub.repo(settings.repo_id)
    assert repo.private is False
    history = repo.history()
    assert len(history) == 2  # the repo's initial commit, then exactly one for the job
    commit = history[-1]
    assert result.version == commit.oid == repo.branches["main"]
    assert result.keys == tuple(key for _, key in files)
    assert commit.summary == "job job1: 3 samples"
    assert commit.added == sorted([key for _, key in files] + ["jobs/job1/README.md"])

    for path, key in files:
        url = storage.url(key)
        assert url == f"{hub.url}/{settings.repo_id}/resolve/{commit.oid}/{key}"
        assert storage.url(key, version=result.version) == url
        response = httpx.get(url)  # public repo: no token needed
        assert response.status_code == 200
        assert response.content == path.read_bytes()

    card_url = f"{hub.url}/{settings.repo_id}/resolve/{commit.oid}/jobs/job1/README.md"
    meta, body = _front_matter_and_body(httpx.get(card_url).text)
    assert meta["library_name"] == "pytorch"
    assert {"rpg", "generated-weights"} <= set(meta["tags"])
    for path, key in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"| `{key.rsplit('/', 1)[1]}` | {path.stat().st_size} | `{digest}` |" in body
    fenced = body.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(fenced) == generation
    assert body.count("```") == 2  # the value's backticks did not open or close a fence


def test_urls_stay_pinned_when_a_path_is_overwritten(hub: HubDouble, tmp_path: Path) -> None:
    storage = _storage(_settings(hub))
    key = "jobs/same/sample_000.safetensors"
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(b"first version")
    second.write_bytes(b"second version, longer")
    v1 = storage.put_many([(first, key)]).version
    v2 = storage.put_many([(second, key)]).version
    assert v1 is not None and v2 is not None and v1 != v2
    assert httpx.get(storage.url(key, version=v1)).content == b"first version"
    assert httpx.get(storage.url(key)).content == b"second version, longer"


def test_url_in_another_process_needs_the_version(hub: HubDouble, tmp_path: Path) -> None:
    settings = _settings(hub)
    files = _job_files(tmp_path, "job2", count=1)
    version = _storage(settings).put_many(files).version
    assert version is not None
    gateway = _storage(settings)  # a fresh instance remembers nothing
    key = files[0][1]
    with pytest.raises(StorageError, match="version="):
        gateway.url(key)
    assert httpx.get(gateway.url(key, version=version)).content == files[0][0].read_bytes()
    with pytest.raises(StorageError, match="commit id"):
        gateway.url(key, version="main")


def test_private_repo_with_prefix_needs_token_to_download(hub: HubDouble, tmp_path: Path) -> None:
    settings = _settings(hub, private=True, path_prefix="/rpg/")
    storage = _storage(settings)
    files = _job_files(tmp_path, "job3", count=1)
    version = storage.put_many(files).version
    repo = hub.repo(settings.repo_id)
    assert repo.private is True
    assert repo.commits[repo.branches["main"]].added == [
        "rpg/jobs/job3/README.md",
        "rpg/jobs/job3/sample_000.safetensors",
    ]
    url = storage.url(files[0][1])
    assert url == f"{hub.url}/{settings.repo_id}/resolve/{version}/rpg/{files[0][1]}"
    assert httpx.get(url).status_code == 401
    authorized = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert authorized.content == files[0][0].read_bytes()


def test_existing_repo_is_reused_by_a_second_worker(hub: HubDouble, tmp_path: Path) -> None:
    settings = _settings(hub)
    _storage(settings).put_many(_job_files(tmp_path, "a", count=1))
    _storage(settings).put_many(_job_files(tmp_path, "b", count=1))
    assert len(hub.repo(settings.repo_id).history()) == 3


def test_single_put_commits_only_the_file(hub: HubDouble, tmp_path: Path) -> None:
    settings = _settings(hub)
    storage = _storage(settings)
    ((path, key),) = _job_files(tmp_path, "single", count=1)
    storage.put(path, key)
    repo = hub.repo(settings.repo_id)
    assert repo.commits[repo.branches["main"]].added == [key]
    assert httpx.get(storage.url(key)).content == path.read_bytes()


def test_wrong_token_is_a_storage_error(hub: HubDouble, tmp_path: Path) -> None:
    settings = _settings(hub, token="hf_wrong")
    with pytest.raises(StorageError, match=settings.repo_id):
        _storage(settings).put_many(_job_files(tmp_path, "denied", count=1))
    assert (settings.repo_type, settings.repo_id) not in hub.repos


def test_missing_repo_without_create_is_a_storage_error(hub: HubDouble, tmp_path: Path) -> None:
    settings = _settings(hub, create_repo=False)
    with pytest.raises(StorageError, match="hub commit"):
        _storage(settings).put_many(_job_files(tmp_path, "nowhere", count=1))


def test_batches_need_a_folder_and_no_card_collision(hub: HubDouble, tmp_path: Path) -> None:
    settings = _settings(hub)
    storage = _storage(settings)
    source = tmp_path / "a.bin"
    source.write_bytes(b"a")
    with pytest.raises(StorageKeyError, match="share a folder"):
        storage.put_many([(source, "a.bin")])
    with pytest.raises(StorageKeyError, match="model card"):
        storage.put_many([(source, "jobs/x/README.md")])
    with pytest.raises(StorageKeyError):
        storage.put_many([(source, "jobs/../x.bin")])
    assert (settings.repo_type, settings.repo_id) not in hub.repos  # nothing was sent


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"repo_id": "no-namespace"}, StorageConfigError),
        ({"repo_id": "a/b/c"}, StorageConfigError),
        ({"repo_type": "space"}, StorageConfigError),
        ({"path_prefix": "a/../b"}, StorageKeyError),
    ],
)
def test_bad_settings_rejected(
    hub: HubDouble, overrides: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        _storage(_settings(hub, **overrides))


def test_delete_many_removes_files_and_card_from_the_branch(hub: HubDouble, tmp_path: Path) -> None:
    settings = _settings(hub)
    storage = _storage(settings)
    files = _job_files(tmp_path, "gone", count=2)
    version = storage.put_many(files).version
    keys = [key for _, key in files]
    storage.delete_many(keys, version=version)
    repo = hub.repo(settings.repo_id)
    head = repo.commits[repo.branches["main"]]
    assert not [path for path in head.tree if path.startswith("jobs/gone/")]
    assert httpx.get(f"{hub.url}/{settings.repo_id}/resolve/main/{keys[0]}").status_code == 404
    commits = len(repo.history())
    storage.delete_many(keys, version=version)  # nothing left: no empty commit
    assert len(repo.history()) == commits


def test_adapter_jobs_commit_peft_folders_with_a_peft_card(hub: HubDouble, tmp_path: Path) -> None:
    settings = _settings(hub)
    storage = _storage(settings)
    files = []
    for i in range(2):
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            path = tmp_path / f"{i}-{name}"
            path.write_bytes(os.urandom(64))
            files.append((path, f"jobs/jobA/sample_{i:03d}/{name}"))
    generation = {"architecture": "digits-lora", "adapter": {"base_model": "org/base-net"}}
    result = storage.put_many(files, message="adapters", generation=generation)
    commit = hub.repo(settings.repo_id).history()[-1]
    assert commit.added == sorted([key for _, key in files] + ["jobs/jobA/README.md"])
    card_url = f"{hub.url}/{settings.repo_id}/resolve/{result.version}/jobs/jobA/README.md"
    meta, body = _front_matter_and_body(httpx.get(card_url).text)
    assert meta["library_name"] == "peft" and meta["base_model"] == "org/base-net"
    assert {"lora", "peft"} <= set(meta["tags"])
    assert 'subfolder="jobs/jobA/sample_000"' in body
    assert "| `sample_001/adapter_model.safetensors` |" in body
    # Without a Hub id for the base, the card names no base_model.
    generation = {"architecture": "digits-lora", "adapter": {"base_model": None}}
    files2 = [(p, k.replace("jobA", "jobB")) for p, k in files]
    result = storage.put_many(files2, message="adapters", generation=generation)
    card_url = f"{hub.url}/{settings.repo_id}/resolve/{result.version}/jobs/jobB/README.md"
    meta, _ = _front_matter_and_body(httpx.get(card_url).text)
    assert meta["library_name"] == "peft" and "base_model" not in meta
