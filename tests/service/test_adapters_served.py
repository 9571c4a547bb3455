"""An adapter generator served like any other: listed with its base and PEFT config, its
jobs' files downloaded by the client into one folder per sample."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from models.adapters.spec import parse_peft_config
from service.client import Client, DownloadError, _safe_name
from tests.service.conftest import GatewayFactory
from tests.service.test_client import sha256, work
from worker.registry import GeneratorCache, discover_generators


def test_listed_with_base_and_config_then_downloaded_as_folders(
    gateway_factory: GatewayFactory, tiny_adapter_bundle: Path, tmp_path: Path
) -> None:
    live = gateway_factory(generators=[str(tiny_adapter_bundle)])
    listed = httpx.get(f"{live.url}/architectures").json()["architectures"]
    (entry,) = [a for a in listed if a["name"] == "digits-lora"]
    adapter = entry["adapter"]
    assert adapter["kind"] == "lora" and adapter["form"] == "canonical"
    assert parse_peft_config(adapter["peft_config"]).r == 2
    assert adapter["base"]["architecture"]["builder"] == "models.zoo.digits:mlp"
    assert len(adapter["base"]["sha256"]) == 64
    assert "weights" not in adapter["base"]  # where the base sits on the server stays there
    assert adapter["files_per_sample"] == ["adapter_config.json", "adapter_model.safetensors"]

    cache = GeneratorCache(discover_generators([str(tiny_adapter_bundle)]), device="cpu")
    cache.warm()
    with Client(live.url) as c:
        job = c.submit("digits-lora", num_samples=2, steps=3, seed=1)
        work(live, cache)
        done = c.get(job)
        paths = c.download(done, tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in paths] == [
        f["name"] for f in done["result"]["files"]
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sample_000", "sample_001"]
    assert [sha256(p) for p in paths] == [f["sha256"] for f in done["result"]["files"]]
    config = json.loads((tmp_path / "out" / "sample_001" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"


@pytest.mark.parametrize(
    "name", ["../x", "a/b/c", ".hidden/x", "sample_000/..", "/abs", "a\\b/c", "sample_000/"]
)
def test_server_file_names_stay_inside_the_download_folder(name: str) -> None:
    with pytest.raises(DownloadError, match="refusing the file name"):
        _safe_name(name)
    assert _safe_name("sample_000/adapter_config.json") == "sample_000/adapter_config.json"
