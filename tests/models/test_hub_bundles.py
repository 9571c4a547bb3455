"""`hf://` bundles through the real huggingface_hub client against a local Hub double over
real HTTP (tests/worker/hub_double.py): every load is pinned to one commit, the weights'
sha256 recorded in config.json is checked after download, and the local cache serves
pinned and unpinned ids with HF_HUB_OFFLINE once the Hub is gone."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants

from models.bundle import BundleError
from models.generator import Generator
from tests.worker.hub_double import HubDouble
from worker.registry import survey_generators

TOKEN = "hf_test_token_123"
REPO = "rpg-org/digits-bundle"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubDouble]:
    """A Hub double as huggingface_hub's endpoint, with a cache of this test's own."""
    server = HubDouble(token=TOKEN)
    server.start()
    # What HF_ENDPOINT sets when huggingface_hub is imported.
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        server.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield server
    server.stop()


def _push(api: HfApi, folder: Path, message: str) -> str:
    info = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message=message)
    return str(info.oid)


def _bundle(tiny_bundle: Path, tmp_path: Path, name: str) -> Path:
    out = tmp_path / f"push-{len(list(tmp_path.glob('push-*')))}"
    shutil.copytree(tiny_bundle, out, ignore=shutil.ignore_patterns("training_state*"))
    config = json.loads((out / "config.json").read_text())
    config["name"] = name
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_hub_bundles_are_pinned_checked_and_cached(
    hub: HubDouble, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(REPO)
    first = _push(api, _bundle(tiny_bundle, tmp_path, "first"), "first")
    loaded = Generator.from_pretrained(f"hf://{REPO}")
    assert (loaded.name, loaded.source) == ("first", f"hf://{REPO}@{first}")

    # A later push moves main; the registry pins what it read, a pinned id stays put.
    second = _push(api, _bundle(tiny_bundle, tmp_path, "second"), "second")
    survey = survey_generators([f"hf://{REPO}"])
    assert survey.sources["second"].source == f"hf://{REPO}@{second}"
    assert Generator.from_pretrained(f"hf://{REPO}@{first}").name == "first"

    # Weights changed in the repo but config.json's sha256 not: refused after download.
    tampered = _bundle(tiny_bundle, tmp_path, "second")
    weights = bytearray((tampered / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (tampered / "model.safetensors").write_bytes(bytes(weights))
    third = _push(api, tampered, "tampered weights")
    with pytest.raises(BundleError, match="sha256"):
        Generator.from_pretrained(f"hf://{REPO}")
    assert Generator.from_pretrained(f"hf://{REPO}@{second}").name == "second"
    # Downloads used only endpoints the double answers (uploads also ask for its telemetry).
    assert [u for u in hub.unhandled if "/resolve/" in u] == []

    # The Hub gone: offline, the cache serves pinned ids and main's last known commit.
    hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert Generator.from_pretrained(f"hf://{REPO}@{first}").source == f"hf://{REPO}@{first}"
    with pytest.raises(BundleError, match="sha256"):  # main is the tampered commit
        Generator.from_pretrained(f"hf://{REPO}")
    with pytest.raises(BundleError, match="could not fetch"):
        Generator.from_pretrained("hf://rpg-org/never-downloaded")
    assert third != second != first
