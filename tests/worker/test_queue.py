"""The queue contract the gateway relies on: enqueue, views, cancel, limits, liveness,
request checks and generator discovery. No worker runs here."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from models.bundle import read_config
from tests.conftest import RedisServer
from worker.errors import GeneratorConfigError, InvalidRequest, JobNotFound, QueueFull
from worker.queue import (
    JobRequest,
    JobStatus,
    cancel,
    check_job_request,
    enqueue,
    get_job,
    live_workers,
    queue_depth,
    queue_name,
    reap_dead_jobs,
)
from worker.queue.keys import worker_key
from worker.queue.reaper import restart_grace_s
from worker.registry import discover_generators, load_generator_configs
from worker.runtime import Heartbeat
from worker.settings import Settings

SettingsFactory = Callable[..., Settings]


def request(**fields: object) -> JobRequest:
    return JobRequest(**{"architecture": "digits-mlp", "seed": 7, **fields})  # type: ignore[arg-type]


def parse_iso(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


def test_enqueue_then_view_is_queued_with_position(
    connection: redis.Redis, make_settings: SettingsFactory
) -> None:
    settings = make_settings()
    first = enqueue(connection, request(owner="alice"), settings=settings)
    second = enqueue(connection, request(num_samples=2), settings=settings)
    view = get_job(connection, second, settings=settings)
    assert view is not None
    assert view.status is JobStatus.QUEUED
    assert view.queue_position == 1
    assert view.progress == 0.0 and view.result is None and view.error is None
    assert view.started_at is None and view.finished_at is None
    assert view.request == request(num_samples=2).model_dump(mode="json")
    parse_iso(view.created_at)
    assert json.loads(json.dumps(view.to_dict()))["status"] == "queued"
    owned = get_job(connection, first, settings=settings)
    assert owned is not None and owned.owner == "alice" and owned.queue_position == 0
    assert queue_depth(connection) == 2
    assert queue_depth(connection, "digits-mlp") == 2
    assert queue_depth(connection, "other") == 0


def test_queue_full_refuses_without_enqueueing(
    connection: redis.Redis, make_settings: SettingsFactory
) -> None:
    settings = make_settings(max_queue_depth=2)
    enqueue(connection, request(), settings=settings)
    enqueue(connection, request(), settings=settings)
    with pytest.raises(QueueFull, match="2 jobs are waiting"):
        enqueue(connection, request(), settings=settings)
    assert queue_depth(connection) == 2


def test_unknown_ids(connection: redis.Redis, make_settings: SettingsFactory) -> None:
    settings = make_settings()
    assert get_job(connection, "0" * 32, settings=settings) is None
    assert get_job(connection, "../etc:passwd", settings=settings) is None
    with pytest.raises(JobNotFound):
        cancel(connection, "0" * 32, settings=settings)


def test_cancel_queued_job_removes_it(
    connection: redis.Redis, make_settings: SettingsFactory
) -> None:
    settings = make_settings()
    job_id = enqueue(connection, request(), settings=settings)
    view = cancel(connection, job_id, settings=settings)
    assert view.status is JobStatus.CANCELED
    assert view.error is not None and view.error["type"] == "Canceled"
    assert view.finished_at is not None
    assert queue_depth(connection) == 0
    assert 0 < connection.ttl(Job.key_for(job_id)) <= settings.result_ttl_s
    again = cancel(connection, job_id, settings=settings)  # finished: unchanged
    assert again.status is JobStatus.CANCELED


def test_request_model_rejects_bad_values() -> None:
    with pytest.raises(ValidationError):
        request(task_embedding=[1.0, float("nan")])
    with pytest.raises(ValidationError):
        request(colour="red")
    with pytest.raises(ValidationError):
        request(num_samples=0)
    with pytest.raises(ValidationError):
        request(sampler="euler")
    assert 0 <= JobRequest(architecture="x").seed < 2**63


def test_check_request_against_config(tiny_bundle: Path, make_settings: SettingsFactory) -> None:
    settings = make_settings(max_num_samples=4, max_steps=500)
    config = read_config(tiny_bundle)
    check_job_request(request(num_samples=4, steps=500), config, settings=settings)
    cases = {
        "unconditional": request(task_embedding=[1.0, 0.0]),
        "at most 4": request(num_samples=5),
        "allows 1..500": request(steps=501),
        "always runs all 1000": request(sampler="ddpm"),
        "but this generator is 'digits-mlp'": request(architecture="digits-cnn"),
    }
    for needle, bad in cases.items():
        with pytest.raises(InvalidRequest, match=needle):
            check_job_request(bad, config, settings=settings)
    conditional = {**config, "condition": {"kind": "vector", "dim": 3, "labels": ["a", "b", "c"]}}
    check_job_request(request(task_embedding=[1.0, 0.0, 1.0]), conditional, settings=settings)
    with pytest.raises(InvalidRequest, match="has 2 values; generator 'digits-mlp' expects 3"):
        check_job_request(request(task_embedding=[1.0, 0.0]), conditional, settings=settings)
    with pytest.raises(InvalidRequest, match="is conditional"):
        check_job_request(request(), conditional, settings=settings)


def fake_started(connection: redis.Redis, job_id: str, worker: str, attempts: int) -> None:
    """Put a queued job into the state a worker leaves it in when it dies mid-job."""
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    connection.lrem(f"rq:queue:{job.origin}", 0, job_id)
    job.meta["attempts"] = attempts
    job.save_meta()
    with connection.pipeline() as pipe:
        job.prepare_for_execution(worker, pipe)
        registry = StartedJobRegistry(job.origin, connection=connection)
        pipe.zadd(registry.key, {f"{job_id}:exec1": time.time() + 3600})
        pipe.execute()


def test_reaper_requeues_then_fails_a_dead_workers_job(
    connection: redis.Redis, make_settings: SettingsFactory
) -> None:
    settings = make_settings(job_retries=1)
    job_id = enqueue(connection, request(), settings=settings)
    fake_started(connection, job_id, "ghost", attempts=1)
    assert reap_dead_jobs(connection, settings=settings) == [job_id]
    view = get_job(connection, job_id, settings=settings)
    assert view is not None and view.status is JobStatus.QUEUED
    assert queue_depth(connection) == 1
    registry = StartedJobRegistry(queue_name("digits-mlp"), connection=connection)
    assert connection.zcard(registry.key) == 0  # no stale entry to fail the retry later
    fake_started(connection, job_id, "ghost", attempts=2)
    assert reap_dead_jobs(connection, settings=settings) == [job_id]
    view = get_job(connection, job_id, settings=settings)
    assert view is not None and view.status is JobStatus.FAILED
    assert view.error is not None and view.error["type"] == "WorkerDied"
    assert "ghost" in view.error["message"]
    assert Job.fetch(job_id, connection=connection).get_status() == RQStatus.FAILED


def test_reaper_leaves_live_workers_jobs_alone(
    connection: redis.Redis, make_settings: SettingsFactory
) -> None:
    settings = make_settings(heartbeat_interval_s=5.0)
    job_id = enqueue(connection, request(), settings=settings)
    beat = Heartbeat(connection, settings, "alive", lambda: {"hostname": "h", "pid": 1})
    beat.beat()
    fake_started(connection, job_id, "alive", attempts=1)
    assert reap_dead_jobs(connection, settings=settings) == []
    view = get_job(connection, job_id, settings=settings)
    assert view is not None and view.status is JobStatus.RUNNING and view.started_at
    beat.stop()


def test_live_workers_follow_heartbeats(
    connection: redis.Redis, make_settings: SettingsFactory
) -> None:
    settings = make_settings(heartbeat_interval_s=0.1)
    info = {"hostname": "box", "pid": 42, "generators": ["digits-mlp"], "device": "cpu"}
    first = Heartbeat(connection, settings, "w1", lambda: info)
    second = Heartbeat(connection, settings, "w2", lambda: info)
    first.start()
    second.beat()  # beats once, then falls silent like a killed process
    names = [w.name for w in live_workers(connection, settings=settings)]
    assert names == ["w1", "w2"]
    time.sleep(0.5)  # > 3 intervals
    workers = live_workers(connection, settings=settings)
    assert [w.name for w in workers] == ["w1"]
    assert workers[0].pid == 42 and workers[0].generators == ["digits-mlp"]
    first.stop()
    assert live_workers(connection, settings=settings) == []


def test_discover_generators(
    tiny_bundle: Path, tmp_path: Path, make_settings: SettingsFactory
) -> None:
    found = discover_generators([str(tiny_bundle.parent)])  # a directory of bundles
    assert list(found) == ["digits-mlp"]
    assert found["digits-mlp"].source == str(tiny_bundle.resolve())
    configs = load_generator_configs(make_settings(generators=[str(tiny_bundle)]))
    assert configs["digits-mlp"]["architecture"]["builder"] == "models.zoo.digits:mlp"
    copy = tmp_path / "copy" / "digits-mlp"
    copy.parent.mkdir()
    shutil.copytree(tiny_bundle, copy)
    with pytest.raises(GeneratorConfigError, match="two generators are named 'digits-mlp'") as info:
        discover_generators([str(tiny_bundle), str(copy)])
    assert str(tiny_bundle.resolve()) in str(info.value) and str(copy.resolve()) in str(info.value)
    with pytest.raises(GeneratorConfigError, match="not a directory"):
        discover_generators([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeneratorConfigError, match="no generator bundles"):
        discover_generators([str(tmp_path / "empty")])


def test_no_reaping_right_after_a_redis_restart(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """Heartbeat keys come back from the AOF already expired after an outage longer than their
    TTL; a live worker's job must not be taken for a dead one's before it can beat again."""
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    connection = redis.Redis(port=server.port)
    try:
        settings = make_settings(redis_url=server.url, heartbeat_interval_s=0.2, job_retries=1)
        grace = restart_grace_s(settings)
        time.sleep(grace + 1)  # a server older than the grace
        job_id = enqueue(connection, request(), settings=settings)
        Heartbeat(connection, settings, "alive", lambda: {"hostname": "h", "pid": 1}).beat()
        fake_started(connection, job_id, "alive", attempts=1)
        server.stop()  # SIGKILL
        time.sleep(1.0)  # longer than the heartbeat's 0.6 s TTL
        server.start()
        assert not connection.exists(worker_key("alive"))  # expired while Redis was down
        assert reap_dead_jobs(connection, settings=settings) == []  # within the grace
        view = get_job(connection, job_id, settings=settings)
        assert view is not None and view.status is JobStatus.RUNNING
        # A worker that never beats again is dead once the grace is over.
        time.sleep(grace + 1)
        assert reap_dead_jobs(connection, settings=settings) == [job_id]
        view = get_job(connection, job_id, settings=settings)
        assert view is not None and view.status is JobStatus.QUEUED
    finally:
        connection.close()
        server.stop()
