"""How fast the service recovers from faults, and how it serves while being abused.

    OMP_NUM_THREADS=1 python -m service.bench.faults [--generators BUNDLE] [--trials 3]

Real processes throughout (`service.bench.faultlab`: redis-server with AOF, `rpg serve`, two
`rpg worker`), with the production heartbeat (5 s) unless ``--heartbeat`` says otherwise:

1. worker kill: a running job's worker gets SIGKILL; seconds until the job runs again on
   the other worker, and until it has succeeded;
2. Redis restart: Redis gets SIGKILL mid-job and starts again ``--redis-down`` seconds
   later; seconds (from its start) until the gateway answers the job again, until the
   job's progress moves again, and until it has succeeded;
3. slow clients: ``--slow-connections`` connections that never finish their request head
   and as many that never finish their body, dripping a byte a second; seconds until the
   gateway has closed each group (``RPG_HEADER_TIMEOUT_S``, ``RPG_BODY_TIMEOUT_S``);
4. abuse: latency of a well-behaved client (``GET /healthz``, ``GET /architectures``)
   alone, then while abusive clients run: slow bodies (many connections dripping a body),
   huge error bodies (63 KB bodies of 21,000 invalid items), and mid-body disconnects.

Without ``--generators`` a tiny generator is trained first (6-checkpoint zoo, 20 steps).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import select
import socket
import statistics
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx

from service.bench.faultlab import Deployment, job_document, submit, wait_until

__all__ = ["main"]

LONG_JOB = {"architecture": "digits-mlp", "num_samples": 2, "steps": 400}


def _tiny_generator(root: Path) -> Path:
    from models.training import TrainConfig, train
    from models.zoo.build import build_digits_zoo

    zoo = root / "zoo"
    build_digits_zoo("digits-mlp", zoo, num_checkpoints=6, runs=2, seed=0, progress=False)
    options = TrainConfig(
        steps=20,
        d_model=32,
        d_state=16,
        channels=(1, 8, 16, 8, 1),
        token_size=256,
        progress=False,
        save_every=0,
        name="digits-mlp",
    )
    train(zoo, root / "digits-mlp", options)
    return root / "digits-mlp"


def _document(http: httpx.Client, job_id: str) -> dict[str, Any]:
    found = job_document(http, job_id)
    if found is None:
        raise httpx.TransportError("gateway unavailable")
    return found


def _running(http: httpx.Client, job_id: str, attempts: int = 1) -> bool:
    document = _document(http, job_id)
    return document["status"] == "running" and int(document["attempts"]) >= attempts


def _succeeded(http: httpx.Client, job_id: str) -> bool:
    status = _document(http, job_id)["status"]
    if status in ("failed", "canceled"):
        raise RuntimeError(f"job {job_id} ended {status}")
    return status == "succeeded"


def bench_worker_kill(deployment: Deployment, http: httpx.Client, trial: int) -> dict[str, float]:
    """Kill the worker running a job; seconds until it runs again, and until it succeeds."""
    job_id = submit(http, {**LONG_JOB, "seed": 100 + trial}, f"kill-{trial}")
    wait_until(lambda: _running(http, job_id), 60, "the job to start")
    pids = deployment.live_worker_pids()
    import redis
    from rq.job import Job
    from rq.serializers import JSONSerializer

    client = redis.Redis.from_url(deployment.redis_url)
    name = Job.fetch(job_id, connection=client, serializer=JSONSerializer).worker_name
    client.close()
    deployment.kill_worker(pids[str(name)])
    killed = time.monotonic()
    deployment.start_worker()  # the replacement; the other worker takes the job meanwhile
    restarted = wait_until(lambda: _running(http, job_id, attempts=2), 120, "the retry")
    wait_until(lambda: _succeeded(http, job_id), 120, "the retried job to succeed")
    return {"rerun_s": restarted, "succeeded_s": time.monotonic() - killed}


def bench_redis_restart(
    deployment: Deployment, http: httpx.Client, trial: int, down_s: float
) -> dict[str, float]:
    """Kill Redis mid-job for `down_s`; seconds from its restart until the gateway, the job's
    progress and the job's success are back."""
    job_id = submit(http, {**LONG_JOB, "seed": 200 + trial}, f"redis-{trial}")
    wait_until(lambda: float(_document(http, job_id)["progress"]) > 0, 60, "progress")
    deployment.kill_redis()
    time.sleep(down_s)
    deployment.start_redis()
    started = time.monotonic()
    gateway_s = wait_until(lambda: bool(_document(http, job_id)), 60, "the gateway")
    before = float(_document(http, job_id)["progress"])
    progress_s = wait_until(
        lambda: (
            float(_document(http, job_id)["progress"]) > before
            or _document(http, job_id)["status"] == "succeeded"
        ),
        120,
        "progress after the restart",
    )
    wait_until(lambda: _succeeded(http, job_id), 120, "the job to succeed")
    return {
        "gateway_back_s": gateway_s,
        "progress_again_s": gateway_s + progress_s,
        "succeeded_s": time.monotonic() - started,
    }


