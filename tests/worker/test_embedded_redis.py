"""The embedded Redis: one server per data directory, shared by every process on the machine."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.queue import connect
from worker.redis_embedded import ensure_embedded_redis, socket_path, stop_embedded_redis
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[2]

# What a gateway or worker does at start: build Settings from the environment and connect.
CLIENT = """
import sys
from worker.queue import connect
from worker.settings import Settings
client = connect(Settings())
client.incr("rpg:test:starts")
print(client.info("server")["process_id"])
"""


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory whose embedded server is stopped after the test."""
    directory = tmp_path / "data"
    yield directory
    stop_embedded_redis(directory)


def test_same_server_for_every_connect_in_a_process(data_dir: Path) -> None:
    first = connect(Settings(redis_url=None, data_dir=data_dir))
    first.set("k", "v")
    second = connect(Settings(redis_url=None, data_dir=data_dir))
    assert second.get("k") == b"v"
    assert ensure_embedded_redis(data_dir) == f"unix://{socket_path(data_dir)}"
    assert (data_dir / "redis" / "redis.pid").is_file()
    pid = int(first.info("server")["process_id"])
    assert pid != os.getpid()
    first.close()
    second.close()
    assert stop_embedded_redis(data_dir)
    no_retry = Retry(NoBackoff(), 0)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(unix_socket_path=str(socket_path(data_dir)), retry=no_retry).ping()
    assert not stop_embedded_redis(data_dir)


def test_long_data_dir_gets_a_short_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = socket_path(deep)
    assert len(os.fsencode(path)) <= 100
    assert path == socket_path(deep)  # stable: every process computes the same one
    assert path != socket_path(tmp_path / "other")


@pytest.mark.slow
def test_two_processes_started_together_share_one_server(data_dir: Path) -> None:
    env = {**os.environ, "RPG_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    env.pop("RPG_REDIS_URL", None)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    pids = []
    for process in processes:
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0
        pids.append(int(out.strip().splitlines()[-1]))
    assert pids[0] == pids[1]
    here = connect(Settings(redis_url=None, data_dir=data_dir))
    assert int(here.info("server")["process_id"]) == pids[0]
    assert here.get("rpg:test:starts") == b"2"
    here.close()
