"""Load benchmark of ``POST /generate``: real gateway process, real Redis, real HTTP.

    python -m service.bench.gateway --requests 2000 --concurrency 32

Starts the embedded Redis (or uses ``--redis-url``) and ``rpg serve`` as a subprocess, then
sends ``--requests`` generation requests from ``--concurrency`` concurrent HTTP clients and
reports throughput and latency percentiles. No worker runs, so every accepted job stays
queued; the queue limit and rate limit are raised for the run. Without ``--generators`` it
serves a config-only 'digits-mlp' bundle (the gateway never loads weights). Client and
server share the machine's CPUs, so the numbers are a floor for the gateway alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

__all__ = ["main", "run_load"]


def _write_config_bundle(directory: Path) -> Path:
    """A 'digits-mlp' bundle with only config.json (real tokenizer layout, default model)."""
    import torch

    from models.bundle import BUNDLE_FORMAT, BUNDLE_VERSION
    from models.config import RPGConfig
    from models.tokenizer import ParameterTokenizer
    from models.zoo.digits import mlp

    torch.manual_seed(0)
    config = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "name": "digits-mlp",
        "architecture": {"name": "digits-mlp", "builder": "models.zoo.digits:mlp", "kwargs": {}},
        "condition": {"kind": "none"},
        "defaults": {"sampler": "ddim", "steps": 50},
        "tokenizer": ParameterTokenizer.fit([mlp().state_dict() for _ in range(2)]).to_dict(),
        "model": RPGConfig().to_dict(),
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the gateway did not answer /healthz within {timeout_s:.0f} s")


async def run_load(
    url: str, body: dict[str, Any], *, requests: int, concurrency: int
) -> dict[str, Any]:
    """Send ``requests`` POST /generate from ``concurrency`` clients; latencies and rate."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def client_loop() -> None:
            for _ in remaining:
                start = time.perf_counter()
                response = await client.post("/generate", json=body)
                latencies.append(time.perf_counter() - start)
                statuses[response.status_code] += 1

        began = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began

    ordered = sorted(latencies)

    def percentile(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(requests / elapsed, 1),
        "latency_ms": {
            "mean": round(statistics.fmean(latencies) * 1000, 2),
            "p50": round(percentile(0.50), 2),
            "p90": round(percentile(0.90), 2),
            "p99": round(percentile(0.99), 2),
            "max": round(ordered[-1] * 1000, 2),
        },
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a JSON report."""
    parser = argparse.ArgumentParser(prog="python -m service.bench.gateway", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=100, help="requests sent before timing")
    parser.add_argument("--redis-url", help="use this Redis (default: embedded, in a temp dir)")
    parser.add_argument("--generators", nargs="+", help="bundles to serve (default: config-only)")
    parser.add_argument("--architecture", default="digits-mlp")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rpg-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        redis_url = args.redis_url
        embedded = redis_url is None
        if embedded:
            from worker.redis_embedded import ensure_embedded_redis

            redis_url = ensure_embedded_redis(data_dir)
        generators = args.generators or [str(_write_config_bundle(Path(tmp) / "digits-mlp"))]
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "RPG_MAX_QUEUE_DEPTH": str(10 * (args.requests + args.warmup) + 1000),
            "RPG_RATE_LIMIT_PER_MINUTE": str(10**9),
            "RPG_SIGNING_SECRET": "bench-secret-0123456789abcdef",
        }
        command = [
            sys.executable, "-m", "service.cli", "serve",
            "--host", "127.0.0.1", "--port", str(port),
            "--redis-url", redis_url, "--data-dir", str(data_dir),
            "--log-level", "warning", "--generators", *generators,
        ]  # fmt: skip
        gateway = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        try:
            _wait_healthy(url, gateway)
            body = {"architecture": args.architecture, "num_samples": 1}
            if args.warmup:
                asyncio.run(run_load(url, body, requests=args.warmup, concurrency=args.concurrency))
            report = asyncio.run(
                run_load(url, body, requests=args.requests, concurrency=args.concurrency)
            )
            report["cpus"] = os.cpu_count()
            print(json.dumps(report, indent=2))
        finally:
            gateway.terminate()
            try:
                gateway.wait(timeout=15)
            except subprocess.TimeoutExpired:
                gateway.kill()
            if embedded:
                from worker.redis_embedded import stop_embedded_redis

                stop_embedded_redis(data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
