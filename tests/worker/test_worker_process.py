"""`rpg worker` as a real process: command line, and what happens when it is killed mid-job."""

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
from rq.job import Job

from service.cli import build_parser
from worker.cli import settings_from_args
from worker.queue import JobRequest, JobStatus, JobView, enqueue, get_job, live_workers
from worker.queue.reaper import ReaperLoop
from worker.settings import Settings

from .conftest import SECRET

REPO = Path(__file__).resolve().parents[2]
HEARTBEAT_S = 0.3


def test_cli_flags_override_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RPG_REDIS_URL", "redis://env:6379/0")
    monkeypatch.setenv("RPG_JOB_RETRIES", "3")
    args = build_parser().parse_args(
        [
            "worker",
            "--generators",
            "a,b",
            "hf://org/c",
            "--device",
            "cpu",
            "--data-dir",
            str(tmp_path),
            "--burst",
        ]
    )
    settings = settings_from_args(args)
    assert settings.generators == ["a", "b", "hf://org/c"]
    assert settings.worker_device == "cpu" and settings.data_dir == tmp_path
    assert settings.redis_url == "redis://env:6379/0" and settings.job_retries == 3
    assert args.burst
    args = build_parser().parse_args(["worker", "--redis-url", "redis://flag:1/0"])
    assert settings_from_args(args).redis_url == "redis://flag:1/0"


@pytest.fixture
def spawn_worker(
    redis_url: str, tiny_bundle: Path, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `rpg worker` processes (the console script's entry point); killed at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(retries: int) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "RPG_REDIS_URL": redis_url,
            "RPG_GENERATORS": str(tiny_bundle),
            "RPG_DATA_DIR": str(tmp_path / "data"),
            "RPG_SIGNING_SECRET": SECRET,
            "RPG_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
            "RPG_JOB_RETRIES": str(retries),
            "RPG_CHUNK_SIZE": "4",
            "RPG_PROGRESS_INTERVAL_S": "0",
            "RPG_WORKER_CPU_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--device", "cpu"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def settings_for(redis_url: str, tmp_path: Path, retries: int) -> Settings:
    return Settings(
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        signing_secret=SECRET,
        heartbeat_interval_s=HEARTBEAT_S,
        job_retries=retries,
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def view_of(connection: redis.Redis, job_id: str, settings: Settings) -> JobView:
    view = get_job(connection, job_id, settings=settings)
    assert view is not None
    return view


def kill_worker_of(connection: redis.Redis, job_id: str, settings: Settings) -> str:
    """SIGKILL the process running `job_id` (RQ names it on the job; its heartbeat gives the
    pid); returns the worker's name."""
    assert view_of(connection, job_id, settings).status is JobStatus.RUNNING
    name = Job.fetch(job_id, connection=connection).worker_name
    running = [w for w in live_workers(connection, settings=settings) if w.name == name]
    assert len(running) == 1, (name, running)
    os.kill(running[0].pid, signal.SIGKILL)
    return str(name)


# A slow job: 2 samples x 400 DDIM steps in chunks of 4 tokens, several seconds on one thread.
SLOW = {"architecture": "digits-mlp", "seed": 3, "num_samples": 2, "steps": 400}


@pytest.mark.slow
def test_killed_worker_job_fails_with_reason(
    spawn_worker: Callable[..., subprocess.Popen[bytes]],
    connection: redis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    settings = settings_for(redis_url, tmp_path, retries=0)
    spawn_worker(0)
    wait_for(
        lambda: len(live_workers(connection, settings=settings)) == 1, 60, "the worker to start"
    )
    job_id = enqueue(connection, JobRequest(**SLOW), settings=settings)  # type: ignore[arg-type]
    wait_for(
        lambda: view_of(connection, job_id, settings).progress > 0, 30, "the job to make progress"
    )
    killed = kill_worker_of(connection, job_id, settings)
    killed_at = time.monotonic()
    # No other worker is alive: the reaper loop every gateway runs must end the job.
    reaper = ReaperLoop(connection, settings)
    reaper.start()
    try:
        wait_for(
            lambda: view_of(connection, job_id, settings).status is not JobStatus.RUNNING,
            10 * HEARTBEAT_S + 5,
            "the dead worker's job to leave 'running'",
        )
    finally:
        reaper.stop()
    assert time.monotonic() - killed_at <= 10 * HEARTBEAT_S + 5
    view = view_of(connection, job_id, settings)
    assert view.status is JobStatus.FAILED and view.error is not None
    assert view.error["type"] == "WorkerDied" and killed in view.error["message"]
    assert view.finished_at is not None


@pytest.mark.slow
def test_killed_worker_job_is_retried_by_another_worker(
    spawn_worker: Callable[..., subprocess.Popen[bytes]],
    connection: redis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    settings = settings_for(redis_url, tmp_path, retries=1)
    spawn_worker(1)
    spawn_worker(1)
    wait_for(
        lambda: len(live_workers(connection, settings=settings)) == 2, 90, "two workers to start"
    )
    job_id = enqueue(connection, JobRequest(**SLOW), settings=settings)  # type: ignore[arg-type]
    wait_for(
        lambda: view_of(connection, job_id, settings).progress > 0, 30, "the job to make progress"
    )
    kill_worker_of(connection, job_id, settings)
    # Only the survivor's heartbeat reaps it here (no polls until it is done).
    key = f"rq:job:{job_id}"
    wait_for(
        lambda: connection.hget(key, "status") in (b"finished", b"failed"),
        90,
        "the retry to finish",
    )
    view = view_of(connection, job_id, settings)
    assert view.status is JobStatus.SUCCEEDED, view.error
    assert view.attempts == 2
    assert view.result is not None and len(view.result["files"]) == 2
