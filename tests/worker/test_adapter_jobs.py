"""A job of an adapter generator: each sample's PEFT folder is uploaded, named by its path."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import redis
import torch

from models.adapters.spec import parse_peft_config
from worker.queue import JobRequest, JobStatus, enqueue, get_job
from worker.registry import GeneratorCache, discover_generators
from worker.runtime import run_worker
from worker.settings import Settings


def test_adapter_job_uploads_peft_folders(
    connection: redis.Redis,
    make_settings: Callable[..., Settings],
    tiny_adapter_bundle: Path,
) -> None:
    settings = make_settings(generators=[str(tiny_adapter_bundle)])
    cache = GeneratorCache(discover_generators([str(tiny_adapter_bundle)]), device="cpu")
    cache.warm()
    request = JobRequest(architecture="digits-lora", seed=5, steps=3, num_samples=2)  # type: ignore[call-arg]
    job_id = enqueue(connection, request, settings=settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_worker(settings, burst=True, connection=connection, cache=cache)
    finally:
        torch.set_num_threads(threads)
    view = get_job(connection, job_id, settings=settings)
    assert view is not None and view.status is JobStatus.SUCCEEDED, view and view.error
    assert view.result is not None
    files = view.result["files"]
    assert [f["name"] for f in files] == [
        "sample_000/adapter_config.json",
        "sample_000/adapter_model.safetensors",
        "sample_001/adapter_config.json",
        "sample_001/adapter_model.safetensors",
    ]
    for entry in files:
        path = settings.data_dir / "files" / "jobs" / job_id / entry["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert f"/files/jobs/{job_id}/{entry['name']}?" in entry["url"]
    config = settings.data_dir / "files" / "jobs" / job_id / "sample_000" / "adapter_config.json"
    assert parse_peft_config(json.loads(config.read_text())).r == 2
    assert files[0]["num_parameters"] == 0 and files[1]["num_parameters"] > 0