# ------------------------------------------------------------------------------- abuse
def _measure(http: httpx.Client, seconds: float) -> list[float]:
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path in ("/healthz", "/architectures"):
            began = time.perf_counter()
            http.get(path).raise_for_status()
            latencies.append(time.perf_counter() - began)
        time.sleep(0.01)
    return latencies


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _slow_bodies(port: int, stop: Event, count: int) -> int:
    socks = []
    head = (
        b"POST /generate HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    for _ in range(count):
        try:
            sock = _connect(port)
            sock.sendall(head)
            socks.append(sock)
        except OSError:
            break
    while not stop.wait(1.0):
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.sendall(b" ")
    for sock in socks:
        sock.close()
    return len(socks)


def _huge_errors(port: int, stop: Event) -> int:
    body = '{"architecture": "digits-mlp", "task_embedding": [' + ",".join(["[]"] * 21_000) + "]}"
    sent = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        while not stop.is_set():
            http.post("/generate", content=body, headers={"Content-Type": "application/json"})
            sent += 1
    return sent


def _disconnects(port: int, stop: Event) -> int:
    head = (
        b"POST /generate HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2000\r\n\r\n" + b'{"architecture": "digits-mlp", ' * 20
    )
    done = 0
    while not stop.is_set():
        try:
            sock = _connect(port)
            sock.sendall(head)
            time.sleep(0.01)
            sock.close()
            done += 1
        except OSError:
            time.sleep(0.05)
    return done


def _abuser(kind: str, port: int, stop: Event, slow: int, results: Queue) -> None:
    """One abusive client, in its own process (its Python work must not slow the measurer)."""
    if kind == "slow_body_connections":
        results.put((kind, _slow_bodies(port, stop, slow)))
    elif kind == "huge_error_posts":
        results.put((kind, _huge_errors(port, stop)))
    else:
        results.put((kind, _disconnects(port, stop)))


ABUSERS = ("slow_body_connections", "huge_error_posts", "huge_error_posts", "disconnects")


def bench_abuse(
    deployment: Deployment, seconds: float, slow: int, kinds: tuple[str, ...] = ABUSERS
) -> dict[str, Any]:
    """Well-behaved latency alone and under abuse (p50 / p99 in ms) and what the abusers did."""

    def summary(latencies: list[float]) -> dict[str, float]:
        ordered = sorted(latencies)
        return {
            "requests": len(ordered),
            "p50_ms": round(1000 * statistics.median(ordered), 2),
            "p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 2),
        }

    context = multiprocessing.get_context("spawn")
    with httpx.Client(base_url=deployment.url, timeout=30) as http:
        alone = summary(_measure(http, seconds))
        stop = context.Event()
        results = context.Queue()
        processes = [
            context.Process(
                target=_abuser, args=(kind, deployment.gateway_port, stop, slow, results)
            )
            for kind in kinds
        ]
        for process in processes:
            process.start()
        time.sleep(3.0)  # let the abusers start and get going
        abused = summary(_measure(http, seconds))
        stop.set()
        counts: dict[str, int] = {}
        for _ in processes:
            kind, count = results.get(timeout=60)
            counts[kind] = counts.get(kind, 0) + count
        for process in processes:
            process.join(timeout=30)
    return {"alone": alone, "under_abuse": abused, "abusers": counts}


def bench_slow_clients(deployment: Deployment, count: int, limit_s: float) -> dict[str, Any]:
    """Open `count` never-finished heads and `count` never-finished bodies; seconds until the
    gateway has closed all of each group (None: some still open after `limit_s`)."""
    groups: dict[str, list[socket.socket]] = {"heads": [], "bodies": []}
    began = time.monotonic()
    for _ in range(count):
        sock = _connect(deployment.gateway_port)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\nX-Slow: ")
        groups["heads"].append(sock)
        sock = _connect(deployment.gateway_port)
        sock.sendall(
            b"POST /generate HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        groups["bodies"].append(sock)
    opened_s = time.monotonic() - began
    closed_after: dict[str, float | None] = {"heads": None, "bodies": None}
    still_open = {name: set(socks) for name, socks in groups.items()}
    statuses: dict[str, set[str]] = {"heads": set(), "bodies": set()}
    next_drip = time.monotonic()
    while time.monotonic() - began < limit_s and any(still_open.values()):
        everyone = [sock for socks in still_open.values() for sock in socks]
        readable, _, _ = select.select(everyone, [], [], 0.2)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            name = "heads" if sock in still_open["heads"] else "bodies"
            if data.startswith(b"HTTP/1.1 "):
                statuses[name].add(data[9:12].decode())
            if not data:
                still_open[name].discard(sock)
                sock.close()
                if not still_open[name]:
                    closed_after[name] = round(time.monotonic() - began, 2)
        if time.monotonic() >= next_drip:  # a byte a second: never idle, never done
            next_drip += 1.0
            for sock in everyone:
                with contextlib.suppress(OSError):
                    sock.send(b"a")
    for socks in still_open.values():
        for sock in socks:
            sock.close()
    return {
        "connections": 2 * count,
        "opened_in_s": round(opened_s, 2),
        "all_heads_closed_after_s": closed_after["heads"],
        "all_bodies_closed_after_s": closed_after["bodies"],
        "statuses": {name: sorted(codes) for name, codes in statuses.items()},
        "left_open": sum(len(socks) for socks in still_open.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generators", type=Path, help="a digits-mlp bundle (default: train one)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--heartbeat", type=float, default=5.0, help="RPG_HEARTBEAT_INTERVAL_S")
    parser.add_argument("--redis-down", type=float, default=3.0, help="seconds Redis stays down")
    parser.add_argument("--abuse-seconds", type=float, default=10.0)
    parser.add_argument("--slow-connections", type=int, default=200)
    parser.add_argument(
        "--parts",
        default="kill,redis,slow,abuse",
        help="comma-separated: kill, redis, slow, abuse",
    )
    parser.add_argument(
        "--abusers",
        default=",".join(ABUSERS),
        help="comma-separated abusive clients (one process each): slow_body_connections, "
        "huge_error_posts, disconnects",
    )
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))

    with tempfile.TemporaryDirectory(prefix="rpg-bench-faults-") as tmp:
        root = Path(tmp)
        bundle = args.generators or _tiny_generator(root / "gen")
        deployment = Deployment(root / "deploy", [bundle], heartbeat_s=args.heartbeat)
        try:
            deployment.start_redis()
            deployment.start_gateway()
            deployment.start_worker()
            deployment.start_worker()
            deployment.wait_for_workers(2)
            with httpx.Client(base_url=deployment.url, timeout=10) as http:
                print(f"heartbeat {args.heartbeat} s; job: {LONG_JOB}", flush=True)
                for trial in range(args.trials if "kill" in parts else 0):
                    result = bench_worker_kill(deployment, http, trial)
                    print(f"worker kill    trial {trial}: {_fmt(result)}", flush=True)
                    deployment.wait_for_workers(2)
                for trial in range(args.trials if "redis" in parts else 0):
                    result = bench_redis_restart(deployment, http, trial, args.redis_down)
                    alive = sum(p.poll() is None for p in deployment.workers)
                    print(
                        f"redis restart  trial {trial} (down {args.redis_down} s): "
                        f"{_fmt(result)}; workers alive: {alive}",
                        flush=True,
                    )
            if "slow" in parts:
                result = bench_slow_clients(deployment, args.slow_connections, limit_s=60)
                print(f"slow clients: {result}", flush=True)
            if "abuse" in parts:
                kinds = tuple(args.abusers.split(","))
                result = bench_abuse(deployment, args.abuse_seconds, args.slow_connections, kinds)
                print(f"abuse: well-behaved alone       {result['alone']}")
                print(f"abuse: well-behaved under abuse {result['under_abuse']}")
                print(f"abuse: abusers                  {result['abusers']}")
        finally:
            deployment.close()
    return 0


def _fmt(result: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in result.items())


if __name__ == "__main__":
    raise SystemExit(main())
