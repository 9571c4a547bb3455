"""``POST /generate`` of our gateway beside the minimal app of the same stack, under `wrk`.

    python -m service.bench.stack --duration 15 --connections 32

Starts a redis-server on a free port (or uses ``--redis-url``), then, one after the other
and against that same Redis, our gateway (`rpg serve`, config-only 'digits-mlp' bundle,
rate and queue limits raised, no worker) and `service.bench.minimal` (FastAPI + pydantic +
redis-py: one hash write and one list push), each under uvicorn with the same options. `wrk`
(Debian's package) drives each for ``--duration`` seconds after a short warm-up; the report
gives requests/s, latency percentiles and our share of the minimal app's throughput and p99.
Client and servers share the machine's CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from service.bench.gateway import _free_port, _wait_healthy, _write_config_bundle

__all__ = ["main"]

BODY = {"architecture": "digits-mlp", "num_samples": 1, "seed": 1}
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _wrk_script(directory: Path) -> Path:
    script = directory / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{json.dumps(BODY)}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return script


def _parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms) and non-2xx count from `wrk --latency` output."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    latencies = {
        f"p{q}": float(value) * _UNITS[unit]
        for q, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    }
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    total = re.search(r"(\d+) requests in", text)
    return {
        "requests_per_s": float(rate.group(1)) if rate else 0.0,
        "latency_ms": {k: round(v, 2) for k, v in latencies.items()},
        "requests": int(total.group(1)) if total else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def _wrk(url: str, script: Path, *, seconds: int, connections: int, threads: int) -> dict[str, Any]:
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
        "-s", str(script), f"{url}/generate",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return _parse_wrk(out)


def _start(command: list[str], env: dict[str, str], url: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_healthy(url, process) if "rpg" in command[0] else _wait_port(url, process)
    except BaseException:
        process.kill()
        raise
    return process


def _wait_port(url: str, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            httpx.get(f"{url}/docs", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the minimal app did not start")


def _redis_server(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: install Redis or pass --redis-url")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    return process, f"redis://127.0.0.1:{port}/0"


def main(argv: list[str] | None = None) -> int:
    """Run both servers under wrk and print a JSON report."""
    parser = argparse.ArgumentParser(prog="python -m service.bench.stack", description=__doc__)
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per server")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before timing")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--redis-url", help="use this Redis (default: a redis-server on a free port)"
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="rpg-bench-stack-"))
    redis_process = None
    try:
        redis_url = args.redis_url
        if redis_url is None:
            redis_process, redis_url = _redis_server(work)
        bundle = _write_config_bundle(work / "bundles" / "digits-mlp")
        script = _wrk_script(work)
        env = {
            **os.environ,
            "RPG_REDIS_URL": redis_url,
            "RPG_BENCH_REDIS_URL": redis_url,
            "RPG_RATE_LIMIT_PER_MINUTE": "100000000",
            "RPG_MAX_QUEUE_DEPTH": "100000000",
            "RPG_DATA_DIR": str(work / "data"),
        }
        rpg = str(Path(sys.executable).with_name("rpg"))
        servers = {
            "minimal": [sys.executable, "-m", "uvicorn", "service.bench.minimal:app"],
            "gateway": [rpg, "serve", "--generators", str(bundle), "--log-level", "warning"],
        }
        report: dict[str, Any] = {"connections": args.connections, "seconds": args.duration}
        for name, command in servers.items():
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            process = _start([*command, "--host", "127.0.0.1", "--port", str(port)], env, url)
            try:
                if args.warmup:
                    _wrk(
                        url,
                        script,
                        seconds=args.warmup,
                        connections=args.connections,
                        threads=args.threads,
                    )
                report[name] = _wrk(
                    url,
                    script,
                    seconds=args.duration,
                    connections=args.connections,
                    threads=args.threads,
                )
            finally:
                process.terminate()
                process.wait(timeout=30)
        gateway, minimal = report["gateway"], report["minimal"]
        report["throughput_ratio"] = round(
            gateway["requests_per_s"] / max(minimal["requests_per_s"], 1e-9), 3
        )
        report["p99_ratio"] = round(
            gateway["latency_ms"].get("p99", 0.0)
            / max(minimal["latency_ms"].get("p99", 1e-9), 1e-9),
            3,
        )
        print(json.dumps(report, indent=2))
        return 0
    finally:
        if redis_process is not None:
            redis_process.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
