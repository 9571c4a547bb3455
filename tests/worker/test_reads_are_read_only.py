"""`GET /jobs/{id}` only reads: Redis MONITOR sees no write command while a real gateway
answers it for a queued, a running and a finished job."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import redis

from service.app import create_app
from service.settings import GatewaySettings
from tests.service.conftest import ServerThread
from tests.worker.test_queue import fake_started, request
from worker.queue import enqueue
from worker.runtime import Heartbeat
from worker.settings import Settings

STOP = "rpg-test-stop-monitor"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _is_write(client: redis.Redis, name: str, cache: dict[str, bool]) -> bool:
    if name not in cache:
        info = client.execute_command("COMMAND", "INFO", name)  # {name: {"flags": [...]}}
        entry = info.get(name.lower()) or {}
        flags = [f.decode() if isinstance(f, bytes) else str(f) for f in entry.get("flags", [])]
        cache[name] = "write" in flags
    return cache[name]


@contextmanager
def monitored(redis_url: str) -> Iterator[list[str]]:
    """Collect every command Redis runs (as text) until the block ends."""
    seen: list[str] = []
    client = redis.Redis.from_url(redis_url)
    ready = threading.Event()

    def listen() -> None:
        with client.monitor() as monitor:
            ready.set()
            for event in monitor.listen():
                command = str(event.get("command", ""))
                if STOP in command:
                    return
                seen.append(command)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(5)
    try:
        yield seen
    finally:
        redis.Redis.from_url(redis_url).echo(STOP)
        thread.join(10)
        client.close()


def test_get_job_issues_no_redis_writes(
    redis_url: str,
    connection: redis.Redis,
    make_settings: Callable[..., Settings],
    run_burst: Callable[[Settings], bool],
) -> None:
    settings = make_settings(heartbeat_interval_s=30.0)
    done = enqueue(connection, request(steps=2), settings=settings)
    assert run_burst(settings)
    queued = enqueue(connection, request(), settings=settings)
    running = enqueue(connection, request(), settings=settings)
    Heartbeat(connection, settings, "alive", lambda: {"hostname": "h", "pid": 1}).beat()
    fake_started(connection, running, "alive", attempts=1)

    port = _free_port()
    gateway = GatewaySettings(**{**settings.model_dump(), "port": port})
    server = ServerThread(create_app(gateway), "127.0.0.1", port)
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            statuses = {}
            with monitored(redis_url) as seen:
                for job_id in (queued, running, done):
                    response = http.get(f"/jobs/{job_id}")
                    assert response.status_code == 200, response.text
                    statuses[job_id] = response.json()["status"]
    finally:
        server.stop()
    assert statuses == {queued: "queued", running: "running", done: "succeeded"}
    assert seen, "MONITOR saw nothing: the test is not watching the gateway's Redis"
    cache: dict[str, bool] = {}
    names = [command.split(" ", 1)[0].strip('"').upper() for command in seen]
    writes = [c for c, n in zip(seen, names, strict=True) if _is_write(connection, n, cache)]
    assert not writes, f"GET /jobs/{{id}} wrote to Redis: {writes}"
