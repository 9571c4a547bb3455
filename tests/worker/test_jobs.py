"""Generation jobs run by an in-process burst worker against the real test Redis."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import torch
from rq import Queue
from rq.serializers import JSONSerializer
from safetensors import safe_open
from safetensors.torch import load_file

from models.zoo.store import build_module
from worker.queue import (
    JOB_FUNCTION,
    JobRequest,
    JobStatus,
    JobView,
    cancel,
    enqueue,
    get_job,
)
from worker.settings import Settings

SettingsFactory = Callable[..., Settings]
Burst = Callable[[Settings], bool]


def request(**fields: object) -> JobRequest:
    return JobRequest(**{"architecture": "digits-mlp", "seed": 11, "steps": 5, **fields})  # type: ignore[arg-type]


def finished(connection: redis.Redis, job_id: str, settings: Settings) -> JobView:
    view = get_job(connection, job_id, settings=settings)
    assert view is not None
    return view


def local_file(settings: Settings, job_id: str, name: str) -> Path:
    return settings.data_dir / "files" / "jobs" / job_id / name


def test_happy_path_files_hashes_metadata_and_strict_load(
    connection: redis.Redis, make_settings: SettingsFactory, run_burst: Burst
) -> None:
    settings = make_settings()
    job_id = enqueue(connection, request(num_samples=2), settings=settings)
    assert run_burst(settings)
    view = finished(connection, job_id, settings)
    assert view.status is JobStatus.SUCCEEDED, view.error
    assert view.progress == 1.0 and view.attempts == 1 and view.finished_at
    assert view.result is not None
    files = view.result["files"]
    assert [f["name"] for f in files] == ["sample_000.safetensors", "sample_001.safetensors"]
    assert view.result["seed"] == 11
    assert view.result["generator_id"].startswith("digits-mlp@")
    assert view.result["storage_version"] is None
    timings = view.result["timings"]
    assert set(timings) == {"queue_wait_s", "load_s", "sample_s", "write_s", "upload_s", "total_s"}
    assert timings["load_s"] == 0.0  # warm: loaded at worker start, not per job
    assert timings["total_s"] >= timings["sample_s"] + timings["write_s"] + timings["upload_s"]
    for entry in files:
        path = local_file(settings, job_id, entry["name"])
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["size_bytes"]
        assert f"/files/jobs/{job_id}/{entry['name']}?" in entry["url"] and "sig=" in entry["url"]
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
        assert meta["format"] == "pt" and meta["job_id"] == job_id
        assert meta["seed"] == "11" and meta["sampler"] == "ddim" and meta["steps"] == "5"
        assert meta["generator"] == view.result["generator_id"]
        assert json.loads(meta["condition"]) is None
        architecture = json.loads(meta["architecture"])
        state = load_file(path)
        assert sum(t.numel() for t in state.values()) == entry["num_parameters"]
        build_module(architecture).load_state_dict(state, strict=True)
    assert not any((settings.data_dir / "tmp").iterdir())  # temp files removed


def test_same_seed_same_weights_whatever_num_samples(
    connection: redis.Redis, make_settings: SettingsFactory, run_burst: Burst
) -> None:
    settings = make_settings()
    one = enqueue(connection, request(num_samples=1), settings=settings)
    three = enqueue(connection, request(num_samples=3), settings=settings)
    other = enqueue(connection, request(num_samples=1, seed=12), settings=settings)
    run_burst(settings)
    assert all(
        finished(connection, j, settings).status is JobStatus.SUCCEEDED for j in (one, three, other)
    )
    name = "sample_000.safetensors"
    first = load_file(local_file(settings, one, name))
    again = load_file(local_file(settings, three, name))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    second = load_file(local_file(settings, three, "sample_001.safetensors"))
    assert not all(torch.equal(first[k], second[k]) for k in first if k in second)
    reseeded = load_file(local_file(settings, other, name))
    assert not all(torch.equal(first[k], reseeded[k]) for k in first)


def test_output_dtype_is_the_requested_one(
    connection: redis.Redis, make_settings: SettingsFactory, run_burst: Burst
) -> None:
    settings = make_settings()
    job_id = enqueue(connection, request(dtype="bfloat16"), settings=settings)
    run_burst(settings)
    state = load_file(local_file(settings, job_id, "sample_000.safetensors"))
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    assert floats and set(floats) == {torch.bfloat16}


def test_bad_request_fails_inside_the_job_with_a_clear_error(
    connection: redis.Redis, make_settings: SettingsFactory, run_burst: Burst
) -> None:
    settings = make_settings()
    wrong_condition = enqueue(connection, request(task_embedding=[1.0, 0.0]), settings=settings)
    # A payload no current gateway would send (e.g. queued by an older or buggy one).
    queue = Queue("rpg:digits-mlp", connection=connection, serializer=JSONSerializer)
    garbage = queue.enqueue_call(
        JOB_FUNCTION, kwargs={"request": {"architecture": "digits-mlp", "num_samples": "many"}}
    ).id
    run_burst(settings)
    view = finished(connection, wrong_condition, settings)
    assert view.status is JobStatus.FAILED and view.error is not None
    assert view.error["type"] == "InvalidRequest"
    assert "unconditional" in view.error["message"]
    view = finished(connection, garbage, settings)
    assert view.status is JobStatus.FAILED and view.error is not None
    assert view.error["type"] == "InvalidRequest" and "num_samples" in view.error["message"]


def test_timeout_fails_the_job_and_cleans_up(
    connection: redis.Redis, make_settings: SettingsFactory, run_burst: Burst
) -> None:
    settings = make_settings(job_timeout_s=1, chunk_size=4)
    job_id = enqueue(connection, request(num_samples=4, steps=400), settings=settings)
    start = time.monotonic()
    run_burst(settings)
    assert time.monotonic() - start < 10
    view = finished(connection, job_id, settings)
    assert view.status is JobStatus.FAILED and view.error is not None
    assert view.error["type"] == "JobTimeout" and "RPG_JOB_TIMEOUT_S" in view.error["message"]
    assert not (settings.data_dir / "files" / "jobs" / job_id).exists()
    assert not any((settings.data_dir / "tmp").glob("*"))


def watch(
    redis_url: str,
    job_id: str,
    settings: Settings,
    on_running: Callable[[redis.Redis], None] | None,
) -> tuple[threading.Thread, list[float]]:
    """Poll the job from another thread (the worker holds the main one); record progress."""
    seen: list[float] = []

    def poll() -> None:
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 30
        fired = False
        while time.monotonic() < deadline:
            view = get_job(client, job_id, settings=settings)
            if view is None:
                break
            if view.status is JobStatus.RUNNING:
                seen.append(view.progress)
                if on_running is not None and not fired and view.progress > 0:
                    on_running(client)
                    fired = True
            if view.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
                seen.append(view.progress)
                break
            time.sleep(0.01)
        client.close()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    return thread, seen


def test_progress_rises_monotonically(
    connection: redis.Redis, make_settings: SettingsFactory, run_burst: Burst, redis_url: str
) -> None:
    settings = make_settings(chunk_size=4)
    job_id = enqueue(connection, request(num_samples=2, steps=60), settings=settings)
    thread, seen = watch(redis_url, job_id, settings, None)
    run_burst(settings)
    thread.join(timeout=30)
    assert seen == sorted(seen)
    assert len(set(seen)) >= 3, seen
    assert seen[-1] == 1.0


def test_cancel_running_job_stops_it_between_chunks(
    connection: redis.Redis, make_settings: SettingsFactory, run_burst: Burst, redis_url: str
) -> None:
    settings = make_settings(chunk_size=4)
    job_id = enqueue(connection, request(num_samples=4, steps=400), settings=settings)

    def do_cancel(client: redis.Redis) -> None:
        view = cancel(client, job_id, settings=settings)
        assert view.status is JobStatus.RUNNING and view.cancel_requested

    thread, _ = watch(redis_url, job_id, settings, do_cancel)
    start = time.monotonic()
    run_burst(settings)
    thread.join(timeout=30)
    assert time.monotonic() - start < 10  # far less than the full job
    view = finished(connection, job_id, settings)
    assert view.status is JobStatus.CANCELED and view.error is not None
    assert view.error["type"] == "Canceled" and view.result is None
    assert not (settings.data_dir / "files" / "jobs" / job_id).exists()


@pytest.mark.parametrize("dtype", ["float16"])
def test_warm_worker_serves_many_jobs_without_reloading(
    connection: redis.Redis, make_settings: SettingsFactory, run_burst: Burst, dtype: str
) -> None:
    settings = make_settings()
    ids = [enqueue(connection, request(seed=s, dtype=dtype), settings=settings) for s in range(3)]
    run_burst(settings)
    views = [finished(connection, j, settings) for j in ids]
    assert all(v.status is JobStatus.SUCCEEDED for v in views)
    assert all(v.result is not None and v.result["timings"]["load_s"] == 0.0 for v in views)
