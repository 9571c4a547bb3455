"""A real `rpg worker` outlives Redis outages: the server is stopped mid-job and started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServer
from worker.queue import JobRequest, JobStatus, enqueue, get_job, live_workers
from worker.settings import Settings

from .conftest import SECRET

REPO = Path(__file__).resolve().parents[2]
HEARTBEAT_S = 0.3
# Several seconds on one thread: 2 samples x 400 DDIM steps in chunks of 4 tokens.
SLOW = {"architecture": "digits-mlp", "seed": 5, "num_samples": 2, "steps": 400}


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of its own (AOF on), so stopping it disturbs no other test."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, appendonly=True)
    server.start()
    yield server
    server.stop()


def spawn_worker(
    redis_url: str, bundle: Path, data_dir: Path, log: Path
) -> subprocess.Popen[bytes]:
    """`rpg worker` as a process; its log goes to `log`."""
    env = {
        **os.environ,
        "RPG_REDIS_URL": redis_url,
        "RPG_GENERATORS": str(bundle),
        "RPG_DATA_DIR": str(data_dir),
        "RPG_SIGNING_SECRET": SECRET,
        "RPG_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        "RPG_CHUNK_SIZE": "4",
        "RPG_PROGRESS_INTERVAL_S": "0",
        "RPG_WORKER_CPU_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--device", "cpu"],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_worker_outlives_redis_outage_mid_job(
    aof_redis: RedisServer, tiny_bundle: Path, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=aof_redis.url,
        data_dir=tmp_path / "data",
        signing_secret=SECRET,
        heartbeat_interval_s=HEARTBEAT_S,
    )
    log = tmp_path / "worker.log"
    process = spawn_worker(aof_redis.url, tiny_bundle, settings.data_dir, log)
    connection = redis.Redis.from_url(aof_redis.url)
    try:
        wait_for(lambda: len(live_workers(connection, settings=settings)) == 1, 90, "the worker")
        job_id = enqueue(connection, JobRequest(**SLOW), settings=settings)  # type: ignore[arg-type]

        def progress() -> float:
            view = get_job(connection, job_id, settings=settings)
            return view.progress if view is not None else 0.0

        wait_for(lambda: progress() > 0, 60, "the job to make progress")
        aof_redis.stop()  # SIGKILL: the worst case for the server
        time.sleep(4)  # longer than the worker's heartbeat TTL (3 x 0.3 s)
        assert process.poll() is None, log.read_text()
        aof_redis.start()  # same port, same AOF: the job is still there
        connection = redis.Redis.from_url(aof_redis.url)

        def finished() -> bool:
            view = get_job(connection, job_id, settings=settings)
            return view is not None and view.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)

        wait_for(finished, 120, "the job to finish after the outage")
        view = get_job(connection, job_id, settings=settings)
        assert view is not None and view.status is JobStatus.SUCCEEDED, (view, log.read_text())
        assert view.result is not None and len(view.result["files"]) == 2
        assert process.poll() is None, log.read_text()
        text = log.read_text()
        assert "unreachable; waiting for it" in text, text
        assert "Traceback" not in text, text

        # Still serving: a second job runs on the same process.
        again = enqueue(
            connection, JobRequest(architecture="digits-mlp", steps=5), settings=settings
        )

        def again_done() -> bool:
            view = get_job(connection, again, settings=settings)
            return view is not None and view.status is JobStatus.SUCCEEDED

        wait_for(again_done, 60, "a job after the outage")
    finally:
        process.kill()
        process.wait(timeout=10)
        connection.close()


@pytest.mark.slow
def test_worker_stopped_during_outage_exits(
    aof_redis: RedisServer, tiny_bundle: Path, tmp_path: Path
) -> None:
    settings = Settings(redis_url=aof_redis.url, heartbeat_interval_s=HEARTBEAT_S)
    log = tmp_path / "worker.log"
    process = spawn_worker(aof_redis.url, tiny_bundle, tmp_path / "data", log)
    connection = redis.Redis.from_url(aof_redis.url)
    try:
        wait_for(lambda: len(live_workers(connection, settings=settings)) == 1, 90, "the worker")
        aof_redis.stop()
        time.sleep(1.5)  # the worker is waiting for Redis now
        assert process.poll() is None, log.read_text()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)  # exits instead of waiting for Redis forever
        assert "unreachable; waiting for it" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        connection.close()
